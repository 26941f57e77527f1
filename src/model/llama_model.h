// The Llama-family forward (Llama 1/2/3/3.1, Mistral, Qwen2 with QKV bias) on the CPU reference
// backend, in fp32 over weights loaded from fp16/bf16/fp32 checkpoints.
//
// One varlen batch per call: the rows of `tokens` belong to the sequences in `seqs` (each a
// prefill chunk or a single decode token), their K/V are appended to the cache, and logits are
// returned for every row or for the last row of each sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "backend/ops.h"
#include "formats/hf_config.h"

namespace qserve {

struct LayerWeights {
  std::vector<float> input_norm;  // [H]
  cpu::LinearF32 qkv;             // [q_dim + 2 kv_dim, H] (+ bias for Qwen2)
  cpu::LinearF32 o;               // [H, q_dim]
  std::vector<float> post_norm;   // [H]
  cpu::LinearF32 gate_up;         // [2 I, H]
  cpu::LinearF32 down;            // [H, I]
};

struct LlamaWeights {
  std::vector<float> embed;  // [V, H]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [H]
  cpu::LinearF32 lm_head;         // [V, H]; a copy of embed when tied
};

enum class LogitsMode { LastPerSequence, AllTokens };

class LlamaModel {
 public:
  // Loads DIR/config.json and the safetensors checkpoint in DIR. Every tensor's presence, dtype
  // and shape is checked against the config; errors name the folder and the tensor.
  static std::unique_ptr<LlamaModel> load(const std::string& dir);
  // Random weights (seeded) with the given shapes; for benchmarks and tests without a download.
  static std::unique_ptr<LlamaModel> synthetic(const ModelConfig& cfg, uint64_t seed);

  const ModelConfig& config() const { return cfg_; }
  const LlamaWeights& weights() const { return w_; }
  int64_t parameter_count() const;

  // A cache for `slots` concurrent sequences of up to `max_len` tokens each.
  cpu::KVCacheF32 make_cache(int64_t slots, int64_t max_len) const;

  // Runs one step. tokens.size() must equal the sum of num_tokens; spans must be contiguous and
  // in order. Returns logits [rows, vocab] (rows = tokens.size() or seqs.size()).
  std::vector<float> forward(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                             cpu::KVCacheF32& cache, LogitsMode mode) const;

 private:
  LlamaModel(ModelConfig cfg, LlamaWeights w);
  ModelConfig cfg_;
  LlamaWeights w_;
  std::vector<float> inv_freq_;
};

}  // namespace qserve
