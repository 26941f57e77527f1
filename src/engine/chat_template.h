// Built-in chat templates, rendered in C++ exactly as the official HuggingFace Jinja templates
// (or FastChat, for Vicuna) render them, so that a chat request needs no Jinja engine. The model's
// own template is recognized by its markers (detect_chat_template); anything else is an error,
// never a silent guess.
#pragma once

#include <span>
#include <string>
#include <vector>

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

inline constexpr const char* kVicunaSystemPrompt =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.";

}  // namespace qserve
