// Attention references for the quantized-KV path: decode over QServe-layout KV4/KV8 pages, and
// causal attention over unquantized K/V (what QServe's prefill does with FlashAttention-2).
//
// Both are fp32 references with GQA (query head h uses KV head h / (Hq / Hkv)), scores
// scaled by fl32(1/sqrt(D)) after the dot product, softmax in fp32 with max subtraction and
// exact exp, P·V accumulated in fp32, sequential over positions and channels.
//
// Decode follows QServe's semantics (qserve-compat.md §7.3) where they change results beyond
// rounding: K/V of cached positions are the dequantized fp16 values of kv_cache.h, and the
// current token's own K/V can be given unquantized (QServe attends to it from registers).
// It does NOT emulate the kernel's rounding structure: QServe forms the q·k partial dots in
// fp16 (chains of HFMA over 4 channels), uses __expf, stores probabilities as fp16 and reduces
// P·V partials through fp16; a CUDA port of that kernel should be compared with a tolerance
// (the tests use 2e-2 absolute on O(1) data between KV8 and unquantized attention).
#pragma once

#include <cstdint>
#include <span>

#include "quant/kv_cache.h"

namespace qserve::quant {

// One decode step of one sequence with context_len tokens (including the new one).
// q: [Hq, D] (post-RoPE, fp32 values). If cur_k/cur_v ([Hkv, D]) are given, positions
// 0..context_len-2 come from the pages and position context_len-1 from cur_k/cur_v (QServe's
// decode); if null, all context_len positions come from the pages. out: [Hq, D].
// Throws qserve::Error if the page table does not cover the cached positions, names pages
// outside the pool, or Hq is not a multiple of Hkv.
void decode_attention_paged(const KvPagesView& kv, std::span<const int64_t> page_table,
                            int64_t context_len, const float* q, int64_t num_heads,
                            const float* cur_k, const float* cur_v, float* out);

// Causal GQA attention over unquantized K/V of one sequence. q: [t, Hq, D] for the queries at
// positions q_pos0 .. q_pos0 + t - 1; k, v: [s, Hkv, D] for positions 0 .. s - 1 with
// s >= q_pos0 + t. Query i attends to positions 0 .. q_pos0 + i. out: [t, Hq, D].
void attention_unquantized(const float* q, int64_t t, const float* k, const float* v, int64_t s,
                           int64_t num_heads, int64_t kv_heads, int64_t head_dim, int64_t q_pos0,
                           float* out);

}  // namespace qserve::quant
