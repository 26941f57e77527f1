// Device helpers shared by the two tensor-core prefill kernels (attention_prefill_tc.cu,
// attention_prefill_wgmma.cu): shared-memory addressing and stores, the MUFU exp2, fp16 packing,
// and the bit-exact dequantization of cached KV4/KV8 rows into fp16 tiles. Internal to
// src/backend/cuda. (Their cp.async / barrier wrappers differ on purpose: the wgmma kernel's
// carry memory clobbers for its mbarrier protocol.)
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "backend/cuda/attention_kv_device.cuh"

namespace qserve::cuda::pf {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void st_shared16(uint32_t dst, uint4 v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

// 2^x on the MUFU (max relative error ~2^-22, exp2(-inf) = 0). FTZ: results below 2^-126 are
// weights < 2^-141 of the row max, far below the fp16 P rounding; exp2f's denormal fix-up
// would cost three extra instructions per score.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);  // .x (low 16 bits) = lo
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}
__device__ __forceinline__ uint32_t pack_halves(__half lo, __half hi) {
  const __half2 h = __halves2half2(lo, hi);
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

// Dequantized channels 8c..8c+7 of one cached (token, KV head) row, as 8 fp16 values packed
// for a 16-byte shared store. Mirrors kv_row/kv_pair of attention_kv_device.cuh operation for
// operation (that file defines the bit-exact values); only the byte loads are vectorized.
template <KvFormat F>
__device__ __forceinline__ uint4 dequant_chunk(const uint8_t* page, const attn::PageGeom& g,
                                               int head, int slot, int c) {
  const attn::KvRow<F> r = attn::kv_row<F>(page, g, head, slot);
  uint32_t w[4];
  if constexpr (F == KvFormat::kv8) {
    const uint2 b = *reinterpret_cast<const uint2*>(r.data + 8 * c);
    const uint32_t words[2] = {b.x, b.y};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t wd = words[i >> 1];
      const int sh = 16 * (i & 1);
      const float q0 = static_cast<float>((wd >> sh) & 0xffu);
      const float q1 = static_cast<float>((wd >> (sh + 8)) & 0xffu);
      const __half x0 = __float2half_rn(__fmul_rn(r.s, __fsub_rn(q0, r.z)));
      const __half x1 = __float2half_rn(__fmul_rn(r.s, __fsub_rn(q1, r.z)));
      w[i] = pack_halves(x0, x1);
    }
  } else {
    static_assert(F == KvFormat::kv4, "KV16 pages are copied, not dequantized");
    const uint32_t b = *reinterpret_cast<const uint32_t*>(r.data + 4 * c);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t byte = (b >> (8 * i)) & 0xffu;  // channels 2i (low nibble), 2i+1 (high)
      const __half lo = __ushort2half_rn(static_cast<unsigned short>(byte & 0x0fu));
      const __half hi = __ushort2half_rn(static_cast<unsigned short>(byte >> 4));
      w[i] = pack_halves(__hfma(lo, r.s16, r.zterm16), __hfma(hi, r.s16, r.zterm16));
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

}  // namespace qserve::cuda::pf
