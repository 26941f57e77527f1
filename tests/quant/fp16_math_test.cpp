// The scalar building blocks: single-rounding fp16 arithmetic against an exact integer
// reference, and the cvt.rni.sat conversions.
#include "quant/fp16_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/error.h"
#include "quant/block_reduce.h"

namespace qserve::quant {
namespace {

__extension__ typedef __int128 i128;
__extension__ typedef unsigned __int128 u128;

// Every finite fp16 value is an integer multiple of 2^-24.
i128 f16_units(uint16_t h) {
  return static_cast<i128>(std::ldexp(static_cast<double>(f16_to_f32(h)), 24));
}

// Rounds the exact value m * 2^-48 to fp16 with round-half-to-even, independently of the code
// under test (integer arithmetic only, then an exact conversion).
uint16_t round_units48(i128 m) {
  const bool neg = m < 0;
  u128 mag = static_cast<u128>(neg ? -m : m);
  if (mag == 0) return neg ? 0x8000 : 0;
  int top = 127;
  while (((mag >> top) & 1) == 0) --top;
  const int exp = top - 48;  // value in [2^exp, 2^(exp+1))
  const int ulp_exp = std::max(exp - 10, -24);
  const int shift = ulp_exp + 48;  // >= 24
  u128 quot = mag >> shift;
  const u128 rem = mag & ((static_cast<u128>(1) << shift) - 1);
  const u128 half = static_cast<u128>(1) << (shift - 1);
  if (rem > half || (rem == half && (quot & 1) != 0)) ++quot;
  const double v = std::ldexp(static_cast<double>(quot), ulp_exp);
  const uint16_t bits = float_to_fp16(static_cast<float>(v));  // exact, or inf on overflow
  return static_cast<uint16_t>(bits | (neg ? 0x8000 : 0));
}

uint16_t random_finite_f16(std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(0, 0xffff);
  for (;;) {
    const uint16_t h = static_cast<uint16_t>(dist(rng));
    if ((h & 0x7c00) != 0x7c00) return h;
  }
}

bool same_f16(uint16_t a, uint16_t b) {
  // +0 and -0 both acceptable for an exact zero result (signs of exact zero sums differ by mode).
  if ((a & 0x7fff) == 0 && (b & 0x7fff) == 0) return true;
  return a == b;
}

TEST(Fp16Math, F64ToF16MatchesFloatConversion) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> dist;
  for (int i = 0; i < 200000; ++i) {
    const float f = bits_to_float(dist(rng));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f64_to_f16(static_cast<double>(f)), float_to_fp16(f)) << f;
  }
}

TEST(Fp16Math, F64ToF16RoundsOnceFromDouble) {
  // 1 + 2^-11 + 2^-40 is above the midpoint between 1 and 1 + 2^-10: it must round up. Going
  // through float first would round to exactly the midpoint and then to even (1.0).
  EXPECT_EQ(f64_to_f16(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)), 0x3c01);
  EXPECT_EQ(f64_to_f16(1.0 + std::ldexp(1.0, -11)), 0x3c00);  // exact tie -> even
  EXPECT_EQ(f64_to_f16(65519.99), 0x7bff);
  EXPECT_EQ(f64_to_f16(65520.0), 0x7c00);
  EXPECT_EQ(f64_to_f16(std::ldexp(1.0, -25)), 0x0000);  // tie between 0 and 2^-24 -> even
  EXPECT_EQ(f64_to_f16(std::ldexp(1.5, -25)), 0x0001);
  EXPECT_EQ(f64_to_f16(-std::ldexp(3.0, -24)), 0x8003);
}

TEST(Fp16Math, FmaAddMulRoundOnceExactly) {
  std::mt19937 rng(2);
  for (int i = 0; i < 300000; ++i) {
    const uint16_t a = random_finite_f16(rng), b = random_finite_f16(rng);
    uint16_t c = random_finite_f16(rng);
    if (i % 3 == 0) {
      // Force cancellation: c close to -(a*b) when that is representable.
      const float p = f16_to_f32(a) * f16_to_f32(b);
      if (std::fabs(p) < 60000.0f) c = f32_to_f16(-p);
    }
    const i128 ab = f16_units(a) * f16_units(b);  // units of 2^-48
    const i128 c48 = f16_units(c) * (static_cast<i128>(1) << 24);
    ASSERT_TRUE(same_f16(f16_fma(a, b, c), round_units48(ab + c48)))
        << std::hex << a << " " << b << " " << c;
    ASSERT_TRUE(same_f16(f16_mul(a, b), round_units48(ab))) << std::hex << a << " " << b;
    const i128 a48 = f16_units(a) * (static_cast<i128>(1) << 24);
    ASSERT_TRUE(same_f16(f16_add(a, c), round_units48(a48 + c48))) << std::hex << a << " " << c;
  }
}

