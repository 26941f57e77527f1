// The vectorised exp behind softmax and SwiGLU: accuracy against double, special values, and
// the softmax / silu rows under both kernel families against double references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "backend/cpu/gemm_kernels.h"
#include "backend/cpu/vec_math.h"
#include "kernel_mode.h"
#include "reference.h"

namespace qserve {
namespace {

using test::KernelMode;
using test::KernelModeTest;

// Distance from f to the exact value d in units of the float spacing at d.
double ulp_error(float f, double d) {
  const float fd = static_cast<float>(d);
  const double ulp = std::nextafter(fd, std::numeric_limits<float>::infinity()) - fd;
  return std::abs(static_cast<double>(f) - d) / ulp;
}

TEST(ExpAvx2, WithinOneUlpOverTheNormalRange) {
  if (!cpu::detail::use_avx2()) GTEST_SKIP() << "this CPU has no AVX2/FMA";
  // Every 1/4096 from ln(FLT_MIN) to ln(FLT_MAX), plus random points.
  std::vector<float> x;
  for (double v = -87.3; v < 88.72; v += 1.0 / 4096) x.push_back(static_cast<float>(v));
  const auto r = test::random_floats(100000, 1, -87.3f, 88.72f);
  x.insert(x.end(), r.begin(), r.end());
  std::vector<float> y(x.size());
  cpu::detail::exp_avx2(x.data(), static_cast<int64_t>(x.size()), y.data());
  double worst = 0.0;
  float worst_x = 0.0f;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = ulp_error(y[i], std::exp(static_cast<double>(x[i])));
    if (e > worst) {
      worst = e;
      worst_x = x[i];
    }
  }
  EXPECT_LE(worst, 1.0) << "at x = " << worst_x;
}

TEST(ExpAvx2, SpecialValues) {
  if (!cpu::detail::use_avx2()) GTEST_SKIP() << "this CPU has no AVX2/FMA";
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {0.0f,  -0.0f,  1.0f,    -inf,    inf,     NAN,   88.7f,
                                89.0f, 100.0f, -103.0f, -104.0f, -200.0f, -90.0f};
  std::vector<float> y(x.size());
  cpu::detail::exp_avx2(x.data(), static_cast<int64_t>(x.size()), y.data());
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], 1.0f);
  EXPECT_NEAR(y[2], 2.718281828, 3e-7);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_EQ(y[4], inf);
  EXPECT_TRUE(std::isnan(y[5]));
  EXPECT_TRUE(std::isfinite(y[6]));
  EXPECT_LE(ulp_error(y[6], std::exp(double(88.7f))), 1.0);
  EXPECT_EQ(y[7], inf);
  EXPECT_EQ(y[8], inf);
  // Denormal results: within one denormal step.
  const double tiny = std::numeric_limits<float>::denorm_min();
  EXPECT_NEAR(y[9], std::exp(-103.0), tiny);
  EXPECT_NEAR(y[10], 0.0, tiny);
  EXPECT_EQ(y[11], 0.0f);
  EXPECT_NEAR(y[12], std::exp(-90.0), tiny);  // -90 is exact in fp32
}

class VecMath : public KernelModeTest {};

TEST_P(VecMath, SoftmaxRowMatchesDoubleReference) {
  for (int64_t n : {1, 3, 8, 9, 31, 200}) {
    for (int64_t lo : {int64_t{0}, n / 3}) {
      for (int64_t hi : {n - 1, (n - 1) * 2 / 3}) {
        if (hi < lo) continue;
        auto s = test::random_floats(static_cast<size_t>(n), n + lo * 7 + hi, -30.0f, 30.0f);
        const auto orig = s;
        const float scale = 0.088388f;
        cpu::detail::softmax_row(s.data(), n, lo, hi, scale);
        double mx = -1e300, sum = 0.0;
        for (int64_t i = lo; i <= hi; ++i) mx = std::max(mx, double(orig[i] * scale));
        for (int64_t i = lo; i <= hi; ++i) sum += std::exp(double(orig[i] * scale) - mx);
        for (int64_t i = 0; i < n; ++i) {
          const double ref =
              (i < lo || i > hi) ? 0.0 : std::exp(double(orig[i] * scale) - mx) / sum;
          ASSERT_NEAR(s[i], ref, 1e-6 * ref + 1e-12)
              << "n=" << n << " lo=" << lo << " hi=" << hi << " i=" << i;
        }
      }
    }
  }
}

TEST_P(VecMath, SiluMulRowMatchesDoubleReference) {
  for (int64_t n : {1, 7, 8, 13, 1024}) {
    auto g = test::random_floats(static_cast<size_t>(n), n, -12.0f, 12.0f);
    const auto u = test::random_floats(static_cast<size_t>(n), n + 1, -2.0f, 2.0f);
    g[0] = -100.0f;  // exp(100) overflows: silu = -0, not NaN
    if (n > 1) g[1] = 100.0f;
    std::vector<float> out(static_cast<size_t>(n));
    cpu::detail::silu_mul_row(g.data(), u.data(), n, out.data());
    for (int64_t i = 0; i < n; ++i) {
      const double ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
      ASSERT_NEAR(out[i], ref, 1e-6 * std::abs(ref) + 1e-30) << "n=" << n << " i=" << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, VecMath, testing::Values(KernelMode::Avx2, KernelMode::Portable),
                         test::kernel_mode_name);

}  // namespace
}  // namespace qserve
