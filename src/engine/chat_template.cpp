#include "engine/chat_template.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/json_util.h"

namespace qserve {
namespace {

using formats_detail::printable;

constexpr std::array<ChatTemplate, 5> kAll = {ChatTemplate::kLlama3, ChatTemplate::kLlama2,
                                              ChatTemplate::kMistral, ChatTemplate::kChatML,
                                              ChatTemplate::kVicuna};

std::string valid_names() {
  std::string s;
  for (ChatTemplate t : kAll) s += (s.empty() ? "" : ", ") + chat_template_name(t);
  return s;
}

// Decodes the code point starting at s[i] (n bytes); returns false for a malformed sequence, in
// which case the byte is not whitespace anyway.
bool decode_at(const std::string& s, size_t i, uint32_t* cp, size_t* n) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > s.size()) return false;
  uint32_t v = len == 1 ? c : c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc >> 6) != 2) return false;
    v = (v << 6) | (cc & 0x3F);
  }
  *cp = v;
  *n = len;
  return true;
}

// Python's str.isspace() code points (what str.strip() and Jinja's trim remove).
bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

void check_role(const ChatMessage& m, size_t i) {
  if (m.role != "system" && m.role != "user" && m.role != "assistant") {
    throw Error("chat: message " + std::to_string(i) + " has role '" + printable(m.role, 40) +
                "'; expected system, user or assistant");
  }
}

// The optional leading system message, then strict user/assistant alternation from user.
// Returns the system message (nullptr if none) and the index of the first turn.
const ChatMessage* check_alternation(ChatTemplate t, std::span<const ChatMessage> msgs,
                                     size_t* first) {
  const ChatMessage* sys = nullptr;
  *first = 0;
  if (!msgs.empty() && msgs[0].role == "system") {
    sys = &msgs[0];
    *first = 1;
  }
  for (size_t i = *first; i < msgs.size(); ++i) {
    const bool want_user = (i - *first) % 2 == 0;
    if (msgs[i].role == "system") {
      throw Error("chat: the " + chat_template_name(t) +
                  " template allows a system message only first (message " + std::to_string(i) +
                  " is system)");
    }
    if ((msgs[i].role == "user") != want_user) {
      throw Error("chat: the " + chat_template_name(t) +
                  " template needs user/assistant turns to alternate, starting with user "
                  "(message " +
                  std::to_string(i) + " is " + msgs[i].role + ")");
    }
  }
  return sys;
}

