#include "model/qserve_numerics.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/block_reduce.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve {

namespace {

// Round-to-nearest fp32 values of double-precision functions: the double result is within an ulp
// of the true value, so its rounding to fp32 is the correctly rounded fp32 value except when the
// true value lies within ~2^-29 relative of an fp32 rounding boundary.
float round_f32(double v) {
  return static_cast<float>(v);
}

float fp16_value(float x) {
  return quant::f16_to_f32(quant::f32_to_f16(x));
}

}  // namespace

void round_to_fp16_values(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = fp16_value(x[i]);
}

std::vector<float> qserve_rope_inv_freq(const ModelConfig& cfg) {
  if (cfg.rope_scaling.type != RopeScaling::Type::None) return cpu::rope_inv_freq(cfg);
  const int64_t d = cfg.head_dim;
  check(d > 0 && d % 2 == 0,
        "qserve_rope_inv_freq: head_dim must be positive and even, got " + std::to_string(d));
  check(cfg.rope_theta > 0.0, "qserve_rope_inv_freq: rope_theta must be positive");
  std::vector<float> inv(static_cast<size_t>(d / 2));
  for (int64_t j = 0; j < d / 2; ++j) {
    inv[static_cast<size_t>(j)] =
        round_f32(std::pow(cfg.rope_theta, -static_cast<double>(2 * j) / static_cast<double>(d)));
  }
  return inv;
}

void qserve_rope(float* x, const int64_t* positions, int64_t t, int64_t heads, int64_t head_dim,
                 std::span<const float> inv_freq) {
  const int64_t half = head_dim / 2;
  check(head_dim > 0 && head_dim % 2 == 0 && static_cast<int64_t>(inv_freq.size()) == half,
        "qserve_rope: head_dim must be even and match the inverse frequencies");
  ThreadPool::global().parallel_for(t, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cs(static_cast<size_t>(2 * half));
    for (int64_t r = begin; r < end; ++r) {
      const float pos = static_cast<float>(positions[r]);
      for (int64_t j = 0; j < half; ++j) {
        const double angle = static_cast<double>(pos * inv_freq[static_cast<size_t>(j)]);
        cs[static_cast<size_t>(j)] = round_f32(std::cos(angle));
        cs[static_cast<size_t>(half + j)] = round_f32(std::sin(angle));
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x + (r * heads + h) * head_dim;
        for (int64_t j = 0; j < half; ++j) {
          const float c = cs[static_cast<size_t>(j)], s = cs[static_cast<size_t>(half + j)];
          const float x1 = v[j], x2 = v[j + half];
          v[j] = fp16_value(std::fma(c, x1, -(s * x2)));
          v[j + half] = fp16_value(std::fma(c, x2, s * x1));
        }
      }
    }
  });
}

void qserve_rms_norm(const float* x, const float* gamma, float eps, int64_t rows, int64_t dim,
                     float* out) {
  check(rows >= 0 && dim > 0, "qserve_rms_norm: need rows >= 0 and dim > 0");
  const int64_t block = std::min<int64_t>(dim, 1024);
  const float n = static_cast<float>(dim);
  ThreadPool::global().parallel_for(rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> partials(static_cast<size_t>(block));
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * dim;
      std::fill(partials.begin(), partials.end(), 0.0f);
      for (int64_t i = 0; i < dim; ++i) {
        float& acc = partials[static_cast<size_t>(i % block)];
        acc = std::fma(xr[i], xr[i], acc);
      }
      const float rho = 1.0f / std::sqrt(quant::block_reduce_sum(partials) / n + eps);
      for (int64_t i = 0; i < dim; ++i) {
        out[r * dim + i] = fp16_value(fp16_value(xr[i] * rho) * gamma[i]);
      }
    }
  });
}

void qserve_silu_mul(const float* gate_up, int64_t t, int64_t inter, uint16_t* out) {
  check(t >= 0 && inter > 0, "qserve_silu_mul: need t >= 0 and inter > 0");
  ThreadPool::global().parallel_for(t, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* gate = gate_up + r * 2 * inter;
      const float* up = gate + inter;
      for (int64_t i = 0; i < inter; ++i) {
        const float g = gate[i];
        const float e = round_f32(std::exp(-static_cast<double>(g)));
        const float silu = fp16_value(g / (1.0f + e));
        out[r * inter + i] = quant::f32_to_f16(silu * up[i]);
      }
    }
  });
}

}  // namespace qserve
