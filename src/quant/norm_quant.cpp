#include "quant/norm_quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/block_reduce.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

inline float load(float v) {
  return v;
}
inline float load(uint16_t h) {
  return f16_to_f32(h);
}

// fp16(1e-6): the floor QServe's kernel puts under amax (a subnormal fp16).
const float kAmaxFloor = f16_to_f32(f32_to_f16(1e-6f));

void norm_quantize_row(const float* x, const float* gamma, float eps, int64_t cols, NormKind kind,
                       int8_t* q, uint16_t* scale, uint16_t* sum, uint16_t* normed,
                       std::vector<float>& u) {
  const int64_t block = norm_quant_block_dim(cols);
  std::vector<float> partials(static_cast<size_t>(block), 0.0f);
  const float n = static_cast<float>(cols);

  float mu = 0.0f;
  if (kind == NormKind::kQServeLayerNorm) {
    for (int64_t i = 0; i < cols; ++i) partials[static_cast<size_t>(i % block)] += x[i];
    mu = block_reduce_sum(partials) / n;
  }
  std::fill(partials.begin(), partials.end(), 0.0f);
  for (int64_t i = 0; i < cols; ++i) {
    const float d = x[i] - mu;
    float& acc = partials[static_cast<size_t>(i % block)];
    acc = std::fma(d, d, acc);
  }
  const float rho = 1.0f / std::sqrt(block_reduce_sum(partials) / n + eps);

  float amax = kAmaxFloor;
  for (int64_t i = 0; i < cols; ++i) {
    const float g = gamma != nullptr ? gamma[i] : 1.0f;
    u[static_cast<size_t>(i)] = ((x[i] - mu) * rho) * g;
    const uint16_t v = f32_to_f16(u[static_cast<size_t>(i)]);
    if (normed != nullptr) normed[i] = v;
    amax = std::fmax(amax, std::fabs(f16_to_f32(v)));
  }
  const float r = 127.0f * (1.0f / amax);
  for (int64_t i = 0; i < cols; ++i) q[i] = cvt_rni_sat_s8(u[static_cast<size_t>(i)] * r);
  *scale = f32_to_f16(amax * (1.0f / 127.0f));

  if (sum != nullptr) {
    // Each thread keeps an fp16 running sum of its v_i (unlike the standalone quant, §5.2).
    std::vector<uint16_t> thread_sum(static_cast<size_t>(block), 0);
    for (int64_t i = 0; i < cols; ++i) {
      uint16_t& s = thread_sum[static_cast<size_t>(i % block)];
      s = f16_add(s, f32_to_f16(u[static_cast<size_t>(i)]));
    }
    for (int64_t t = 0; t < block; ++t) {
      partials[static_cast<size_t>(t)] = f16_to_f32(thread_sum[static_cast<size_t>(t)]);
    }
    *sum = f32_to_f16(block_reduce_sum(partials));
  }
}

template <typename T>
void norm_quantize_rows(const T* x, const T* gamma, float eps, int64_t rows, int64_t cols,
                        NormKind kind, const NormQuantOutputs& out) {
  check(rows >= 0 && cols > 0, "norm_quantize_per_token: need rows >= 0 and cols > 0");
  check(out.q != nullptr && out.scale != nullptr,
        "norm_quantize_per_token: the q and scale outputs are required");
  std::vector<float> g;
  if (gamma != nullptr) {
    g.resize(static_cast<size_t>(cols));
    for (int64_t i = 0; i < cols; ++i) g[static_cast<size_t>(i)] = load(gamma[i]);
  }
  ThreadPool::global().parallel_for(rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(cols));
    std::vector<float> u(static_cast<size_t>(cols));
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = 0; i < cols; ++i) row[static_cast<size_t>(i)] = load(x[r * cols + i]);
      norm_quantize_row(row.data(), g.empty() ? nullptr : g.data(), eps, cols, kind,
                        out.q + r * cols, out.scale + r, out.sum != nullptr ? out.sum + r : nullptr,
                        out.normed != nullptr ? out.normed + r * cols : nullptr, u);
    }
  });
}

}  // namespace

void norm_quantize_per_token(const uint16_t* x, const uint16_t* gamma, float eps, int64_t rows,
                             int64_t cols, NormKind kind, const NormQuantOutputs& out) {
  norm_quantize_rows(x, gamma, eps, rows, cols, kind, out);
}

void norm_quantize_per_token(const float* x, const float* gamma, float eps, int64_t rows,
                             int64_t cols, NormKind kind, const NormQuantOutputs& out) {
  norm_quantize_rows(x, gamma, eps, rows, cols, kind, out);
}

}  // namespace qserve::quant
