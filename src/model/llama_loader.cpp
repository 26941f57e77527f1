// Loading HF Llama-family checkpoints: tensor names, shape/dtype validation against config.json,
// fusing q/k/v and gate/up into one linear each, and RTN quantization of the decoder linears to
// the requested precision (embeddings, norms and lm_head stay fp32).
#include <cstring>

#include "core/error.h"
#include "formats/safetensors.h"
#include "model/llama_model.h"
#include "model/qserve_checkpoint.h"

namespace qserve {

namespace {

class TensorSource {
 public:
  TensorSource(const SafetensorsCheckpoint& ckpt, std::string dir)
      : ckpt_(ckpt), dir_(std::move(dir)) {}

  bool has(const std::string& name) const { return ckpt_.has(name); }

  // Fetches `name`, checking it is a float tensor of exactly `shape`.
  Tensor get(const std::string& name, const std::vector<int64_t>& shape) const {
    if (!ckpt_.has(name)) {
      throw Error(dir_ + ": checkpoint has no tensor '" + name + "' (needed by config.json)");
    }
    Tensor t = ckpt_.get(name);
    if (!dtype_is_float(t.dtype())) {
      throw Error(dir_ + ": tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype())) +
                  ", expected F16, BF16 or F32 for an unquantized checkpoint");
    }
    if (t.shape() != shape) {
      throw Error(dir_ + ": tensor '" + name + "' has shape " + t.shape_str() + ", expected " +
                  shape_to_string(shape) + " from config.json");
    }
    return t;
  }

  std::vector<float> vec(const std::string& name, int64_t n) const {
    Tensor t = to_f32(get(name, {n}));
    return std::vector<float>(t.data<float>(), t.data<float>() + n);
  }

  cpu::LinearF32 linear(const std::string& prefix, int64_t n, int64_t k, bool bias) const {
    Tensor w = get(prefix + ".weight", {n, k});
    Tensor b = bias ? get(prefix + ".bias", {n}) : Tensor();
    return cpu::make_linear(w, b);
  }

 private:
  const SafetensorsCheckpoint& ckpt_;
  std::string dir_;
};

}  // namespace

std::unique_ptr<LlamaModel> LlamaModel::from_weights(ModelConfig cfg, LlamaWeights w,
                                                     const LoadOptions& opts) {
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(cfg), std::move(w), opts));
}

std::unique_ptr<LlamaModel> LlamaModel::load(const std::string& dir, const LoadOptions& opts) {
  if (detect_qserve_checkpoint(dir)) return load_qserve_checkpoint(dir, opts);
  ModelConfig cfg = load_hf_config(dir);
  SafetensorsCheckpoint ckpt = SafetensorsCheckpoint::open_dir(dir);
  TensorSource src(ckpt, dir);
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;

  LlamaWeights w;
  {
    Tensor e = to_f32(src.get("model.embed_tokens.weight", {V, H}));
    w.embed.assign(e.data<float>(), e.data<float>() + e.numel());
  }
  w.layers.resize(static_cast<size_t>(cfg.num_layers));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    LayerWeights& L = w.layers[static_cast<size_t>(l)];
    L.input_norm = src.vec(p + ".input_layernorm.weight", H);
    L.post_norm = src.vec(p + ".post_attention_layernorm.weight", H);
    // Every quantizer works row by row, so quantizing the fused q/k/v (gate/up) weight equals
    // quantizing the parts and concatenating them.
    const WeightPrecision wp = opts.precision.weights;
    auto quantize = [&](cpu::LinearF32 f32, const std::string& what) {
      return Linear::quantize(std::move(f32), wp, dir + ": " + p + "." + what);
    };
    L.qkv = quantize(
        cpu::concat_linear({src.linear(p + ".self_attn.q_proj", cfg.q_dim(), H, cfg.qkv_bias),
                            src.linear(p + ".self_attn.k_proj", cfg.kv_dim(), H, cfg.qkv_bias),
                            src.linear(p + ".self_attn.v_proj", cfg.kv_dim(), H, cfg.qkv_bias)}),
        "self_attn.qkv_proj");
    L.o = quantize(src.linear(p + ".self_attn.o_proj", H, cfg.q_dim(), cfg.o_bias),
                   "self_attn.o_proj");
    L.gate_up = quantize(cpu::concat_linear({src.linear(p + ".mlp.gate_proj", I, H, cfg.mlp_bias),
                                             src.linear(p + ".mlp.up_proj", I, H, cfg.mlp_bias)}),
                         "mlp.gate_up_proj");
    L.down = quantize(src.linear(p + ".mlp.down_proj", H, I, cfg.mlp_bias), "mlp.down_proj");
  }
  w.final_norm = src.vec("model.norm.weight", H);
  if (cfg.tie_word_embeddings || !src.has("lm_head.weight")) {
    if (!cfg.tie_word_embeddings) {
      throw Error(dir + ": checkpoint has no 'lm_head.weight' and config.json does not set "
                        "tie_word_embeddings");
    }
    w.lm_head.n = V;
    w.lm_head.k = H;
    w.lm_head.w = w.embed;
  } else {
    w.lm_head = src.linear("lm_head", V, H, false);
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(std::move(cfg), std::move(w), opts));
}

}  // namespace qserve
