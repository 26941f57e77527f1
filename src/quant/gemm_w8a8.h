// W8A8 GEMM (QServe's qgemm/w8a8, qserve-compat.md §8.1), integer stage and fp16 epilogue.
//
//   acc[m,n] = sum_k aq[m,k] * w[n,k]                        exact int32
//   y[m,n]   = fp16_RN( float(acc) * (dequant_scale[n] * a_scale[m]) )
//
// aq [m, k] int8 row-major with per-token fp16 scales (no activation sum), w plain row-major
// int8 [n, k]. QServe's W8A8 linears have no bias. Bit-exact with QServe's epilogue; the tests'
// tolerance against a double reference is ulp16(y)/2 + 2^-22 * |y|.
#pragma once

#include <cstdint>

#include "quant/weights.h"

namespace qserve::quant {

void w8a8_accumulate(const int8_t* aq, int64_t m, const W8PerChannel& w, int32_t* acc);
uint16_t w8a8_output(int32_t acc, uint16_t a_scale, uint16_t dequant_scale);
void w8a8_epilogue(const int32_t* acc, int64_t m, const uint16_t* a_scale, const W8PerChannel& w,
                   uint16_t* y);
void w8a8_gemm(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannel& w,
               uint16_t* y);

}  // namespace qserve::quant
