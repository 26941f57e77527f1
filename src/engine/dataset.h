// Prompt datasets for `qserve generate --dataset FILE.jsonl`: one JSON object per line, either a
// plain "prompt" or a chat ("conversation", WildChat style, or "messages", OpenAI style), with
// optional per-row sampling fields that override the command line's.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/chat_template.h"
#include "engine/sampling.h"

namespace qserve {

struct DatasetRow {
  int64_t line = 0;  // 1-based line in the file
  std::string id;    // "id" field (string or integer) if present, else the line number as text
  std::optional<std::string> prompt;
  // "conversation" (WildChat style) or "messages", ready to render with add_generation_prompt:
  // a trailing assistant turn (WildChat's reference answer) is removed into `reference`, and the
  // rest must end with a user turn.
  std::vector<ChatMessage> conversation;
  std::optional<std::string> reference;  // the dropped trailing assistant turn, if any
  // The per-row sampling fields present (max_tokens, temperature, top_p, top_k, min_p, seed,
  // stop (string or list), stop_token_ids, ignore_eos, min_tokens, logprobs, top_logprobs,
  // skip_special_tokens), type-checked; null values are left out.
  nlohmann::json sampling = nlohmann::json::object();
};

// Reads a JSONL file. Blank lines are skipped; other keys (WildChat's "model", "language", ...)
// are ignored. Throws qserve::Error naming the file and line (and field) for bad JSON, a row with
// neither or both of prompt/conversation, wrong types, unknown roles, or a file with no rows.
std::vector<DatasetRow> read_prompt_dataset(const std::string& path);
// The same on text in memory; name stands for the file in messages (for tests and the fuzzer).
std::vector<DatasetRow> parse_prompt_dataset(std::string_view text, const std::string& name);

// Applies a row's sampling fields over defaults and validates the result; throws qserve::Error
// starting with `where` (e.g. "prompts.jsonl:12") and naming the field.
SamplingParams apply_sampling_fields(const SamplingParams& defaults, const nlohmann::json& fields,
                                     const std::string& where);

}  // namespace qserve
