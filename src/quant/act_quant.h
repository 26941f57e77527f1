// Per-token symmetric int8 activation quantization, exactly as QServe's standalone quant kernel
// (fused_kernels.invoke_quant[_fuse_sum], qserve-compat.md §5.2). Used after attention (input of
// o_proj) and, through silu_mul_quant.h, after SiLU·mul (input of down_proj).
//
// Per row x[0..cols) (fp32 math; see docs/numerics.md):
//   amax     = max_i |x_i|                                  (exact)
//   q_i      = cvt_rni_sat_s8( x_i * (127 * (1 / amax)) )   (RN-even, saturate to [-128, 127])
//   scale    = fp16_RN( amax * fl32(1/127) )
//   sum      = fp16_RN( block_sum( per-thread sequential fp32 sums of x_i ) )   [optional]
// with blockDim = min(cols, 1024), thread t summing x_t, x_{t+B}, ... (block_reduce.h).
// amax = 0 gives scale 0 and all codes 0 (0 * inf = NaN converts to 0), as on the GPU.
//
// Matches QServe bit for bit except that 1/amax is the correctly rounded reciprocal where the
// GPU uses MUFU.RCP (<= 1 ulp apart): a code can then differ by 1 when x_i * r lands within an
// ulp of a .5 boundary. The scale and the sum do not depend on the reciprocal and match exactly.
//
// The `sum` output is what per-channel W4A8 subtracts in its epilogue (s1_szeros * a_sum): the
// sum of the activations *before* quantization. Pass sum = nullptr when it is not needed
// (g128 W4A8, W8A8).
#pragma once

#include <cstdint>

namespace qserve::quant {

// One row of fp32 values (the values the kernel reads after converting its fp16 input).
// q: [cols]; scale, sum: one fp16 each (sum may be null).
void quantize_row_per_token(const float* x, int64_t cols, int8_t* q, uint16_t* scale,
                            uint16_t* sum);

// x: [rows, cols] fp16 bits (QServe's input). q: [rows, cols]; scale, sum: fp16 [rows] (sum
// may be null). Rows run in parallel on ThreadPool::global().
void quantize_per_token(const uint16_t* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                        uint16_t* sum);
// Same with fp32 inputs, used as given (not rounded to fp16 first).
void quantize_per_token(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                        uint16_t* sum);

}  // namespace qserve::quant
