// Quantizing one linear layer to the codes and scales our checkpoint stores, with the grids of
// quant/rtn_quantizers.h (QoQ's recipe) and optional clipping search (per-channel W4) and GPTQ.
//
//  * W4 g128 (progressive): level 1 s1 = fp16(max|w| / 119) per row; the working matrix is
//    x = clamp(w / s1, +-119); level-2 grids (integer s2, integer post-scale zero) per 128-group of
//    x, fixed before GPTQ (static groups); each column is clamped to +-119 before rounding.
//  * W4 per-channel: uint4 asymmetric per row with DeepCompressor's fp16 post-scale zero over the
//    range [r * min, r * max]; r = 1, or the best of 81 ratios (1, then 1 - 0.8 k / 80, k = 1..80)
//    by the row's output error ||X_s (w^ - w)||^2 over the calibration subsample X_s.
//  * W8 per-channel: symmetric int8, s = fp16(max|w| / 127).
#pragma once

#include <cstdint>
#include <variant>

#include "qoq/gptq.h"
#include "qoq/layer_calibration.h"
#include "quant/weights.h"

namespace qserve::qoq {

enum class WeightScheme { kW4G128, kW4PerChannel, kW8 };

struct WeightQuantOptions {
  WeightScheme scheme = WeightScheme::kW4G128;
  bool gptq = true;
  bool clip_search = false;  // per-channel W4 only
  GptqOptions gptq_opts;
};

struct QuantizedLinear {
  std::variant<quant::W4PerChannel, quant::W4G128, quant::W8PerChannel> w;
  double weight_rel_error = 0.0;  // ||W^ - W||_F / ||W||_F
  double output_rel_error = 0.0;  // sum_rows d^T H d / sum_rows w^T H w (calibration inputs)
  double mean_clip_ratio = 1.0;   // per-channel clipping search: mean chosen ratio
  GptqInfo gptq;
};

// `site` holds the inputs' Hessian (needed by GPTQ and the output error) and subsample (needed by
// the clipping search), in the channel order of lin's columns.
QuantizedLinear quantize_linear(const cpu::LinearF32& lin, const InputSite& site,
                                const WeightQuantOptions& opts);

// The fp32 weights [n, k] the quantized linear stands for (quant::dequantize of the variant).
std::vector<float> dequantized(const QuantizedLinear& q);

// Per-row clipping ratios for per-channel W4 (see above); x_sample [rows, k].
std::vector<float> search_clip_ratios(const cpu::LinearF32& lin, const float* x_sample,
                                      int64_t sample_rows);

}  // namespace qserve::qoq
