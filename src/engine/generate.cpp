// Single-request generation: an Engine with one sequence slot and just enough KV pages, so the
// one-prompt path and the batched path share every line of decoding, stopping and streaming.
#include "engine/generate.h"

#include <algorithm>

#include "core/error.h"
#include "engine/engine.h"

namespace qserve {

GenerateResult generate(const LlamaModel& model, const Tokenizer* tokenizer,
                        const std::vector<int32_t>& prompt_ids, const GenerateOptions& opts,
                        const std::function<void(const std::string&)>& on_text) {
  const int64_t ctx = model.config().max_position_embeddings;
  const int64_t n_prompt = static_cast<int64_t>(prompt_ids.size());
  check(n_prompt > 0, "generate: empty prompt");
  check(opts.max_tokens >= 0, "generate: max_tokens must be >= 0");
  if (n_prompt >= ctx) {
    throw Error("generate: prompt has " + std::to_string(n_prompt) +
                " tokens; the model's context is " + std::to_string(ctx) + " tokens");
  }
  GenerateResult res;
  res.finish_reason = "length";
  if (opts.max_tokens == 0) return res;

  SamplingParams p = opts.sampling;
  p.max_tokens = opts.max_tokens;
  p.ignore_eos = !opts.stop_at_eos;
  EngineConfig cfg;
  cfg.max_num_seqs = 1;
  const int64_t total = std::min(ctx, n_prompt + opts.max_tokens);
  cfg.max_model_len = total;
  cfg.num_pages = pages_for_tokens(total);
  cfg.watermark = 0.0;
  cfg.max_num_batched_tokens = opts.prefill_chunk > 0 ? opts.prefill_chunk : n_prompt;
  const std::unique_ptr<Engine> engine = Engine::create(model, tokenizer, cfg);
  engine->add_request(prompt_ids, p, [&](const RequestOutput& o) {
    res.token_ids.insert(res.token_ids.end(), o.token_ids.begin(), o.token_ids.end());
    res.text += o.text;
    if (!o.text.empty() && on_text) on_text(o.text);
    if (o.finished) res.finish_reason = o.finish_reason;
  });
  while (engine->has_unfinished()) engine->step();
  return res;
}

}  // namespace qserve
