// RTN quantizers: quantize -> dequantize error bounds and consistency with the stored formats.
#include "quant/rtn_quantizers.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "quant/fp16_math.h"
#include "quant_test_util.h"

namespace qserve::quant {
namespace {

using test::normal_floats;
using test::ulp16;

std::vector<float> test_weight(std::mt19937& rng, int64_t n, int64_t k) {
  // Rows with different scales and offsets, plus a few outliers.
  std::vector<float> w(n * k);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t r = 0; r < n; ++r) {
    const float scale = 0.01f * (1 + r % 7), offset = 0.003f * (r % 5 - 2);
    for (int64_t i = 0; i < k; ++i) w[r * k + i] = offset + scale * dist(rng);
    w[r * k + (r * 37) % k] *= 8.0f;
  }
  return w;
}

void check_per_channel(ZeroPointMode mode, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t n = 48, k = 200;
  const auto w = test_weight(rng, n, k);
  const auto q = quantize_w4_per_channel(w.data(), n, k, mode);
  validate(q);
  const auto deq = dequantize(q);
  for (int64_t r = 0; r < n; ++r) {
    const std::span<const float> row(w.data() + r * k, k);
    const ChannelGrid4 g = channel_grid4(row, mode);
    EXPECT_EQ(g.scale, q.s1_scales[r]);
    EXPECT_EQ(g.szero, q.s1_szeros[r]);
    const double s = f16_to_f32(q.s1_scales[r]);
    const double sz = f16_to_f32(q.s1_szeros[r]);
    double lo = row[0], hi = row[0];
    for (float x : row) lo = std::min<double>(lo, x), hi = std::max<double>(hi, x);
    // Half a step, plus what fp16 rounding of s (times up to 15 steps) and of the zero shift.
    // The integer zero of the pre-scale mode moves the grid by up to half a step at the ends.
    const double tol = s / 2 + 8 * ulp16(s) + ulp16(sz) +
                       (mode == ZeroPointMode::kIntegerPreScale ? s / 2 : 0.0) +
                       1e-6 * (std::fabs(lo) + std::fabs(hi));
    for (int64_t i = 0; i < k; ++i) {
      ASSERT_LE(q.q[r * k + i], 15);
      ASSERT_EQ(deq[r * k + i], g.dequant(q.q[r * k + i]));
      ASSERT_LE(std::fabs(deq[r * k + i] - row[i]), tol) << "row " << r << " col " << i;
    }
  }
}

TEST(RtnPerChannel, PostScaleWithinHalfAStep) {
  check_per_channel(ZeroPointMode::kPostScale, 70);
}
TEST(RtnPerChannel, IntegerZeroWithinBound) {
  check_per_channel(ZeroPointMode::kIntegerPreScale, 71);
}

TEST(RtnPerChannel, PostScaleKeepsTheZeroUnrounded) {
  const std::vector<float> row = {-0.37f, 0.1f, 0.5f, 0.9f};
  const ChannelGrid4 g = channel_grid4(row, ZeroPointMode::kPostScale);
  EXPECT_EQ(g.scale, f32_to_f16((0.9f - -0.37f) / 15.0f));
  EXPECT_EQ(g.szero, f32_to_f16(0.37f));
  EXPECT_EQ(g.code(-0.37f), 0);
  EXPECT_EQ(g.code(0.9f), 15);
  const ChannelGrid4 zero_row =
      channel_grid4(std::vector<float>(8, 0.0f), ZeroPointMode::kPostScale);
  EXPECT_EQ(zero_row.scale, 0x3c00);  // a zero scale becomes 1
}

void check_g128(ZeroPointMode mode, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t n = 40, k = 384, groups = 3;
  const auto w = test_weight(rng, n, k);
  const auto q = quantize_w4_g128(w.data(), n, k, mode);
  validate(q);
  const auto deq = dequantize(q);
  std::vector<int8_t> w8(k);
  for (int64_t r = 0; r < n; ++r) {
    const std::span<const float> row(w.data() + r * k, k);
    const uint16_t s1h = g128_level1_scale(row);
    ASSERT_EQ(s1h, q.s1_scales[r]);
    const double s1 = f16_to_f32(s1h);
    g128_int8_row(q, r, w8.data());
    for (int64_t g = 0; g < groups; ++g) {
      std::vector<float> x(128);
      for (int64_t i = 0; i < 128; ++i) x[i] = g128_level1_value(row[g * 128 + i], s1h);
      const GroupGrid4 grid = group_grid4(x, mode);
      ASSERT_EQ(grid.s2, q.s2_scales[r * groups + g]);
      ASSERT_GE(grid.s2, 1);
      ASSERT_LE(grid.s2, 16);
      ASSERT_EQ(grid.stored_zero(), q.s2_zeros[r * groups + g]);
      const double lo_rep = grid.w8(0), hi_rep = grid.w8(15);
      for (int64_t i = 0; i < 128; ++i) {
        const int64_t idx = r * k + g * 128 + i;
        // The kernel's byte-wise dequantization reproduces the quantizer's int8 value.
        ASSERT_EQ(w8[g * 128 + i], grid.w8(q.q[idx]));
        ASSERT_EQ(deq[idx], static_cast<float>(s1 * w8[g * 128 + i]));
        // Half a level-2 step, plus the distance to the representable range where the integer
        // s2 does not cover [vmin, vmax], plus level-1 clamping at +-119.
        const double xi = row[g * 128 + i] / s1;
        const double outside = std::max({0.0, lo_rep - x[i], x[i] - hi_rep});
        const double clamp = std::fabs(xi - x[i]);
        const double extra = mode == ZeroPointMode::kIntegerPreScale ? grid.s2 / 2.0 : 0.0;
        const double tol =
            s1 * (grid.s2 / 2.0 + outside + clamp + extra) + 1e-6 * std::fabs(row[g * 128 + i]);
        ASSERT_LE(std::fabs(deq[idx] - row[g * 128 + i]), tol) << r << " " << g << " " << i;
      }
    }
  }
}

TEST(RtnG128, PostScaleProgressive) {
  check_g128(ZeroPointMode::kPostScale, 72);
}
TEST(RtnG128, IntegerZeroProgressive) {
  check_g128(ZeroPointMode::kIntegerPreScale, 73);
}

TEST(RtnG128, ProtectiveRangeKeepsInt8) {
  // Worst case for the level-2 grid: x spans [-P, P]. With P = 119 it stays in int8; with
  // P = 127, s2 = 17 and the top code dequantizes to 15 * 17 - 127 = 128: rejected.
  std::vector<float> w(2 * 128, 0.0f);
  for (int64_t r = 0; r < 2; ++r) {
    w[r * 128 + 0] = -1.0f;
    w[r * 128 + 1] = 1.0f;
  }
  const auto ok = quantize_w4_g128(w.data(), 2, 128);
  EXPECT_EQ(ok.s2_scales[0], 16);  // round(238 / 15)
  const auto deq = dequantize(ok);
  // z~ = 119: -119 is exact, +119 lands on 15 * 16 - 119 = 121 (within half a step of 16).
  const float s1 = f16_to_f32(ok.s1_scales[0]);
  EXPECT_EQ(deq[0], s1 * -119.0f);
  EXPECT_EQ(deq[1], s1 * 121.0f);
  EXPECT_THROW(quantize_w4_g128(w.data(), 2, 128, ZeroPointMode::kPostScale, 127.0f), Error);
  EXPECT_THROW(quantize_w4_g128(w.data(), 2, 100), Error);  // k not a multiple of 128
}

TEST(RtnG128, StoredZeroWrapsToInt8) {
  // A group entirely at -P: z~ = 119 fits, but a pre-scale zero * s2 can reach 128 -> -128.
  GroupGrid4 g;
  g.mode = ZeroPointMode::kPostScale;
  g.s2 = 16;
  g.zero = -128;  // z~ = -128 -> stored 128 wraps to -128
  EXPECT_EQ(g.stored_zero(), -128);
  EXPECT_EQ(g.w8(0), 128);  // out of range: the quantizer's check would reject this grid
  g.mode = ZeroPointMode::kIntegerPreScale;
  g.zero = 8;  // -8 * 16 = -128
  EXPECT_EQ(g.stored_zero(), -128);
  EXPECT_EQ(g.w8(15), 112);
}

TEST(RtnW8, WithinHalfAStep) {
  std::mt19937 rng(74);
  const int64_t n = 32, k = 300;
  const auto w = test_weight(rng, n, k);
  const auto q = quantize_w8_per_channel(w.data(), n, k);
  validate(q);
  const auto deq = dequantize(q);
  for (int64_t r = 0; r < n; ++r) {
    const double s = f16_to_f32(q.dequant_scale[r]);
    for (int64_t i = 0; i < k; ++i) {
      ASSERT_GE(q.w[r * k + i], -127);
      ASSERT_LE(std::fabs(deq[r * k + i] - w[r * k + i]), s / 2 + 1e-6 * std::fabs(w[r * k + i]));
    }
  }
}

TEST(RtnQuantizers, RejectNonFiniteWeights) {
  std::vector<float> w(128, 1.0f);
  w[3] = NAN;
  EXPECT_THROW(quantize_w4_per_channel(w.data(), 1, 128), Error);
  EXPECT_THROW(quantize_w4_g128(w.data(), 1, 128), Error);
  EXPECT_THROW(quantize_w8_per_channel(w.data(), 1, 128), Error);
}

}  // namespace
}  // namespace qserve::quant
