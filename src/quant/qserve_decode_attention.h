// QServe's decode attention kernel (fused_attention.single_query_attention, TRT-LLM masked MHA;
// qserve-compat.md §7.3) emulated on the CPU with its fp16 rounding points and reduction order,
// for head_dim 128 (the only size QServe instantiates) and its fixed 256 threads per block.
//
// quant/attention_ref.h is the plain fp32 reference; this one is what the model's QServe-numerics
// mode (LoadOptions::qserve_numerics) uses for decode steps, so that it agrees with an independent
// emulation of the same kernel (tools/qserve_reference) nearly bit for bit: with fp16 activations
// a single differently rounded value flips A8 codes downstream and the difference cascades.
//
// For one query head (KV head h / (Hq / Hkv)) and tlength = context_len - 1 cached positions:
//   own score   32 threads x 4 channels (thread j: 4j..4j+3): acc = q0*k0, then
//               acc = fma(q_c, k_c, acc) in fp32; XOR butterfly over 32 lanes; times
//               fl32(1/sqrt(128)). k is the current token's un-quantized fp16 K.
//   cached      16 threads x 8 channels (thread i: 8i..8i+7), K dequantized to fp16 (§6.3); two
//   scores      fp16 lanes, each fp16(q*k) then three fp16 FMAs (one rounding each) - KV4: lane 0
//               = channels 0..3, lane 1 = 4..7 (the kernel's [0,4,1,5,2,6,3,7] order puts them in
//               the halves of its half2 pairs); KV8: lane 0 = even, lane 1 = odd channels; the
//               lanes added in fp16, to fp32, XOR butterfly over 16 lanes, times the scale.
//   softmax     m = max; e_t = exp(s_t - m); thread t % 256 sums its e_t sequentially, then the
//               256-thread block sum (block_reduce.h); r = 1 / (sum + 1e-6);
//               p_t = fp16(e_t * r).
//   P*V         group g = t % 16 accumulates out_g = fma(p_t, v_t, out_g) in fp32 over its t in
//               increasing order, v_t the dequantized fp16 V, or the current token's fp16 V for
//               t = tlength; halving tree 16 -> 8 -> 4 -> 2 -> 1 where the upper half's partial
//               is rounded to fp16 and the lower half adds it in fp32; output fp16(out_0).
//
// Not emulated: QServe's __expf and rcp.approx (here exp is correctly rounded to fp32, computed
// in double, and 1/x is IEEE): a probability can then differ from the GPU's by an fp16 ulp.
// Whether nvcc contracts the current-token dot to FMAs is not known (doc §12); FMA is assumed.
#pragma once

#include <cstdint>
#include <span>

#include "quant/kv_cache.h"

namespace qserve::quant {

// The head_dim QServe's decode kernel supports.
inline constexpr int64_t kQServeDecodeHeadDim = 128;

// One decode step of one sequence with context_len >= 1 tokens (including the new one).
// q: [Hq, 128] and cur_k, cur_v: [Hkv, 128], all fp16 values (as floats; q after RoPE).
// Positions 0 .. context_len-2 are read from the pages. out: [Hq, 128] fp16 values.
// Throws qserve::Error for another head_dim, a page table that does not cover the cached
// positions or names pages outside the pool, or Hq not a multiple of Hkv.
void decode_attention_qserve(const KvPagesView& kv, std::span<const int64_t> page_table,
                             int64_t context_len, const float* q, int64_t num_heads,
                             const float* cur_k, const float* cur_v, float* out);

}  // namespace qserve::quant
