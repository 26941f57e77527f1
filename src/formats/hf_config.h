// HuggingFace config.json -> ModelConfig for the Llama family (LlamaForCausalLM,
// MistralForCausalLM, Qwen2ForCausalLM).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace qserve {

struct RopeScaling {
  enum class Type { None, Linear, Llama3 };
  Type type = Type::None;
  double factor = 1.0;
  // llama3 (Llama-3.1) parameters.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
  std::string model_type;    // "llama", "mistral", "qwen2"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // from config when given, else hidden_size / num_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;  // top-level rope_theta or rope_parameters.rope_theta
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama when attention_bias is true
  bool o_bias = false;    // Llama attention_bias also biases o_proj
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // Mistral; absent/null = full attention
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // eos_token_id may be an int or a list
  std::string torch_dtype;             // "float16", "bfloat16", "float32" or ""

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// Parses a config.json object. `source` (a file name) is used in error messages. Throws
// qserve::Error on unknown architectures, missing or inconsistent fields (e.g. heads not
// dividing, kv heads not dividing heads, unsupported rope_scaling type, hidden_act not silu).
ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source);
// Reads DIR/config.json.
ModelConfig load_hf_config(const std::string& model_dir);
// A short human-readable multi-line description (used by `qserve inspect`).
std::string describe(const ModelConfig& c);

}  // namespace qserve
