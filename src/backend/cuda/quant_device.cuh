// Device-side building blocks shared by the per-token quantization kernels (norm_quant.cu,
// act_quant.cu, silu_mul_quant.cu): the scalar conversions of quant/fp16_math.h and the block
// reduction of quant/block_reduce.h, written so that the GPU gets the CPU reference's bits.
//
// Rules that make that hold: every fp32 operation is an explicit correctly rounded intrinsic
// (__fadd_rn, __fmul_rn, __fmaf_rn, __fdiv_rn, __fsqrt_rn) so nvcc cannot contract or
// approximate it; fp16 conversions are __float2half_rn / __half2float (exact); the reductions
// add in exactly the tree order block_reduce.h emulates. Internal to src/backend/cuda.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace qserve::cuda::detail {

inline constexpr unsigned kFullMask = 0xffffffffu;
inline constexpr int kWarp = 32;

__device__ __forceinline__ float h2f(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}
__device__ __forceinline__ uint16_t f2h(float f) {
  return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float load_f(float v) {
  return v;
}
__device__ __forceinline__ float load_f(uint16_t h) {
  return h2f(h);
}

// quant::cvt_rni_sat_s8: round to nearest even, saturate to [-128, 127], NaN -> 0.
__device__ __forceinline__ int8_t cvt_rni_sat_s8(float x) {
  if (isnan(x)) return 0;
  const float r = rintf(x);
  if (r <= -128.0f) return -128;
  if (r >= 127.0f) return 127;
  return static_cast<int8_t>(static_cast<int>(r));
}

// XOR butterfly over a warp (masks 16, 8, 4, 2, 1); every lane ends with the total.
__device__ __forceinline__ float warp_sum_butterfly(float v) {
#pragma unroll
  for (int mask = 16; mask >= 1; mask /= 2) v = __fadd_rn(v, __shfl_xor_sync(kFullMask, v, mask));
  return v;
}

// quant::block_reduce_sum over one partial per thread. blockDim.x must be a multiple of 32 and
// <= 1024; threads beyond the logical block pass 0 (as the CPU pads missing lanes with 0).
// `scratch` holds >= 32 floats of shared memory. Every thread gets the total. Contains
// __syncthreads: call from all threads of the block.
__device__ __forceinline__ float block_sum_exact(float partial, float* scratch) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  const float w = warp_sum_butterfly(partial);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = w;
  __syncthreads();
  float total = 0.0f;
  if (warp == 0) {
    total = warp_sum_butterfly(lane < warps ? scratch[lane] : 0.0f);
    if (lane == 0) scratch[kWarp] = total;
  }
  __syncthreads();
  return scratch[kWarp];
}

// Max over the block (order does not matter for max). Same calling rules as block_sum_exact.
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
#pragma unroll
  for (int mask = 16; mask >= 1; mask /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, mask));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float m = lane < warps ? scratch[lane] : v;  // v: a value already in the max, a neutral pad
#pragma unroll
    for (int mask = 16; mask >= 1; mask /= 2) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, mask));
    if (lane == 0) scratch[kWarp] = m;
  }
  __syncthreads();
  return scratch[kWarp];
}

// Threads to launch for a logical block of `stride` threads: a whole number of warps.
inline int threads_for(int64_t stride) {
  return static_cast<int>((stride + kWarp - 1) / kWarp * kWarp);
}

}  // namespace qserve::cuda::detail
