// fp16 / bf16 conversions: exhaustive round trips, round-to-nearest-even at halfway points,
// subnormals, overflow, and agreement with the hardware F16C instructions where available.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/half.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define QSERVE_TEST_F16C 1
#endif

namespace qserve {
namespace {

bool fp16_is_nan(uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
}
bool bf16_is_nan(uint16_t b) {
  return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0;
}

TEST(Half, Fp16RoundTripsAll65536Values) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = fp16_to_float(h);
    const uint16_t back = float_to_fp16(f);
    if (fp16_is_nan(h)) {
      // NaNs stay NaN with their sign; the payload is canonicalised to the quiet NaN.
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(fp16_is_nan(back)) << std::hex << h;
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
      ASSERT_NE(back & 0x200u, 0u) << "quiet bit, " << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h << " -> " << f;
    }
  }
}

TEST(Half, Fp16KnownValues) {
  EXPECT_EQ(fp16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_float(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_float(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(fp16_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(fp16_to_float(0x8000)));

  EXPECT_EQ(float_to_fp16(0.0f), 0x0000);
  EXPECT_EQ(float_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  // Overflow: 65520 is halfway between 65504 and 65536 and rounds to even, i.e. to infinity.
  EXPECT_EQ(float_to_fp16(65519.996f), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);
  EXPECT_EQ(float_to_fp16(-1e10f), 0xfc00);
  EXPECT_EQ(float_to_fp16(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(float_to_fp16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(fp16_is_nan(float_to_fp16(std::numeric_limits<float>::quiet_NaN())));
  // Ties to even among normals: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(float_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(float_to_fp16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  // Subnormals and their ties: 2^-25 is halfway between 0 and 2^-24.
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(float_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(float_to_fp16(3 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(float_to_fp16(5 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(float_to_fp16(-std::ldexp(1.0f, -30)), 0x8000);
  // The largest subnormal rounds up into the smallest normal.
  EXPECT_EQ(float_to_fp16(std::ldexp(1023.5f, -24)), 0x0400);
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -14)), 0x0400);
}

// Every halfway point between neighbouring fp16 values (exactly representable in fp32) and the
// floats just around it round the way IEEE round-to-nearest-even says.
TEST(Half, Fp16HalfwayCasesRoundToEven) {
  for (uint32_t i = 0; i < 0x7bff; ++i) {
    const float lo = fp16_to_float(static_cast<uint16_t>(i));
    const float hi = fp16_to_float(static_cast<uint16_t>(i + 1));
    const float mid = lo + (hi - lo) / 2;  // exact: fp16 has 11 significant bits
    const uint16_t even = (i % 2 == 0) ? static_cast<uint16_t>(i) : static_cast<uint16_t>(i + 1);
    ASSERT_EQ(float_to_fp16(mid), even) << i;
    ASSERT_EQ(float_to_fp16(-mid), even | 0x8000u) << i;
    ASSERT_EQ(float_to_fp16(std::nextafter(mid, 0.0f)), i) << i;
    ASSERT_EQ(float_to_fp16(std::nextafter(mid, 1e9f)), i + 1) << i;
  }
}

TEST(Half, Bf16RoundTripsAll65536Values) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t b = static_cast<uint16_t>(i);
    const float f = bf16_to_float(b);
    const uint16_t back = float_to_bf16(f);
    if (bf16_is_nan(b)) {
      ASSERT_TRUE(std::isnan(f));
      ASSERT_TRUE(bf16_is_nan(back));
      ASSERT_EQ(back & 0x8000u, b & 0x8000u);
    } else {
      ASSERT_EQ(back, b) << std::hex << b;
    }
  }
}

// Independent reference for float -> bf16: pick the nearer neighbour in double arithmetic,
// ties to the even one.
uint16_t bf16_reference(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t lo = static_cast<uint16_t>(u >> 16);  // truncation, toward zero
  if ((u & 0xffffu) == 0) return lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);  // next magnitude (may be inf)
  const double a = std::fabs(static_cast<double>(f));
  const double dlo = a - std::fabs(static_cast<double>(bf16_to_float(lo)));
  // bf16 0x7f80 is +inf; treat it as 2^128 for the comparison, as IEEE rounding does.
  const double vhi = (hi & 0x7fffu) == 0x7f80u ? std::ldexp(1.0, 128)
                                               : std::fabs(static_cast<double>(bf16_to_float(hi)));
  const double dhi = vhi - a;
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1u) ? hi : lo;
}

TEST(Half, Bf16RoundingMatchesReference) {
  std::mt19937 rng(7);
  for (int i = 0; i < 2'000'000; ++i) {
    const uint32_t u = rng();
    const float f = bits_to_float(u);
    if (std::isnan(f)) {
      ASSERT_TRUE(bf16_is_nan(float_to_bf16(f)));
      continue;
    }
    ASSERT_EQ(float_to_bf16(f), bf16_reference(f)) << std::hex << u;
  }
  // Exact ties in both parities, and the overflow boundary.
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f808000u)), 0x3f80);  // tie, lo even
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f818000u)), 0x3f82);  // tie, lo odd
  EXPECT_EQ(float_to_bf16(bits_to_float(0x7f7f7fffu)), 0x7f7f);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x7f7f8000u)), 0x7f80);  // tie at max -> inf
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x00008000u)), 0x0000);  // subnormal tie -> even (0)
  EXPECT_EQ(float_to_bf16(bits_to_float(0x80018000u)), 0x8002);
}

