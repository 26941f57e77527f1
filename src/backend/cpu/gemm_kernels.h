// Internal to the CPU backend: single-threaded strided GEMM blocks and the choice between the
// AVX2/FMA and the portable implementation. gemm.cpp builds the threaded, cache-blocked gemm_nt
// on top of these; attention.cpp calls the serial ones from inside its own parallel_for.
#pragma once

#include <cstdint>

namespace qserve::cpu::detail {

// C[m, n] (+)= A[m, k] * B[n, k]^T. Rows of A, B and C are lda, ldb, ldc floats apart; each row
// is contiguous along its last index. accumulate=false overwrites C, true adds to it. No cache
// blocking: the caller keeps n * k (B) small enough to stay in L2.
using GemmNtBlockFn = void (*)(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                               int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate);
// C[m, n] (+)= A[m, k] * B[k, n]; B is row-major [k, n] with row stride ldb.
using GemmNnBlockFn = GemmNtBlockFn;

void gemm_nt_block_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate);
void gemm_nn_block_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate);
void gemm_nt_block_portable(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                            int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate);
void gemm_nn_block_portable(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                            int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate);

// True when this CPU runs the AVX2/FMA kernels (and they have not been switched off).
bool use_avx2();
// Tests and benchmarks force the portable kernels with true; false restores CPU detection.
// Not thread-safe against concurrent GEMMs: set it between runs.
void force_portable_kernels(bool on);

// Serial strided GEMMs with the same semantics as the block functions, blocked over K.
void gemm_nt_serial(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    int64_t m, int64_t n, int64_t k, bool accumulate);
void gemm_nn_serial(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    int64_t m, int64_t n, int64_t k, bool accumulate);

}  // namespace qserve::cpu::detail
