// Builders of the OpenAI response bodies: whole responses (stream false), the SSE chunks of a
// stream, usage, logprobs in the completions and the chat shapes, and SSE framing. Pure
// functions of their inputs (no engine, no HTTP), so they are unit-tested directly.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/sampling.h"
#include "server/openai_request.h"

namespace qserve::server {

// What identifies a response: "cmpl-..." / "chatcmpl-..." id, creation time, model name.
struct ResponseMeta {
  ApiKind kind = ApiKind::kCompletion;
  std::string id;
  int64_t created = 0;
  std::string model;
};

// One choice, accumulated from an engine request's outputs.
struct ChoiceResult {
  int index = 0;
  std::string text;  // completions with echo: already prefixed with the prompt text
  std::vector<int32_t> token_ids;
  std::vector<SampledToken> logprobs;  // when logprobs were asked for
  std::string finish_reason, stop_reason;
  size_t text_offset = 0;  // where the generated text starts in `text` (the echoed prompt's length)
};

// The text of one token as logprobs show it (special tokens rendered).
using TokenText = std::function<std::string(int32_t)>;

// Completions logprobs: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; offsets
// count bytes of the token texts from first_offset.
nlohmann::json completion_logprobs(std::span<const SampledToken> lps, const TokenText& text,
                                   size_t first_offset, int top_logprobs);
// Chat logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
nlohmann::json chat_logprobs(std::span<const SampledToken> lps, const TokenText& text,
                             int top_logprobs);

nlohmann::json usage_json(int64_t prompt_tokens, int64_t completion_tokens);

// The whole response of a non-streamed request.
nlohmann::json full_response(const ResponseMeta& meta, std::span<const ChoiceResult> choices,
                             const TokenText& text, bool logprobs, int top_logprobs,
                             int64_t prompt_tokens, int64_t completion_tokens);

// One streamed chunk for choice `index`. Completions: {"text": delta}; chat: {"delta": delta}
// where delta is {"role": "assistant", "content": ""} for the first chunk, {"content": text}
// after. finish_reason null until the choice ends. with_usage: "usage": null (OpenAI sends it
// in every chunk when include_usage is on).
nlohmann::json stream_chunk(const ResponseMeta& meta, int index, const nlohmann::json& delta,
                            const nlohmann::json& logprobs,
                            const std::optional<std::string>& finish_reason,
                            const std::optional<std::string>& stop_reason, bool with_usage);
// The final usage chunk of a stream with include_usage: "choices": [] and the usage.
nlohmann::json usage_chunk(const ResponseMeta& meta, int64_t prompt_tokens,
                           int64_t completion_tokens);

// Compact JSON; invalid UTF-8 (never expected: the detokenizer emits complete characters)
// becomes U+FFFD instead of throwing.
std::string dump_json(const nlohmann::json& j);
// "data: <json>\n\n"
std::string sse_event(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// A "stop_reason" value as vLLM reports it: the stop string, the stop token id as a number
// ("token:<id>" from the engine), or null.
nlohmann::json stop_reason_json(const std::string& stop_reason);

}  // namespace qserve::server
