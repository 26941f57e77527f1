// W4A8 GEMMs (QServe's qgemm/w4a8_per_chn and w4a8_per_group, qserve-compat.md §4), split into
// the integer stage, which any backend must reproduce exactly, and the fp16 epilogue.
//
// Operands: int8 activations aq [m, k] row-major with per-token fp16 scale (and, per-channel
// only, the fp16 sum of the unquantized activations) from act_quant.h / norm_quant.h /
// silu_mul_quant.h; weights in natural layout (weights.h). Outputs: int32 acc [m, n] and fp16
// y [m, n], row-major. Work is split over output channels on ThreadPool::global().
//
// Per-channel (§4.1):
//   acc[m,n] = sum_k aq[m,k] * Q[n,k]                   exact int32, Q = raw codes 0..15
//   y[m,n]   = fp16_RN( fma( a_scale[m], float(acc) * s1[n], -(s1_szeros[n] * a_sum[m]) ) )
// float(acc) is RN; the two products are each rounded to fp32; the FMA is the contraction
// nvcc emits for QServe's `acc*ws*as - wsz*asum` (observed in SASS, §11).
//
// g128 (§4.2):
//   w8[n,k]  = int8((Q[n,k] * s2[n,g] + uint8(s2_zeros[n,g])) mod 256),  g = k / 128
//   acc[m,n] = sum_k aq[m,k] * w8[n,k]                  exact int32 over all of K (the zero
//              point is applied in the integer domain, so no per-group float step exists)
//   y[m,n]   = fp16_RN( float(acc) * (s1[n] * a_scale[m]) )   (scale product rounded first)
//
// Optional bias (fp16 [n]): y = fp16_RN(y + bias), PyTorch's in-place fp16 add (§4.3).
//
// Bit-exactness: the accumulators are exact; the epilogues use only correctly rounded fp32
// operations in QServe's order, so they match QServe bit for bit (QServe's FTZ cannot matter:
// with fp16 operands no intermediate is an fp32 subnormal, docs/numerics.md). Tolerance used by
// the tests against a double reference:
//   |y - y_ref| <= ulp16(y_ref)/2 + 2^-22 * (|t1| + |t2|)
// with t1 = a_scale * s1 * acc and t2 = s1_szeros * a_sum
// (the second term only bites under cancellation, where the per-channel zero correction is
// large compared to y).
#pragma once

#include <cstdint>

#include "quant/weights.h"

namespace qserve::quant {

// ---- per-channel ----
void w4a8_per_channel_accumulate(const int8_t* aq, int64_t m, const W4PerChannel& w, int32_t* acc);
// One output element of the per-channel epilogue (fp16 bits in, fp16 bits out).
uint16_t w4a8_per_channel_output(int32_t acc, uint16_t a_scale, uint16_t a_sum, uint16_t s1,
                                 uint16_t s1_szero);
void w4a8_per_channel_epilogue(const int32_t* acc, int64_t m, const uint16_t* a_scale,
                               const uint16_t* a_sum, const W4PerChannel& w, const uint16_t* bias,
                               uint16_t* y);
// accumulate + epilogue. bias may be null.
void w4a8_per_channel_gemm(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                           int64_t m, const W4PerChannel& w, const uint16_t* bias, uint16_t* y);

// ---- g128 ----
void w4a8_g128_accumulate(const int8_t* aq, int64_t m, const W4G128& w, int32_t* acc);
uint16_t w4a8_g128_output(int32_t acc, uint16_t a_scale, uint16_t s1);
void w4a8_g128_epilogue(const int32_t* acc, int64_t m, const uint16_t* a_scale, const W4G128& w,
                        const uint16_t* bias, uint16_t* y);
void w4a8_g128_gemm(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128& w,
                    const uint16_t* bias, uint16_t* y);

}  // namespace qserve::quant
