// QServe model-zoo checkpoint loader (model/qserve_checkpoint.h, qserve-compat.md §2.2-2.3).
#include "model/qserve_checkpoint.h"

#include <cstring>
#include <filesystem>
#include <functional>

#include "core/error.h"
#include "core/half.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "quant/qserve_format.h"

namespace qserve {

namespace {

const char* kBin = "pytorch_model.bin";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::optional<WeightPrecision> detect(const std::vector<std::string>& names) {
  bool qweight = false, szeros = false, s2 = false, dequant = false;
  for (const std::string& n : names) {
    qweight |= ends_with(n, ".qweight");
    szeros |= ends_with(n, ".s1_szeros");
    s2 |= ends_with(n, ".s2_scales");
    dequant |= ends_with(n, ".dequant_scale");
  }
  if (qweight && s2) return WeightPrecision::kW4A8G128;
  if (qweight && szeros) return WeightPrecision::kW4A8PerChannel;
  if (dequant) return WeightPrecision::kW8A8;
  return std::nullopt;
}

// Tensors by name from a pytorch_model.bin or a safetensors file.
struct Tensors {
  std::function<bool(const std::string&)> has;
  std::function<Tensor(const std::string&)> get;
};

class Source {
 public:
  Source(Tensors ck, std::string where) : ck_(std::move(ck)), where_(std::move(where)) {}

  Tensor get(const std::string& name, DType dtype, const std::vector<int64_t>& shape) const {
    if (!ck_.has(name)) throw Error(where_ + ": QServe checkpoint has no tensor '" + name + "'");
    Tensor t = ck_.get(name);
    if (t.dtype() != dtype) {
      throw Error(where_ + ": tensor '" + name + "' has dtype " +
                  std::string(dtype_name(t.dtype())) + ", expected " +
                  std::string(dtype_name(dtype)));
    }
    if (t.shape() != shape) {
      throw Error(where_ + ": tensor '" + name + "' has shape " + t.shape_str() + ", expected " +
                  shape_to_string(shape));
    }
    return t;
  }

  // A float tensor of any float dtype, as fp32.
  std::vector<float> floats(const std::string& name, const std::vector<int64_t>& shape) const {
    if (!ck_.has(name)) throw Error(where_ + ": QServe checkpoint has no tensor '" + name + "'");
    Tensor t = ck_.get(name);
    if (!dtype_is_float(t.dtype()) || t.shape() != shape) {
      throw Error(where_ + ": tensor '" + name + "' is " + std::string(dtype_name(t.dtype())) +
                  " " + t.shape_str() + ", expected a float tensor of shape " +
                  shape_to_string(shape));
    }
    Tensor f = to_f32(t);
    return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
  }

  // fp16 bits of a float tensor (fp16 as stored; F32/BF16 rounded to fp16 as QServe's .half()).
  std::vector<uint16_t> half(const std::string& name, int64_t n) const {
    if (ck_.has(name) && ck_.get(name).dtype() == DType::F16) {
      Tensor t = get(name, DType::F16, {n});
      return std::vector<uint16_t>(t.data<uint16_t>(), t.data<uint16_t>() + n);
    }
    std::vector<float> f = floats(name, {n});
    std::vector<uint16_t> h(f.size());
    for (size_t i = 0; i < f.size(); ++i) h[i] = float_to_fp16(f[i]);
    return h;
  }

  bool has(const std::string& name) const { return ck_.has(name); }

