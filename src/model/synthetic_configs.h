// Shapes of well-known models, for `--model synthetic:NAME` (random weights, real shapes).
#pragma once

#include <string>
#include <vector>

#include "formats/hf_config.h"

namespace qserve {

// Names accepted after "synthetic:" (llama-3-8b, llama-2-7b, ..., tiny).
std::vector<std::string> synthetic_model_names();
// The config for NAME; throws qserve::Error listing the known names if unknown.
ModelConfig synthetic_config(const std::string& name);

}  // namespace qserve