#ifdef QSERVE_TEST_F16C
// clang 14 knows no "f16c" for __builtin_cpu_supports; ask CPUID directly (leaf 1, ECX bit 29).
// F16C is VEX-encoded, so the OS must also save AVX state, which "avx" checks.
bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & bit_F16C) != 0 && __builtin_cpu_supports("avx");
}

#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wc99-extensions"  // clang's _cvtss_sh is a compound literal
#endif
__attribute__((target("f16c"))) uint16_t hw_float_to_fp16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
__attribute__((target("f16c"))) float hw_fp16_to_float(uint16_t h) {
  return _cvtsh_ss(h);
}

void expect_matches_hw(float f) {
  const uint16_t ours = float_to_fp16(f);
  const uint16_t hw = hw_float_to_fp16(f);
  if (std::isnan(f)) {
    // The hardware keeps the payload; we canonicalise it. Both must be NaN of the same sign.
    ASSERT_TRUE(fp16_is_nan(ours) && fp16_is_nan(hw)) << std::hex << float_to_bits(f);
    ASSERT_EQ(ours & 0x8000u, hw & 0x8000u);
  } else {
    ASSERT_EQ(ours, hw) << std::hex << float_to_bits(f) << " (" << f << ")";
  }
}

TEST(Half, Fp16MatchesF16C) {
  if (!cpu_has_f16c()) GTEST_SKIP() << "CPU lacks F16C";
  // fp16 -> fp32 for every value; fp32 -> fp16 for every fp16 value, its neighbours in fp32, and
  // the halfway points between fp16 values.
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float ours = fp16_to_float(h);
    const float hw = hw_fp16_to_float(h);
    if (fp16_is_nan(h)) {
      ASSERT_TRUE(std::isnan(ours) && std::isnan(hw));
    } else {
      ASSERT_EQ(float_to_bits(ours), float_to_bits(hw)) << std::hex << h;
    }
    expect_matches_hw(ours);
    expect_matches_hw(std::nextafter(ours, std::numeric_limits<float>::infinity()));
    expect_matches_hw(std::nextafter(ours, -std::numeric_limits<float>::infinity()));
    if ((h & 0x7fffu) < 0x7bffu) {
      const float next = fp16_to_float(static_cast<uint16_t>(h + 1));
      expect_matches_hw(ours + (next - ours) / 2);
    }
  }
  // A few million random bit patterns: every exponent, including NaN payloads and denormals.
  std::mt19937 rng(2024);
  for (int i = 0; i < 4'000'000; ++i) expect_matches_hw(bits_to_float(rng()));
  // And random floats concentrated in fp16's range, where rounding decisions happen.
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);
  std::uniform_real_distribution<float> small(-1e-4f, 1e-4f);
  for (int i = 0; i < 1'000'000; ++i) {
    expect_matches_hw(dist(rng));
    expect_matches_hw(small(rng));
  }
}
#endif

}  // namespace
}  // namespace qserve
