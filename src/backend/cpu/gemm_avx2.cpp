// AVX2/FMA GEMM blocks. Every function here is compiled for avx2+fma through a target attribute
// (the rest of the build stays baseline x86-64) and is only called after gemm.cpp has checked
// the CPU at run time.
//
// gemm_nt: both operands are K-contiguous, so the microkernel is a register-blocked dot product:
// 4 rows of A x 3 rows of B, twelve 8-wide accumulators plus three B vectors and one A vector
// (16 ymm registers). Per 8 k-steps it does 7 loads for 12 FMAs, so it is FMA-bound out of L1/L2
// and needs no packing. The 8 lanes are reduced once at the end of the K range.
//
// gemm_nn (attention's P * V): B rows are N-contiguous, so the microkernel broadcasts A[i, k]
// and multiplies 16-wide B rows: 6 x 16 outputs in twelve accumulators (BLIS's Haswell shape).
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "backend/cpu/gemm_kernels.h"

#define QSERVE_AVX2 __attribute__((target("avx2,fma")))

namespace qserve::cpu::detail {

namespace {

// Lanes [0, rem) set: loaded from a sliding window over 8 ones followed by 8 zeros.
QSERVE_AVX2 inline __m256i lane_mask(int64_t rem) {
  alignas(32) static const int32_t kSrc[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                               0,  0,  0,  0,  0,  0,  0,  0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kSrc + 8 - rem));
}

// Horizontal sums of four vectors at once: {sum(v0), sum(v1), sum(v2), sum(v3)}.
QSERVE_AVX2 inline __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// The same summation order as one lane of hsum4, so a C element does not depend on where it
// falls in a microtile (results are independent of M, N and the tiling).
QSERVE_AVX2 inline float hsum1(__m256 v) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v, v), v);
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

// ---------------------------------------------------------------------------------------------
// NT: C[MR, NR] (+)= A[MR, k] . B[NR, k]^T
// ---------------------------------------------------------------------------------------------
using MicroNt = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                         bool);

template <int MR, int NR>
QSERVE_AVX2 void micro_nt(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                          int64_t ldc, int64_t k, bool accumulate) {
  constexpr int kAcc = MR * NR;
  __m256 acc[kAcc];
#pragma GCC unroll 12
  for (int x = 0; x < kAcc; ++x) acc[x] = _mm256_setzero_ps();

  const int64_t k8 = k & ~int64_t{7};
  int64_t kk = 0;
  for (; kk < k8; kk += 8) {
    __m256 bv[NR];
#pragma GCC unroll 3
    for (int j = 0; j < NR; ++j) bv[j] = _mm256_loadu_ps(b + j * ldb + kk);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_loadu_ps(a + i * lda + kk);
#pragma GCC unroll 3
      for (int j = 0; j < NR; ++j) acc[i * NR + j] = _mm256_fmadd_ps(av, bv[j], acc[i * NR + j]);
    }
  }
  if (kk < k) {  // K tail: masked loads read zeros past the end, never touching that memory
    const __m256i mask = lane_mask(k - kk);
    __m256 bv[NR];
#pragma GCC unroll 3
    for (int j = 0; j < NR; ++j) bv[j] = _mm256_maskload_ps(b + j * ldb + kk, mask);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_maskload_ps(a + i * lda + kk, mask);
#pragma GCC unroll 3
      for (int j = 0; j < NR; ++j) acc[i * NR + j] = _mm256_fmadd_ps(av, bv[j], acc[i * NR + j]);
    }
  }

  float out[kAcc];
  int x = 0;
#pragma GCC unroll 3
  for (; x + 4 <= kAcc; x += 4) {
    _mm_storeu_ps(out + x, hsum4(acc[x], acc[x + 1], acc[x + 2], acc[x + 3]));
  }
#pragma GCC unroll 3
  for (; x < kAcc; ++x) out[x] = hsum1(acc[x]);
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int j = 0; j < NR; ++j) {
      float& dst = c[i * ldc + j];
      dst = accumulate ? dst + out[i * NR + j] : out[i * NR + j];
    }
  }
}

constexpr int kNtMr = 4;
constexpr int kNtNr = 3;

// [mr - 1][nr - 1]
constexpr MicroNt kMicroNt[kNtMr][kNtNr] = {
    {micro_nt<1, 1>, micro_nt<1, 2>, micro_nt<1, 3>},
    {micro_nt<2, 1>, micro_nt<2, 2>, micro_nt<2, 3>},
    {micro_nt<3, 1>, micro_nt<3, 2>, micro_nt<3, 3>},
    {micro_nt<4, 1>, micro_nt<4, 2>, micro_nt<4, 3>},
};

// ---------------------------------------------------------------------------------------------
// NN: C[MR, 8 NV] (+)= A[MR, k] . B[k, 8 NV]; the last vector is masked when MASKED.
// ---------------------------------------------------------------------------------------------
// The last vector's valid lanes travel as a count, not a __m256i: a 256-bit argument makes GCC
// skip the vzeroupper at return, leaving the upper halves dirty for the SSE code (libm) that
// runs next, which costs Intel cores dearly.
using MicroNn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                         int64_t, bool);

