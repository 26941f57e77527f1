// config.json of HuggingFace Llama-family checkpoints -> ModelConfig. Both the older layout
// (top-level rope_theta, rope_scaling) and the transformers-5 layout (rope_parameters) are read.
// Absent optional fields take the transformers defaults of the architecture, so a config means
// the same model here as there.
#include "formats/hf_config.h"

#include <cmath>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/json_util.h"

namespace qserve {

namespace {

using formats_detail::describe_json;
using nlohmann::json;

struct Arch {
  const char* architecture;
  const char* model_type;
  int64_t default_max_positions;  // transformers' default when the config omits it
};
constexpr Arch kArchs[] = {
    {"LlamaForCausalLM", "llama", 2048},
    {"MistralForCausalLM", "mistral", 4096 * 32},
    {"Qwen2ForCausalLM", "qwen2", 32768},
};

std::string supported_architectures() {
  std::string s;
  for (const Arch& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.architecture);
  return s;
}

// Typed access to one JSON object with errors that name the file and the field. A field that is
// null counts as absent: transformers writes null for "not set".
class Fields {
 public:
  Fields(const json& obj, const std::string& source, std::string prefix = "")
      : obj_(obj), source_(source), prefix_(std::move(prefix)) {}

  Error fail(const std::string& what) const { return Error(source_ + ": " + what); }
  std::string name(const char* key) const { return "\"" + prefix_ + key + "\""; }

  const json* find(const char* key) const {
    auto it = obj_.find(key);
    return (it == obj_.end() || it->is_null()) ? nullptr : &*it;
  }
  bool has(const char* key) const { return find(key) != nullptr; }

  int64_t integer(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) throw fail("missing required field " + name(key));
    return to_int(*v, key);
  }
  int64_t integer(const char* key, int64_t def) const {
    const json* v = find(key);
    return v == nullptr ? def : to_int(*v, key);
  }
  int64_t positive(const char* key) const { return check_positive(integer(key), key); }
  int64_t positive(const char* key, int64_t def) const {
    return check_positive(integer(key, def), key);
  }

  double number(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) throw fail("missing required field " + name(key));
    return to_double(*v, key);
  }
  double positive_number(const char* key, double def) const {
    const json* v = find(key);
    const double d = v == nullptr ? def : to_double(*v, key);
    if (!(d > 0)) throw fail(name(key) + " must be positive, got " + std::to_string(d));
    return d;
  }
  double positive_number(const char* key) const {
    const double d = number(key);
    if (!(d > 0)) throw fail(name(key) + " must be positive, got " + std::to_string(d));
    return d;
  }

  bool boolean(const char* key, bool def) const {
    const json* v = find(key);
    if (v == nullptr) return def;
    if (!v->is_boolean())
      throw fail(name(key) + " must be true or false, got " + describe_json(*v));
    return v->get<bool>();
  }

  std::string string(const char* key, const std::string& def) const {
    const json* v = find(key);
    if (v == nullptr) return def;
    if (!v->is_string()) throw fail(name(key) + " must be a string, got " + describe_json(*v));
    return v->get<std::string>();
  }

  int64_t to_int(const json& v, const char* key) const {
    if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)) {
      return v.get<int64_t>();
    }
    throw fail(name(key) + " must be an integer, got " + describe_json(v));
  }

 private:
  double to_double(const json& v, const char* key) const {
    if (!v.is_number()) throw fail(name(key) + " must be a number, got " + describe_json(v));
    const double d = v.get<double>();
    if (!std::isfinite(d)) throw fail(name(key) + " must be finite");
    return d;
  }
  int64_t check_positive(int64_t v, const char* key) const {
    if (v <= 0) throw fail(name(key) + " must be positive, got " + std::to_string(v));
    return v;
  }

  const json& obj_;
  const std::string& source_;
  std::string prefix_;
};

const Arch& pick_architecture(const Fields& f) {
  if (const json* archs = f.find("architectures")) {
    if (!archs->is_array() || archs->empty()) {
      throw f.fail("\"architectures\" must be a non-empty list of names, got " +
                   describe_json(*archs));
    }
    std::string names;
    for (const json& a : *archs) {
      if (!a.is_string()) throw f.fail("\"architectures\" entries must be strings");
      for (const Arch& known : kArchs) {
        if (a.get<std::string>() == known.architecture) return known;
      }
      names +=
          (names.empty() ? "\"" : ", \"") + formats_detail::printable(a.get<std::string>()) + "\"";
    }
    throw f.fail("unsupported architecture " + names + " (supported: " + supported_architectures() +
                 ")");
  }
  // Some configs name only the model_type.
  const std::string mt = f.string("model_type", "");
  for (const Arch& known : kArchs) {
    if (mt == known.model_type) return known;
  }
  throw f.fail("no \"architectures\" and unsupported model_type \"" +
               formats_detail::printable(mt) + "\" (supported: " + supported_architectures() + ")");
}

