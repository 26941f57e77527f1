// Perplexity over non-overlapping windows (the protocol in ../shared/README.md): the token stream
// is cut into windows of W tokens (the tail that does not fill a window is dropped), each window
// runs on its own with no carried context, loss = mean cross-entropy over the W-1 shifted targets
// of every window, ppl = exp(total loss / (windows * (W-1))).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace qserve {

struct PerplexityResult {
  double ppl = 0.0;
  double mean_nll = 0.0;
  int64_t windows = 0;
  int64_t tokens = 0;  // length of the whole stream
  double seconds = 0.0;
};

// Runs the protocol on `stream`. max_windows > 0 limits the number of windows evaluated.
// progress (optional) is called after each window with (done, total). prefill_chunk > 0 runs
// each window as consecutive prefill chunks of that many tokens, so that later chunks attend to
// the earlier ones through the KV cache - with a KV4/KV8 cache, through its quantized pages (one
// prefill per window, the default, never reads the quantized cache; docs/precision.md §4).
PerplexityResult perplexity(const LlamaModel& model, const std::vector<int32_t>& stream,
                            int64_t window, int64_t max_windows,
                            const std::function<void(int64_t, int64_t)>& progress = {},
                            int64_t prefill_chunk = 0);

// The same protocol over any scorer: window_logits(tokens) returns logits [tokens, vocab] for
// one window run from an empty context (e.g. ModelExecutor::score on the GPU).
PerplexityResult perplexity(
    const std::function<std::vector<float>(std::span<const int32_t>)>& window_logits, int64_t vocab,
    const std::vector<int32_t>& stream, int64_t window, int64_t max_windows,
    const std::function<void(int64_t, int64_t)>& progress = {});

// Builds the token stream from text. Without a separator: encode(text) with special tokens (one
// BOS at the start). With a separator: each document becomes [BOS] + encode(doc, no special)
// + [end-of-text], concatenated; end-of-text is `eot_token` if given, else <|end_of_text|> or </s>
// when in the vocabulary, else the first EOS id.
std::vector<int32_t> perplexity_stream(const Tokenizer& tok, const std::string& text,
                                       const std::string& doc_separator,
                                       const std::string& eot_token = "");

// Reads a text file as Python's text mode does (universal newlines: CRLF and lone CR become LF),
// which is how the reference perplexities were computed. Throws naming the file if unreadable.
std::string read_text_file(const std::string& path, bool universal_newlines = true);

// Log-sum-exp based negative log-likelihood of `target` under one row of logits (double).
double token_nll(const float* logits, int64_t vocab, int32_t target);

}  // namespace qserve
