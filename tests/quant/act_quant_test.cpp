// Per-token int8 activation quantization (qserve-compat.md §5.2), SiLU·mul + quant (§5.3).
#include "quant/act_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "quant/fp16_math.h"
#include "quant/silu_mul_quant.h"
#include "quant_test_util.h"

namespace qserve::quant {
namespace {

using test::normal_f16;
using test::to_floats;
using test::ulp16;

TEST(ActQuant, KnownAnswer) {
  const std::vector<float> x = {1.0f, -0.5f, 0.25f, 0.126f, 0.0f, -1.0f};
  std::vector<int8_t> q(x.size());
  uint16_t scale = 0, sum = 0;
  quantize_per_token(x.data(), 1, static_cast<int64_t>(x.size()), q.data(), &scale, &sum);
  // r = 127 * (1/1) = 127: 127, -63.5 -> -64 (ties to even), 31.75 -> 32, 16.002 -> 16.
  EXPECT_EQ(q, (std::vector<int8_t>{127, -64, 32, 16, 0, -127}));
  EXPECT_EQ(scale, f32_to_f16(1.0f * 0.0078740157f));
  EXPECT_EQ(scale, 0x2008);  // fp16(1/127)
  // Sum of the unquantized values, 1 - 0.5 + 0.25 + 0.126 + 0 - 1.
  EXPECT_EQ(sum, f64_to_f16(-0.25 + static_cast<double>(0.126f)));
}

TEST(ActQuant, ZeroRowGivesZeroScaleAndCodes) {
  std::vector<uint16_t> x(64, 0);
  std::vector<int8_t> q(64, 5);
  uint16_t scale = 1, sum = 1;
  quantize_per_token(x.data(), 1, 64, q.data(), &scale, &sum);
  EXPECT_EQ(scale, 0);
  EXPECT_EQ(sum, 0);
  for (int8_t v : q) EXPECT_EQ(v, 0);
}

TEST(ActQuant, CodesScaleAndSumAgainstDoubleReference) {
  std::mt19937 rng(3);
  for (int64_t cols : {7, 128, 1000, 4096, 5120}) {
    const int64_t rows = 5;
    const auto xh = normal_f16(rng, static_cast<size_t>(rows * cols), 2.0f, 0.3f);
    const auto x = to_floats(xh);
    std::vector<int8_t> q(xh.size());
    std::vector<uint16_t> scale(rows), sum(rows);
    quantize_per_token(xh.data(), rows, cols, q.data(), scale.data(), sum.data());
    for (int64_t r = 0; r < rows; ++r) {
      double amax = 0.0, dsum = 0.0, asum = 0.0;
      for (int64_t i = 0; i < cols; ++i) {
        amax = std::max(amax, std::fabs(static_cast<double>(x[r * cols + i])));
        dsum += x[r * cols + i];
        asum += std::fabs(x[r * cols + i]);
      }
      EXPECT_EQ(scale[r], f64_to_f16(static_cast<float>(amax) * (1.0f / 127.0f)));
      for (int64_t i = 0; i < cols; ++i) {
        const double ideal = x[r * cols + i] * 127.0 / amax;
        ASSERT_LE(std::fabs(q[r * cols + i] - ideal), 0.5 + 1e-4) << r << " " << i;
      }
      // fp32 block sum: error <= cols * 2^-24 * sum|x|, then one fp16 rounding.
      const double tol = ulp16(dsum) / 2 + cols * std::ldexp(1.0, -24) * asum;
      EXPECT_LE(std::fabs(f16_to_f32(sum[r]) - dsum), tol) << cols;
    }
  }
}

TEST(ActQuant, Fp32AndFp16InputsAgreeOnFp16Values) {
  std::mt19937 rng(4);
  const int64_t rows = 3, cols = 2048;
  const auto xh = normal_f16(rng, rows * cols);
  const auto x = to_floats(xh);
  std::vector<int8_t> q1(xh.size()), q2(xh.size());
  std::vector<uint16_t> s1(rows), s2(rows), m1(rows), m2(rows);
  quantize_per_token(xh.data(), rows, cols, q1.data(), s1.data(), m1.data());
  quantize_per_token(x.data(), rows, cols, q2.data(), s2.data(), m2.data());
  EXPECT_EQ(q1, q2);
  EXPECT_EQ(s1, s2);
  EXPECT_EQ(m1, m2);
}

TEST(ActQuant, SumIsOptional) {
  std::mt19937 rng(5);
  const auto xh = normal_f16(rng, 256);
  std::vector<int8_t> q1(256), q2(256);
  std::vector<uint16_t> s1(2), s2(2), sum(2);
  quantize_per_token(xh.data(), 2, 128, q1.data(), s1.data(), nullptr);
  quantize_per_token(xh.data(), 2, 128, q2.data(), s2.data(), sum.data());
  EXPECT_EQ(s1, s2);
  EXPECT_EQ(q1, q2);
}

TEST(SiluMulQuant, SiluMulWithinOneUlpAndQuantizedLikeStandalone) {
  std::mt19937 rng(6);
  const int64_t rows = 4, inter = 640;
  const auto gu = normal_f16(rng, rows * 2 * inter, 3.0f);
  std::vector<uint16_t> out(rows * inter), out2(rows * inter);
  std::vector<int8_t> q(rows * inter), q2(rows * inter);
  std::vector<uint16_t> scale(rows), sum(rows), scale2(rows), sum2(rows);
  silu_mul_quantize_per_token(gu.data(), rows, inter, q.data(), scale.data(), sum.data(),
                              out.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < inter; ++i) {
      const double g = f16_to_f32(gu[r * 2 * inter + i]);
      const double u = f16_to_f32(gu[r * 2 * inter + inter + i]);
      const double silu16 = f16_to_f32(f64_to_f16(g / (1.0 + std::exp(-g))));
      const double ref = silu16 * u;
      ASSERT_LE(std::fabs(f16_to_f32(out[r * inter + i]) - ref), ulp16(ref) * 0.5 + 1e-12);
    }
  }
  silu_mul(gu.data(), rows, inter, out2.data());
  EXPECT_EQ(out, out2);
  quantize_per_token(out.data(), rows, inter, q2.data(), scale2.data(), sum2.data());
  EXPECT_EQ(q, q2);
  EXPECT_EQ(scale, scale2);
  EXPECT_EQ(sum, sum2);
  // The fp32 overload on the same (fp16-exact) values gives the same result.
  const auto guf = to_floats(gu);
  std::vector<int8_t> q3(rows * inter);
  std::vector<uint16_t> scale3(rows);
  silu_mul_quantize_per_token(guf.data(), rows, inter, q3.data(), scale3.data(), nullptr, nullptr);
  EXPECT_EQ(q, q3);
  EXPECT_EQ(scale, scale3);
}

}  // namespace
}  // namespace qserve::quant
