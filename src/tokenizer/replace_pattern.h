// The {"pattern": {"String"|"Regex": ...}, "content": ...} pair shared by HF's Replace normalizer
// and Replace decoder: every non-overlapping match is replaced by content.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "tokenizer/json_util.h"
#include "tokenizer/regex.h"

namespace qserve {

class ReplacePattern {
 public:
  ReplacePattern(const json::Json& j, const std::string& where);
  std::string replace_all(std::string_view text) const;

 private:
  std::string literal_;         // a String pattern, found with plain search
  std::optional<Regex> regex_;  // a Regex pattern
  std::string content_;
};

}  // namespace qserve
