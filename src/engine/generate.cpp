#include "engine/generate.h"

#include <algorithm>
#include <optional>

#include "core/error.h"

namespace qserve {

GenerateResult generate(const LlamaModel& model, const Tokenizer* tokenizer,
                        const std::vector<int32_t>& prompt_ids, const GenerateOptions& opts,
                        const std::function<void(const std::string&)>& on_text) {
  const ModelConfig& cfg = model.config();
  const int64_t n_prompt = static_cast<int64_t>(prompt_ids.size());
  check(n_prompt > 0, "generate: empty prompt");
  check(opts.max_tokens >= 0, "generate: max_tokens must be >= 0");
  const int64_t ctx = cfg.max_position_embeddings;
  if (n_prompt >= ctx) {
    throw Error("generate: prompt has " + std::to_string(n_prompt) +
                " tokens; the model's context is " + std::to_string(ctx) + " tokens");
  }
  const int64_t max_new = std::min(opts.max_tokens, ctx - n_prompt);
  KvCache cache = model.make_cache(1, n_prompt + std::max<int64_t>(max_new, 1));
  Sampler sampler(opts.sampling);
  std::optional<IncrementalDetokenizer> detok;
  if (tokenizer != nullptr) detok.emplace(*tokenizer, /*skip_special_tokens=*/true);

  GenerateResult res;
  res.finish_reason = "length";
  if (max_new == 0) return res;
  // Prefill, optionally in chunks (the last chunk's logits pick the first new token).
  const int64_t chunk = opts.prefill_chunk > 0 ? opts.prefill_chunk : n_prompt;
  std::vector<float> logits;
  for (int64_t done = 0; done < n_prompt; done += chunk) {
    const int64_t n = std::min(chunk, n_prompt - done);
    SeqSpan s{0, n, done, 0};
    logits = model.forward(std::span<const int32_t>(prompt_ids).subspan(done, n), {&s, 1}, cache,
                           LogitsMode::LastPerSequence);
  }
  int64_t pos = n_prompt;
  for (;;) {
    const int32_t next = sampler.sample(logits);
    const bool is_eos = tokenizer != nullptr &&
                        std::find(tokenizer->eos_ids().begin(), tokenizer->eos_ids().end(), next) !=
                            tokenizer->eos_ids().end();
    if (opts.stop_at_eos && is_eos) {
      res.finish_reason = "stop";
      break;
    }
    res.token_ids.push_back(next);
    if (detok) {
      std::string piece = detok->push(next);
      if (!piece.empty() && on_text) on_text(piece);
    }
    if (static_cast<int64_t>(res.token_ids.size()) >= max_new) break;
    SeqSpan s{0, 1, pos, 0};
    logits = model.forward({&next, 1}, {&s, 1}, cache, LogitsMode::LastPerSequence);
    ++pos;
  }
  if (detok) {
    std::string rest = detok->flush();
    if (!rest.empty() && on_text) on_text(rest);
    res.text = tokenizer->decode(res.token_ids, /*skip_special_tokens=*/true);
  }
  return res;
}

}  // namespace qserve
