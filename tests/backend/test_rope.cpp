// rope_inv_freq (default, linear, llama3) and rope (NeoX pairing) against references.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "reference.h"

namespace qserve {
namespace {

ModelConfig rope_config(int64_t head_dim, double theta) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.rope_theta = theta;
  return c;
}

TEST(RopeInvFreq, DefaultIsThetaToTheMinusTwoIOverD) {
  for (int64_t d : {2, 64, 80, 128}) {
    const auto inv = cpu::rope_inv_freq(rope_config(d, 10000.0));
    ASSERT_EQ(static_cast<int64_t>(inv.size()), d / 2);
    EXPECT_EQ(inv[0], 1.0f);
    for (int64_t i = 0; i < d / 2; ++i) {
      // Like HF, the exponent 2i/d is rounded to fp32 first (inexact for d = 80); the power and
      // reciprocal are then within an ulp or two.
      const double e = static_cast<float>(2 * i) / static_cast<float>(d);
      const double ref = std::pow(10000.0, -e);
      EXPECT_NEAR(inv[i], ref, 2e-7 * ref) << "d=" << d << " i=" << i;
    }
  }
}

TEST(RopeInvFreq, LinearScalingDividesByFactor) {
  ModelConfig c = rope_config(64, 10000.0);
  const auto base = cpu::rope_inv_freq(c);
  c.rope_scaling.type = RopeScaling::Type::Linear;
  c.rope_scaling.factor = 4.0;
  const auto scaled = cpu::rope_inv_freq(c);
  for (size_t i = 0; i < base.size(); ++i) EXPECT_EQ(scaled[i], base[i] / 4.0f);
}

// Llama-3.1: theta 500000, head_dim 128, factor 8, low_freq_factor 1, high_freq_factor 4,
// original context 8192. Expected values worked out by hand (in double) from HF's
// _compute_llama3_parameters: wavelen = 2 pi / inv_freq; wavelen < 8192/4 = 2048 keeps inv_freq
// (i <= 28), wavelen > 8192/1 divides it by 8 (i >= 35), in between it blends with
// smooth = (8192 / wavelen - 1) / (4 - 1).
TEST(RopeInvFreq, Llama3MatchesHandComputedValues) {
  ModelConfig c = rope_config(128, 500000.0);
  c.rope_scaling.type = RopeScaling::Type::Llama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  const auto inv = cpu::rope_inv_freq(c);
  ASSERT_EQ(inv.size(), 64u);
  struct Case {
    int i;
    double expected;  // region
  };
  const Case cases[] = {
      {0, 1.0},               // keep
      {1, 8.146172339e-01},   // keep
      {16, 3.760603093e-02},  // keep
      {28, 3.211445995e-03},  // keep: wavelen 1956.5 < 2048
      {29, 2.166570764e-03},  // smooth 0.803621 (unscaled 2.616099253e-03)
      {30, 1.371893568e-03},  // smooth 0.592849
      {32, 5.248461610e-04},  // smooth 0.281283 (unscaled 1.414213562e-03)
      {34, 1.785078128e-04},  // smooth 0.074527
      {35, 9.556212354e-05},  // divided: 7.644969883e-04 / 8, wavelen 8218.7 > 8192
      {40, 3.428102196e-05},  // divided
      {63, 3.068925989e-07},  // divided
  };
  for (const Case& cs : cases) {
    EXPECT_NEAR(inv[cs.i], cs.expected, 2e-6 * cs.expected) << "i=" << cs.i;
  }
  // Monotone: scaling never reorders frequencies.
  for (size_t i = 1; i < inv.size(); ++i) EXPECT_LT(inv[i], inv[i - 1]) << i;
}

TEST(RopeInvFreq, RejectsOddHeadDim) {
  EXPECT_THROW(cpu::rope_inv_freq(rope_config(63, 10000.0)), Error);
  EXPECT_THROW(cpu::rope_inv_freq(rope_config(0, 10000.0)), Error);
}

TEST(Rope, PositionZeroIsIdentity) {
  const int64_t t = 3, heads = 4, hd = 128;
  const auto inv = cpu::rope_inv_freq(rope_config(hd, 500000.0));
  const auto x = test::random_floats(static_cast<size_t>(t * heads * hd), 1);
  std::vector<float> y = x;
  const std::vector<int64_t> pos(t, 0);
  cpu::rope(y.data(), pos.data(), t, heads, hd, inv);
  EXPECT_EQ(y, x);
}

TEST(Rope, MatchesReferenceWithNeoxPairing) {
  const int64_t t = 5, heads = 3, hd = 64, half = hd / 2;
  const auto inv = cpu::rope_inv_freq(rope_config(hd, 10000.0));
  const auto x = test::random_floats(static_cast<size_t>(t * heads * hd), 2);
  const std::vector<int64_t> pos = {0, 1, 7, 100, 4095};
  std::vector<float> y = x;
  cpu::rope(y.data(), pos.data(), t, heads, hd, inv);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* xv = &x[(r * heads + h) * hd];
      const float* yv = &y[(r * heads + h) * hd];
      for (int64_t i = 0; i < half; ++i) {
        // The angle is the fp32 product, as HF computes it; the rest in double.
        const double angle = static_cast<float>(pos[r]) * inv[i];
        const double c = std::cos(angle), s = std::sin(angle);
        EXPECT_NEAR(yv[i], xv[i] * c - xv[i + half] * s, 1e-6) << r << "," << h << "," << i;
        EXPECT_NEAR(yv[i + half], xv[i + half] * c + xv[i] * s, 1e-6) << r << "," << h << "," << i;
      }
    }
  }
}

// Rotating q and k by their positions makes q.k depend only on the distance between them.
TEST(Rope, DotProductDependsOnRelativePosition) {
  const int64_t hd = 128;
  const auto inv = cpu::rope_inv_freq(rope_config(hd, 10000.0));
  const auto q0 = test::random_floats(hd, 3), k0 = test::random_floats(hd, 4);
  auto dot_at = [&](int64_t pq, int64_t pk) {
    std::vector<float> q = q0, k = k0;
    cpu::rope(q.data(), &pq, 1, 1, hd, inv);
    cpu::rope(k.data(), &pk, 1, 1, hd, inv);
    double d = 0.0;
    for (int64_t i = 0; i < hd; ++i) d += double(q[i]) * k[i];
    return d;
  };
  EXPECT_NEAR(dot_at(10, 3), dot_at(107, 100), 1e-4);
  EXPECT_NEAR(dot_at(5, 5), dot_at(0, 0), 1e-4);
}

TEST(Rope, RejectsMismatchedInvFreq) {
  std::vector<float> x(16), inv(7);
  const int64_t pos = 0;
  EXPECT_THROW(cpu::rope(x.data(), &pos, 1, 1, 16, inv), Error);
  EXPECT_THROW(cpu::rope(x.data(), &pos, 1, 1, 15, inv), Error);
}

}  // namespace
}  // namespace qserve
