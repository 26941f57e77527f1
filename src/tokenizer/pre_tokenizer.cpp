#include "tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace qserve {

namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior parse_behavior(const std::string& s, const std::string& where) {
  if (s == "Removed") return Behavior::kRemoved;
  if (s == "Isolated") return Behavior::kIsolated;
  if (s == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::kMergedWithNext;
  if (s == "Contiguous") return Behavior::kContiguous;
  throw Error(where + ": unknown split behavior '" + s + "'");
}

// HF NormalizedString::split: turns the match/non-match slices into the kept ranges.
void apply_behavior(const std::vector<RegexSegment>& segs, Behavior behavior,
                    std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  switch (behavior) {
    case Behavior::kIsolated:
      for (const auto& s : segs) out.emplace_back(s.start, s.end);
      break;
    case Behavior::kRemoved:
      for (const auto& s : segs) {
        if (!s.is_match) out.emplace_back(s.start, s.end);
      }
      break;
    case Behavior::kContiguous: {
      bool previous = false;
      for (const auto& s : segs) {
        if (s.is_match == previous && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.start, s.end);
        }
        previous = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous = false;
      for (const auto& s : segs) {
        if (s.is_match && !previous && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.start, s.end);
        }
        previous = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous = false;
      for (size_t k = segs.size(); k-- > 0;) {
        const auto& s = segs[k];
        if (s.is_match && !previous && !out.empty()) {
          out.back().first = s.start;
        } else {
          out.emplace_back(s.start, s.end);
        }
        previous = s.is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
}

// Splits every piece by pattern slices, keeping at_start only on a piece's first split.
template <typename FindMatches>
void split_pieces(std::vector<Piece>& pieces, Behavior behavior, bool invert,
                  const FindMatches& find_matches) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  std::vector<RegexSegment> segs;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (Piece& p : pieces) {
    segs.clear();
    find_matches(p.text, segs);
    if (invert) {
      for (auto& s : segs) s.is_match = !s.is_match;
    }
    apply_behavior(segs, behavior, ranges);
    for (const auto& [b, e] : ranges) {
      if (b == e) continue;
      out.push_back(Piece{p.text.substr(b, e - b), p.at_start && b == 0});
    }
  }
  pieces = std::move(out);
}

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& s : steps_) s->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex regex, Behavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_pieces(pieces, behavior_, invert_,
                 [this](const std::string& text, auto& segs) { regex_.find_matches(text, segs); });
  }

 private:
  Regex regex_;
  Behavior behavior_;
  bool invert_;
};

const Regex& gpt2_regex() {
  static const Regex re(byte_level::kGpt2Pattern, false);
  return re;
}

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {
    if (use_regex_) gpt2_regex();  // compile at load time, not on the first encode
  }
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_) {
      for (Piece& p : pieces) {
        if (!p.text.empty() && p.text[0] != ' ') p.text.insert(0, 1, ' ');
      }
    }
    if (use_regex_) {
      split_pieces(pieces, Behavior::kIsolated, false, [](const std::string& text, auto& segs) {
        gpt2_regex().find_matches(text, segs);
      });
    }
    std::string mapped;
    for (Piece& p : pieces) {
      mapped.clear();
      byte_level::encode(p.text, mapped);
      p.text.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::string replaced;
    for (Piece& p : pieces) {
      replaced.clear();
      for (const char c : p.text) {
        if (c == ' ') {
          replaced.append(replacement_);
        } else {
          replaced.push_back(c);
        }
      }
      const bool starts = replaced.compare(0, replacement_.size(), replacement_) == 0;
      const bool prepend =
          !replaced.empty() && !starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start));
      if (prepend) replaced.insert(0, replacement_);
      p.text.swap(replaced);
    }
    if (split_) {
      // Each replacement character starts a new piece (HF: split on it, MergedWithNext).
      split_pieces(pieces, Behavior::kMergedWithNext, false,
                   [this](const std::string& text, std::vector<RegexSegment>& segs) {
                     if (text.empty()) {
                       segs.push_back({0, 0, false});
                       return;
                     }
                     size_t prev = 0;
                     size_t pos = 0;
                     while ((pos = text.find(replacement_, pos)) != std::string::npos) {
                       if (prev < pos) segs.push_back({prev, pos, false});
                       segs.push_back({pos, pos + replacement_.size(), true});
                       pos += replacement_.size();
                       prev = pos;
                     }
                     if (prev < text.size()) segs.push_back({prev, text.size(), false});
                   });
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

std::unique_ptr<PreTokenizer> make_metaspace(const json::Json& j, const std::string& where) {
  const std::string replacement =
      json::as_string(json::require(j, "replacement", where), where + ".replacement");
  if (replacement.empty() || utf8::valid_sequence_length(replacement, 0) != replacement.size()) {
    throw Error(where + ".replacement: expected exactly one character");
  }
  PrependScheme scheme = PrependScheme::kAlways;
  if (const json::Json* s = json::member(j, "prepend_scheme")) {
    const std::string name = json::as_string(*s, where + ".prepend_scheme");
    if (name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (name == "never") {
      scheme = PrependScheme::kNever;
    } else {
      throw Error(where + ".prepend_scheme: unknown scheme '" + name + "'");
    }
  }
  // Older files carry only add_prefix_space; false means never prepend.
  if (!json::opt_bool(j, "add_prefix_space", true, where)) scheme = PrependScheme::kNever;
  return std::make_unique<MetaspacePreTokenizer>(replacement, scheme,
                                                 json::opt_bool(j, "split", true, where));
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json::Json& j, const std::string& where,
                                                 int depth) {
  json::check_depth(depth, where);
  const std::string type = json::type_of(j, where);
  if (type == "Sequence") {
    const json::Json& list = json::require(j, "pretokenizers", where);
    if (!list.is_array()) throw Error(where + ".pretokenizers: expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      steps.push_back(make_pre_tokenizer(
          list[i], where + ".pretokenizers[" + std::to_string(i) + "]", depth + 1));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    const json::Json& pattern = json::require(j, "pattern", where);
    const Behavior behavior = parse_behavior(
        json::as_string(json::require(j, "behavior", where), where + ".behavior"), where);
    const bool invert = json::opt_bool(j, "invert", false, where);
    try {
      if (const json::Json* s = json::member(pattern, "String")) {
        const std::string literal = json::as_string(*s, where + ".pattern.String");
        // HF never matches an empty String pattern; PCRE2 would match it everywhere.
        if (literal.empty()) throw Error("empty pattern");
        return std::make_unique<SplitPreTokenizer>(Regex(literal, true), behavior, invert);
      }
      if (const json::Json* r = json::member(pattern, "Regex")) {
        return std::make_unique<SplitPreTokenizer>(
            Regex(json::as_string(*r, where + ".pattern.Regex"), false), behavior, invert);
      }
    } catch (const Error& e) {
      throw Error(where + ".pattern: " + e.what());
    }
    throw Error(where + ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(
        json::opt_bool(j, "add_prefix_space", true, where),
        json::opt_bool(j, "use_regex", true, where));
  }
  if (type == "Metaspace") return make_metaspace(j, where);
  throw Error(where + ": pre_tokenizer type '" + type +
              "' is not supported (supported: Sequence, Split, ByteLevel, Metaspace)");
}

}  // namespace qserve
