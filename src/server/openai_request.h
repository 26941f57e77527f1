// Parsing and validation of the bodies of POST /v1/completions and /v1/chat/completions: JSON text
// in, a validated OpenAIRequest out, or an ApiError (400, with the offending field) - never any
// other exception, whatever the bytes (fuzz/openai_request.cpp holds it to that). Pure: no model,
// no tokenizer; what needs them (prompt length against the context) is checked by the server.
//
// Unknown fields are ignored. Fields whose meaning we do not implement are refused with a 400
// that says "unsupported" when set to anything but their neutral value (presence_penalty,
// frequency_penalty, repetition_penalty, logit_bias, best_of != n, suffix, echo with logprobs).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/chat_template.h"
#include "engine/sampling.h"
#include "server/api_error.h"

namespace qserve::server {

enum class ApiKind { kCompletion, kChat };

// One prompt of /v1/completions: text, or token ids (then `text` is unset).
struct PromptInput {
  std::optional<std::string> text;
  std::vector<int32_t> ids;
};

struct OpenAIRequest {
  ApiKind kind = ApiKind::kCompletion;
  std::string model;                  // "" when the body gave none
  std::vector<PromptInput> prompts;   // completions: one or more (a batch); chat: empty
  std::vector<ChatMessage> messages;  // chat: at least one
  bool add_generation_prompt = true;  // chat
  // Sampling; max_tokens is meaningful only when max_tokens_given (else the server's default:
  // 16 for completions as in OpenAI, the rest of the context for chat).
  SamplingParams sampling;
  bool max_tokens_given = false;
  bool seed_given = false;
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: prepend the prompt text
  bool logprobs = false;       // completions: "logprobs": k (k >= 0); chat: "logprobs": true
  int top_logprobs = 0;        // completions: k; chat: "top_logprobs"
};

// Limits on what one request may ask for (bounded work per request).
inline constexpr int kMaxN = 16;          // choices per prompt
inline constexpr int kMaxPrompts = 64;    // prompts in one completions batch
inline constexpr int kMaxStops = 16;      // stop strings
inline constexpr int kMaxJsonDepth = 64;  // nesting of the body

// Throws ApiError (status 400) for malformed JSON, a body that is not an object, missing
// required fields, wrong types, out-of-range values and unsupported features.
OpenAIRequest parse_openai_request(std::string_view body, ApiKind kind);

}  // namespace qserve::server
