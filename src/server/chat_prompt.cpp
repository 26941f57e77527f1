#include "server/chat_prompt.h"

#include "core/error.h"

namespace qserve::server {

namespace {

std::string token_text(const Tokenizer& tok, std::optional<int32_t> id) {
  if (!id) return {};
  const int32_t v = *id;
  return tok.decode({&v, 1}, /*skip_special_tokens=*/false);
}

}  // namespace

ChatPromptFormat load_chat_prompt_format(const std::string& model_dir,
                                         const std::string& template_name, const Tokenizer& tok) {
  ChatPromptFormat f;
  const std::string bos = token_text(tok, tok.bos_id());
  const std::string eos = token_text(
      tok, tok.eos_ids().empty() ? std::nullopt : std::optional<int32_t>(tok.eos_ids().front()));
  try {
    f.formatter = ChatFormatter::for_model(model_dir, template_name, bos, eos);
  } catch (const std::exception& e) {
    f.unavailable_reason = e.what();
  }
  return f;
}

std::string render_chat_prompt(const ChatPromptFormat& format,
                               std::span<const ChatMessage> messages, bool add_generation_prompt) {
  check(format.formatter.has_value(), "this model has no usable chat template (" +
                                          format.unavailable_reason +
                                          "); use /v1/completions or start the server with "
                                          "--chat-template NAME");
  return format.formatter->render(messages, add_generation_prompt);
}

}  // namespace qserve::server
