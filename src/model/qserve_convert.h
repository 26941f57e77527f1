// `qserve convert`: an LMQuant fake-quant dump (model.pt: the HF state dict with fake-quantized
// fp16 linear weights; scale.pt: `{P}.weight.scale.0` s1, `{P}.weight.scale.1` s2 (g128),
// `{P}.weight.zero` integer zero points; docs/reference-generator.md §5, qoq-algorithm §4) to our
// quantized checkpoint: DIR/model.safetensors with QServe's tensor names and layouts and the
// metadata of model/qserve_checkpoint.h, plus the HF folder's *.json and tokenizer.model.
#pragma once

#include <cstdint>
#include <string>

namespace qserve {

struct ConvertOptions {
  std::string from = "lmquant";  // only "lmquant" is implemented
  std::string model_dir;         // HF folder: config.json, tokenizer files
  std::string quant_path;        // folder holding model.pt and scale.pt
  int64_t group_size = -1;       // -1 (per-channel) or 128
  std::string out;               // output folder (created)
};

// Recovers the integer codes exactly (QServe's converter: per-channel Q = round(W/s1) + zero;
// g128 w8 = round(W/s1), Q = w8/s2 + zero) and throws qserve::Error naming the tensor when a
// zero point or a g128 code is not an integer in [0, 15], or W/s1 is not within 0.25 of an
// integer. Returns the number of quantized linears written.
int64_t convert_lmquant(const ConvertOptions& opts);

}  // namespace qserve
