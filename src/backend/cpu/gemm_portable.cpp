// Portable GEMM blocks for CPUs without AVX2/FMA (and for checking the AVX2 ones). Written so
// the compiler can vectorise them at the baseline ISA without -ffast-math: the dot products keep
// eight explicit partial sums instead of relying on reassociation, and the NN block is a row
// AXPY that needs no reduction at all.
#include <algorithm>
#include <cstdint>

#include "backend/cpu/gemm_kernels.h"

namespace qserve::cpu::detail {

namespace {

constexpr int kLanes = 8;

// Two rows of A against two rows of B, eight partial sums each.
template <int MR, int NR>
void micro_nt_portable(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                       int64_t ldc, int64_t k, bool accumulate) {
  float acc[MR][NR][kLanes] = {};
  const int64_t k8 = k - k % kLanes;
  for (int64_t kk = 0; kk < k8; kk += kLanes) {
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) {
        for (int l = 0; l < kLanes; ++l) acc[i][j][l] += a[i * lda + kk + l] * b[j * ldb + kk + l];
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      for (int64_t kk = k8; kk < k; ++kk) acc[i][j][kk - k8] += a[i * lda + kk] * b[j * ldb + kk];
      const float* s = acc[i][j];
      const float sum = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
      float& dst = c[i * ldc + j];
      dst = accumulate ? dst + sum : sum;
    }
  }
}

}  // namespace

void gemm_nt_block_portable(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                            int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t i = 0; i < m; i += 2) {
    const bool two_rows = i + 1 < m;
    for (int64_t j = 0; j < n; j += 2) {
      const bool two_cols = j + 1 < n;
      const float* ai = a + i * lda;
      const float* bj = b + j * ldb;
      float* cij = c + i * ldc + j;
      if (two_rows && two_cols) {
        micro_nt_portable<2, 2>(ai, lda, bj, ldb, cij, ldc, k, accumulate);
      } else if (two_rows) {
        micro_nt_portable<2, 1>(ai, lda, bj, ldb, cij, ldc, k, accumulate);
      } else if (two_cols) {
        micro_nt_portable<1, 2>(ai, lda, bj, ldb, cij, ldc, k, accumulate);
      } else {
        micro_nt_portable<1, 1>(ai, lda, bj, ldb, cij, ldc, k, accumulate);
      }
    }
  }
}

void gemm_nn_block_portable(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                            int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (!accumulate) std::fill(ci, ci + n, 0.0f);
    for (int64_t kk = 0; kk < k; ++kk) {
      const float s = a[i * lda + kk];
      const float* bk = b + kk * ldb;
      for (int64_t j = 0; j < n; ++j) ci[j] += s * bk[j];
    }
  }
}

}  // namespace qserve::cpu::detail
