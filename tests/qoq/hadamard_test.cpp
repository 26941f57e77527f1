// Hadamard matrices and rotations: orthogonality, the fast transforms against the dense matrix,
// and the refusal of orders without a construction.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "qoq/hadamard.h"

namespace qserve::qoq {
namespace {

class HadamardOrders : public ::testing::TestWithParam<int64_t> {};

TEST_P(HadamardOrders, RotationIsOrthogonalAndFastPathsMatchDense) {
  const int64_t n = GetParam();
  const HadamardRotation r(n);
  const std::vector<double> d = r.dense();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0.0;
      for (int64_t t = 0; t < n; ++t) dot += d[i * n + t] * d[j * n + t];
      ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-12) << "n=" << n << " i=" << i << " j=" << j;
    }
  }
  // apply_right: x R; apply_left_transposed: R^T W, on random data against the dense products.
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  const int64_t rows = 3, cols = 5;
  std::vector<float> x(static_cast<size_t>(rows * n)), w(static_cast<size_t>(n * cols));
  for (float& v : x) v = nd(rng);
  for (float& v : w) v = nd(rng);
  std::vector<float> xr = x, wr = w;
  r.apply_right(xr.data(), rows);
  r.apply_left_transposed(wr.data(), cols);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < n; ++t) s += x[i * n + t] * d[t * n + j];
      EXPECT_NEAR(xr[i * n + j], s, 1e-5);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < cols; ++c) {
      double s = 0.0;
      for (int64_t t = 0; t < n; ++t) s += d[t * n + i] * w[t * cols + c];
      EXPECT_NEAR(wr[i * cols + c], s, 1e-5);
    }
  }
}

// Powers of two (Sylvester), every Paley factor alone and times a power of two.
INSTANTIATE_TEST_SUITE_P(Orders, HadamardOrders,
                         ::testing::Values(1, 2, 64, 128, 12, 20, 28, 36, 60, 108, 140, 48, 160,
                                           112));

TEST(Hadamard, SylvesterMatchesScipyOrder) {
  // scipy.linalg.hadamard(4): [[1,1,1,1],[1,-1,1,-1],[1,1,-1,-1],[1,-1,-1,1]].
  const std::vector<int8_t> h = hadamard_matrix(4);
  const std::vector<int8_t> want = {1, 1, 1, 1, 1, -1, 1, -1, 1, 1, -1, -1, 1, -1, -1, 1};
  EXPECT_EQ(h, want);
}

TEST(Hadamard, UnsupportedOrdersAreRefused) {
  EXPECT_FALSE(has_hadamard(52 * 4));  // 52 has no Paley construction here
  EXPECT_FALSE(has_hadamard(100));
  EXPECT_FALSE(has_hadamard(0));
  EXPECT_TRUE(has_hadamard(5120));  // 20 * 256 (Llama-2-13B)
  EXPECT_TRUE(has_hadamard(3584));  // 28 * 128 (Qwen2-7B)
  EXPECT_THROW(HadamardRotation(208), Error);
  EXPECT_THROW(hadamard_matrix(52), Error);
}

}  // namespace
}  // namespace qserve::qoq
