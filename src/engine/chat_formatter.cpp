// ChatFormatter: a model's Jinja chat template through jinja::Template, or a built-in.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "engine/chat_template.h"
#include "formats/json_util.h"
#include "jinja/template.h"

namespace qserve {
namespace {

// transformers' SPECIAL_TOKENS_ATTRIBUTES: what special_tokens_map, and so every chat template,
// can see.
constexpr const char* kNamedTokens[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                        "pad_token", "cls_token", "mask_token"};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the chat template file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A token entry is a string or an AddedToken object {"content": "...", ...}.
bool token_string(const nlohmann::json& v, std::string* out) {
  if (v.is_string()) {
    *out = v.get<std::string>();
    return true;
  }
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    *out = v["content"].get<std::string>();
    return true;
  }
  return false;
}

void read_tokens_from(const std::filesystem::path& file, ChatSpecialTokens* tokens) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return;
  const nlohmann::json j = formats_detail::read_json_file(file.string());
  if (!j.is_object()) return;
  for (const char* name : kNamedTokens) {
    bool have = false;
    for (const auto& kv : *tokens) have |= kv.first == name;
    std::string value;
    if (!have && j.contains(name) && token_string(j[name], &value))
      tokens->emplace_back(name, value);
  }
}

void set_default(ChatSpecialTokens* tokens, const char* name, const std::string& value) {
  if (value.empty()) return;
  for (const auto& kv : *tokens)
    if (kv.first == name) return;
  tokens->emplace_back(name, value);
}

std::string token_value(const ChatSpecialTokens& tokens, const char* name) {
  for (const auto& kv : tokens)
    if (kv.first == name) return kv.second;
  return "";
}

// The "tool_use" entry of tokenizer_config.json's list of named templates, "" if none.
std::string tool_use_template(const std::string& model_dir) {
  const std::filesystem::path cfg = std::filesystem::path(model_dir) / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(cfg, ec)) return "";
  const nlohmann::json j = formats_detail::read_json_file(cfg.string());
  if (!j.is_object() || !j.contains("chat_template") || !j["chat_template"].is_array()) return "";
  for (const nlohmann::json& e : j["chat_template"]) {
    if (e.is_object() && e.value("name", "") == "tool_use" && e.contains("template") &&
        e["template"].is_string())
      return e["template"].get<std::string>();
  }
  return "";
}

bool looks_like_path(const std::string& s) {
  return s.find('/') != std::string::npos ||
         (s.size() > 6 && s.compare(s.size() - 6, 6, ".jinja") == 0);
}

std::vector<ChatMessage> to_chat_messages(const nlohmann::ordered_json& messages) {
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      throw Error("chat: message " + std::to_string(i) +
                  " needs a string role and a string content for a built-in template");
    }
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

}  // namespace

ChatSpecialTokens read_special_tokens(const std::string& model_dir) {
  ChatSpecialTokens tokens;
  const std::filesystem::path dir(model_dir);
  read_tokens_from(dir / "tokenizer_config.json", &tokens);
  read_tokens_from(dir / "special_tokens_map.json", &tokens);  // legacy folders keep them here
  return tokens;
}

ChatFormatter ChatFormatter::builtin(ChatTemplate t, std::string bos_token, std::string eos_token) {
  ChatFormatter f;
  f.builtin_ = t;
  f.tokens_ = {{"bos_token", std::move(bos_token)}, {"eos_token", std::move(eos_token)}};
  f.description_ = "built-in " + chat_template_name(t);
  return f;
}

ChatFormatter ChatFormatter::from_jinja(const std::string& source, const std::string& name,
                                        ChatSpecialTokens tokens) {
  ChatFormatter f;
  f.jinja_ = std::make_shared<const jinja::Template>(source, name);
  f.tokens_ = std::move(tokens);
  f.description_ = "jinja template " + name;
  return f;
}

