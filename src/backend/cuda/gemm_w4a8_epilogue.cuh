// The W4A8 fp16 epilogues (quant/gemm_w4a8.h) as device functors, shared by the simple dp4a
// kernels (gemm_w4a8.cu) and the small-M kernel (gemm_w4a8_fast.cu). Every fp32 operation is
// an explicit correctly rounded intrinsic in the CPU reference's order, so nvcc cannot contract
// or reorder anything and y is bit-identical to the reference. Internal to src/backend/cuda.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/quant_device.cuh"

namespace qserve::cuda::detail {

// Asks L2 for the line holding p (no register, no wait): the small-M kernels issue these for
// their epilogue operands at start, so the epilogue after the K loop does not wait on DRAM.
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

struct W4PerChannelEpi {
  const uint16_t* a_scale;
  const uint16_t* a_sum;
  const uint16_t* s1;
  const uint16_t* s1_szeros;
  const uint16_t* bias;
  uint16_t* y;
  int32_t* acc_out;
  int64_t n_total;
  // Thread i of the CTA prefetches channel n0 + i (i < rows: the CTA's channels) and token i
  // (i < m) operands.
  __device__ void prefetch(int64_t n0, int rows, int64_t m) const {
    const int i = static_cast<int>(threadIdx.x);
    if (i < rows && n0 + i < n_total) {
      prefetch_l2(s1 + n0 + i);
      prefetch_l2(s1_szeros + n0 + i);
    }
    if (i < m) {
      prefetch_l2(a_scale + i);
      prefetch_l2(a_sum + i);
    }
  }
  // The operands of output (m, n), loaded apart from the arithmetic so a kernel can issue the
  // loads before it waits for the accumulator (the small-M split-K reduction does).
  struct Operands {
    uint16_t s1, s1_szero, a_scale, a_sum, bias;
  };
  __device__ Operands load(int64_t m, int64_t n) const {
    return {s1[n], s1_szeros[n], a_scale[m], a_sum[m], bias != nullptr ? bias[n] : uint16_t{0}};
  }
  __device__ void finish(int64_t m, int64_t n, int32_t acc, const Operands& o) const {
    const int64_t at = m * n_total + n;
    if (acc_out != nullptr) acc_out[at] = acc;
    // fma(a_scale, float(acc) * s1, -(s1_szero * a_sum)), both products rounded first.
    const float scaled_acc = __fmul_rn(__int2float_rn(acc), h2f(o.s1));
    const float zero_term = __fmul_rn(h2f(o.s1_szero), h2f(o.a_sum));
    __half v = __float2half_rn(__fmaf_rn(h2f(o.a_scale), scaled_acc, -zero_term));
    if (bias != nullptr) v = __hadd_rn(v, __ushort_as_half(o.bias));
    y[at] = __half_as_ushort(v);
  }
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const {
    finish(m, n, acc, load(m, n));
  }
};

struct W4G128Epi {
  const uint16_t* a_scale;
  const uint16_t* s1;
  const uint16_t* bias;
  uint16_t* y;
  int32_t* acc_out;
  int64_t n_total;
  __device__ void prefetch(int64_t n0, int rows, int64_t m) const {
    const int i = static_cast<int>(threadIdx.x);
    if (i < rows && n0 + i < n_total) prefetch_l2(s1 + n0 + i);
    if (i < m) prefetch_l2(a_scale + i);
  }
  struct Operands {
    uint16_t s1, a_scale, bias;
  };
  __device__ Operands load(int64_t m, int64_t n) const {
    return {s1[n], a_scale[m], bias != nullptr ? bias[n] : uint16_t{0}};
  }
  __device__ void finish(int64_t m, int64_t n, int32_t acc, const Operands& o) const {
    const int64_t at = m * n_total + n;
    if (acc_out != nullptr) acc_out[at] = acc;
    const float scale = __fmul_rn(h2f(o.s1), h2f(o.a_scale));
    __half v = __float2half_rn(__fmul_rn(__int2float_rn(acc), scale));
    if (bias != nullptr) v = __hadd_rn(v, __ushort_as_half(o.bias));
    y[at] = __half_as_ushort(v);
  }
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const {
    finish(m, n, acc, load(m, n));
  }
};

// Four g128 weight bytes from four code bytes c_i (any values 0..255) and one group's s2 / zero:
//   out_i = (c_i * uint8(s2) + uint8(zero)) mod 256  ==  quant::g128_int8_row's wrap_i8(q*s2+z)
// (c * s2 mod 256 does not depend on whether s2 is read signed or unsigned). The products are
// formed two bytes at a time in 16-bit lanes (<= 255 * 255 < 2^16, so no lane carries into the
// next), and the zero is added byte-wise with the carries between bytes suppressed.
__device__ __forceinline__ uint32_t g128_bytes(uint32_t codes, uint32_t s2u8, uint32_t zero4) {
  const uint32_t even = ((codes & 0x00FF00FFu) * s2u8) & 0x00FF00FFu;
  const uint32_t odd = (((codes >> 8) & 0x00FF00FFu) * s2u8) & 0x00FF00FFu;
  const uint32_t prod = even | (odd << 8);
  return ((prod & 0x7F7F7F7Fu) + (zero4 & 0x7F7F7F7Fu)) ^ ((prod ^ zero4) & 0x80808080u);
}

}  // namespace qserve::cuda::detail
