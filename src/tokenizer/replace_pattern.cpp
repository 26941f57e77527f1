#include "tokenizer/replace_pattern.h"

#include <vector>

#include "core/error.h"

namespace qserve {

ReplacePattern::ReplacePattern(const json::Json& j, const std::string& where) {
  const json::Json& pattern = json::require(j, "pattern", where);
  content_ = json::as_string(json::require(j, "content", where), where + ".content");
  if (const json::Json* s = json::member(pattern, "String")) {
    literal_ = json::as_string(*s, where + ".pattern.String");
    // An empty pattern would match between every character; no real tokenizer uses one.
    if (literal_.empty()) throw Error(where + ".pattern.String: empty pattern");
  } else if (const json::Json* r = json::member(pattern, "Regex")) {
    try {
      regex_.emplace(json::as_string(*r, where + ".pattern.Regex"), false);
    } catch (const Error& e) {
      throw Error(where + ".pattern.Regex: " + e.what());
    }
  } else {
    throw Error(where + ".pattern: expected {\"String\": ...} or {\"Regex\": ...}");
  }
}

std::string ReplacePattern::replace_all(std::string_view text) const {
  std::string out;
  out.reserve(text.size() + text.size() / 4);
  if (!regex_) {
    size_t pos = 0;
    while (true) {
      const size_t hit = text.find(literal_, pos);
      if (hit == std::string_view::npos) break;
      out.append(text.substr(pos, hit - pos));
      out.append(content_);
      pos = hit + literal_.size();
    }
    out.append(text.substr(pos));
    return out;
  }
  std::vector<RegexSegment> segments;
  regex_->find_matches(text, segments);
  for (const RegexSegment& s : segments) {
    if (s.is_match) {
      out.append(content_);
    } else {
      out.append(text.substr(s.start, s.end - s.start));
    }
  }
  return out;
}

}  // namespace qserve
