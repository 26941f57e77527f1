// Reading one decoder layer of an HF checkpoint as unfused fp32 linears.
#include "qoq/fp_layer.h"

#include "core/error.h"

namespace qserve::qoq {

std::vector<float> read_fp_tensor(const SafetensorsCheckpoint& ck, const std::string& name,
                                  const std::vector<int64_t>& shape, const std::string& dir) {
  check(ck.has(name), dir + ": checkpoint has no tensor '" + name + "' (needed by config.json)");
  Tensor t = ck.get(name);
  check(dtype_is_float(t.dtype()), dir + ": tensor '" + name + "' has dtype " +
                                       std::string(dtype_name(t.dtype())) +
                                       ", expected F16, BF16 or F32 (an unquantized checkpoint)");
  check(t.shape() == shape, dir + ": tensor '" + name + "' has shape " + t.shape_str() +
                                ", expected " + shape_to_string(shape) + " from config.json");
  Tensor f = to_f32(t);
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

namespace {

cpu::LinearF32 read_linear(const SafetensorsCheckpoint& ck, const std::string& p, int64_t n,
                           int64_t k, bool bias, const std::string& dir) {
  cpu::LinearF32 l;
  l.n = n;
  l.k = k;
  l.w = read_fp_tensor(ck, p + ".weight", {n, k}, dir);
  if (bias) l.bias = read_fp_tensor(ck, p + ".bias", {n}, dir);
  return l;
}

}  // namespace

FpLayer read_fp_layer(const SafetensorsCheckpoint& ck, const ModelConfig& cfg, int64_t l,
                      const std::string& dir) {
  const std::string p = "model.layers." + std::to_string(l);
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size;
  FpLayer f;
  f.input_norm = read_fp_tensor(ck, p + ".input_layernorm.weight", {H}, dir);
  f.post_norm = read_fp_tensor(ck, p + ".post_attention_layernorm.weight", {H}, dir);
  const std::string a = p + ".self_attn.", m = p + ".mlp.";
  f.q = read_linear(ck, a + "q_proj", cfg.q_dim(), H, cfg.qkv_bias, dir);
  f.k = read_linear(ck, a + "k_proj", cfg.kv_dim(), H, cfg.qkv_bias, dir);
  f.v = read_linear(ck, a + "v_proj", cfg.kv_dim(), H, cfg.qkv_bias, dir);
  f.o = read_linear(ck, a + "o_proj", H, cfg.q_dim(), cfg.o_bias, dir);
  f.gate = read_linear(ck, m + "gate_proj", I, H, cfg.mlp_bias, dir);
  f.up = read_linear(ck, m + "up_proj", I, H, cfg.mlp_bias, dir);
  f.down = read_linear(ck, m + "down_proj", H, I, cfg.mlp_bias, dir);
  return f;
}

LayerWeights to_layer_weights(const FpLayer& l) {
  LayerWeights w;
  w.input_norm = l.input_norm;
  w.post_norm = l.post_norm;
  w.qkv = Linear(cpu::concat_linear({l.q, l.k, l.v}));
  w.o = Linear(l.o);
  w.gate_up = Linear(cpu::concat_linear({l.gate, l.up}));
  w.down = Linear(l.down);
  return w;
}

}  // namespace qserve::qoq
