// One layer's KV append + attention over QServe's paged KV4/KV8 cache (model-internal).
//
// Semantics (qserve-compat.md §6.4, §7.2–7.3, extended to chunked prefill):
//  - K (after RoPE) and V of every new token are rounded to fp16 and quantized into the pages.
//  - A decode token (one new token with earlier context) attends to the dequantized pages for
//    positions 0 .. p-1 and to its own fp16 K/V unquantized: quant::decode_attention_paged.
//  - A prefill chunk attends to its own fp16 K/V unquantized and, when it has earlier context
//    (chunked prefill), to the dequantized pages of that context: quant::kv_gather +
//    quant::attention_unquantized.
//  - A sliding window (Mistral) limits every query to its last `window` positions, reading the
//    same K/V as above.
#pragma once

#include <cstdint>
#include <span>

#include "backend/ops.h"
#include "model/kv_cache.h"

namespace qserve {

// Rounds x[0..n) to fp16 values in place (the precision QServe's activations have) and writes
// the fp16 bits to bits[0..n).
void round_to_fp16(float* x, int64_t n, uint16_t* bits);

// q [T, heads, D] (post-RoPE, fp32); k, v [T, kv_heads, D] already rounded to fp16 values with
// their fp16 bits k16, v16 (round_to_fp16). The slots' page tables must cover
// context_len + num_tokens (PagedKvCache::reserve). out [T, heads, D].
void paged_attention_step(const float* q, const float* k, const float* v, const uint16_t* k16,
                          const uint16_t* v16, PagedKvCache& cache, int64_t layer,
                          std::span<const SeqSpan> seqs, int64_t heads, int64_t head_dim,
                          int64_t window, float* out);

}  // namespace qserve
