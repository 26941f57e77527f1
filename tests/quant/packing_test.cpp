// QServe's 4-bit weight layout and g128 parameter permutation (qserve-compat.md §3).
#include "quant/packing.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/error.h"
#include "quant/qserve_format.h"
#include "quant/rtn_quantizers.h"
#include "quant_test_util.h"

namespace qserve::quant {
namespace {

using test::random_codes;

TEST(PackW4, HandComputedLocations) {
  const int64_t k = 64;
  auto at = [&](int64_t n, int64_t kk) { return w4_location(n, kk, k); };
  EXPECT_EQ(at(0, 0).byte, 0);
  EXPECT_FALSE(at(0, 0).high);
  EXPECT_EQ(at(16, 0).byte, 0);  // channel n + 16 shares the byte, high nibble
  EXPECT_TRUE(at(16, 0).high);
  EXPECT_EQ(at(8, 0).byte, 4);        // c = 1
  EXPECT_EQ(at(1, 0).byte, 64);       // d = 1
  EXPECT_EQ(at(0, 1).byte, 1);        // h = 1
  EXPECT_EQ(at(0, 4).byte, 16);       // g = 1
  EXPECT_EQ(at(0, 16).byte, 8);       // f = 1
  EXPECT_EQ(at(0, 32).byte, 512);     // e = 1: next 32x32 tile along k
  EXPECT_EQ(at(32, 0).byte, 16 * k);  // a = 1: next block of 32 output channels
  EXPECT_EQ(at(31, 63).byte, 512 + 64 * 7 + 16 * 3 + 8 + 4 + 3);
  EXPECT_TRUE(at(31, 63).high);
}

// QServe's converter formulation, implemented independently: reshape Q to
// (N/32, 2[b], 2[c], 8[d], K/32, 2[f], 4[g], 4[h]), permute to (a, e, d, g, f, c, h, b) and
// combine the b pair into one byte, (Q_b1 << 4) | Q_b0.
std::vector<uint8_t> converter_pack(const std::vector<uint8_t>& q, int64_t n, int64_t k) {
  std::vector<uint8_t> out;
  for (int64_t a = 0; a < n / 32; ++a)
    for (int64_t e = 0; e < k / 32; ++e)
      for (int64_t d = 0; d < 8; ++d)
        for (int64_t g = 0; g < 4; ++g)
          for (int64_t f = 0; f < 2; ++f)
            for (int64_t c = 0; c < 2; ++c)
              for (int64_t h = 0; h < 4; ++h) {
                const int64_t kk = 32 * e + 16 * f + 4 * g + h;
                const uint8_t lo = q[(32 * a + 8 * c + d) * k + kk];
                const uint8_t hi = q[(32 * a + 16 + 8 * c + d) * k + kk];
                out.push_back(static_cast<uint8_t>((hi << 4) | lo));
              }
  return out;
}

TEST(PackW4, MatchesTheConverterReshapePermute) {
  std::mt19937 rng(60);
  for (auto [n, k] : {std::pair<int64_t, int64_t>{32, 32}, {96, 128}, {64, 160}}) {
    const auto q = random_codes(rng, n * k);
    EXPECT_EQ(pack_w4(q, n, k), converter_pack(q, n, k)) << n << "x" << k;
  }
}

TEST(PackW4, KernelLaneViewOfATile) {
  // §3.2: lane t = 4d + g reads 16 bytes at tile offset 16t; word x (bytes 0-3) holds k = 4g+i
  // of channel d (low nibble) and 16 + d (high); y: channels 8 + d / 24 + d; z, w: the same
  // channels for k = 16 + 4g + i.
  std::mt19937 rng(61);
  const int64_t n = 32, k = 32;
  const auto q = random_codes(rng, n * k);
  const auto p = pack_w4(q, n, k);
  for (int64_t d = 0; d < 8; ++d) {
    for (int64_t g = 0; g < 4; ++g) {
      const uint8_t* lane = p.data() + 16 * (4 * d + g);
      for (int64_t word = 0; word < 4; ++word) {
        const int64_t f = word / 2, c = word % 2;
        for (int64_t i = 0; i < 4; ++i) {
          const uint8_t byte = lane[4 * word + i];
          const int64_t kk = 16 * f + 4 * g + i;
          ASSERT_EQ(byte & 0x0f, q[(8 * c + d) * k + kk]);
          ASSERT_EQ(byte >> 4, q[(16 + 8 * c + d) * k + kk]);
        }
      }
    }
  }
}

TEST(PackW4, RoundTripsRandomShapes) {
  std::mt19937 rng(62);
  for (int64_t n : {32, 64, 96, 256}) {
    for (int64_t k : {32, 64, 128, 160, 512}) {
      const auto q = random_codes(rng, n * k);
      const auto packed = pack_w4(q, n, k);
      ASSERT_EQ(static_cast<int64_t>(packed.size()), n * k / 2);
      ASSERT_EQ(unpack_w4(packed, n, k), q) << n << "x" << k;
      // And in the other direction: any byte string is a valid packing.
      const auto bytes = random_codes(rng, n * k / 2, 255);
      ASSERT_EQ(pack_w4(unpack_w4(bytes, n, k), n, k), bytes);
    }
  }
}

TEST(PackW4, ConcatenationAlongNIsSafe) {
  std::mt19937 rng(63);
  const int64_t k = 128;
  const auto a = random_codes(rng, 64 * k), b = random_codes(rng, 32 * k);
  std::vector<uint8_t> ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  auto pa = pack_w4(a, 64, k), pb = pack_w4(b, 32, k);
  pa.insert(pa.end(), pb.begin(), pb.end());
  EXPECT_EQ(pack_w4(ab, 96, k), pa);
}

TEST(PackW4, RejectsBadShapesAndCodes) {
  std::vector<uint8_t> q(48 * 32, 1);
  EXPECT_THROW(pack_w4(q, 48, 32), Error);
  EXPECT_THROW(pack_w4(q, 32, 48), Error);
  EXPECT_THROW(pack_w4(q, 32, 32), Error);  // size mismatch
  EXPECT_THROW(unpack_w4(q, 48, 64), Error);
  EXPECT_THROW(unpack_w4(std::vector<uint8_t>(100), 32, 32), Error);
  std::vector<uint8_t> bad(32 * 32, 3);
  bad[77] = 16;
  EXPECT_THROW(pack_w4(bad, 32, 32), Error);
  EXPECT_THROW(pack_w4(bad, 0, 32), Error);
}

TEST(PackG128, ColumnOrderWithinA32Block) {
  const std::vector<int64_t> want = {0, 8,  16, 24, 1, 9,  17, 25, 2, 10, 18, 26, 3, 11, 19, 27,
                                     4, 12, 20, 28, 5, 13, 21, 29, 6, 14, 22, 30, 7, 15, 23, 31};
  // natural[n][0] = n: the stored row lists the channels in stored order.
  std::vector<int8_t> natural(64);
  for (int i = 0; i < 64; ++i) natural[i] = static_cast<int8_t>(i);
  const auto packed = pack_g128_params(natural, 64, 1);
  for (int64_t j = 0; j < 32; ++j) {
    EXPECT_EQ(packed[j], want[j]);
    EXPECT_EQ(packed[32 + j], 32 + want[j]);
  }
  for (int64_t ch = 0; ch < 64; ++ch) EXPECT_EQ(packed[g128_param_column(ch)], ch);
}

TEST(PackG128, RoundTripsAndTransposes) {
  std::mt19937 rng(64);
  for (int64_t n : {32, 96, 128}) {
    for (int64_t groups : {1, 3, 32}) {
      const auto nat = test::random_i8(rng, n * groups);
      const auto packed = pack_g128_params(nat, n, groups);
      for (int64_t ch = 0; ch < n; ++ch)
        for (int64_t g = 0; g < groups; ++g)
          ASSERT_EQ(packed[g * n + g128_param_column(ch)], nat[ch * groups + g]);
      ASSERT_EQ(unpack_g128_params(packed, n, groups), nat);
    }
  }
  EXPECT_THROW(pack_g128_params(std::vector<int8_t>(40), 40, 1), Error);
  EXPECT_THROW(unpack_g128_params(std::vector<int8_t>(64), 32, 1), Error);
}

TEST(QServeFormat, CheckpointTensorsRoundTrip) {
  std::mt19937 rng(65);
  const int64_t n = 64, k = 256;
  const auto wf = test::normal_floats(rng, n * k);
  const auto pc = quantize_w4_per_channel(wf.data(), n, k);
  const auto t1 = to_qserve(pc);
  EXPECT_EQ(static_cast<int64_t>(t1.qweight.size()), n * k / 2);
  EXPECT_TRUE(t1.s2_scales.empty());
  const auto back1 = w4_per_channel_from_qserve(t1.qweight, t1.s1_scales, t1.s1_szeros, n, k);
  EXPECT_EQ(back1.q, pc.q);
  EXPECT_EQ(back1.s1_szeros, pc.s1_szeros);

  const auto g = quantize_w4_g128(wf.data(), n, k);
  const auto t2 = to_qserve(g);
  EXPECT_EQ(static_cast<int64_t>(t2.s2_scales.size()), 2 * n);
  EXPECT_TRUE(t2.s1_szeros.empty());
  const auto back2 = w4_g128_from_qserve(t2.qweight, t2.s1_scales, t2.s2_scales, t2.s2_zeros, n, k);
  EXPECT_EQ(back2.q, g.q);
  EXPECT_EQ(back2.s2_scales, g.s2_scales);
  EXPECT_EQ(back2.s2_zeros, g.s2_zeros);
  EXPECT_EQ(dequantize(back2), dequantize(g));
  // Invalid checkpoint data is rejected at load.
  auto s2 = t2.s2_scales;
  s2[0] = 100;
  EXPECT_THROW(w4_g128_from_qserve(t2.qweight, t2.s1_scales, s2, t2.s2_zeros, n, k), Error);
  EXPECT_THROW(w4_g128_from_qserve(t2.qweight, t2.s1_scales, t2.s2_scales, t2.s2_zeros, n, 192),
               Error);
}

}  // namespace
}  // namespace qserve::quant