std::string render_llama3(std::span<const ChatMessage> msgs, bool gen, const std::string& bos) {
  // {{- bos_token }}{% for m %}'<|start_header_id|>' + role + '<|end_header_id|>\n\n' +
  // content|trim + '<|eot_id|>'{% endfor %}{% if add_generation_prompt %}assistant header
  std::string out = bos;
  for (const ChatMessage& m : msgs) {
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + python_strip(m.content) +
           "<|eot_id|>";
  }
  if (gen) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_llama2(std::span<const ChatMessage> msgs, const std::string& bos,
                          const std::string& eos) {
  size_t first = 0;
  const ChatMessage* sys = check_alternation(ChatTemplate::kLlama2, msgs, &first);
  std::string out;
  for (size_t i = first; i < msgs.size(); ++i) {
    // Meta's template strips the whole content, <<SYS>> block included, so only its ends.
    std::string content = msgs[i].content;
    if (i == first && sys != nullptr)
      content = "<<SYS>>\n" + sys->content + "\n<</SYS>>\n\n" + content;
    // Appends rather than operator+ chains: GCC 12 at -O3 warns falsely (-Wrestrict) on
    // `"literal" + std::string&&`.
    if (msgs[i].role == "user") {
      out.append(bos).append("[INST] ").append(python_strip(content)).append(" [/INST]");
    } else {
      out.append(" ").append(python_strip(content)).append(" ").append(eos);
    }
  }
  return out;
}

std::string render_mistral(std::span<const ChatMessage> msgs, const std::string& bos,
                           const std::string& eos) {
  size_t first = 0;
  const ChatMessage* sys = check_alternation(ChatTemplate::kMistral, msgs, &first);
  // Mistral-7B-Instruct-v0.2's template: bos + '[INST] ' + user + ' [/INST]' and
  // assistant + eos, no stripping.
  std::string out = bos;
  for (size_t i = first; i < msgs.size(); ++i) {
    if (msgs[i].role == "user") {
      const std::string prefix = (i == first && sys != nullptr) ? sys->content + "\n\n" : "";
      out += "[INST] " + prefix + msgs[i].content + " [/INST]";
    } else {
      out += msgs[i].content + eos;
    }
  }
  return out;
}

std::string render_chatml(std::span<const ChatMessage> msgs, bool gen) {
  std::string out;
  for (const ChatMessage& m : msgs)
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (gen) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_vicuna(std::span<const ChatMessage> msgs, bool gen, const std::string& bos,
                          const std::string& eos) {
  size_t first = 0;
  const ChatMessage* sys = check_alternation(ChatTemplate::kVicuna, msgs, &first);
  // FastChat vicuna_v1.1 (SeparatorStyle.ADD_COLON_TWO, sep " ", sep2 "</s>"):
  // system + sep, then "ROLE: message" + sep/sep2 alternately, then "ASSISTANT:" open.
  std::string out = bos + (sys != nullptr ? sys->content : std::string(kVicunaSystemPrompt)) + " ";
  for (size_t i = first; i < msgs.size(); ++i) {
    const bool user = msgs[i].role == "user";
    out += (user ? "USER: " : "ASSISTANT: ") + msgs[i].content + (user ? " " : eos);
  }
  if (gen) out += "ASSISTANT:";
  return out;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(p.string() + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string model_chat_template(const std::string& model_dir, std::string* source) {
  const std::filesystem::path dir(model_dir);
  std::error_code ec;
  const std::filesystem::path jinja = dir / "chat_template.jinja";
  if (std::filesystem::is_regular_file(jinja, ec)) {
    if (source != nullptr) *source = jinja.string();
    return read_text(jinja);
  }
  const std::filesystem::path cfg = dir / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(cfg, ec)) return "";
  const nlohmann::json j = formats_detail::read_json_file(cfg.string());
  if (!j.is_object() || !j.contains("chat_template")) return "";
  if (source != nullptr) *source = cfg.string();
  const nlohmann::json& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array()) {
    // Newer tokenizer configs hold named templates; "default" is the one apply_chat_template
    // uses.
    for (const nlohmann::json& e : t) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        return e["template"].get<std::string>();
    }
  }
  if (t.is_null()) return "";
  throw Error(cfg.string() + ": chat_template is " + formats_detail::describe_json(t) +
              "; expected a string or a list with a \"default\" entry");
}

std::string python_strip(const std::string& s) {
  size_t b = 0, e = s.size();
  uint32_t cp = 0;
  size_t n = 0;
  while (b < e && decode_at(s, b, &cp, &n) && is_py_space(cp)) b += n;
  while (e > b) {
    // Step back to the start of the last code point.
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) >> 6) == 2 && e - k < 4) --k;
    if (!decode_at(s, k, &cp, &n) || k + n != e || !is_py_space(cp)) break;
    e = k;
  }
  return s.substr(b, e - b);
}

ChatTemplate parse_chat_template(const std::string& name) {
  const std::string n = lower(name);
  if (n == "llama-3" || n == "llama3") return ChatTemplate::kLlama3;
  if (n == "llama-2" || n == "llama2") return ChatTemplate::kLlama2;
  if (n == "mistral") return ChatTemplate::kMistral;
  if (n == "chatml") return ChatTemplate::kChatML;
  if (n == "vicuna") return ChatTemplate::kVicuna;
  throw Error("unknown chat template '" + printable(name, 40) + "'; valid: " + valid_names());
}

std::string chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kLlama3:
      return "llama-3";
    case ChatTemplate::kLlama2:
      return "llama-2";
    case ChatTemplate::kMistral:
      return "mistral";
    case ChatTemplate::kChatML:
      return "chatml";
    case ChatTemplate::kVicuna:
      return "vicuna";
  }
  return "?";
}

std::span<const ChatTemplate> all_chat_templates() {
  return kAll;
}

