// `qserve quantize`: the QoQ pipeline (qoq-algorithm.md §1) from an HF fp16/bf16/fp32 Llama-family
// folder to our quantized checkpoint, streaming one decoder layer at a time:
//
//   fold norms -> residual Hadamard rotation + per-head V/O Hadamard -> calibration pass (fp32
//   layer outputs feed the next layer) -> reorder o_proj / down_proj inputs (g128) ->
//   SmoothAttention -> down_proj smoothing -> per linear: clipping search (per-channel W4) and
//   GPTQ (or RTN) on the static grids -> QServe tensors written at once.
//
// docs/quantization.md describes every stage, the settings and the measured results.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/hf_config.h"
#include "qoq/weight_quantization.h"

namespace qserve::qoq {

struct QuantizeOptions {
  std::string model_dir;
  std::string out_dir;
  std::string scheme = "w4a8kv4-g128";  // w4a8kv4-g128 | w4a8kv4 | w8a8kv8
  std::string calib_path;
  std::string calib_separator;  // plain text: document separator ("" = one document per line)
  int64_t samples = 128;
  int64_t seq_len = 1024;
  uint64_t seed = 42;
  std::optional<double> alpha, beta;   // down_proj smoothing; defaults per scheme
  std::string smooth_attn = "manual";  // manual | search | none
  bool gptq = true;
  bool rotation = true;
  bool reorder = true;  // g128 only
  bool smooth_down = true;
  bool clip_search = true;  // per-channel W4 only
  std::string device = "cpu";
  bool progress = true;  // per-layer progress line on stderr
};

// The weight scheme of a --scheme spelling; throws qserve::Error listing the valid ones.
WeightScheme parse_scheme(const std::string& s);

// Everything that can be checked before any work: the options, the model's architecture and
// shapes against the scheme and the transforms (Hadamard orders, g128 and packing divisibility,
// biases), every tensor's presence, dtype and shape, the tokenizer, and the calibration file.
// Throws qserve::Error with a message naming the problem. Returns the parsed config.
ModelConfig validate_quantize(const QuantizeOptions& o);

// Runs the pipeline; writes out_dir/model.safetensors, the tokenizer and config files, and
// out_dir/quantization.json. Returns the content of quantization.json.
nlohmann::json quantize_model(const QuantizeOptions& o);

}  // namespace qserve::qoq