// RoPE base and scaling: transformers 5 writes rope_parameters {rope_theta, rope_type, ...};
// older configs write a top-level rope_theta and an optional rope_scaling {type|rope_type, ...}.
void read_rope(const Fields& f, const std::string& source, ModelConfig* c) {
  const json* params = f.find("rope_parameters");
  if (params != nullptr && !params->is_object()) {
    throw f.fail("\"rope_parameters\" must be an object, got " + describe_json(*params));
  }
  const bool params_typed = params && (params->contains("rope_type") || params->contains("type"));
  if (params && !params_typed && !params->contains("rope_theta")) {
    // e.g. per-layer-type parameters {"full_attention": {...}, ...}, which these models lack.
    throw f.fail("\"rope_parameters\" has neither rope_type nor rope_theta (unsupported layout)");
  }
  c->rope_theta = f.positive_number("rope_theta", 10000.0);
  if (params && params->contains("rope_theta")) {
    c->rope_theta = Fields(*params, source, "rope_parameters.").positive_number("rope_theta");
  }

  const json* scaling = params_typed ? params : f.find("rope_scaling");
  if (scaling == nullptr) return;
  const std::string prefix = scaling == params ? "rope_parameters." : "rope_scaling.";
  if (!scaling->is_object()) {
    throw f.fail("\"rope_scaling\" must be an object or null, got " + describe_json(*scaling));
  }
  const Fields s(*scaling, source, prefix);
  const std::string type = s.has("rope_type") ? s.string("rope_type", "") : s.string("type", "");
  if (type.empty()) throw f.fail("\"" + prefix + "rope_type\" is missing");
  if (type == "default") return;
  if (type == "linear") {
    c->rope_scaling.type = RopeScaling::Type::Linear;
    c->rope_scaling.factor = s.positive_number("factor");
    return;
  }
  if (type == "llama3") {
    RopeScaling& r = c->rope_scaling;
    r.type = RopeScaling::Type::Llama3;
    r.factor = s.positive_number("factor");
    r.low_freq_factor = s.positive_number("low_freq_factor");
    r.high_freq_factor = s.positive_number("high_freq_factor");
    r.original_max_position_embeddings = s.positive("original_max_position_embeddings");
    // The smoothing between the two bands divides by (high - low).
    if (!(r.low_freq_factor < r.high_freq_factor)) {
      throw f.fail("llama3 rope scaling needs low_freq_factor < high_freq_factor");
    }
    return;
  }
  throw f.fail("unsupported rope scaling type \"" + formats_detail::printable(type) + "\" in \"" +
               prefix.substr(0, prefix.size() - 1) + "\" (supported: default, linear, llama3)");
}

// Qwen2 decides sliding-window attention per layer: only with use_sliding_window, and (without an
// explicit layer_types list) only for layers >= max_window_layers. We support one window for the
// whole model, so a mix of sliding and full layers is refused rather than silently misread.
std::optional<int64_t> qwen2_sliding_window(const Fields& f, int64_t num_layers) {
  if (!f.boolean("use_sliding_window", false) || !f.has("sliding_window")) return std::nullopt;
  const int64_t window = f.positive("sliding_window");
  int64_t sliding = 0;
  if (const json* types = f.find("layer_types")) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != num_layers) {
      throw f.fail("\"layer_types\" must list one type per layer");
    }
    for (const json& t : *types) {
      if (t == "sliding_attention") {
        ++sliding;
      } else if (t != "full_attention") {
        throw f.fail("unsupported layer type " + describe_json(t) + " in \"layer_types\"");
      }
    }
  } else {
    const int64_t first = f.integer("max_window_layers", 28);
    sliding = std::clamp<int64_t>(num_layers - std::max<int64_t>(first, 0), 0, num_layers);
  }
  if (sliding == 0) return std::nullopt;
  if (sliding != num_layers) {
    throw f.fail("sliding-window attention on " + std::to_string(sliding) + " of " +
                 std::to_string(num_layers) + " layers is not supported (all or none)");
  }
  return window;
}