template <int MR, int NV, bool MASKED>
QSERVE_AVX2 void micro_nn(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                          int64_t ldc, int64_t k, int64_t last_lanes, bool accumulate) {
  constexpr int kAcc = MR * NV;
  const __m256i last_mask = lane_mask(last_lanes);
  __m256 acc[kAcc];
#pragma GCC unroll 12
  for (int x = 0; x < kAcc; ++x) acc[x] = _mm256_setzero_ps();

  for (int64_t kk = 0; kk < k; ++kk) {
    const float* brow = b + kk * ldb;
    __m256 bv[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      bv[v] = (MASKED && v == NV - 1) ? _mm256_maskload_ps(brow + 8 * v, last_mask)
                                      : _mm256_loadu_ps(brow + 8 * v);
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * lda + kk);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i * NV + v] = _mm256_fmadd_ps(av, bv[v], acc[i * NV + v]);
    }
  }

#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      float* dst = c + i * ldc + 8 * v;
      __m256 r = acc[i * NV + v];
      if (MASKED && v == NV - 1) {
        if (accumulate) r = _mm256_add_ps(_mm256_maskload_ps(dst, last_mask), r);
        _mm256_maskstore_ps(dst, last_mask, r);
      } else {
        if (accumulate) r = _mm256_add_ps(_mm256_loadu_ps(dst), r);
        _mm256_storeu_ps(dst, r);
      }
    }
  }
}

constexpr int kNnMr = 6;

// [mr - 1][variant]: 16 full, 16 with the second vector masked, 8 full, 8 masked.
constexpr MicroNn kMicroNn[kNnMr][4] = {
    {micro_nn<1, 2, false>, micro_nn<1, 2, true>, micro_nn<1, 1, false>, micro_nn<1, 1, true>},
    {micro_nn<2, 2, false>, micro_nn<2, 2, true>, micro_nn<2, 1, false>, micro_nn<2, 1, true>},
    {micro_nn<3, 2, false>, micro_nn<3, 2, true>, micro_nn<3, 1, false>, micro_nn<3, 1, true>},
    {micro_nn<4, 2, false>, micro_nn<4, 2, true>, micro_nn<4, 1, false>, micro_nn<4, 1, true>},
    {micro_nn<5, 2, false>, micro_nn<5, 2, true>, micro_nn<5, 1, false>, micro_nn<5, 1, true>},
    {micro_nn<6, 2, false>, micro_nn<6, 2, true>, micro_nn<6, 1, false>, micro_nn<6, 1, true>},
};

}  // namespace

QSERVE_AVX2 void gemm_nt_block_avx2(const float* a, int64_t lda, const float* b, int64_t ldb,
                                    float* c, int64_t ldc, int64_t m, int64_t n, int64_t k,
                                    bool accumulate) {
  // A's 4-row panel stays in L1 while the B block streams past it from L2.
  for (int64_t i = 0; i < m; i += kNtMr) {
    const int64_t mr = std::min<int64_t>(kNtMr, m - i);
    const float* ai = a + i * lda;
    float* ci = c + i * ldc;
    int64_t j = 0;
    if (mr == kNtMr) {
      for (; j + kNtNr <= n; j += kNtNr) {
        micro_nt<kNtMr, kNtNr>(ai, lda, b + j * ldb, ldb, ci + j, ldc, k, accumulate);
      }
    }
    for (; j < n; j += kNtNr) {
      const int64_t nr = std::min<int64_t>(kNtNr, n - j);
      kMicroNt[mr - 1][nr - 1](ai, lda, b + j * ldb, ldb, ci + j, ldc, k, accumulate);
    }
  }
}

QSERVE_AVX2 void gemm_nn_block_avx2(const float* a, int64_t lda, const float* b, int64_t ldb,
                                    float* c, int64_t ldc, int64_t m, int64_t n, int64_t k,
                                    bool accumulate) {
  for (int64_t i = 0; i < m; i += kNnMr) {
    const int64_t mr = std::min<int64_t>(kNnMr, m - i);
    const float* ai = a + i * lda;
    float* ci = c + i * ldc;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      kMicroNn[mr - 1][0](ai, lda, b + j, ldb, ci + j, ldc, k, 8, accumulate);
    }
    const int64_t rem = n - j;
    if (rem > 8) {
      kMicroNn[mr - 1][1](ai, lda, b + j, ldb, ci + j, ldc, k, rem - 8, accumulate);
    } else if (rem == 8) {
      kMicroNn[mr - 1][2](ai, lda, b + j, ldb, ci + j, ldc, k, 8, accumulate);
    } else if (rem > 0) {
      kMicroNn[mr - 1][3](ai, lda, b + j, ldb, ci + j, ldc, k, rem, accumulate);
    }
  }
}

}  // namespace qserve::cpu::detail

#else  // not x86: never called, because use_avx2() is false there

#include "backend/cpu/gemm_kernels.h"

namespace qserve::cpu::detail {
void gemm_nt_block_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  gemm_nt_block_portable(a, lda, b, ldb, c, ldc, m, n, k, accumulate);
}
void gemm_nn_block_avx2(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                        int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  gemm_nn_block_portable(a, lda, b, ldb, c, ldc, m, n, k, accumulate);
}
}  // namespace qserve::cpu::detail

#endif
