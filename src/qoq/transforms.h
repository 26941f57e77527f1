// QoQ's weight transforms (qoq-algorithm.md §1.2-1.4). Every one leaves the fp32 model's function
// unchanged (exactly in real arithmetic; to fp32 rounding in practice); they only move where the
// outliers sit before quantization.
//
// Conventions: a linear is y = x W^T + b with W [out, in]. A "channel permutation" perm maps new
// channel i to old channel perm[i]. Scales are per channel.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "qoq/fp_layer.h"
#include "qoq/hadamard.h"

namespace qserve::qoq {

struct HeadShape {
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t group() const { return heads / kv_heads; }  // query heads per KV head
};
HeadShape head_shape(const ModelConfig& cfg);

// ---- rotation.cpp ---------------------------------------------------------------------------
// W <- W diag(gamma) for the consumers of each norm (q, k, v after input_norm; gate, up after
// post_norm), then gamma := 1. QServe's W4A8 format assumes folded norms (it never reads them).
void fold_norms(FpLayer& l);
// lm_head [V, H] <- lm_head diag(final_norm); final_norm := 1.
void fold_final_norm(std::vector<float>& lm_head, int64_t hidden, std::vector<float>& final_norm);
// Residual-stream rotation of one layer: consumers (q, k, v, gate, up) W <- W R; producers
// (o, down) W <- R^T W and b <- R^T b. The norms must be folded (gamma = 1) first, since
// RMSNorm(x R) = RMSNorm(x) R only without a per-channel gain.
void rotate_residual(FpLayer& l, const HadamardRotation& r);
// Rows of an [n, hidden] matrix (embedding or lm_head): W <- W R.
void rotate_rows(std::vector<float>& w, const HadamardRotation& r);
// Per-head Hadamard on V/O: each KV head's v rows (and bias) <- R_d^T rows; each query head's
// o columns <- columns R_d. Attention mixes V rows linearly per head, so o_proj(attn) is unchanged;
// the V cache then holds rotated values.
void rotate_value_output(FpLayer& l, const HadamardRotation& rd, const HeadShape& hs);

// ---- reorder.cpp ----------------------------------------------------------------------------
// Stable ascending argsort.
std::vector<int64_t> ascending_order(std::span<const float> m);
// down_proj input channels: down columns, gate and up rows (and biases) permuted by perm [I].
void reorder_down(FpLayer& l, const std::vector<int64_t>& perm);
// o_proj input permutation from the per-channel abs-max of its inputs m [q_dim]: per KV group the
// elementwise max over its query heads, sorted ascending within the head, the same order for every
// head of the group. Returns perm over q_dim (o columns); v_perm [kv_dim] gets the matching order
// of the v rows.
std::vector<int64_t> o_proj_order(std::span<const float> m, const HeadShape& hs,
                                  std::vector<int64_t>& v_perm);
void reorder_o(FpLayer& l, const std::vector<int64_t>& o_perm, const std::vector<int64_t>& v_perm);

// ---- smoothing.cpp --------------------------------------------------------------------------
// SmoothAttention scales lambda [kv_dim] from the post-RoPE abs-max of queries qmax [q_dim] and
// keys kmax [kv_dim]: a = kmax, b = max over the query heads of a KV group; both tied over RoPE
// pairs (c, c + d/2); lambda = a^alpha / b^beta (alpha = 0: b^-beta); 0 -> 1; any NaN/inf -> all 1.
std::vector<float> smooth_attention_scales(std::span<const float> qmax, std::span<const float> kmax,
                                           const HeadShape& hs, double alpha, double beta);
// q rows (and bias) * lambda of their KV head's channel, k rows / lambda: q.k is unchanged and,
// lambda being equal on a RoPE pair, RoPE commutes with it.
void apply_smooth_attention(FpLayer& l, std::span<const float> lambda, const HeadShape& hs);
// SmoothLinear on down_proj: s_j = xmax_j^alpha / (max_rows |W_down[:, j]|)^beta, same guards.
std::vector<float> down_smoothing_scales(std::span<const float> xmax, const cpu::LinearF32& down,
                                         double alpha, double beta);
// down columns * s, up rows (and bias) / s: SiLU(gate) * up is linear in up.
void apply_down_smoothing(FpLayer& l, std::span<const float> s);

}  // namespace qserve::qoq