std::vector<int64_t> token_ids(const Fields& f, const char* key) {
  std::vector<int64_t> out;
  const json* v = f.find(key);
  if (v == nullptr) return out;
  if (v->is_array()) {
    for (const json& e : *v) out.push_back(f.to_int(e, key));
  } else {
    out.push_back(f.to_int(*v, key));
  }
  for (int64_t id : out) {
    if (id < 0) throw f.fail(f.name(key) + " must not be negative");
  }
  return out;
}

}  // namespace

ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": config must be a JSON object");
  const Fields f(j, source);
  ModelConfig c;
  const Arch& arch = pick_architecture(f);
  c.architecture = arch.architecture;
  c.model_type = arch.model_type;
  const bool is_llama = c.model_type == "llama";
  const bool is_qwen2 = c.model_type == "qwen2";

  c.hidden_size = f.positive("hidden_size");
  c.intermediate_size = f.positive("intermediate_size");
  c.num_layers = f.positive("num_hidden_layers");
  c.num_heads = f.positive("num_attention_heads");
  c.num_kv_heads = f.positive("num_key_value_heads", c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0) {
    throw f.fail("num_attention_heads (" + std::to_string(c.num_heads) +
                 ") is not a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) +
                 ")");
  }
  if (f.has("head_dim")) {
    c.head_dim = f.positive("head_dim");
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      throw f.fail("hidden_size (" + std::to_string(c.hidden_size) +
                   ") is not a multiple of num_attention_heads (" + std::to_string(c.num_heads) +
                   ") and no head_dim is given");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.vocab_size = f.positive("vocab_size");
  c.max_position_embeddings = f.positive("max_position_embeddings", arch.default_max_positions);
  c.rms_norm_eps = f.positive_number("rms_norm_eps", 1e-6);

  const std::string act = f.string("hidden_act", "silu");
  if (act != "silu") {
    throw f.fail("unsupported hidden_act \"" + formats_detail::printable(act) +
                 "\" (only silu is supported)");
  }
  read_rope(f, source, &c);

  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  if (is_qwen2) {
    c.qkv_bias = true;
  } else if (is_llama) {
    c.qkv_bias = c.o_bias = f.boolean("attention_bias", false);
    c.mlp_bias = f.boolean("mlp_bias", false);
  }
  if (is_qwen2) {
    c.sliding_window = qwen2_sliding_window(f, c.num_layers);
  } else if (c.model_type == "mistral" && f.has("sliding_window")) {
    c.sliding_window = f.positive("sliding_window");
  }

  if (f.has("bos_token_id")) {
    c.bos_token_id = f.integer("bos_token_id");
    if (*c.bos_token_id < 0) throw f.fail("\"bos_token_id\" must not be negative");
  }
  c.eos_token_ids = token_ids(f, "eos_token_id");
  // transformers 5 writes "dtype"; older versions "torch_dtype".
  c.torch_dtype = f.has("dtype") ? f.string("dtype", "") : f.string("torch_dtype", "");
  return c;
}

ModelConfig load_hf_config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  return parse_hf_config(formats_detail::read_json_file(path), path);
}

std::string describe(const ModelConfig& c) {
  std::ostringstream s;
  s << std::setprecision(10);  // rope_theta 1000000, not 1e+06
  s << "architecture: " << c.architecture << " (" << c.model_type << ")\n";
  s << "layers: " << c.num_layers << ", hidden: " << c.hidden_size
    << ", intermediate: " << c.intermediate_size << ", vocab: " << c.vocab_size << "\n";
  s << "attention: " << c.num_heads << " heads x head_dim " << c.head_dim << ", " << c.num_kv_heads
    << " kv heads";
  if (c.num_kv_heads == c.num_heads) {
    s << " (MHA)";
  } else {
    s << " (GQA " << c.num_heads / c.num_kv_heads << ":1)";
  }
  s << "\n";
  s << "rope: theta " << c.rope_theta;
  switch (c.rope_scaling.type) {
    case RopeScaling::Type::None:
      break;
    case RopeScaling::Type::Linear:
      s << ", linear scaling x" << c.rope_scaling.factor;
      break;
    case RopeScaling::Type::Llama3:
      s << ", llama3 scaling factor " << c.rope_scaling.factor << " (low "
        << c.rope_scaling.low_freq_factor << ", high " << c.rope_scaling.high_freq_factor
        << ", original " << c.rope_scaling.original_max_position_embeddings << ")";
      break;
  }
  s << "; max positions " << c.max_position_embeddings << "\n";
  s << "rms_norm_eps: " << c.rms_norm_eps << "\n";
  s << "biases: qkv " << (c.qkv_bias ? "yes" : "no") << ", o " << (c.o_bias ? "yes" : "no")
    << ", mlp " << (c.mlp_bias ? "yes" : "no") << "; tied embeddings "
    << (c.tie_word_embeddings ? "yes" : "no") << "\n";
  s << "sliding window: ";
  if (c.sliding_window) {
    s << *c.sliding_window << "\n";
  } else {
    s << "none\n";
  }
  s << "bos: " << (c.bos_token_id ? std::to_string(*c.bos_token_id) : "none") << ", eos:";
  if (c.eos_token_ids.empty()) s << " none";
  for (int64_t id : c.eos_token_ids) s << " " << id;
  s << "\n";
  s << "dtype: " << (c.torch_dtype.empty() ? "unspecified" : c.torch_dtype) << "\n";
  return s.str();
}

}  // namespace qserve
