// Calibration data for the quantizer (qoq-algorithm.md §1.1): documents from a text file, sampled
// as DeepCompressor does - shuffle the documents (seeded), tokenize each with the model's
// tokenizer (BOS added as the tokenizer's post-processor says), take a random window of seq_len
// tokens from longer ones, collect until there are >= samples documents and >= samples * seq_len
// tokens, concatenate, cut into seq_len-token samples and keep the first `samples`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace qserve::qoq {

// Documents of a calibration file:
//  * `*.jsonl`: one JSON object per non-empty line, its string field "text";
//  * otherwise plain text, split at `separator` (C escapes already expanded) when it is not empty,
//    else at newlines (each non-empty line a document, as in WikiText's one-paragraph lines).
// Throws qserve::Error naming the file when it cannot be read, holds no non-empty document, or a
// JSONL line is not an object with a string "text".
std::vector<std::string> read_calibration_documents(const std::string& path,
                                                    const std::string& separator);

struct CalibrationSet {
  int64_t samples = 0;
  int64_t seq_len = 0;
  std::vector<int32_t> tokens;  // [samples * seq_len]
  int64_t documents_used = 0;
  std::vector<std::string> warnings;  // e.g. fewer samples than asked
};

// Samples `samples` x `seq_len` tokens as described above (std::mt19937_64 seeded with `seed`;
// deterministic, not bit-identical to Python's random). When the documents hold fewer tokens than
// asked, uses as many whole samples as they hold and records a warning; throws qserve::Error when
// not even one sample of seq_len tokens can be formed.
CalibrationSet sample_calibration(const Tokenizer& tok, const std::vector<std::string>& docs,
                                  int64_t samples, int64_t seq_len, uint64_t seed);

}  // namespace qserve::qoq
