// Calibration documents and DeepCompressor-style sampling (qoq/calibration.h).
#include "qoq/calibration.h"

#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/perplexity.h"

namespace qserve::qoq {

namespace {

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string strip(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::vector<std::string> split(const std::string& text, const std::string& sep) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t next = text.find(sep, pos);
    out.push_back(text.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
    if (next == std::string::npos) break;
    pos = next + sep.size();
  }
  return out;
}

}  // namespace

std::vector<std::string> read_calibration_documents(const std::string& path,
                                                    const std::string& separator) {
  const std::string text = read_text_file(path);
  std::vector<std::string> docs;
  if (ends_with(path, ".jsonl")) {
    int64_t line_no = 0;
    for (const std::string& line : split(text, "\n")) {
      ++line_no;
      if (strip(line).empty()) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw Error(path + ": line " + std::to_string(line_no) + " is not valid JSON: " + e.what());
      }
      check(j.is_object() && j.contains("text") && j["text"].is_string(),
            path + ": line " + std::to_string(line_no) + " has no string field \"text\"");
      docs.push_back(j["text"].get<std::string>());
    }
  } else {
    docs = split(text, separator.empty() ? std::string("\n") : separator);
  }
  std::vector<std::string> kept;
  for (std::string& d : docs) {
    std::string s = strip(d);
    if (!s.empty()) kept.push_back(std::move(s));
  }
  check(!kept.empty(), path + ": the calibration file holds no non-empty document");
  return kept;
}

CalibrationSet sample_calibration(const Tokenizer& tok, const std::vector<std::string>& docs,
                                  int64_t samples, int64_t seq_len, uint64_t seed) {
  check(samples > 0 && seq_len > 1, "calibration: --samples must be >= 1 and --seq-len >= 2");
  std::mt19937_64 rng(seed);
  std::vector<size_t> order(docs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);

  const int64_t want = samples * seq_len;
  std::vector<int32_t> all;
  int64_t used = 0;
  for (size_t i : order) {
    if (used >= samples && static_cast<int64_t>(all.size()) >= want) break;
    std::vector<int32_t> ids = tok.encode(docs[i], /*add_special_tokens=*/true);
    if (ids.empty()) continue;
    if (static_cast<int64_t>(ids.size()) > seq_len) {
      const uint64_t start = rng() % (ids.size() - static_cast<size_t>(seq_len) + 1);
      ids = std::vector<int32_t>(ids.begin() + static_cast<int64_t>(start),
                                 ids.begin() + static_cast<int64_t>(start) + seq_len);
    }
    all.insert(all.end(), ids.begin(), ids.end());
    ++used;
  }
  CalibrationSet c;
  c.seq_len = seq_len;
  c.documents_used = used;
  c.samples = std::min<int64_t>(samples, static_cast<int64_t>(all.size()) / seq_len);
  check(c.samples > 0, "calibration: the text gives " + std::to_string(all.size()) +
                           " tokens, fewer than one sample of --seq-len " +
                           std::to_string(seq_len) + " tokens");
  if (c.samples < samples) {
    c.warnings.push_back("calibration text gives " + std::to_string(all.size()) +
                         " tokens, fewer than the " + std::to_string(samples) + " x " +
                         std::to_string(seq_len) + " asked; using " + std::to_string(c.samples) +
                         " samples of " + std::to_string(seq_len) + " tokens");
  }
  c.tokens.assign(all.begin(), all.begin() + c.samples * seq_len);
  return c;
}

}  // namespace qserve::qoq