 private:
  Tensors ck_;
  std::string where_;
};

template <typename T>
std::span<const T> span_of(const Tensor& t) {
  return {static_cast<const T*>(t.raw()), static_cast<size_t>(t.numel())};
}

// One unfused linear `prefix` ([n, k]) unpacked to natural weights.
quant::W4PerChannel read_w4pc(const Source& s, const std::string& p, int64_t n, int64_t k) {
  Tensor qw = s.get(p + ".qweight", DType::I8, {n, k / 2});
  Tensor sc = s.get(p + ".s1_scales", DType::F16, {n});
  Tensor sz = s.get(p + ".s1_szeros", DType::F16, {n});
  return quant::w4_per_channel_from_qserve(span_of<uint8_t>(qw), span_of<uint16_t>(sc),
                                           span_of<uint16_t>(sz), n, k);
}

quant::W4G128 read_w4g(const Source& s, const std::string& p, int64_t n, int64_t k) {
  check(k % quant::kGroupSize == 0,
        p + ": in_features " + std::to_string(k) + " is not a multiple of 128 (g128 checkpoint)");
  const int64_t g = k / quant::kGroupSize;
  Tensor qw = s.get(p + ".qweight", DType::I8, {n, k / 2});
  Tensor sc = s.get(p + ".s1_scales", DType::F16, {n});
  Tensor s2 = s.get(p + ".s2_scales", DType::I8, {g, n});
  Tensor z2 = s.get(p + ".s2_zeros", DType::I8, {g, n});
  return quant::w4_g128_from_qserve(span_of<uint8_t>(qw), span_of<uint16_t>(sc),
                                    span_of<int8_t>(s2), span_of<int8_t>(z2), n, k);
}

quant::W8PerChannel read_w8(const Source& s, const std::string& p, int64_t n, int64_t k) {
  quant::W8PerChannel w;
  w.n = n;
  w.k = k;
  Tensor t = s.get(p + ".weight", DType::I8, {n, k});
  w.w.assign(t.data<int8_t>(), t.data<int8_t>() + t.numel());
  w.dequant_scale = s.half(p + ".dequant_scale", n);
  quant::validate(w);
  return w;
}

template <typename T>
void append(std::vector<T>& dst, const std::vector<T>& src) {
  dst.insert(dst.end(), src.begin(), src.end());
}

// Concatenation along N of natural weights (rows are independent in every layout).
quant::W4PerChannel concat(std::vector<quant::W4PerChannel> parts) {
  quant::W4PerChannel out = std::move(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    check(parts[i].k == out.k, "concat: in_features differ");
    out.n += parts[i].n;
    append(out.q, parts[i].q);
    append(out.s1_scales, parts[i].s1_scales);
    append(out.s1_szeros, parts[i].s1_szeros);
  }
  quant::validate(out);
  return out;
}
quant::W4G128 concat(std::vector<quant::W4G128> parts) {
  quant::W4G128 out = std::move(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    check(parts[i].k == out.k, "concat: in_features differ");
    out.n += parts[i].n;
    append(out.q, parts[i].q);
    append(out.s1_scales, parts[i].s1_scales);
    append(out.s2_scales, parts[i].s2_scales);
    append(out.s2_zeros, parts[i].s2_zeros);
  }
  quant::validate(out);
  return out;
}
quant::W8PerChannel concat(std::vector<quant::W8PerChannel> parts) {
  quant::W8PerChannel out = std::move(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    check(parts[i].k == out.k, "concat: in_features differ");
    out.n += parts[i].n;
    append(out.w, parts[i].w);
    append(out.dequant_scale, parts[i].dequant_scale);
  }
  quant::validate(out);
  return out;
}

struct Part {
  std::string name;
  int64_t n;
};

// The fused linear of `parts` (each [n_i, k]) with optional fp16 bias.
Linear read_linear(const Source& s, WeightPrecision wp, const std::vector<Part>& parts, int64_t k,
                   bool bias) {
  QuantLinear ql;
  switch (wp) {
    case WeightPrecision::kW4A8PerChannel: {
      std::vector<quant::W4PerChannel> v;
      for (const Part& p : parts) v.push_back(read_w4pc(s, p.name, p.n, k));
      ql.w = concat(std::move(v));
      break;
    }
    case WeightPrecision::kW4A8G128: {
      std::vector<quant::W4G128> v;
      for (const Part& p : parts) v.push_back(read_w4g(s, p.name, p.n, k));
      ql.w = concat(std::move(v));
      break;
    }
    case WeightPrecision::kW8A8: {
      std::vector<quant::W8PerChannel> v;
      for (const Part& p : parts) v.push_back(read_w8(s, p.name, p.n, k));
      ql.w = concat(std::move(v));
      break;
    }
    case WeightPrecision::kW16A16:
      throw Error("read_linear: not a quantized precision");
  }
  if (bias) {
    for (const Part& p : parts) append(ql.bias, s.half(p.name + ".bias", p.n));
  }
  return Linear(std::move(ql));
}

}  // namespace

std::optional<WeightPrecision> our_checkpoint_precision(
    const std::map<std::string, std::string>& metadata) {
  auto it = metadata.find(kFormatKey);
  if (it == metadata.end() || it->second != kFormatValue) return std::nullopt;
  auto sc = metadata.find(kSchemeKey);
  check(sc != metadata.end(),
        std::string("quantized checkpoint metadata has no '") + kSchemeKey + "'");
  if (sc->second == "w4a8-per-channel") return WeightPrecision::kW4A8PerChannel;
  if (sc->second == "w4a8-g128") return WeightPrecision::kW4A8G128;
  if (sc->second == "w8a8") return WeightPrecision::kW8A8;
  throw Error("quantized checkpoint: unknown scheme '" + sc->second + "'");
}

namespace {
bool has_safetensors(const std::string& dir) {
  const std::filesystem::path d(dir);
  return std::filesystem::is_regular_file(d / kOurFile) ||
         std::filesystem::is_regular_file(d / "model.safetensors.index.json");
}
}  // namespace

std::optional<WeightPrecision> detect_qserve_checkpoint(const std::string& dir) {
  const std::filesystem::path st = std::filesystem::path(dir) / kOurFile;
  if (std::filesystem::is_regular_file(st)) {
    auto wp = our_checkpoint_precision(SafetensorsFile::open(st.string())->header().metadata);
    if (wp) return wp;
  }
  const std::filesystem::path bin = std::filesystem::path(dir) / kBin;
  if (std::filesystem::is_regular_file(bin)) return detect(TorchCheckpoint::open(bin.string()).names());
  // A zoo checkpoint stored as safetensors (single file or sharded with an index).
  // Unreadable safetensors are left to the ordinary loader, whose errors name the problem.
  if (has_safetensors(dir)) {
    try {
      return detect(SafetensorsCheckpoint::open_dir(dir).names());
    } catch (const Error&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

namespace {

std::unique_ptr<LlamaModel> load_from(const std::string& dir, const std::string& bin,
                                      const Tensors& ck, WeightPrecision wp,
                                      const LoadOptions& opts) {
  LoadOptions o = opts;
  // These weights were made for QServe's kernels: run them with its fp16 numerics unless the
  // caller chose otherwise (LoadOptions::qserve_numerics).
  if (!o.qserve_numerics.has_value()) o.qserve_numerics = true;
  if (o.precision.weights != WeightPrecision::kW16A16 && o.precision.weights != wp) {
    const Precision stored{wp,
                           wp == WeightPrecision::kW8A8 ? KvPrecision::kKv8 : KvPrecision::kKv4};
    throw Error(dir + ": the checkpoint's weights are quantized as in " + stored.name() +
                "; --precision " + o.precision.name() +
                " asks for other weights (give the stored weight part with any KV part, or none)");
  }
  o.precision.weights = wp;
  if (!o.precision.quantized_kv()) {
    o.precision.kv = wp == WeightPrecision::kW8A8 ? KvPrecision::kKv8 : KvPrecision::kKv4;
  }

  ModelConfig cfg = load_hf_config(dir);
  Source s(ck, bin);
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  const bool read_norms = wp == WeightPrecision::kW8A8;  // QServe's W4A8 loader skips norms

  LlamaWeights w;
  w.embed = s.floats("model.embed_tokens.weight", {V, H});
  w.layers.resize(static_cast<size_t>(cfg.num_layers));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    LayerWeights& L = w.layers[static_cast<size_t>(l)];
    L.input_norm = read_norms ? s.floats(p + ".input_layernorm.weight", {H})
                              : std::vector<float>(static_cast<size_t>(H), 1.0f);
    L.post_norm = read_norms ? s.floats(p + ".post_attention_layernorm.weight", {H})
                             : std::vector<float>(static_cast<size_t>(H), 1.0f);
    const std::string a = p + ".self_attn.", m = p + ".mlp.";
    const bool qkv_bias = cfg.qkv_bias && wp != WeightPrecision::kW8A8;
    const bool o_bias = cfg.o_bias && wp != WeightPrecision::kW8A8;
    const bool mlp_bias = cfg.mlp_bias && wp != WeightPrecision::kW8A8;
    L.qkv = read_linear(
        s, wp,
        {{a + "q_proj", cfg.q_dim()}, {a + "k_proj", cfg.kv_dim()}, {a + "v_proj", cfg.kv_dim()}},
        H, qkv_bias);
    L.o = read_linear(s, wp, {{a + "o_proj", H}}, cfg.q_dim(), o_bias);
    L.gate_up = read_linear(s, wp, {{m + "gate_proj", I}, {m + "up_proj", I}}, H, mlp_bias);
    L.down = read_linear(s, wp, {{m + "down_proj", H}}, I, mlp_bias);
  }
  w.final_norm = read_norms ? s.floats("model.norm.weight", {H})
                            : std::vector<float>(static_cast<size_t>(H), 1.0f);
  w.lm_head.n = V;
  w.lm_head.k = H;
  if (s.has("lm_head.weight")) {
    w.lm_head.w = s.floats("lm_head.weight", {V, H});
  } else {
    check(cfg.tie_word_embeddings,
          bin + ": no 'lm_head.weight' and config.json does not set tie_word_embeddings");
    w.lm_head.w = w.embed;
  }
  return LlamaModel::from_weights(std::move(cfg), std::move(w), o);
}

}  // namespace

std::unique_ptr<LlamaModel> load_qserve_checkpoint(const std::string& dir,
                                                   const LoadOptions& opts) {
  const std::filesystem::path st = std::filesystem::path(dir) / kOurFile;
  if (std::filesystem::is_regular_file(st)) {
    auto f = SafetensorsFile::open(st.string());
    const std::optional<WeightPrecision> wp = our_checkpoint_precision(f->header().metadata);
    if (wp) {
      Tensors ck{[f](const std::string& n) { return f->has(n); },
                 [f](const std::string& n) { return f->get(n); }};
      return load_from(dir, st.string(), ck, *wp, opts);
    }
  }
  const std::string bin = (std::filesystem::path(dir) / kBin).string();
  if (!std::filesystem::is_regular_file(bin) && has_safetensors(dir)) {
    // Zoo tensors (QServe names, no metadata of ours) in model.safetensors or shards.
    auto sc = std::make_shared<SafetensorsCheckpoint>(SafetensorsCheckpoint::open_dir(dir));
    const std::optional<WeightPrecision> found = detect(sc->names());
    if (!found) {
      throw Error(sc->source() + ": no QServe quantized tensors (.qweight / .dequant_scale)");
    }
    Tensors t{[sc](const std::string& n) { return sc->has(n); },
              [sc](const std::string& n) { return sc->get(n); }};
    return load_from(dir, sc->source(), t, *found, opts);
  }
  auto ck = std::make_shared<TorchCheckpoint>(TorchCheckpoint::open(bin));
  const std::optional<WeightPrecision> found = detect(ck->names());
  if (!found) throw Error(bin + ": no QServe quantized tensors (.qweight / .dequant_scale)");
  Tensors t{[ck](const std::string& n) { return ck->has(n); },
            [ck](const std::string& n) { return ck->get(n); }};
  return load_from(dir, bin, t, *found, opts);
}

}  // namespace qserve