ChatFormatter ChatFormatter::for_model(const std::string& model_dir,
                                       const std::string& template_override,
                                       const std::string& default_bos,
                                       const std::string& default_eos) {
  ChatSpecialTokens tokens = read_special_tokens(model_dir);
  set_default(&tokens, "bos_token", default_bos);
  set_default(&tokens, "eos_token", default_eos);
  auto builtin_for = [&](ChatTemplate t, const std::string& why) {
    ChatFormatter f =
        builtin(t, token_value(tokens, "bos_token"), token_value(tokens, "eos_token"));
    f.description_ += " (" + why + ")";
    return f;
  };
  if (!template_override.empty()) {
    if (looks_like_path(template_override)) {
      ChatFormatter f = from_jinja(read_file(template_override), template_override, tokens);
      f.description_ = "jinja template " + template_override + " (override)";
      return f;
    }
    return builtin_for(parse_chat_template(template_override), "chosen by name");
  }
  std::string source_file;
  const std::string jinja = model_chat_template(model_dir, &source_file);
  if (!jinja.empty()) {
    ChatFormatter f = from_jinja(jinja, source_file, tokens);
    f.description_ = "jinja chat_template of " + source_file;
    // A chat_template.jinja file replaces tokenizer_config.json's templates altogether.
    const std::string tool_use =
        source_file.size() >= 5 && source_file.compare(source_file.size() - 5, 5, ".json") == 0
            ? tool_use_template(model_dir)
            : "";
    if (!tool_use.empty()) {
      f.tool_use_ = std::make_shared<const jinja::Template>(tool_use, source_file + " (tool_use)");
      f.description_ += " (+ its tool_use template)";
    }
    return f;
  }
  return builtin_for(detect_chat_template(model_dir),
                     "the folder has no chat template; inferred from config.json");
}

std::string ChatFormatter::render(std::span<const ChatMessage> messages,
                                  bool add_generation_prompt) const {
  if (!jinja_) {
    return render_chat(builtin_, messages, add_generation_prompt, token_value(tokens_, "bos_token"),
                       token_value(tokens_, "eos_token"));
  }
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const ChatMessage& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  return render_json(list, add_generation_prompt);
}

std::string ChatFormatter::render_json(const nlohmann::ordered_json& messages,
                                       bool add_generation_prompt,
                                       const nlohmann::ordered_json& extra_context) const {
  if (!messages.is_array()) throw Error("chat: messages must be a list");
  // transformers refuses an empty conversation before rendering.
  if (messages.empty())
    throw Error("chat: cannot apply the chat template to an empty conversation");
  if (!jinja_) return render(to_chat_messages(messages), add_generation_prompt);
  // What apply_chat_template passes: the special tokens, then messages, tools and documents
  // (None unless given), add_generation_prompt, and extra keyword arguments over them all.
  nlohmann::ordered_json ctx = nlohmann::ordered_json::object();
  for (const auto& [k, v] : tokens_) ctx[k] = v;
  // Like transformers, keys whose value is None are dropped from each message.
  nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
  for (const auto& m : messages) {
    if (!m.is_object()) throw Error("chat: every message must be an object");
    nlohmann::ordered_json kept = nlohmann::ordered_json::object();
    for (const auto& [k, v] : m.items())
      if (!v.is_null()) kept[k] = v;
    msgs.push_back(std::move(kept));
  }
  ctx["messages"] = std::move(msgs);
  ctx["tools"] = nullptr;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = add_generation_prompt;
  if (extra_context.is_object()) {
    for (const auto& [k, v] : extra_context.items()) ctx[k] = v;
  } else if (!extra_context.is_null()) {
    throw Error("chat: extra template variables must be an object");
  }
  // transformers picks the "tool_use" template of a named list when tools are given.
  const bool with_tools = ctx.contains("tools") && !ctx["tools"].is_null();
  return (with_tools && tool_use_ ? *tool_use_ : *jinja_).render(ctx);
}

}  // namespace qserve
