// Shared pieces of the precision tests: doc-llama-22m at a given precision, a fixed prompt from
// the held-out text, and the error measures the bounds are stated in.
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "model/llama_model.h"
#include "test_paths.h"
#include "tokenizer/tokenizer.h"

namespace qserve::test {

inline std::string doc_model_dir() {
  return model_dir("doc-llama-22m");
}

inline std::unique_ptr<LlamaModel> load_doc_model(const std::string& precision,
                                                  bool qserve_norm = false) {
  LoadOptions o;
  o.precision = Precision::parse(precision);
  o.qserve_norm = qserve_norm;
  return LlamaModel::load(doc_model_dir(), o);
}

// The first n tokens (BOS included) of the held-out text starting at byte `offset`.
inline std::vector<int32_t> doc_prompt(int64_t n, size_t offset = 0) {
  std::ifstream in(shared_dir() + "/data/eval/doc-heldout.txt");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str().substr(offset, static_cast<size_t>(n) * 16);
  std::vector<int32_t> ids = load_tokenizer(doc_model_dir())->encode(text, true);
  ids.resize(static_cast<size_t>(n));
  return ids;
}

// Logits [T, V] of one prefill of `ids`.
inline std::vector<float> prefill_logits(const LlamaModel& m, const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  KvCache cache = m.make_cache(1, T);
  SeqSpan s{0, T, 0, 0};
  return m.forward(ids, {&s, 1}, cache, LogitsMode::AllTokens);
}

// ||a - b|| / ||b|| over all elements.
inline double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

inline int32_t row_argmax(const float* row, int64_t v) {
  int32_t best = 0;
  for (int64_t i = 1; i < v; ++i) {
    if (row[i] > row[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

// Fraction of rows whose argmax agrees.
inline double top1_agreement(const std::vector<float>& a, const std::vector<float>& b, int64_t v) {
  const int64_t rows = static_cast<int64_t>(b.size()) / v;
  int64_t same = 0;
  for (int64_t r = 0; r < rows; ++r) same += row_argmax(&a[r * v], v) == row_argmax(&b[r * v], v);
  return static_cast<double>(same) / static_cast<double>(rows);
}

}  // namespace qserve::test
