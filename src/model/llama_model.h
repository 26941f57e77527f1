// The Llama-family forward (Llama 1/2/3/3.1, Mistral, Qwen2 with QKV bias) on the CPU reference
// backend, at any precision (model/precision.h): fp32 weights and activations (the reference,
// w16a16kv16), QServe's W8A8 / W4A8 per-channel / W4A8 g128 linears, and a KV16 (fp32), KV8 or
// KV4 cache. docs/precision.md describes the data flow of each.
//
// One varlen batch per call: the rows of `tokens` belong to the sequences in `seqs` (each a
// prefill chunk or a single decode token), their K/V are appended to the cache, and logits are
// returned for every row or for the last row of each sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "backend/ops.h"
#include "formats/hf_config.h"
#include "model/kv_cache.h"
#include "model/linear.h"
#include "model/precision.h"

namespace qserve {

struct LayerWeights {
  std::vector<float> input_norm;  // [H]
  Linear qkv;                     // [q_dim + 2 kv_dim, H] (+ bias for Qwen2)
  Linear o;                       // [H, q_dim]
  std::vector<float> post_norm;   // [H]
  Linear gate_up;                 // [2 I, H]
  Linear down;                    // [H, I]
};

struct LlamaWeights {
  std::vector<float> embed;  // [V, H], fp32 at every precision
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [H]
  cpu::LinearF32 lm_head;         // [V, H], fp32 at every precision; a copy of embed when tied
  // Set by LlamaModel::synthetic_on_device: everything above is empty and the CUDA executor
  // generates the weights on the GPU from this seed (engine_cuda/synthetic_device.h).
  std::optional<uint64_t> device_seed;
};

struct LoadOptions {
  // Default: w16a16kv16, the fp32 reference forward. Quantized weight precisions are produced
  // at load by RTN from the fp16/bf16/fp32 checkpoint.
  Precision precision;
  // The norms in front of quantized linears (input_layernorm -> QKV, post_attention_layernorm
  // -> gate_up) are true RMSNorm by default. true: QServe's kernel, which subtracts the row mean
  // (a LayerNorm without bias, qserve-compat.md §0.1) - for reproducing QServe, not accuracy.
  // No effect on W16A16, where QServe also uses true RMSNorm.
  bool qserve_norm = false;
  // QServe's numerics (docs/checkpoints.md, "QServe numerics"): every activation QServe keeps in
  // fp16 is rounded to fp16 where QServe rounds it - the embedding rows, the residual stream
  // after every add, q/k after RoPE (QServe's formula), the current token's K/V, the attention
  // output (decode steps emulate QServe's decode kernel for head_dim 128), fp32 linears' outputs,
  // SiLU·mul, the final RMSNorm and the logits. Quantized linears, the fused norm + quant and the
  // KV cache are QServe's in both modes. false: those stay fp32 (the fp32 reference forward at
  // w16a16kv16, and RTN-quantized HF models as before).
  // Unset: on for checkpoints made for QServe (zoo folders and our quantized safetensors, whose
  // loader sets it), off otherwise. Prefill attention stays the fp32 reference (QServe uses
  // FlashAttention-2) with an fp16 output.
  std::optional<bool> qserve_numerics;
};

enum class LogitsMode { LastPerSequence, AllTokens };

// Optional capture of one layer's attention inputs and output during forward (tests, debugging).
struct ForwardTrace {
  int64_t layer = 0;
  std::vector<float> q;       // [T, heads, D] after RoPE
  std::vector<float> k, v;    // [T, kv_heads, D] after RoPE, as attention and the cache see them
                              // (rounded to fp16 values with a KV8/KV4 cache)
  std::vector<float> attn;    // [T, heads * D] attention output (input of o_proj)
  std::vector<float> hidden;  // [T, hidden_size] residual stream after the layer
};

class LlamaModel {
 public:
  // Loads DIR/config.json and the safetensors checkpoint in DIR. Every tensor's presence, dtype
  // and shape is checked against the config; errors name the folder and the tensor.
  // A QServe model-zoo folder (pytorch_model.bin with quantized tensor names) is loaded by
  // load_qserve_checkpoint (model/qserve_checkpoint.h) instead: its stored precision is used.
  static std::unique_ptr<LlamaModel> load(const std::string& dir, const LoadOptions& opts = {});
  // Wraps weights built elsewhere (e.g. a quantized-checkpoint loader). No validation beyond
  // what the loaders did.
  static std::unique_ptr<LlamaModel> from_weights(ModelConfig cfg, LlamaWeights w,
                                                  const LoadOptions& opts);
  // Random weights (seeded) with the given shapes, quantized to opts.precision like a loaded
  // checkpoint; for benchmarks and tests without a download.
  static std::unique_ptr<LlamaModel> synthetic(const ModelConfig& cfg, uint64_t seed,
                                               const LoadOptions& opts = {});
  // The same random model without host weights: only the config, the precision and the seed,
  // from which the CUDA executor generates the weights on the GPU (a 70B model in about a
  // second; same statistics as synthetic(), other values). Only the CUDA executor can run it.
  static std::unique_ptr<LlamaModel> synthetic_on_device(const ModelConfig& cfg, uint64_t seed,
                                                         const LoadOptions& opts = {});
  // The seed of a synthetic_on_device model; nullopt for a model with host weights.
  std::optional<uint64_t> device_synthetic_seed() const { return w_.device_seed; }

  const ModelConfig& config() const { return cfg_; }
  const LlamaWeights& weights() const { return w_; }
  const LoadOptions& options() const { return opts_; }
  const Precision& precision() const { return opts_.precision; }
  // LoadOptions::qserve_numerics as resolved at load (unset means off).
  bool qserve_numerics() const { return opts_.qserve_numerics.value_or(false); }
  int64_t parameter_count() const;

  // A cache of the model's KV precision for `slots` concurrent sequences of up to `max_len`
  // tokens each.
  KvCache make_cache(int64_t slots, int64_t max_len) const;

  // Runs one step. tokens.size() must equal the sum of num_tokens; spans must be contiguous and
  // in order. Returns logits [rows, vocab] (rows = tokens.size() or seqs.size()).
  std::vector<float> forward(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                             KvCache& cache, LogitsMode mode, ForwardTrace* trace = nullptr) const;

 private:
  LlamaModel(ModelConfig cfg, LlamaWeights w, LoadOptions opts);
  ModelConfig cfg_;
  LlamaWeights w_;
  LoadOptions opts_;
  std::vector<float> inv_freq_;
  std::vector<float> qserve_inv_freq_;  // QServe numerics' RoPE frequencies
};

}  // namespace qserve
