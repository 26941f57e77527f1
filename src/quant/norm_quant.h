// Fused normalization + per-token int8 quantization, exactly as QServe's
// layernorm_ops.rms_norm_general[_fuse_sum] (TRT-LLM generalLayerNorm, qserve-compat.md §5.1),
// which W4A8 and W8A8 models use for input_layernorm and post_attention_layernorm.
//
// QServe's kernel is called "RMSNorm" but subtracts the mean: it is a LayerNorm without bias
// (upstream omniserve #32/#61). NormKind::kQServeLayerNorm reproduces that; NormKind::kRmsNorm
// is the same kernel without the mean (what a Llama checkpoint actually expects).
//
// Per row x[0..H) with blockDim B = 32 * ceil(min(H, 1024) / 32), thread t owning x_t, x_{t+B},
// ... (sums in the order of block_reduce.h), all fp32:
//   S1  = block_sum(x_i);  mu = S1 / H                   (kQServeLayerNorm; mu = 0 for kRmsNorm)
//   S2  = block_sum((x_i - mu)^2)   per thread: acc = fma(d, d, acc), d = x_i - mu
//   rho = 1 / sqrt(S2 / H + eps)
//   u_i = ((x_i - mu) * rho) * gamma_i                   (no FMA in this chain)
//   v_i = fp16_RN(u_i)
//   amax = max(fp16(1e-6), max_i |v_i|)                 (from the fp16-rounded v)
//   q_i  = cvt_rni_sat_s8( u_i * (127 * (1 / amax)) )   (quantizes the fp32 u, not v)
//   scale = fp16_RN(amax * fl32(1/127))
//   sum   = fp16_RN(block_sum(per-thread fp16 running sums s = fp16_RN(s + v_i)))   [optional]
//
// Deviations from QServe's binaries: QServe computes mu and S2/H with approximate division,
// rho with MUFU.RSQ and 1/amax with MUFU.RCP; here they are IEEE divide / sqrt. rho can differ
// by a few ulp, so u_i (and then a v_i by one fp16 ulp or a code by 1) can differ at rounding
// boundaries. Whether nvcc fused (x-mu)^2 into the accumulation is not known (doc §12); we use
// the FMA nvcc's -fmad=true normally emits. Everything else (reduction order, the fp16 steps)
// is QServe's.
#pragma once

#include <cstdint>

namespace qserve::quant {

enum class NormKind : uint8_t {
  kQServeLayerNorm,  // QServe's "RMSNorm": mean-subtracting LayerNorm without bias
  kRmsNorm,          // true RMSNorm: no mean subtraction
};

struct NormQuantOutputs {
  int8_t* q = nullptr;         // [rows, cols], required
  uint16_t* scale = nullptr;   // fp16 [rows], required
  uint16_t* sum = nullptr;     // fp16 [rows], optional: per-channel W4A8 only
  uint16_t* normed = nullptr;  // fp16 [rows, cols], optional: the v_i (for tests / debugging)
};

// x: [rows, cols] fp16 bits; gamma: fp16 [cols] or null for all ones (W4A8 never loads norm
// weights, qserve-compat.md §0.2).
void norm_quantize_per_token(const uint16_t* x, const uint16_t* gamma, float eps, int64_t rows,
                             int64_t cols, NormKind kind, const NormQuantOutputs& out);
// Same with fp32 inputs and weights, used as given (every later step is unchanged).
void norm_quantize_per_token(const float* x, const float* gamma, float eps, int64_t rows,
                             int64_t cols, NormKind kind, const NormQuantOutputs& out);

}  // namespace qserve::quant
