// One decoder layer as the quantizer sees it: unfused fp32 linears (q, k, v, o, gate, up, down,
// HF layout [out, in]) and the two norm weights. The pipeline streams the model through this
// struct one layer at a time (qoq/pipeline.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "model/llama_model.h"

namespace qserve::qoq {

struct FpLayer {
  std::vector<float> input_norm;  // [H]
  std::vector<float> post_norm;   // [H]
  cpu::LinearF32 q, k, v, o, gate, up, down;
};

// Reads layer `l` of an HF checkpoint as fp32; every tensor's presence, dtype and shape is checked
// against the config (errors name `dir` and the tensor).
FpLayer read_fp_layer(const SafetensorsCheckpoint& ck, const ModelConfig& cfg, int64_t l,
                      const std::string& dir);

// A float tensor of `shape` as fp32 (the same checks).
std::vector<float> read_fp_tensor(const SafetensorsCheckpoint& ck, const std::string& name,
                                  const std::vector<int64_t>& shape, const std::string& dir);

// The layer in the forward's fused layout (fp32 linears), for evaluating transformed weights
// with LlamaModel::from_weights.
LayerWeights to_layer_weights(const FpLayer& l);

}  // namespace qserve::qoq
