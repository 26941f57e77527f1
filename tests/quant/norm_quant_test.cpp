// Fused norm + per-token int8 quantization (qserve-compat.md §5.1): QServe's mean-subtracting
// "RMSNorm" and the true RMSNorm option.
#include "quant/norm_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "quant/block_reduce.h"
#include "quant/fp16_math.h"
#include "quant_test_util.h"

namespace qserve::quant {
namespace {

using test::normal_f16;
using test::to_floats;
using test::ulp16;

struct NormResult {
  std::vector<int8_t> q;
  std::vector<uint16_t> scale, sum, normed;
};

NormResult run(const std::vector<uint16_t>& x, const std::vector<uint16_t>* gamma, int64_t rows,
               int64_t cols, NormKind kind, float eps = 1e-5f) {
  NormResult r;
  r.q.resize(x.size());
  r.normed.resize(x.size());
  r.scale.resize(rows);
  r.sum.resize(rows);
  norm_quantize_per_token(x.data(), gamma ? gamma->data() : nullptr, eps, rows, cols, kind,
                          {r.q.data(), r.scale.data(), r.sum.data(), r.normed.data()});
  return r;
}

// Double-precision reference of u_i (before any fp16 rounding).
std::vector<double> reference_u(const std::vector<float>& x, const std::vector<float>* gamma,
                                int64_t row, int64_t cols, NormKind kind, double eps) {
  double mu = 0.0;
  if (kind == NormKind::kQServeLayerNorm) {
    for (int64_t i = 0; i < cols; ++i) mu += x[row * cols + i];
    mu /= cols;
  }
  double s2 = 0.0;
  for (int64_t i = 0; i < cols; ++i) {
    const double d = x[row * cols + i] - mu;
    s2 += d * d;
  }
  const double rho = 1.0 / std::sqrt(s2 / cols + eps);
  std::vector<double> u(cols);
  for (int64_t i = 0; i < cols; ++i) {
    u[i] = (x[row * cols + i] - mu) * rho * (gamma ? (*gamma)[i] : 1.0);
  }
  return u;
}

void check_against_reference(NormKind kind, bool with_gamma, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t rows = 3;
  // A non-zero mean makes the two kinds differ.
  const auto xh = normal_f16(rng, rows * cols, 1.5f, 0.7f);
  const auto x = to_floats(xh);
  std::vector<uint16_t> gh;
  std::vector<float> g;
  if (with_gamma) {
    gh = normal_f16(rng, cols, 0.2f, 1.0f);
    g = to_floats(gh);
  }
  const NormResult r = run(xh, with_gamma ? &gh : nullptr, rows, cols, kind);
  for (int64_t row = 0; row < rows; ++row) {
    const auto u = reference_u(x, with_gamma ? &g : nullptr, row, cols, kind, 1e-5);
    double amax16 = f16_to_f32(f32_to_f16(1e-6f)), vsum = 0.0, vabs = 0.0;
    for (int64_t i = 0; i < cols; ++i) {
      const double v = f16_to_f32(r.normed[row * cols + i]);
      // rho and mu carry a few fp32 ulps; v is one fp16 rounding of u.
      ASSERT_LE(std::fabs(v - u[i]), ulp16(u[i]) * 0.5 + 1e-5 * std::fabs(u[i]) + 1e-7)
          << "col " << i;
      amax16 = std::max(amax16, std::fabs(v));
      vsum += v;
      vabs += std::fabs(v);
    }
    // The scale comes from the fp16-rounded v (exact given v).
    EXPECT_EQ(r.scale[row], f32_to_f16(static_cast<float>(amax16) * (1.0f / 127.0f)));
    for (int64_t i = 0; i < cols; ++i) {
      const double ideal = u[i] * 127.0 / amax16;
      ASSERT_LE(std::fabs(r.q[row * cols + i] - ideal), 0.5 + 1e-3) << "col " << i;
    }
    // The sum composes the documented steps exactly: thread t = i % blockDim keeps an fp16
    // running sum of its v_i, then the fp32 block reduction.
    const int64_t block = norm_quant_block_dim(cols);
    std::vector<uint16_t> thread_sum(block, 0);
    double bound = 0.0;
    for (int64_t i = 0; i < cols; ++i) {
      uint16_t& ts = thread_sum[i % block];
      ts = f16_add(ts, r.normed[row * cols + i]);
      bound += ulp16(f16_to_f32(ts)) * 0.5;
    }
    std::vector<float> partials(block);
    for (int64_t t = 0; t < block; ++t) partials[t] = f16_to_f32(thread_sum[t]);
    EXPECT_EQ(r.sum[row], f32_to_f16(block_reduce_sum(partials)));
    // And it is close to the exact sum of v: the fp16 roundings of the running sums, the fp32
    // tree (10 levels), one final fp16 rounding.
    bound += 10 * std::ldexp(1.0, -24) * vabs + ulp16(vsum) * 0.5 + ulp16(bound + vsum);
    EXPECT_LE(std::fabs(f16_to_f32(r.sum[row]) - vsum), bound);
  }
}

TEST(NormQuant, QServeLayerNormAgainstReference) {
  check_against_reference(NormKind::kQServeLayerNorm, false, 4096, 10);
  check_against_reference(NormKind::kQServeLayerNorm, true, 1000, 11);
  check_against_reference(NormKind::kQServeLayerNorm, false, 96, 12);
}

TEST(NormQuant, RmsNormAgainstReference) {
  check_against_reference(NormKind::kRmsNorm, false, 4096, 13);
  check_against_reference(NormKind::kRmsNorm, true, 2560, 14);
}

TEST(NormQuant, LayerNormSubtractsTheMean) {
  // A constant offset vanishes under QServe's norm but not under RMSNorm.
  std::mt19937 rng(15);
  const int64_t cols = 512;
  auto base = normal_f16(rng, cols);
  std::vector<uint16_t> shifted(cols);
  for (int64_t i = 0; i < cols; ++i) shifted[i] = f32_to_f16(f16_to_f32(base[i]) + 3.0f);
  const auto ln = run(shifted, nullptr, 1, cols, NormKind::kQServeLayerNorm);
  const auto rms = run(shifted, nullptr, 1, cols, NormKind::kRmsNorm);
  double mean_ln = 0.0, mean_rms = 0.0;
  for (int64_t i = 0; i < cols; ++i) {
    mean_ln += f16_to_f32(ln.normed[i]);
    mean_rms += f16_to_f32(rms.normed[i]);
  }
  EXPECT_NEAR(mean_ln / cols, 0.0, 1e-3);
  EXPECT_GT(mean_rms / cols, 0.8);
}

TEST(NormQuant, Fp32OverloadMatchesOnFp16Values) {
  std::mt19937 rng(16);
  const int64_t rows = 2, cols = 3000;
  const auto xh = normal_f16(rng, rows * cols);
  const auto gh = normal_f16(rng, cols, 0.1f, 1.0f);
  const auto x = to_floats(xh);
  const auto g = to_floats(gh);
  const NormResult a = run(xh, &gh, rows, cols, NormKind::kQServeLayerNorm);
  NormResult b;
  b.q.resize(x.size());
  b.scale.resize(rows);
  b.sum.resize(rows);
  norm_quantize_per_token(x.data(), g.data(), 1e-5f, rows, cols, NormKind::kQServeLayerNorm,
                          {b.q.data(), b.scale.data(), b.sum.data(), nullptr});
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.scale, b.scale);
  EXPECT_EQ(a.sum, b.sum);
}

TEST(NormQuant, AmaxFloorOnConstantRow) {
  // A constant row normalizes to zero under the LayerNorm: amax is the fp16(1e-6) floor.
  std::vector<uint16_t> x(64, f32_to_f16(2.0f));
  const auto r = run(x, nullptr, 1, 64, NormKind::kQServeLayerNorm);
  EXPECT_EQ(r.scale[0], f32_to_f16(f16_to_f32(f32_to_f16(1e-6f)) * (1.0f / 127.0f)));
  for (int8_t q : r.q) EXPECT_EQ(q, 0);
  EXPECT_EQ(r.sum[0], 0);
}

TEST(NormQuant, RejectsMissingOutputs) {
  std::vector<uint16_t> x(32, 0);
  EXPECT_THROW(norm_quantize_per_token(x.data(), nullptr, 1e-5f, 1, 32, NormKind::kRmsNorm, {}),
               Error);
}

}  // namespace
}  // namespace qserve::quant
