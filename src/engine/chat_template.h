// Chat formatting. ChatFormatter renders a model's own Jinja chat_template (tokenizer_config.json
// or chat_template.jinja) with the jinja/ interpreter, exactly as transformers'
// apply_chat_template does, and falls back to the built-in templates below when the folder has
// none. The built-ins (llama-3, llama-2, mistral, chatml, vicuna) are rendered in C++ as the
// official HuggingFace Jinja templates (or FastChat, for Vicuna) render them;
// detect_chat_template recognizes a model's template by its markers, and anything else is an
// error, never a silent guess.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace qserve {

enum class ChatTemplate { kLlama3, kLlama2, kMistral, kChatML, kVicuna };

struct ChatMessage {
  std::string role, content;  // role: "system", "user" or "assistant"
};

// "llama-3", "llama-2", "mistral", "chatml", "vicuna" (also "llama3", "llama2"); the error lists
// the valid names.
ChatTemplate parse_chat_template(const std::string& name);
std::string chat_template_name(ChatTemplate t);
// All templates, in a fixed order (for --help texts and tests).
std::span<const ChatTemplate> all_chat_templates();

// Recognizes a Jinja chat_template string by its markers; false if it matches none.
bool recognize_chat_template(const std::string& jinja, ChatTemplate* out);

// Picks the template of a HF model folder: the chat_template of tokenizer_config.json (or of
// chat_template.jinja, where newer transformers put it), recognized by its markers; when the
// folder has no chat template, config.json's model_type / architectures / vocab_size. Throws
// qserve::Error naming the folder when a template exists but is not recognized, or nothing fits.
ChatTemplate detect_chat_template(const std::string& model_dir);

// Renders messages and, when add_generation_prompt, the assistant header. The BOS text is included
// where the official template has it (llama-3, llama-2, mistral; vicuna, whose tokenizer adds BOS),
// so callers encode the result WITHOUT adding special tokens. Validates roles with clear errors:
//  - llama-3, chatml: any order of system/user/assistant (the templates render roles verbatim);
//  - llama-2, mistral, vicuna: an optional first system message, then user/assistant
//    alternating, starting with user;
//  - at least one non-system message.
// Per template (see docs/engine.md for the exact strings):
//  - llama-3: content is trimmed (Jinja `trim`), as in Meta's template;
//  - llama-2: system goes into <<SYS>> in the first user turn; add_generation_prompt has no
//    effect ("[/INST]" already ends a user turn), like the official template;
//  - mistral: no system role in the official template, so the system message is prepended to the
//    first user message followed by "\n\n" (what Mistral's later HF templates do);
//    add_generation_prompt has no effect;
//  - vicuna: FastChat's vicuna_v1.1 with its default system prompt unless one is given.
std::string render_chat(ChatTemplate t, std::span<const ChatMessage> messages,
                        bool add_generation_prompt, const std::string& bos_token,
                        const std::string& eos_token);

// Python's str.strip() (= Jinja's trim): removes Unicode whitespace at both ends of UTF-8 text.
std::string python_strip(const std::string& s);

// The folder's Jinja chat template: chat_template.jinja, else tokenizer_config.json's
// chat_template (a string, or the "default" entry of a list of named templates); "" if it has
// none. *source (if given) receives the file it came from.
std::string model_chat_template(const std::string& model_dir, std::string* source = nullptr);

namespace jinja {
class Template;
}

// The special-token strings a chat template sees (bos_token, eos_token, unk_token, ...), as
// transformers passes its tokenizer's special_tokens_map.
using ChatSpecialTokens = std::vector<std::pair<std::string, std::string>>;

// Reads the named special tokens (bos/eos/unk/sep/pad/cls/mask_token) of a model folder from
// tokenizer_config.json (a string or an AddedToken {"content": ...} object), then
// special_tokens_map.json for those it does not name.
ChatSpecialTokens read_special_tokens(const std::string& model_dir);

// How a model's conversations become prompt text: its Jinja template, or a built-in.
class ChatFormatter {
 public:
  // The formatter for a HF model folder. `template_override` empty: the folder's Jinja
  // template (model_chat_template), rendered with read_special_tokens(model_dir); without one,
  // the built-in detect_chat_template picks from config.json. Otherwise a built-in name
  // ("llama-3", ...) or the path of a Jinja template file (anything containing '/' or ending in
  // .jinja). `default_bos`/`default_eos` fill bos_token/eos_token when the folder names none
  // (callers pass the tokenizer's). Throws qserve::Error (jinja::TemplateError for a template
  // that does not parse, with its line and column).
  static ChatFormatter for_model(const std::string& model_dir,
                                 const std::string& template_override = "",
                                 const std::string& default_bos = "",
                                 const std::string& default_eos = "");
  static ChatFormatter builtin(ChatTemplate t, std::string bos_token, std::string eos_token);
  // `name` appears in error messages and description().
  static ChatFormatter from_jinja(const std::string& source, const std::string& name,
                                  ChatSpecialTokens tokens);

  // The prompt text for `messages`; with add_generation_prompt, the assistant header the model
  // answers after. Like the built-ins, the text includes BOS where the template writes it, so
  // encode it without adding special tokens. Throws qserve::Error for an empty conversation, for
  // what the template rejects (raise_exception) and for the built-ins' role rules.
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt) const;
  // The same from OpenAI-style message objects (which may carry more than role and content,
  // e.g. tool_calls) plus extra template variables (e.g. "tools"; with tools, a folder's
  // "tool_use" named template is used when it has one, as transformers does); built-ins need
  // string contents and ignore extra variables.
  std::string render_json(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                          const nlohmann::ordered_json& extra_context = nullptr) const;

  // E.g. "jinja chat_template of DIR/tokenizer_config.json" or "built-in llama-2 (inferred from
  // DIR/config.json)", for logs and --help texts.
  std::string description() const { return description_; }
  bool is_jinja() const { return jinja_ != nullptr; }
  const ChatSpecialTokens& special_tokens() const { return tokens_; }

 private:
  ChatFormatter() = default;
  std::shared_ptr<const jinja::Template> jinja_;
  std::shared_ptr<const jinja::Template> tool_use_;  // the list form's "tool_use" entry
  ChatTemplate builtin_ = ChatTemplate::kChatML;
  ChatSpecialTokens tokens_;
  std::string description_;
};

inline constexpr const char* kVicunaSystemPrompt =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.";

}  // namespace qserve
