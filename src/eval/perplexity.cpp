#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace qserve {

std::string read_text_file(const std::string& path, bool universal_newlines) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), path + ": cannot open text file");
  std::stringstream ss;
  ss << in.rdbuf();
  check(!in.bad(), path + ": read error");
  std::string raw = ss.str();
  if (!universal_newlines) return raw;
  std::string text;
  text.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      text += '\n';
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else {
      text += raw[i];
    }
  }
  return text;
}

double token_nll(const float* logits, int64_t vocab, int32_t target) {
  float mx = logits[0];
  for (int64_t i = 1; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  return std::log(sum) + mx - static_cast<double>(logits[target]);
}

PerplexityResult perplexity(
    const std::function<std::vector<float>(std::span<const int32_t>)>& window_logits, int64_t vocab,
    const std::vector<int32_t>& stream, int64_t window, int64_t max_windows,
    const std::function<void(int64_t, int64_t)>& progress) {
  check(window >= 2, "perplexity: window must be at least 2 tokens");
  const int64_t n = static_cast<int64_t>(stream.size());
  int64_t windows = n / window;
  check(windows > 0, "perplexity: the text has " + std::to_string(n) +
                         " tokens, fewer than one window of " + std::to_string(window));
  if (max_windows > 0) windows = std::min(windows, max_windows);

  const auto t0 = std::chrono::steady_clock::now();
  double total = 0.0;
  for (int64_t w = 0; w < windows; ++w) {
    const int32_t* tokens = stream.data() + w * window;
    const std::vector<float> logits = window_logits({tokens, static_cast<size_t>(window)});
    check(static_cast<int64_t>(logits.size()) == window * vocab,
          "perplexity: the scorer returned logits of the wrong size");
    for (int64_t t = 0; t + 1 < window; ++t) {
      total += token_nll(&logits[t * vocab], vocab, tokens[t + 1]);
    }
    if (progress) progress(w + 1, windows);
  }
  PerplexityResult r;
  r.windows = windows;
  r.tokens = n;
  r.mean_nll = total / static_cast<double>(windows * (window - 1));
  r.ppl = std::exp(r.mean_nll);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

PerplexityResult perplexity(const LlamaModel& model, const std::vector<int32_t>& stream,
                            int64_t window, int64_t max_windows,
                            const std::function<void(int64_t, int64_t)>& progress,
                            int64_t prefill_chunk) {
  check(prefill_chunk >= 0, "perplexity: the prefill chunk must be >= 0");
  check(window <= model.config().max_position_embeddings,
        "perplexity: window " + std::to_string(window) + " exceeds the model's context of " +
            std::to_string(model.config().max_position_embeddings) + " tokens");
  KvCache cache = model.make_cache(1, std::max<int64_t>(window, 1));
  const auto logits = [&](std::span<const int32_t> tokens) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (prefill_chunk <= 0 || prefill_chunk >= n) {
      const SeqSpan s{0, n, 0, 0};
      return model.forward(tokens, {&s, 1}, cache, LogitsMode::AllTokens);
    }
    std::vector<float> all;
    for (int64_t start = 0; start < n; start += prefill_chunk) {
      const int64_t len = std::min(prefill_chunk, n - start);
      const SeqSpan s{0, len, start, 0};
      const std::vector<float> part =
          model.forward(tokens.subspan(static_cast<size_t>(start), static_cast<size_t>(len)),
                        {&s, 1}, cache, LogitsMode::AllTokens);
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  };
  return perplexity(logits, model.config().vocab_size, stream, window, max_windows, progress);
}

std::vector<int32_t> perplexity_stream(const Tokenizer& tok, const std::string& text,
                                       const std::string& doc_separator,
                                       const std::string& eot_token) {
  if (doc_separator.empty()) return tok.encode(text, /*add_special_tokens=*/true);
  check(tok.bos_id().has_value(), "perplexity: --doc-separator needs a tokenizer with a BOS token");
  int32_t eot = -1;
  if (!eot_token.empty()) {
    auto id = tok.token_to_id(eot_token);
    check(id.has_value(),
          "perplexity: end-of-text token '" + eot_token + "' is not in the vocabulary");
    eot = *id;
  } else if (auto a = tok.token_to_id("<|end_of_text|>")) {
    eot = *a;
  } else if (auto b = tok.token_to_id("</s>")) {
    eot = *b;
  } else {
    check(!tok.eos_ids().empty(), "perplexity: the tokenizer has no end-of-text token");
    eot = tok.eos_ids().front();
  }
  std::vector<int32_t> stream;
  size_t start = 0;
  for (;;) {
    const size_t end = text.find(doc_separator, start);
    const std::string doc =
        text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    stream.push_back(*tok.bos_id());
    std::vector<int32_t> ids = tok.encode(doc, /*add_special_tokens=*/false);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(eot);
    if (end == std::string::npos) break;
    start = end + doc_separator.size();
  }
  return stream;
}

}  // namespace qserve
