#include "tokenizer/added_vocab.h"

#include <algorithm>

#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

// Rust regex's \w (Alphabetic, marks, decimal digits, connector punctuation, joiners), which HF
// uses to decide whether a single_word token touches a word.
const Regex& word_char() {
  static const Regex re(R"([\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])", false);
  return re;
}

bool starts_with_word(std::string_view s) {
  return !s.empty() && word_char().matches_at(s, 0);
}

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  return word_char().matches_at(s, start);
}

// Start of the whitespace run that ends s.
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    const size_t n = utf8::valid_sequence_length(s, start);
    if (n != end - start || !utf8::is_whitespace(utf8::decode_at(s, start, n))) break;
    end = start;
  }
  return end;
}

// Length of the whitespace run that starts s.
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t n = utf8::valid_sequence_length(s, i);
    if (n == 0 || !utf8::is_whitespace(utf8::decode_at(s, i, n))) break;
    i += n;
  }
  return i;
}

}  // namespace

void AddedVocab::Trie::insert(std::string_view pattern, int32_t token) {
  int32_t node = 0;
  for (const char c : pattern) {
    const auto b = static_cast<unsigned char>(c);
    const uint64_t key = (static_cast<uint64_t>(node) << 8) | b;
    const auto it = edges.find(key);
    if (it != edges.end()) {
      node = it->second;
    } else {
      const auto child = static_cast<int32_t>(nodes.size());
      nodes.emplace_back();
      edges.emplace(key, child);
      node = child;
    }
  }
  nodes[node].token = token;
  first_byte[static_cast<unsigned char>(pattern[0])] = true;
}

int32_t AddedVocab::Trie::longest_at(std::string_view text, size_t pos, size_t& length) const {
  int32_t node = 0;
  int32_t best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto it =
        edges.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
    if (it == edges.end()) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      length = i + 1 - pos;
    }
  }
  return best;
}

void AddedVocab::add_pattern(bool normalized_set, std::string_view pattern, int32_t index) {
  if (!pattern.empty()) tries_[normalized_set].insert(pattern, index);
}

void AddedVocab::split(std::string_view text, bool normalized_set,
                       std::vector<TextSegment>& out) const {
  const Trie& trie = tries_[normalized_set];
  size_t start_offset = 0;  // end of the last emitted segment
  size_t pos = 0;
  while (pos < text.size()) {
    if (!trie.first_byte[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t length = 0;
    const int32_t index = trie.longest_at(text, pos, length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& t = tokens_[index];
    size_t start = pos;
    size_t stop = pos + length;
    pos = stop;
    if (t.single_word) {
      const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) continue;  // inside a word: not this token
    }
    if (t.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), start_offset);
    if (t.rstrip) {
      stop += leading_space_length(text.substr(stop));
      pos = stop;  // the stripped spaces are consumed by this token
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, t.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
}

std::optional<int32_t> AddedVocab::find(std::string_view content) const {
  const auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

const AddedToken* AddedVocab::by_id(int32_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const std::string& AddedVocab::display(const AddedToken& t) const {
  return patterns_[&t - tokens_.data()];
}

}  // namespace qserve
