// gemm_nt and the strided serial GEMMs against a double-precision reference, on sizes that are
// not multiples of any block (including 1 and 3), under both kernel families.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/gemm_kernels.h"
#include "backend/cpu/ops_cpu.h"
#include "kernel_mode.h"
#include "reference.h"

namespace qserve {
namespace {

using test::KernelMode;
using test::KernelModeTest;

// |c - ref| <= rel * max|ref| over the whole matrix.
void expect_close(const std::vector<float>& c, const std::vector<double>& ref, double rel,
                  const std::string& what) {
  ASSERT_EQ(c.size(), ref.size());
  const double tol = rel * std::max(test::max_abs(ref), 1e-30);
  double worst = 0.0;
  size_t worst_i = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    const double e = std::abs(static_cast<double>(c[i]) - ref[i]);
    if (!(e <= worst)) {  // also catches NaN
      worst = std::isnan(e) ? INFINITY : e;
      worst_i = i;
    }
  }
  EXPECT_LE(worst, tol) << what << ": element " << worst_i << " = " << c[worst_i] << ", reference "
                        << ref[worst_i];
}

class GemmNt : public KernelModeTest {};

TEST_P(GemmNt, OddSizesMatchDoubleReference) {
  uint64_t seed = 1;
  for (int64_t m : {1, 2, 3, 4, 5, 7, 13, 64}) {
    for (int64_t n : {1, 2, 3, 4, 5, 7, 97, 130}) {
      for (int64_t k : {1, 3, 7, 8, 9, 31, 64, 100, 513, 1030}) {
        const auto a = test::random_floats(static_cast<size_t>(m * k), ++seed);
        const auto b = test::random_floats(static_cast<size_t>(n * k), ++seed);
        std::vector<float> c(static_cast<size_t>(m * n), NAN);
        cpu::gemm_nt(a.data(), b.data(), c.data(), m, n, k);
        expect_close(
            c, test::ref_gemm_nt(a.data(), b.data(), m, n, k), 1e-5,
            "m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
        if (HasFailure()) return;
      }
    }
  }
}

TEST_P(GemmNt, LongKStaysWithinRelativeTolerance) {
  for (int64_t k : {2048, 4096, 4099}) {
    const int64_t m = 6, n = 11;
    const auto a = test::random_floats(static_cast<size_t>(m * k), 7 + k);
    const auto b = test::random_floats(static_cast<size_t>(n * k), 8 + k);
    std::vector<float> c(static_cast<size_t>(m * n));
    cpu::gemm_nt(a.data(), b.data(), c.data(), m, n, k);
    expect_close(c, test::ref_gemm_nt(a.data(), b.data(), m, n, k), 1e-5, "k=" + std::to_string(k));
  }
}

TEST_P(GemmNt, ModelShapesMatchDoubleReference) {
  struct Shape {
    int64_t n, k;
  };
  // fused QKV, o_proj, fused gate_up, down_proj, lm_head of the 22M test model.
  const Shape shapes[] = {{1024, 512}, {512, 512}, {2048, 512}, {512, 1024}, {8192, 512}};
  uint64_t seed = 100;
  for (int64_t m : {1, 4, 64}) {
    for (const Shape& s : shapes) {
      const auto a = test::random_floats(static_cast<size_t>(m * s.k), ++seed);
      const auto b = test::random_floats(static_cast<size_t>(s.n * s.k), ++seed);
      std::vector<float> c(static_cast<size_t>(m * s.n), NAN);
      cpu::gemm_nt(a.data(), b.data(), c.data(), m, s.n, s.k);
      expect_close(
          c, test::ref_gemm_nt(a.data(), b.data(), m, s.n, s.k), 1e-5,
          "m=" + std::to_string(m) + " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k));
    }
  }
  // More than one M tile.
  const int64_t m = 133, n = 1000, k = 515;
  const auto a = test::random_floats(static_cast<size_t>(m * k), 1);
  const auto b = test::random_floats(static_cast<size_t>(n * k), 2);
  std::vector<float> c(static_cast<size_t>(m * n), NAN);
  cpu::gemm_nt(a.data(), b.data(), c.data(), m, n, k);
  expect_close(c, test::ref_gemm_nt(a.data(), b.data(), m, n, k), 1e-5, "m=133 n=1000 k=515");
}

// A row's result does not depend on the batch it is in: decode (M=1) reproduces prefill rows
// bit for bit, whatever tile or microtile position the row lands in.
TEST_P(GemmNt, RowsAreBatchInvariant) {
  const int64_t m = 67, n = 301, k = 777;
  const auto a = test::random_floats(static_cast<size_t>(m * k), 3);
  const auto b = test::random_floats(static_cast<size_t>(n * k), 4);
  std::vector<float> c(static_cast<size_t>(m * n));
  cpu::gemm_nt(a.data(), b.data(), c.data(), m, n, k);
  for (int64_t i : {0, 1, 2, 3, 4, 33, 66}) {
    std::vector<float> row(static_cast<size_t>(n));
    cpu::gemm_nt(a.data() + i * k, b.data(), row.data(), 1, n, k);
    EXPECT_EQ(0, std::memcmp(row.data(), c.data() + i * n, row.size() * sizeof(float)))
        << "row " << i;
  }
}

TEST_P(GemmNt, ZeroKGivesZeros) {
  std::vector<float> c(6, NAN);
  cpu::gemm_nt(nullptr, nullptr, c.data(), 2, 3, 0);
  for (float x : c) EXPECT_EQ(x, 0.0f);
  cpu::gemm_nt(nullptr, nullptr, nullptr, 0, 3, 5);  // empty: touches nothing
}

// The strided, accumulating entry points attention uses.
TEST_P(GemmNt, StridedSerialNtAndNnMatchReference) {
  for (int64_t m : {1, 3, 6, 7, 32}) {
    for (int64_t n : {1, 5, 8, 9, 16, 17, 128, 131}) {
      for (int64_t k : {1, 2, 9, 128, 600}) {
        const int64_t lda = k + 3, ldb_nt = k + 5, ldc = n + 2;
        const auto a = test::random_floats(static_cast<size_t>(m * lda), m * 1000 + n * 10 + k);
        const auto b = test::random_floats(static_cast<size_t>(n * ldb_nt), 77 + k);
        const auto c0 = test::random_floats(static_cast<size_t>(m * ldc), 5);
        // NT with accumulate: C += A B^T, untouched padding.
        std::vector<float> c = c0;
        cpu::detail::gemm_nt_serial(a.data(), lda, b.data(), ldb_nt, c.data(), ldc, m, n, k, true);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < ldc; ++j) {
            double ref = c0[static_cast<size_t>(i * ldc + j)];
            if (j < n) {
              for (int64_t p = 0; p < k; ++p) ref += double(a[i * lda + p]) * b[j * ldb_nt + p];
            }
            ASSERT_NEAR(c[static_cast<size_t>(i * ldc + j)], ref, 1e-5 * (1.0 + std::sqrt(k)))
                << "nt m=" << m << " n=" << n << " k=" << k << " at " << i << "," << j;
          }
        }
        // NN without accumulate: B is [k, n] with row stride ldb_nn.
        const int64_t ldb_nn = n + 4;
        const auto bn = test::random_floats(static_cast<size_t>(k * ldb_nn), 99 + n);
        c = c0;
        cpu::detail::gemm_nn_serial(a.data(), lda, bn.data(), ldb_nn, c.data(), ldc, m, n, k,
                                    false);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < ldc; ++j) {
            double ref = c0[static_cast<size_t>(i * ldc + j)];
            if (j < n) {
              ref = 0.0;
              for (int64_t p = 0; p < k; ++p) ref += double(a[i * lda + p]) * bn[p * ldb_nn + j];
            }
            ASSERT_NEAR(c[static_cast<size_t>(i * ldc + j)], ref, 1e-5 * (1.0 + std::sqrt(k)))
                << "nn m=" << m << " n=" << n << " k=" << k << " at " << i << "," << j;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, GemmNt, testing::Values(KernelMode::Avx2, KernelMode::Portable),
                         test::kernel_mode_name);

}  // namespace
}  // namespace qserve