bool recognize_chat_template(const std::string& jinja, ChatTemplate* out) {
  auto has = [&](const char* marker) { return jinja.find(marker) != std::string::npos; };
  // Order matters: Llama-2's template also contains "[INST]".
  if (has("<|start_header_id|>"))
    *out = ChatTemplate::kLlama3;
  else if (has("<|im_start|>"))
    *out = ChatTemplate::kChatML;
  else if (has("<<SYS>>"))
    *out = ChatTemplate::kLlama2;
  else if (has("[INST]"))
    *out = ChatTemplate::kMistral;
  else if (has("USER:") && has("ASSISTANT:"))
    *out = ChatTemplate::kVicuna;
  else
    return false;
  return true;
}

ChatTemplate detect_chat_template(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const std::string jinja = model_chat_template(model_dir);
  ChatTemplate t{};
  if (!jinja.empty()) {
    if (recognize_chat_template(jinja, &t)) return t;
    throw Error(model_dir + ": its chat_template is none of the built-in templates (" +
                valid_names() + "); pass one explicitly if the model was trained on it");
  }
  // No template (base models, model-zoo folders): infer from the architecture.
  const std::filesystem::path cfg_path = dir / "config.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(cfg_path, ec)) {
    throw Error(model_dir +
                ": no chat template and no config.json to infer one from; pass one "
                "explicitly (" +
                valid_names() + ")");
  }
  const nlohmann::json cfg = formats_detail::read_json_file(cfg_path.string());
  std::string type = cfg.is_object() ? lower(cfg.value("model_type", std::string())) : "";
  if (type.empty() && cfg.is_object() && cfg.contains("architectures") &&
      cfg["architectures"].is_array() && !cfg["architectures"].empty() &&
      cfg["architectures"][0].is_string()) {
    const std::string arch = lower(cfg["architectures"][0].get<std::string>());
    if (arch.rfind("llama", 0) == 0)
      type = "llama";
    else if (arch.rfind("mistral", 0) == 0)
      type = "mistral";
    else if (arch.rfind("mixtral", 0) == 0)
      type = "mixtral";
    else if (arch.rfind("qwen2", 0) == 0)
      type = "qwen2";
  }
  const int64_t vocab =
      cfg.is_object() && cfg.contains("vocab_size") && cfg["vocab_size"].is_number_integer()
          ? cfg["vocab_size"].get<int64_t>()
          : 0;
  std::string folder =
      lower((dir.filename().empty() ? dir.parent_path() : dir).filename().string());
  if (type == "qwen2" || type == "qwen") return ChatTemplate::kChatML;
  if (type == "mistral" || type == "mixtral") return ChatTemplate::kMistral;
  if (type == "llama") {
    if (folder.find("vicuna") != std::string::npos) return ChatTemplate::kVicuna;
    if (vocab >= 128000) return ChatTemplate::kLlama3;  // Llama-3's 128k vocabulary
    if (vocab == 64000) return ChatTemplate::kChatML;   // Yi (Llama architecture, ChatML)
    return ChatTemplate::kLlama2;
  }
  throw Error(model_dir + ": no chat template, and model_type '" + printable(type, 40) +
              "' suggests none; pass one explicitly (" + valid_names() + ")");
}

std::string render_chat(ChatTemplate t, std::span<const ChatMessage> messages,
                        bool add_generation_prompt, const std::string& bos_token,
                        const std::string& eos_token) {
  bool any_turn = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    check_role(messages[i], i);
    any_turn |= messages[i].role != "system";
  }
  check(any_turn, "chat: the conversation has no user or assistant message");
  switch (t) {
    case ChatTemplate::kLlama3:
      return render_llama3(messages, add_generation_prompt, bos_token);
    case ChatTemplate::kLlama2:
      return render_llama2(messages, bos_token, eos_token);
    case ChatTemplate::kMistral:
      return render_mistral(messages, bos_token, eos_token);
    case ChatTemplate::kChatML:
      return render_chatml(messages, add_generation_prompt);
    case ChatTemplate::kVicuna:
      return render_vicuna(messages, add_generation_prompt, bos_token, eos_token);
  }
  throw Error("chat: unknown template");
}

}  // namespace qserve
