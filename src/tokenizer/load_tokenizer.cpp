// load_tokenizer: picks the tokenizer file of a HF model folder and gathers BOS, EOS and the
// chat template from tokenizer_config.json, generation_config.json and config.json.
#include <algorithm>
#include <filesystem>
#include <optional>

#include "core/error.h"
#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/json_util.h"
#include "tokenizer/spm_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace qserve {

namespace {

bool is_file(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

std::optional<json::Json> read_optional_json(const std::string& path) {
  if (!is_file(path)) return std::nullopt;
  json::Json j = json::parse(json::read_file(path), path);
  if (!j.is_object()) throw Error(path + ": expected a JSON object");
  return j;
}

// bos_token / eos_token: a string, {"content": ...} (AddedToken form) or null.
std::optional<std::string> token_content(const json::Json& config, const char* key) {
  const json::Json* v = json::member(config, key);
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  return json::as_string(json::require(*v, "content", key), std::string(key) + ".content");
}

// A token id or a list of them (negative ids, used by some configs for "none", are skipped).
std::vector<int32_t> id_list(const json::Json& config, const char* key) {
  std::vector<int32_t> out;
  const json::Json* v = json::member(config, key);
  if (v == nullptr) return out;
  auto add = [&](const json::Json& x) {
    if (x.is_number_integer() && x.get<int64_t>() < 0) return;
    out.push_back(json::as_id(x, key));
  };
  if (v->is_array()) {
    for (const auto& x : *v) add(x);
  } else {
    add(*v);
  }
  return out;
}

// tokenizer_config.json's added_tokens_decoder: {"<id>": {"content": ..., flags}}.
std::vector<AddedToken> config_added_tokens(const json::Json& config) {
  std::vector<AddedToken> out;
  const json::Json* decoder = json::member(config, "added_tokens_decoder");
  if (decoder == nullptr) return out;
  if (!decoder->is_object()) throw Error("added_tokens_decoder: expected an object");
  for (const auto& [key, t] : decoder->items()) {
    const std::string at = "added_tokens_decoder[\"" + key + "\"]";
    AddedToken a;
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(key, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != key.size() || id < 0 || id > INT32_MAX) throw Error(at + ": key is not a token id");
    a.id = static_cast<int32_t>(id);
    a.content = json::as_string(json::require(t, "content", at), at + ".content");
    a.special = json::opt_bool(t, "special", false, at);
    a.lstrip = json::opt_bool(t, "lstrip", false, at);
    a.rstrip = json::opt_bool(t, "rstrip", false, at);
    a.single_word = json::opt_bool(t, "single_word", false, at);
    out.push_back(std::move(a));
  }
  return out;
}

// chat_template: a string, or a list of {"name", "template"} (the "default" one wins).
std::string config_chat_template(const json::Json& config) {
  const json::Json* v = json::member(config, "chat_template");
  if (v == nullptr) return {};
  if (v->is_string()) return v->get<std::string>();
  if (!v->is_array()) throw Error("chat_template: expected a string or a list of templates");
  std::string first;
  for (const auto& t : *v) {
    const std::string tmpl = json::as_string(json::require(t, "template", "chat_template[]"),
                                             "chat_template[].template");
    if (json::opt_string(t, "name", "", "chat_template[]") == "default") return tmpl;
    if (first.empty()) first = tmpl;
  }
  return first;
}

// The Llama/Gemma tokenizer classes rebuild their post-processor from these two flags.
bool rebuilds_template(const json::Json& config) {
  const std::string cls = json::opt_string(config, "tokenizer_class", "", "tokenizer_class");
  const bool llama_like =
      cls.find("Llama") != std::string::npos || cls.find("Gemma") != std::string::npos;
  return llama_like && (json::member(config, "add_bos_token") != nullptr ||
                        json::member(config, "add_eos_token") != nullptr);
}

void add_unique(std::vector<int32_t>& ids, int32_t id) {
  if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_json_string(std::string_view json,
                                                      const std::string& source) {
  return parse_hf_tokenizer(json, source);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir) {
  const std::string json_path = model_dir + "/tokenizer.json";
  const std::string model_path = model_dir + "/tokenizer.model";
  const std::string config_path = model_dir + "/tokenizer_config.json";
  const std::string gen_path = model_dir + "/generation_config.json";
  const std::string model_config_path = model_dir + "/config.json";

  const std::optional<json::Json> config = read_optional_json(config_path);
  std::unique_ptr<Tokenizer> tok;
  HfTokenizer* hf = nullptr;
  SpmTokenizer* spm = nullptr;
  if (is_file(json_path)) {
    auto t = parse_hf_tokenizer(json::read_file(json_path), json_path);
    hf = t.get();
    tok = std::move(t);
  } else if (is_file(model_path)) {
    std::vector<AddedToken> added;
    if (config) {
      try {
        added = config_added_tokens(*config);
      } catch (const Error& e) {
        throw Error(config_path + ": " + e.what());
      }
    }
    auto t = std::make_unique<SpmTokenizer>(model_path, std::move(added));
    spm = t.get();
    tok = std::move(t);
  } else {
    throw Error(model_dir + ": no tokenizer.json or tokenizer.model in this folder");
  }

  // The first EOS is what the tokenizer itself calls eos_token; the others come after.
  std::vector<int32_t> eos;
  const std::vector<int32_t> model_eos = tok->eos_ids_;  // a tokenizer.model's own eos
  auto lookup = [&](const std::string& content, const char* key) {
    const auto id = tok->token_to_id(content);
    if (!id) throw Error(config_path + ": " + key + " '" + content + "' is not in the vocab");
    return *id;
  };
  if (config) {
    try {
      if (const auto bos = token_content(*config, "bos_token"))
        tok->bos_id_ = lookup(*bos, "bos_token");
      if (const auto e = token_content(*config, "eos_token"))
        add_unique(eos, lookup(*e, "eos_token"));
      tok->chat_template_ = config_chat_template(*config);
      const bool add_bos = json::opt_bool(*config, "add_bos_token", true, "add_bos_token");
      const bool add_eos = json::opt_bool(*config, "add_eos_token", false, "add_eos_token");
      if (spm != nullptr) spm->set_add_bos_eos(add_bos, add_eos);
      if (hf != nullptr && rebuilds_template(*config)) {
        std::vector<int32_t> prefix;
        std::vector<int32_t> suffix;
        if (add_bos) {
          if (!tok->bos_id_) throw Error("add_bos_token is true but there is no bos_token");
          prefix.push_back(*tok->bos_id_);
        }
        if (add_eos) {
          if (eos.empty()) throw Error("add_eos_token is true but there is no eos_token");
          suffix.push_back(eos.front());
        }
        hf->set_post_processor(make_wrap_processor(std::move(prefix), std::move(suffix)));
      }
    } catch (const Error& e) {
      const std::string what = e.what();
      throw Error(what.starts_with(config_path) ? what : config_path + ": " + what);
    } catch (const std::exception& e) {
      throw Error(config_path + ": " + e.what());
    }
  }
  for (const int32_t id : model_eos) add_unique(eos, id);

  if (tok->chat_template_.empty()) {
    // transformers >= 4.43 may save the template on its own.
    if (is_file(model_dir + "/chat_template.jinja")) {
      tok->chat_template_ = json::read_file(model_dir + "/chat_template.jinja");
    } else if (const auto ct = read_optional_json(model_dir + "/chat_template.json")) {
      tok->chat_template_ = json::opt_string(*ct, "chat_template", "", "chat_template");
    }
  }

  for (const std::string& path : {gen_path, model_config_path}) {
    const std::optional<json::Json> j = read_optional_json(path);
    if (!j) continue;
    try {
      for (const int32_t id : id_list(*j, "eos_token_id")) add_unique(eos, id);
      if (!tok->bos_id_) {
        const std::vector<int32_t> bos = id_list(*j, "bos_token_id");
        if (!bos.empty()) tok->bos_id_ = bos.front();
      }
    } catch (const std::exception& e) {
      throw Error(path + ": " + e.what());
    }
  }
  tok->eos_ids_ = std::move(eos);
  return tok;
}

}  // namespace qserve
