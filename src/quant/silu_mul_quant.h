// SiLU(gate) * up followed by per-token int8 quantization, as QServe runs it after the fused
// gate_up GEMM (activation_ops.silu_and_mul then invoke_quant[_fuse_sum], qserve-compat.md
// §5.3 and §5.2).
//
// gate_up rows are [gate (inter) | up (inter)] (gate rows come first in the fused GEMM).
//   silu_i = fp16_RN( g_i / (1 + exp(-g_i)) )      (fp32 math)
//   out_i  = fp16_RN( float(silu_i) * float(up_i) )
// then out (fp16) is quantized by quantize_per_token (act_quant.h), including the optional sum.
//
// Deviation from QServe's binaries: QServe evaluates exp with ex2.approx and the division with
// an approximate reciprocal; here both are IEEE (std::exp, '/'), so silu_i can differ by one
// fp16 ulp, rarely. The quantization step is then exact given out.
#pragma once

#include <cstdint>

namespace qserve::quant {

// out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i] in fp16, for gate_up [rows, 2*inter]
// (fp16 bits). out: [rows, inter] fp16.
void silu_mul(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out);
// Same with fp32 inputs, used as given; the output is still rounded to fp16 like QServe's.
void silu_mul(const float* gate_up, int64_t rows, int64_t inter, uint16_t* out);

// silu_mul then quantize_per_token. q: [rows, inter]; scale, sum: fp16 [rows] (sum may be
// null); out (the fp16 SiLU·mul result, [rows, inter]) may be null.
void silu_mul_quantize_per_token(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                                 uint16_t* scale, uint16_t* sum, uint16_t* out);
void silu_mul_quantize_per_token(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                                 uint16_t* scale, uint16_t* sum, uint16_t* out);

}  // namespace qserve::quant
