// rms_norm and silu_mul against double-precision references.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "reference.h"

namespace qserve {
namespace {

std::vector<double> ref_rms_norm(const std::vector<float>& x, const std::vector<float>& w,
                                 double eps, int64_t rows, int64_t dim) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / double(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) out[r * dim + i] = x[r * dim + i] * inv * w[i];
  }
  return out;
}

TEST(RmsNorm, MatchesDoubleReference) {
  for (int64_t dim : {1, 3, 7, 8, 9, 64, 513, 4096}) {
    for (int64_t rows : {1, 2, 5, 300}) {
      const auto x = test::random_floats(static_cast<size_t>(rows * dim), dim * 7 + rows, -3, 3);
      const auto w = test::random_floats(static_cast<size_t>(dim), dim, 0.5f, 1.5f);
      std::vector<float> y(x.size());
      cpu::rms_norm(x.data(), w.data(), 1e-6f, rows, dim, y.data());
      const auto ref = ref_rms_norm(x, w, double(1e-6f), rows, dim);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_NEAR(y[i], ref[i], 2e-6 * std::abs(ref[i]) + 1e-7)
            << "dim=" << dim << " rows=" << rows << " i=" << i;
      }
    }
  }
}

TEST(RmsNorm, InPlaceEqualsOutOfPlace) {
  const int64_t rows = 33, dim = 517;
  const auto x = test::random_floats(static_cast<size_t>(rows * dim), 1);
  const auto w = test::random_floats(static_cast<size_t>(dim), 2);
  std::vector<float> out(x.size());
  cpu::rms_norm(x.data(), w.data(), 1e-5f, rows, dim, out.data());
  std::vector<float> inplace = x;
  cpu::rms_norm(inplace.data(), w.data(), 1e-5f, rows, dim, inplace.data());
  EXPECT_EQ(inplace, out);
}

TEST(RmsNorm, EpsDominatesAZeroRow) {
  std::vector<float> x(16, 0.0f), w(16, 1.0f), y(16, 1.0f);
  cpu::rms_norm(x.data(), w.data(), 1e-6f, 1, 16, y.data());
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(SiluMul, MatchesDoubleReference) {
  for (int64_t inter : {1, 3, 17, 1024}) {
    for (int64_t t : {1, 4, 37}) {
      auto gu = test::random_floats(static_cast<size_t>(t * 2 * inter), inter + t, -8, 8);
      gu[0] = 100.0f;                  // exp(-g) underflows to 0: silu(g) = g
      if (inter > 1) gu[1] = -100.0f;  // exp(-g) overflows to inf: silu(g) = -0, not NaN
      std::vector<float> out(static_cast<size_t>(t * inter));
      cpu::silu_mul(gu.data(), t, inter, out.data());
      for (int64_t r = 0; r < t; ++r) {
        for (int64_t i = 0; i < inter; ++i) {
          const double g = gu[r * 2 * inter + i], u = gu[r * 2 * inter + inter + i];
          const double ref = g / (1.0 + std::exp(-g)) * u;
          ASSERT_NEAR(out[r * inter + i], ref, 1e-6 * std::abs(ref) + 1e-30)
              << "inter=" << inter << " t=" << t << " r=" << r << " i=" << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace qserve
