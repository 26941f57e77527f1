// `qserve convert`: a fake-quant dump of LMQuant or DeepCompressor (DUMP/model.pt: the HF state
// dict with fake-quantized fp16 linear weights; DUMP/scale.pt: their scales and zero points, key
// names in model/convert_dump.h; docs/checkpoints.md) to our quantized checkpoint:
// OUT/model.safetensors with QServe's tensor names and layouts and the metadata of
// model/qserve_checkpoint.h, plus the HF folder's *.json and tokenizer.model. With
// layout_qserve, OUT/pytorch_model.bin too: the same tensors as QServe's model-zoo checkpoint
// (torch.save format, formats/torch_writer.h), loadable by QServe itself.
#pragma once

#include <cstdint>
#include <string>

namespace qserve {

struct ConvertOptions {
  std::string from = "lmquant";  // "lmquant" | "deepcompressor"
  std::string model_dir;         // HF folder: config.json, tokenizer files
  std::string quant_path;        // folder holding model.pt and scale.pt
  int64_t group_size = -1;       // -1 (per-channel) or 128
  std::string out;               // output folder (created)
  bool layout_qserve = false;    // also write OUT/pytorch_model.bin (QServe's model zoo)
};

// Recovers the integer codes exactly, as QServe's converter does for `.zero` (per-channel
// Q = round(W/s1) + z; g128 w8 = round(W/s1), Q = w8/s2 + z) and DeepCompressor's for
// `.scaled_zero` (Q = round((W + z~)/s1); Q = (w8 + z~)/s2), and throws qserve::Error naming the
// tensor (and element) when a key is missing or misshapen, a zero point, s2 or code is not an
// integer in range, or W/s1 is not within 0.25 of an integer. Every decoder linear
// (model.layers.*.{self_attn,mlp}.*_proj.weight) of model.pt must be quantized. Returns the
// number of quantized linears written.
int64_t convert_dump(const ConvertOptions& opts);

}  // namespace qserve
