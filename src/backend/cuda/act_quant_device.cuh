// The per-token quantization of one row by one block (quant::quantize_row_per_token), as a
// device function over an element accessor, so the standalone quant kernel and the fused
// SiLU·mul + quant kernel share the exact same arithmetic. Internal to src/backend/cuda.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/quant_device.cuh"

namespace qserve::cuda::detail {

// x_at(i) -> float: element i of the row (may be recomputed; it is called once per pass).
// Logical block `stride` (threads t >= stride own nothing). q: the row's codes; scale, sum: one
// fp16 each (sum may be null). scratch: >= 33 floats of shared memory. All threads must call.
//   amax = max |x_i|;  r = 127 * (1 / amax);  q_i = cvt_rni_sat_s8(x_i * r)
//   scale = fp16(amax * fl32(1/127));  sum = fp16(block_sum(per-thread sequential fp32 sums))
template <typename XAt>
__device__ void quantize_row_block(XAt x_at, int64_t cols, int stride, int8_t* q, uint16_t* scale,
                                   uint16_t* sum, float* scratch) {
  const int t = threadIdx.x;
  const bool active = t < stride;
  float amax = 0.0f;
  if (active) {
    for (int64_t i = t; i < cols; i += stride) amax = fmaxf(amax, fabsf(x_at(i)));
  }
  amax = block_max(amax, scratch);
  // 127 * rcp(amax), the product rounded to fp32; amax = 0 gives inf and then 0 * inf = NaN,
  // which converts to code 0, as the reference says.
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));
  float acc = 0.0f;
  if (active) {
    for (int64_t i = t; i < cols; i += stride) {
      const float v = x_at(i);
      q[i] = cvt_rni_sat_s8(__fmul_rn(v, r));
      acc = __fadd_rn(acc, v);
    }
  }
  constexpr float kInv127 = 1.0f / 127.0f;
  if (t == 0) *scale = f2h(__fmul_rn(amax, kInv127));
  if (sum != nullptr) {
    const float total = block_sum_exact(acc, scratch);
    if (t == 0) *sum = f2h(total);
  }
}

}  // namespace qserve::cuda::detail
