// HF normalizers that rewrite text before pre-tokenization. Supported: Sequence, Prepend,
// Replace (String or Regex pattern) and Strip; the Unicode normalization forms and the rest are
// rejected at load time rather than silently ignored.
#pragma once

#include <memory>
#include <string>

#include "tokenizer/json_util.h"

namespace qserve {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};

// Builds the normalizer described by j (a tokenizer.json "normalizer" value, not null); throws
// qserve::Error naming `where` for unknown or malformed ones.
std::unique_ptr<Normalizer> make_normalizer(const json::Json& j, const std::string& where,
                                            int depth = 0);

}  // namespace qserve
