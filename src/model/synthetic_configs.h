// Shapes of well-known models, for `--model synthetic:NAME` (random weights, real shapes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/hf_config.h"

namespace qserve {

// Names accepted after "synthetic:" (llama-3-8b, llama-2-7b, ..., tiny).
std::vector<std::string> synthetic_model_names();
// The config for NAME; throws qserve::Error listing the known names if unknown.
ModelConfig synthetic_config(const std::string& name);
// Parameters of a config's tensors (embedding, layers with their biases, final norm, untied
// lm_head): LlamaModel::parameter_count() without the weights (a synthetic_on_device model).
int64_t config_parameter_count(const ModelConfig& cfg);

}  // namespace qserve
