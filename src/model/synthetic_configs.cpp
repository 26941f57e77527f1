#include "model/synthetic_configs.h"

#include "core/error.h"

namespace qserve {

namespace {

struct Shape {
  const char* name;
  const char* arch;
  int64_t hidden, inter, layers, heads, kv_heads, vocab, max_pos;
  double theta;
  bool qkv_bias;
};

// Public configs of each model family; "tiny" is small enough for the CPU backend.
constexpr Shape kShapes[] = {
    {"tiny", "LlamaForCausalLM", 256, 512, 2, 2, 1, 1024, 2048, 500000.0, false},
    {"llama-3-8b", "LlamaForCausalLM", 4096, 14336, 32, 32, 8, 128256, 8192, 500000.0, false},
    {"llama-2-7b", "LlamaForCausalLM", 4096, 11008, 32, 32, 32, 32000, 4096, 10000.0, false},
    {"llama-2-13b", "LlamaForCausalLM", 5120, 13824, 40, 40, 40, 32000, 4096, 10000.0, false},
    {"mistral-7b", "MistralForCausalLM", 4096, 14336, 32, 32, 8, 32000, 32768, 10000.0, false},
    {"llama-30b", "LlamaForCausalLM", 6656, 17920, 60, 52, 52, 32000, 2048, 10000.0, false},
    {"yi-34b", "LlamaForCausalLM", 7168, 20480, 60, 56, 8, 64000, 4096, 5000000.0, false},
    {"llama-2-70b", "LlamaForCausalLM", 8192, 28672, 80, 64, 8, 32000, 4096, 10000.0, false},
    {"qwen1.5-72b", "Qwen2ForCausalLM", 8192, 24576, 80, 64, 64, 152064, 32768, 1000000.0, true},
};

}  // namespace

std::vector<std::string> synthetic_model_names() {
  std::vector<std::string> v;
  for (const Shape& s : kShapes) v.emplace_back(s.name);
  return v;
}

int64_t config_parameter_count(const ModelConfig& c) {
  const int64_t H = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), I = c.intermediate_size;
  int64_t per_layer = 2 * H + (qd + 2 * kvd) * H + H * qd + 3 * H * I;
  if (c.qkv_bias) per_layer += qd + 2 * kvd;
  if (c.o_bias) per_layer += H;
  if (c.mlp_bias) per_layer += 2 * I + H;  // gate_up [2 I] and down [H]
  return c.vocab_size * H * (c.tie_word_embeddings ? 1 : 2) + c.num_layers * per_layer + H;
}

ModelConfig synthetic_config(const std::string& name) {
  for (const Shape& s : kShapes) {
    if (name != s.name) continue;
    ModelConfig c;
    c.architecture = s.arch;
    c.model_type = c.architecture == "Qwen2ForCausalLM"     ? "qwen2"
                   : c.architecture == "MistralForCausalLM" ? "mistral"
                                                            : "llama";
    c.hidden_size = s.hidden;
    c.intermediate_size = s.inter;
    c.num_layers = s.layers;
    c.num_heads = s.heads;
    c.num_kv_heads = s.kv_heads;
    c.head_dim = s.hidden / s.heads;
    c.vocab_size = s.vocab;
    c.max_position_embeddings = s.max_pos;
    c.rope_theta = s.theta;
    c.rms_norm_eps = 1e-5;
    c.qkv_bias = s.qkv_bias;
    c.torch_dtype = "float16";
    return c;
  }
  std::string known;
  for (const Shape& s : kShapes) known += std::string(known.empty() ? "" : ", ") + s.name;
  throw Error("unknown synthetic model '" + name + "'; known: " + known);
}

}  // namespace qserve
