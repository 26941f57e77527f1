// One calibration pass through one decoder layer (fp32): the layer's output for the next layer
// and, per linear input site, the statistics every later stage needs. Since rotation, reordering
// and smoothing are exact, the statistics of the transformed layer follow from these by the same
// permutations and scales (InputSite::permute / divide), so each layer runs the calibration set
// once - DeepCompressor re-runs it per stage, with the same result in exact arithmetic.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "qoq/fp_layer.h"

namespace qserve::qoq {

// The inputs x of one group of linears sharing them (qkv, o, gate_up, down).
struct InputSite {
  int64_t k = 0;
  std::vector<double> hessian;  // [k, k] sum over tokens of x x^T (GPTQ), empty if not asked
  std::vector<float> absmax;    // [k] max over tokens of |x_j| (reordering, smoothing)
  std::vector<float> sample;    // [sample_rows, k] a fixed subsample of inputs (clipping search)
  int64_t sample_rows = 0;

  // New channel i is old channel perm[i].
  void permute(const std::vector<int64_t>& perm);
  // x_j -> x_j / s_j.
  void divide(std::span<const float> s);
};

struct LayerCalibration {
  InputSite qkv, o, gate_up, down;
  std::vector<float> q_absmax;  // [q_dim] post-RoPE
  std::vector<float> k_absmax;  // [kv_dim] post-RoPE
  int64_t tokens = 0;
};

struct CalibrationPassOptions {
  bool hessians = true;
  // Rows kept in InputSite::sample: blocks of 64 consecutive tokens, every floor(blocks / 8)-th
  // block (DeepCompressor's ~512-token subsample). 0: none.
  bool subsample = false;
};

// Runs the fp32 layer (true RMSNorm with its norm weights, RoPE, causal GQA attention with the
// config's sliding window, SwiGLU) on x [samples * seq_len, H], each sample a sequence starting at
// position 0; writes the layer's output to y (same shape; may not alias x).
LayerCalibration calibrate_layer(const FpLayer& layer, const ModelConfig& cfg,
                                 std::span<const float> inv_freq, const float* x, int64_t samples,
                                 int64_t seq_len, float* y, const CalibrationPassOptions& opts);

// Attention of one sequence for the SmoothAttention search: y [T, q_dim] = softmax(q k^T) v for
// post-RoPE q [T, heads, d] and k, v [T, kv_heads, d] (causal, sliding window as in the config).
void causal_attention(const float* q, const float* k, const float* v, int64_t t,
                      const ModelConfig& cfg, float* out);

}  // namespace qserve::qoq
