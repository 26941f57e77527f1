// A compiled PCRE2 pattern (UTF + UCP, so \p{L}, \p{N} and \s are Unicode-aware, as in the
// Oniguruma regexes HF tokenizers use), JIT-compiled when the platform supports it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;

namespace qserve {

// A slice [start, end) of a string and whether it is a match of the pattern.
struct RegexSegment {
  size_t start;
  size_t end;
  bool is_match;
};

class Regex {
 public:
  // literal: the pattern is a plain string (HF's {"String": ...} patterns). Throws qserve::Error
  // naming the pattern and PCRE2's message when it does not compile.
  Regex(std::string_view pattern, bool literal);
  ~Regex();
  Regex(Regex&& other) noexcept;
  Regex& operator=(Regex&& other) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends slices covering all of text in order: every non-overlapping match (leftmost first)
  // and the gaps between them (HF's Pattern::find_matches). text must be valid UTF-8. An empty
  // text gives one empty non-match slice.
  void find_matches(std::string_view text, std::vector<RegexSegment>& out) const;

  // Whether the pattern matches starting exactly at text[pos] (pos on a character boundary).
  bool matches_at(std::string_view text, size_t pos) const;

  const std::string& pattern() const { return pattern_; }

 private:
  // Returns false when there is no match at or after pos; throws on a matching error (such as
  // PCRE2's backtracking limit).
  bool next_match(std::string_view text, size_t pos, bool anchored, size_t& start,
                  size_t& end) const;

  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;
};

}  // namespace qserve
