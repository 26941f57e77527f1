// SmoothAttention grid search (qoq-algorithm.md §1.4): 39 candidates (alpha, beta) in
// {(0, 0)} + {(i/20, 0)} + {(i/20, 1 - i/20)}, i = 1..19, scored by the squared error of the
// attention block's output (o_proj included) with only the keys quantized (KV4: asymmetric uint4
// per token and KV head, fp16 scale and post-scale zero), against the unquantized block, summed
// over calibration samples. DeepCompressor sums over all 128 samples; the search here uses the
// first `max_samples` (default 4) to keep it affordable on a CPU (each candidate re-runs
// attention).
#pragma once

#include <cstdint>
#include <span>

#include "qoq/fp_layer.h"

namespace qserve::qoq {

struct SmoothAttentionChoice {
  double alpha = 0.5;
  double beta = 0.0;
  double error = 0.0;           // of the chosen candidate
  double error_identity = 0.0;  // of lambda = 1 (no smoothing)
  int64_t samples = 0;
};

// x [samples * seq_len, H]: the layer's calibration inputs; qmax, kmax: post-RoPE abs-max of the
// (unsmoothed) layer's queries and keys.
SmoothAttentionChoice search_smooth_attention(const FpLayer& layer, const ModelConfig& cfg,
                                              std::span<const float> inv_freq, const float* x,
                                              int64_t samples, int64_t seq_len,
                                              std::span<const float> qmax,
                                              std::span<const float> kmax, int64_t max_samples = 4);

// KV4 fake quantization of one group of values in place (DeepCompressor's key quantizer).
void fake_quantize_kv4(float* x, int64_t n);

}  // namespace qserve::qoq
