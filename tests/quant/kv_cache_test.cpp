// KV4/KV8 quantization and QServe's page layout (qserve-compat.md §6).
#include "quant/kv_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "quant/fp16_math.h"
#include "quant_test_util.h"

namespace qserve::quant {
namespace {

using test::normal_f16;
using test::ulp16;

TEST(KvLayout, Llama3PageSizes) {
  const auto kv4 = make_kv_layout(KvBits::k4, 8, 128);
  const auto kv8 = make_kv_layout(KvBits::k8, 8, 128);
  EXPECT_EQ(kv4.page_bytes(), 34816);
  EXPECT_EQ(kv8.page_bytes(), 67584);
  EXPECT_EQ(kv4.scales_offset(), 32768);
  EXPECT_EQ(kv4.zeros_offset(), 32768 + 1024);
  EXPECT_EQ(kv8.zeros_offset(), 65536 + 1024);
  EXPECT_EQ(kv4.data_offset(3, 5), (3 * 64 + 5) * 64);
  EXPECT_THROW(make_kv_layout(KvBits::k4, 8, 127), Error);
  EXPECT_THROW(make_kv_layout(KvBits::k8, 0, 128), Error);
}

TEST(KvQuant, Kv4KnownAnswerAndNibbleOrder) {
  // mx = 15, mn = 0: s = fp16(15 * fl32(1/15)) = 1, z = -0, codes = the values.
  const std::vector<uint16_t> x = {f32_to_f16(0.0f), f32_to_f16(1.0f), f32_to_f16(14.0f),
                                   f32_to_f16(15.0f)};
  uint8_t codes[2];
  const KvQuantParams p = kv_quantize(KvBits::k4, x.data(), 4, codes);
  EXPECT_EQ(p.scale, 0x3c00);
  EXPECT_EQ(p.zero & 0x7fff, 0);
  EXPECT_EQ(codes[0], 0x10);  // channel 0 low nibble, channel 1 high nibble
  EXPECT_EQ(codes[1], 0xfe);
  uint16_t back[4];
  kv_dequantize(KvBits::k4, codes, 4, p, back);
  for (int c = 0; c < 4; ++c) EXPECT_EQ(f16_to_f32(back[c]), f16_to_f32(x[c]));
}

TEST(KvQuant, Kv8KnownAnswer) {
  // mn = -1, mx = 1: s = fp16(2/255), z = fp16(255 * 1/2) = 127.5 (a real, not an integer).
  const std::vector<uint16_t> x = {f32_to_f16(-1.0f), f32_to_f16(0.0f), f32_to_f16(1.0f)};
  uint8_t codes[3];
  const KvQuantParams p = kv_quantize(KvBits::k8, x.data(), 3, codes);
  EXPECT_EQ(p.scale, f32_to_f16(2.0f * (1.0f / 255.0f)));
  EXPECT_EQ(f16_to_f32(p.zero), 127.5f);
  const float inv = 1.0f / f16_to_f32(p.scale);
  EXPECT_EQ(codes[0], cvt_rni_sat_u8(std::fma(-1.0f, inv, 127.5f)));
  EXPECT_EQ(codes[1], 128);  // 127.5 rounds to even
  EXPECT_EQ(codes[2], 255);
}

TEST(KvQuant, Kv4CodeThatRoundsTo16WrapsToZero) {
  // Range 16 * 2^-24: s = fp16(16/15 * 2^-24) = 2^-24 (subnormal spacing), so the maximum maps
  // to code 16. QServe keeps q & 0xF: 0, not 15.
  const std::vector<uint16_t> x = {0x0000, 0x0010};  // 0 and 16 * 2^-24
  uint8_t c4[1];
  const KvQuantParams p = kv_quantize(KvBits::k4, x.data(), 2, c4);
  EXPECT_EQ(p.scale, 0x0001);
  const float inv = 1.0f / f16_to_f32(p.scale);
  EXPECT_EQ(cvt_rni_sat_u8(std::fma(f16_to_f32(x[1]), inv, f16_to_f32(p.zero))), 16);
  EXPECT_EQ(c4[0], 0x00);
}

TEST(KvQuant, ConstantVectorIsDeterministicGarbage) {
  const std::vector<uint16_t> x(8, f32_to_f16(0.5f));
  for (KvBits bits : {KvBits::k4, KvBits::k8}) {
    uint8_t codes[8] = {};
    const KvQuantParams p = kv_quantize(bits, x.data(), 8, codes);
    EXPECT_EQ(p.scale, 0);
    for (int i = 0; i < (bits == KvBits::k4 ? 4 : 8); ++i) EXPECT_EQ(codes[i], 0);
    uint16_t back[8];
    kv_dequantize(bits, codes, 8, p, back);
    for (uint16_t b : back) EXPECT_TRUE(std::isnan(f16_to_f32(b)));
  }
}

void check_round_trip(KvBits bits, float stddev, float mean, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t h = 4, d = 128;
  const auto layout = make_kv_layout(bits, h, d);
  std::vector<uint8_t> page(layout.page_bytes(), 0);
  std::vector<std::vector<uint16_t>> tokens;
  for (int64_t slot = 0; slot < kKvPageTokens; ++slot) {
    tokens.push_back(normal_f16(rng, h * d, stddev, mean));
    kv_page_write(layout, page.data(), slot, tokens.back().data());
  }
  std::vector<uint16_t> out(d);
  double worst = 0.0;
  for (int64_t slot = 0; slot < kKvPageTokens; ++slot) {
    for (int64_t head = 0; head < h; ++head) {
      kv_page_read(layout, page.data(), slot, head, out.data());
      const KvQuantParams p = kv_page_params(layout, page.data(), slot, head);
      const double s = f16_to_f32(p.scale);
      const double zterm = std::fabs(double{f16_to_f32(p.scale)} * f16_to_f32(p.zero));
      for (int64_t c = 0; c < d; ++c) {
        const double x = f16_to_f32(tokens[slot][head * d + c]);
        const double xh = f16_to_f32(out[c]);
        // Half a step, the fp16 roundings of Z (KV4) and of the result, fp32 slack.
        const double tol = s / 2 + ulp16(zterm) / 2 + ulp16(xh) / 2 +
                           std::ldexp(1.0, -20) * (std::fabs(x) + zterm + s);
        ASSERT_LE(std::fabs(xh - x), tol) << "slot " << slot << " head " << head << " c " << c;
        worst = std::max(worst, std::fabs(xh - x) / s);
      }
    }
  }
  EXPECT_GT(worst, 0.3);  // the bound is not vacuous: errors do reach a good part of s/2
}

TEST(KvPage, RoundTripWithinHalfAStep) {
  check_round_trip(KvBits::k8, 1.0f, 0.0f, 40);
  check_round_trip(KvBits::k4, 1.0f, 0.0f, 41);
  check_round_trip(KvBits::k8, 0.05f, 3.0f, 42);  // offset data: large zero point
  check_round_trip(KvBits::k4, 30.0f, -10.0f, 43);
}

TEST(KvPage, WritesOnlyItsSlotAndParams) {
  const auto layout = make_kv_layout(KvBits::k4, 2, 16);
  std::vector<uint8_t> page(layout.page_bytes(), 0xab);
  std::mt19937 rng(44);
  const auto x = normal_f16(rng, 2 * 16);
  kv_page_write(layout, page.data(), 5, x.data());
  std::vector<bool> expected(page.size(), false);
  for (int64_t head = 0; head < 2; ++head) {
    for (int64_t b = 0; b < 8; ++b) expected[layout.data_offset(head, 5) + b] = true;
    const int64_t idx = head * 64 + 5;
    for (int64_t b = 0; b < 2; ++b) {
      expected[layout.scales_offset() + 2 * idx + b] = true;
      expected[layout.zeros_offset() + 2 * idx + b] = true;
    }
  }
  for (size_t i = 0; i < page.size(); ++i) {
    if (!expected[i]) {
      ASSERT_EQ(page[i], 0xab) << "byte " << i << " was touched";
    }
  }
  // The stored params are the ones kv_quantize returns, little-endian fp16.
  uint8_t codes[8];
  const KvQuantParams p = kv_quantize(KvBits::k4, x.data() + 16, 16, codes);
  const int64_t idx = 64 + 5;
  EXPECT_EQ(page[layout.scales_offset() + 2 * idx], p.scale & 0xff);
  EXPECT_EQ(page[layout.scales_offset() + 2 * idx + 1], p.scale >> 8);
  EXPECT_EQ(page[layout.zeros_offset() + 2 * idx], p.zero & 0xff);
  for (int b = 0; b < 8; ++b) EXPECT_EQ(page[layout.data_offset(1, 5) + b], codes[b]);
}

TEST(KvPage, AppendUsesThePageTable) {
  KvPagePool pool(make_kv_layout(KvBits::k8, 2, 8), 4);
  std::mt19937 rng(45);
  const auto k = normal_f16(rng, 16), v = normal_f16(rng, 16);
  const std::vector<int64_t> table = {3, 1};
  kv_append(pool, table, 70, k.data(), v.data());  // page table[1] = 1, slot 6
  std::vector<uint16_t> out(8);
  kv_page_read(pool.layout, pool.k_page(1), 6, 1, out.data());
  for (int c = 0; c < 8; ++c) EXPECT_NEAR(f16_to_f32(out[c]), f16_to_f32(k[8 + c]), 0.05);
  kv_page_read(pool.layout, pool.v_page(1), 6, 0, out.data());
  for (int c = 0; c < 8; ++c) EXPECT_NEAR(f16_to_f32(out[c]), f16_to_f32(v[c]), 0.05);
  EXPECT_THROW(kv_append(pool, table, 128, k.data(), v.data()), Error);  // not covered
  const std::vector<int64_t> bad = {9};
  EXPECT_THROW(kv_append(pool, bad, 0, k.data(), v.data()), Error);  // page outside the pool
  EXPECT_THROW(kv_page_read(pool.layout, pool.k_page(0), 64, 0, out.data()), Error);
}

TEST(KvPage, GatherReadsEveryPositionThroughThePageTable) {
  const auto layout = make_kv_layout(KvBits::k4, 2, 16);
  KvPagePool pool(layout, 3);
  std::mt19937 rng(46);
  const std::vector<int64_t> table = {2, 0};
  const int64_t n = 100;
  for (int64_t pos = 0; pos < n; ++pos) {
    const auto k = normal_f16(rng, 32), v = normal_f16(rng, 32);
    kv_append(pool, table, pos, k.data(), v.data());
  }
  std::vector<float> k(n * 32), v(n * 32);
  kv_gather(pool.view(), table, n, k.data(), v.data());
  std::vector<uint16_t> row(16);
  for (int64_t pos = 0; pos < n; ++pos) {
    for (int64_t h = 0; h < 2; ++h) {
      kv_page_read(layout, pool.v_page(table[pos / 64]), pos % 64, h, row.data());
      for (int64_t c = 0; c < 16; ++c) ASSERT_EQ(v[(pos * 2 + h) * 16 + c], f16_to_f32(row[c]));
      kv_page_read(layout, pool.k_page(table[pos / 64]), pos % 64, h, row.data());
      for (int64_t c = 0; c < 16; ++c) ASSERT_EQ(k[(pos * 2 + h) * 16 + c], f16_to_f32(row[c]));
    }
  }
  EXPECT_THROW(kv_gather(pool.view(), table, 129, k.data(), v.data()), Error);
}

}  // namespace
}  // namespace qserve::quant
