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

// ---- Vectorized rows (the fast norm + quant and SiLU·mul + quant kernels) --------------------
//
// QServe's logical block of 1024 threads, thread t owning elements t, t + 1024, t + 2048, ...,
// is played by kVecRowThreads = 128 physical threads: physical thread p plays logical threads
// 8p .. 8p+7, i.e. it owns the 8 consecutive columns [8p, 8p + 8) of every 1024-column chunk.
// It loads them with 16-byte accesses, and the 8 logical per-thread partials (sequential over
// the chunks, as the reference) are plain registers. Valid when cols >= 1024 (the logical block
// is then exactly 1024 for both block-size rules of block_reduce.h) and cols % 8 == 0.
inline constexpr int kVecRowThreads = 128;
inline constexpr int kVecPerThread = 8;
inline constexpr int kVecChunk = kVecRowThreads * kVecPerThread;  // 1024 columns
inline constexpr int kVecRowWarps = kVecRowThreads / kWarp;

// The first level of block_sum_exact for this layout: the XOR butterfly (masks 16, 8, 4, 2, 1)
// over one logical warp of 32 logical threads = 4 physical lanes (4w .. 4w+3) x 8 partials.
// Logical lane = 8 * (lane % 4) + k, so masks 16 and 8 flip physical lane bits 1 and 0 (a
// shuffle), masks 4, 2, 1 flip k inside the thread. The adds are the reference's adds (fp32
// addition is commutative, so only the tree matters). Returns the logical warp's total, equal
// in its 4 lanes; the logical warp index is threadIdx.x / 4. All lanes of the warp must call.
//
// kLaneStride: the physical lane distance between consecutive column groups (1 here; the split
// kernels of norm_quant.cu put kS lanes on one column group, so there masks 16 and 8 flip
// physical lane bits log2(kS) + 1 and log2(kS)). The logical warp index is then
// threadIdx.x / (4 * kLaneStride).
template <int kLaneStride = 1>
__device__ __forceinline__ float logical_warp_sum8(const float (&p)[kVecPerThread]) {
  static_assert(kLaneStride >= 1 && 4 * kLaneStride <= kWarp, "a logical warp spans one warp");
  float v[kVecPerThread];
#pragma unroll
  for (int k = 0; k < kVecPerThread; ++k) {
    v[k] = __fadd_rn(p[k], __shfl_xor_sync(kFullMask, p[k], 2 * kLaneStride));
  }
#pragma unroll
  for (int k = 0; k < kVecPerThread; ++k) {
    v[k] = __fadd_rn(v[k], __shfl_xor_sync(kFullMask, v[k], kLaneStride));
  }
#pragma unroll
  for (int mask = 4; mask >= 1; mask /= 2) {
    float n[kVecPerThread];
#pragma unroll
    for (int k = 0; k < kVecPerThread; ++k) n[k] = __fadd_rn(v[k], v[k ^ mask]);
#pragma unroll
    for (int k = 0; k < kVecPerThread; ++k) v[k] = n[k];
  }
  return v[0];
}

// Publishes a logical warp total (from logical_warp_sum8) into scratch[threadIdx.x / 4]; after
// a __syncthreads, logical_block_total(scratch) is block_sum_exact's result.
__device__ __forceinline__ void publish_logical_warp_sum(float total, float* scratch) {
  if ((threadIdx.x & 3) == 0) scratch[threadIdx.x >> 2] = total;
}
// The second level: the butterfly over the 32 logical warp totals. Every lane of the calling
// warp gets the block total.
__device__ __forceinline__ float logical_block_total(const float* scratch) {
  return warp_sum_butterfly(scratch[threadIdx.x % kWarp]);
}

// Max over one physical warp (order does not matter for max).
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int mask = 16; mask >= 1; mask /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, mask));
  return v;
}

