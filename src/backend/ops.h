// The ops contract: the shapes, layouts and numerics of every op the model forward uses. Each
// backend (backend/cpu is the specification, backend/cuda must match it) implements these.
//
// Conventions
//  - Activations are row-major [T, D] (T = tokens of a flattened varlen batch).
//  - Linear weights are HF layout [N, K] (out_features x in_features); y = x W^T + b.
//  - Attention heads are laid out [T, heads, head_dim]; GQA maps query head h to KV head
//    h / (num_heads / num_kv_heads).
//  - RoPE uses the NeoX pairing HF Llama uses: element i pairs with i + head_dim/2, angle
//    pos * inv_freq[i], inv_freq[i] = theta^(-2i/head_dim), optionally llama3-scaled.
//  - RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, computed in fp32 (true RMSNorm).
//  - SwiGLU: y = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
//
// Numerics of the fp32 reference path: every op computes in fp32 with fp32 accumulation;
// weights stored in fp16/bf16 are converted exactly to fp32 at load. Tolerances for other
// backends are stated next to each op in the parity harness (issue: CUDA backend).
#pragma once

#include <cstdint>

namespace qserve {

// Positions and causal structure of one sequence in a varlen batch.
struct SeqSpan {
  int64_t token_offset;  // first row of this sequence in the flattened [T, ...] activations
  int64_t num_tokens;    // new tokens this step (prefill chunk length, or 1 for decode)
  int64_t context_len;   // tokens already in the KV cache before this step
  int64_t kv_slot;       // which cache slot holds this sequence's K/V
};

}  // namespace qserve
