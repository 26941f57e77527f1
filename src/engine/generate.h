// Single-request generation on the CPU model: a convenience over Engine (engine.h) with one
// sequence - prefill the prompt (optionally in chunks), then decode token by token, streaming
// text through the incremental detokenizer.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/sampling.h"
#include "model/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace qserve {

struct GenerateOptions {
  int64_t max_tokens = 32;
  SamplingParams sampling;
  bool stop_at_eos = true;
  int64_t prefill_chunk = 0;  // 0 = whole prompt in one step
};

struct GenerateResult {
  std::vector<int32_t> token_ids;  // generated ids only (the EOS that stopped it included)
  std::string text;                // their decoded text
  std::string finish_reason;       // "length" | "stop"
};

// Generates a continuation of `prompt_ids`. on_text (optional) receives text as it becomes
// complete UTF-8. Throws qserve::Error if the prompt does not fit the model's context.
GenerateResult generate(const LlamaModel& model, const Tokenizer* tokenizer,
                        const std::vector<int32_t>& prompt_ids, const GenerateOptions& opts,
                        const std::function<void(const std::string&)>& on_text = {});

}  // namespace qserve