// cvt_rni_sat_s8 as the single instruction it emulates (cvt.rni.sat.s8.f32: round to nearest
// even, saturate to [-128, 127], NaN -> 0), for four values packed into one word (byte i holds
// the code of the i-th argument).
__device__ __forceinline__ uint32_t cvt_s8_bits(float x) {
  uint32_t r;
  asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ uint32_t pack_s8x4(float a, float b, float c, float d) {
  const uint32_t ab = __byte_perm(cvt_s8_bits(a), cvt_s8_bits(b), 0x0040);
  const uint32_t cd = __byte_perm(cvt_s8_bits(c), cvt_s8_bits(d), 0x0040);
  return __byte_perm(ab, cd, 0x5410);
}

// Two fp32 values rounded to fp16 (each exactly __float2half_rn), packed low = a, high = b, in
// one conversion instruction.
__device__ __forceinline__ uint32_t f2h2(float a, float b) {
  const __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<const uint32_t*>(&h);
}
// The fp32 value of the low / high fp16 half of a packed word.
__device__ __forceinline__ float h2f_lo(uint32_t w) {
  return h2f(static_cast<uint16_t>(w & 0xffffu));
}
__device__ __forceinline__ float h2f_hi(uint32_t w) {
  return h2f(static_cast<uint16_t>(w >> 16));
}

// 8 consecutive elements as fp32 (exact widening of fp16), with 16-byte loads: one for fp16,
// two for fp32. p must be 16-byte aligned.
__device__ __forceinline__ void load8(const float* p, float (&v)[kVecPerThread]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8(const uint16_t* p, float (&v)[kVecPerThread]) {
  const uint4 a = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = h2f_lo(w[i]);
    v[2 * i + 1] = h2f_hi(w[i]);
  }
}
__device__ __forceinline__ void store8(float* p, const float (&v)[kVecPerThread]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
// Codes of 8 values (x_k * r, converted as cvt_rni_sat_s8) stored with one 8-byte access.
__device__ __forceinline__ void store_codes8(int8_t* p, const float (&v)[kVecPerThread], float r) {
  const uint32_t lo =
      pack_s8x4(__fmul_rn(v[0], r), __fmul_rn(v[1], r), __fmul_rn(v[2], r), __fmul_rn(v[3], r));
  const uint32_t hi =
      pack_s8x4(__fmul_rn(v[4], r), __fmul_rn(v[5], r), __fmul_rn(v[6], r), __fmul_rn(v[7], r));
  *reinterpret_cast<uint2*>(p) = make_uint2(lo, hi);
}

// The ending shared by the one-pass vectorized row kernels (norm_quant_vec_kernel,
// quantize_per_token_vec_kernel), after the barrier that published ex_max (each warp's max of
// |value|) and, when sum is non-null, ex_sum (publish_logical_warp_sum): the row's amax, the
// codes of the thread's chunks j with valid(j) (values xv, codes at q + base + j * 1024), then
// thread 0 writes the row's fp16 scale and sum. Why one function: the two kernels must give
// the reference's bits the same way; their last steps are the same steps.
template <int kChunks, typename Valid>
__device__ __forceinline__ void vec_row_codes_scale_sum(const float (&xv)[kChunks][kVecPerThread],
                                                        Valid valid, const float* ex_max,
                                                        const float* ex_sum, int8_t* q,
                                                        int64_t base, uint16_t* scale,
                                                        uint16_t* sum) {
  float amax = ex_max[0];
#pragma unroll
  for (int w = 1; w < kVecRowWarps; ++w) amax = fmaxf(amax, ex_max[w]);
  // amax = 0 gives r = inf, 0 * inf = NaN, code 0 (as the reference).
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (valid(j)) store_codes8(q + base + j * kVecChunk, xv[j], r);
  }
  const int t = static_cast<int>(threadIdx.x);
  if (t < kWarp) {
    constexpr float kInv127 = 1.0f / 127.0f;
    const float total = sum != nullptr ? logical_block_total(ex_sum) : 0.0f;
    if (t == 0) {
      scale[blockIdx.x] = f2h(__fmul_rn(amax, kInv127));
      if (sum != nullptr) sum[blockIdx.x] = f2h(total);
    }
  }
}

// Whether p is aligned to `bytes` (the vectorized kernels check their pointers on the host).
inline bool aligned_to(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace qserve::cuda::detail
