// The one place where the server turns chat messages into prompt text: the model folder's own
// Jinja chat_template through engine/chat_template.h's ChatFormatter (rendered exactly as
// transformers' apply_chat_template), a built-in when the folder has none, or what
// --chat-template names (a built-in or a .jinja file).
#pragma once

#include <optional>
#include <span>
#include <string>

#include "engine/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace qserve::server {

struct ChatPromptFormat {
  std::optional<ChatFormatter> formatter;  // unset: the model has no usable template
  std::string unavailable_reason;          // why, when unset
};

// Picks the format for a model folder (template_name: "" = detect from the folder). Never
// throws for a missing/unrecognized template: chat requests then get a 400 with the reason.
ChatPromptFormat load_chat_prompt_format(const std::string& model_dir,
                                         const std::string& template_name, const Tokenizer& tok);

// The prompt text for `messages` (BOS included where the template has it: encode it without
// adding special tokens). Throws qserve::Error for messages the template cannot render (role
// order) or when the model has no template.
std::string render_chat_prompt(const ChatPromptFormat& format,
                               std::span<const ChatMessage> messages, bool add_generation_prompt);

}  // namespace qserve::server
