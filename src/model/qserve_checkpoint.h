// Loading QServe model-zoo checkpoints (qserve-compat.md §2): a folder with config.json and a
// pytorch_model.bin whose decoder linears carry QServe's quantized tensors
//   W4A8 per-channel  <linear>.qweight, .s1_scales, .s1_szeros
//   W4A8 g128         <linear>.qweight, .s1_scales, .s2_scales, .s2_zeros
//   W8A8              <linear>.weight (int8), .dequant_scale
// under HF's unfused names (q/k/v_proj, gate/up_proj). The packed tensors are unpacked to codes
// and scales (quant/qserve_format.h) and concatenated along N into our fused QKV / gate_up
// linears. docs/checkpoints.md describes the mapping.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "model/llama_model.h"
#include "model/precision.h"

namespace qserve {

// Our own quantized checkpoint (written by `qserve convert`, model/qserve_convert.h): a
// model.safetensors with QServe's tensor names and layouts and this metadata.
inline constexpr const char* kOurFile = "model.safetensors";
inline constexpr const char* kFormatKey = "format";
inline constexpr const char* kFormatValue = "qserve.cpp-quantized";
inline constexpr const char* kSchemeKey = "scheme";          // w4a8-per-channel | w4a8-g128 | w8a8
inline constexpr const char* kGroupSizeKey = "group_size";   // -1 | 128
inline constexpr const char* kLayoutKey = "layout_version";  // "1": qserve-compat.md §2.2/§3
// The scheme recorded in safetensors metadata, or nullopt when it is not our format.
std::optional<WeightPrecision> our_checkpoint_precision(
    const std::map<std::string, std::string>& metadata);

// The weight precision of the QServe checkpoint in `dir` (our model.safetensors with the
// metadata above, or a zoo pytorch_model.bin), or nullopt when `dir` holds no
// pytorch_model.bin with QServe quantized tensor names (an ordinary HF folder).
std::optional<WeightPrecision> detect_qserve_checkpoint(const std::string& dir);

// Loads the QServe checkpoint in `dir`. The weight precision comes from the tensors; the KV
// precision is opts.precision.kv when that is quantized (KV8/KV4), else QServe's default for the
// weights (KV4 for W4A8, KV8 for W8A8). opts.precision.weights must be W16A16 (the default,
// meaning "as stored") or equal the stored precision. As QServe's W4A8 loader does, W4A8 norm
// weights are not read and stay at 1.0 (zoo checkpoints fold them into the following linears);
// W8A8 norms are read. Embeddings and lm_head are read as stored (fp16) and held in fp32.
std::unique_ptr<LlamaModel> load_qserve_checkpoint(const std::string& dir, const LoadOptions& opts);

}  // namespace qserve