TEST(Fp16Math, FmaNearAMidpoint) {
  // 3 * (1 + 2^-10) = 3 + 1.5 * 2^-9 is exactly halfway between two fp16 values; the smallest
  // fp16 addend decides the direction, which only a single rounding gets right.
  const uint16_t three = 0x4200, b = 0x3c01;
  EXPECT_EQ(f16_fma(three, b, 0x0000), 0x4202);  // tie -> even
  EXPECT_EQ(f16_fma(three, b, 0x0001), 0x4202);  // just above
  EXPECT_EQ(f16_fma(three, b, 0x8001), 0x4201);  // just below
  EXPECT_EQ(f16_mul(three, b), 0x4202);
}

TEST(Fp16Math, CvtRniSatS8) {
  EXPECT_EQ(cvt_rni_sat_s8(2.5f), 2);
  EXPECT_EQ(cvt_rni_sat_s8(3.5f), 4);
  EXPECT_EQ(cvt_rni_sat_s8(-2.5f), -2);
  EXPECT_EQ(cvt_rni_sat_s8(-63.5f), -64);
  EXPECT_EQ(cvt_rni_sat_s8(127.49f), 127);
  EXPECT_EQ(cvt_rni_sat_s8(127.5f), 127);
  EXPECT_EQ(cvt_rni_sat_s8(1000.0f), 127);
  EXPECT_EQ(cvt_rni_sat_s8(-128.4f), -128);
  EXPECT_EQ(cvt_rni_sat_s8(-1e30f), -128);
  EXPECT_EQ(cvt_rni_sat_s8(std::numeric_limits<float>::infinity()), 127);
  EXPECT_EQ(cvt_rni_sat_s8(-std::numeric_limits<float>::infinity()), -128);
  EXPECT_EQ(cvt_rni_sat_s8(std::numeric_limits<float>::quiet_NaN()), 0);
}

TEST(Fp16Math, CvtRniSatU8) {
  EXPECT_EQ(cvt_rni_sat_u8(0.5f), 0);
  EXPECT_EQ(cvt_rni_sat_u8(1.5f), 2);
  EXPECT_EQ(cvt_rni_sat_u8(-3.0f), 0);
  EXPECT_EQ(cvt_rni_sat_u8(15.5f), 16);
  EXPECT_EQ(cvt_rni_sat_u8(255.4f), 255);
  EXPECT_EQ(cvt_rni_sat_u8(300.0f), 255);
  EXPECT_EQ(cvt_rni_sat_u8(std::numeric_limits<float>::infinity()), 255);
  EXPECT_EQ(cvt_rni_sat_u8(-std::numeric_limits<float>::infinity()), 0);
  EXPECT_EQ(cvt_rni_sat_u8(std::numeric_limits<float>::quiet_NaN()), 0);
}

TEST(Fp16Math, WrapI8) {
  EXPECT_EQ(wrap_i8(128), -128);
  EXPECT_EQ(wrap_i8(-129), 127);
  EXPECT_EQ(wrap_i8(255), -1);
  EXPECT_EQ(wrap_i8(-113), -113);
}

TEST(BlockReduce, ButterflyOrderNotSequential) {
  // Lanes 8 and 24 meet first (mask 16), so 1 + 1 = 2 survives next to 2^24; a left-to-right
  // sum would lose both ones (2^24 + 1 rounds back to 2^24).
  std::vector<float> p(32, 0.0f);
  p[0] = 16777216.0f;
  p[8] = 1.0f;
  p[24] = 1.0f;
  EXPECT_EQ(block_reduce_sum(p), 16777218.0f);
  float seq = 0.0f;
  for (float v : p) seq += v;
  EXPECT_EQ(seq, 16777216.0f);
}

TEST(BlockReduce, WarpTotalsAreButterfliedAgain) {
  // Second stage, warp totals in lanes 0, 8 and 24: lanes 8 and 24 meet first (mask 16), so
  // the two ones combine before joining 2^24.
  std::vector<float> p(1024, 0.0f);
  p[0] = 16777216.0f;
  p[8 * 32] = 1.0f;
  p[24 * 32] = 1.0f;
  EXPECT_EQ(block_reduce_sum(p), 16777218.0f);
  // Totals in lanes 0, 2, 3: lane 0 meets lane 2 (mask 2) before lane 3's value arrives
  // (mask 1), so each one is rounded away separately.
  std::vector<float> q(128, 0.0f);
  q[0] = 16777216.0f;
  q[64] = 1.0f;
  q[96] = 1.0f;
  EXPECT_EQ(block_reduce_sum(q), 16777216.0f);
  // A partial last warp: missing lanes contribute 0.
  std::vector<float> r(40, 0.5f);
  EXPECT_EQ(block_reduce_sum(r), 20.0f);
  EXPECT_THROW(block_reduce_sum(std::vector<float>(1025, 0.0f)), Error);
}

TEST(BlockReduce, BlockDims) {
  EXPECT_EQ(norm_quant_block_dim(4096), 1024);
  EXPECT_EQ(norm_quant_block_dim(100), 128);
  EXPECT_EQ(norm_quant_block_dim(32), 32);
  EXPECT_EQ(quant_block_dim(100), 100);
  EXPECT_EQ(quant_block_dim(14336), 1024);
}

}  // namespace
}  // namespace qserve::quant
