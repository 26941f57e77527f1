// A simple shared-memory tiled int8 x int8 -> int32 GEMM with dp4a, parameterized by how the
// weight bytes are produced (plain int8, 4-bit codes, g128's register dequantization) and by
// the epilogue. Used by gemm_w4a8.cu and gemm_w8a8.cu. This is the correctness baseline: the
// integer sums are exact (no int32 overflow within the range the CPU reference checks), so the
// result does not depend on the summation order and equals the CPU's bit for bit. The fast
// Hopper kernels (wgmma/mma, packed layouts) are a later issue.
//
// C[m, n] = sum_k A[m, k] * W[n, k]; A int8 [M, K] row-major, W [N, K] (HF layout).
// Tile 64 x 64 outputs per block of 256 threads (16 x 16), each thread 4 x 4 outputs strided
// by 16; K in steps of 64 bytes (16 dp4a words). Out-of-range rows/columns/k read as 0.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qserve::cuda::detail {

inline constexpr int kTileM = 64;
inline constexpr int kTileN = 64;
inline constexpr int kTileK = 64;           // bytes
inline constexpr int kTileKW = kTileK / 4;  // 32-bit words
inline constexpr int kGemmThreads = 256;

__device__ __forceinline__ uint32_t pack4(int b0, int b1, int b2, int b3) {
  return (static_cast<uint32_t>(b0) & 0xffu) | ((static_cast<uint32_t>(b1) & 0xffu) << 8) |
         ((static_cast<uint32_t>(b2) & 0xffu) << 16) | ((static_cast<uint32_t>(b3) & 0xffu) << 24);
}

// WeightSrc must provide:
//   __device__ int byte(int64_t n, int64_t k) const;        // signed weight in [-128, 127]
//   __device__ uint32_t word(int64_t n, int64_t k) const;   // 4 weights k..k+3 (k % 4 == 0,
//                                                            // all in range), byte i = k + i
// Epilogue must provide:
//   __device__ void operator()(int64_t m, int64_t n, int32_t acc) const;
// kVec: K % 4 == 0 and A is 4-byte aligned, so whole words can be loaded.
template <bool kVec, typename WeightSrc, typename Epilogue>
__global__ void __launch_bounds__(kGemmThreads)
    int8_gemm_kernel(const int8_t* __restrict__ a, int64_t M, int64_t N, int64_t K, WeightSrc w,
                     Epilogue epi) {
  __shared__ uint32_t As[kTileM][kTileKW + 1];
  __shared__ uint32_t Ws[kTileN][kTileKW + 1];
  const int tid = threadIdx.x;
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;

  int32_t acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    // Each thread loads 4 words of A and 4 words of W (64 rows x 16 words each).
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int idx = tid + l * kGemmThreads;
      const int r = idx / kTileKW;
      const int c = idx % kTileKW;
      const int64_t k = k0 + 4 * c;
      {  // A
        const int64_t m = m0 + r;
        uint32_t v = 0;
        if (m < M) {
          const int8_t* p = a + m * K;
          if (kVec && k + 3 < K) {
            v = *reinterpret_cast<const uint32_t*>(p + k);
          } else {
            v = pack4(k < K ? p[k] : 0, k + 1 < K ? p[k + 1] : 0, k + 2 < K ? p[k + 2] : 0,
                      k + 3 < K ? p[k + 3] : 0);
          }
        }
        As[r][c] = v;
      }
      {  // W
        const int64_t n = n0 + r;
        uint32_t v = 0;
        if (n < N) {
          if (kVec && k + 3 < K) {
            v = w.word(n, k);
          } else {
            v = pack4(k < K ? w.byte(n, k) : 0, k + 1 < K ? w.byte(n, k + 1) : 0,
                      k + 2 < K ? w.byte(n, k + 2) : 0, k + 3 < K ? w.byte(n, k + 3) : 0);
          }
        }
        Ws[r][c] = v;
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileKW; ++kk) {
      int av[4], wv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = static_cast<int>(As[ty + 16 * i][kk]);
#pragma unroll
      for (int j = 0; j < 4; ++j) wv[j] = static_cast<int>(Ws[tx + 16 * j][kk]);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], wv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < N) epi(m, n, acc[i][j]);
    }
  }
}

// Launches int8_gemm_kernel over a grid of (ceil(N/64), ceil(M/64)) tiles, choosing the word
// path when K % 4 == 0 and the pointers allow it (`vec_ok` covers the weight source).
template <typename WeightSrc, typename Epilogue>
void launch_int8_gemm(const int8_t* a, int64_t M, int64_t N, int64_t K, const WeightSrc& w,
                      bool w_vec_ok, const Epilogue& epi, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((N + kTileN - 1) / kTileN),
                  static_cast<unsigned>((M + kTileM - 1) / kTileM));
  const bool vec = K % 4 == 0 && reinterpret_cast<uintptr_t>(a) % 4 == 0 && w_vec_ok;
  if (vec) {
    int8_gemm_kernel<true><<<grid, kGemmThreads, 0, stream>>>(a, M, N, K, w, epi);
  } else {
    int8_gemm_kernel<false><<<grid, kGemmThreads, 0, stream>>>(a, M, N, K, w, epi);
  }
}

}  // namespace qserve::cuda::detail
