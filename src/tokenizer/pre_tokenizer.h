// HF pre-tokenizers: split normalized text into the pieces the model encodes one at a time.
// Supported: Sequence, Split (String or Regex pattern, every split behaviour, invert),
// ByteLevel (add_prefix_space, use_regex with GPT-2's regex) and Metaspace (replacement,
// prepend_scheme first/always/never, split).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_util.h"

namespace qserve {

struct Piece {
  std::string text;
  // Whether the piece starts at offset 0 of the original input (Metaspace's "first" scheme
  // prepends only there).
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces pieces by their splits; empty pieces are dropped, as HF does.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json::Json& j, const std::string& where,
                                                 int depth = 0);

}  // namespace qserve
