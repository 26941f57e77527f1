// HF decoders: turn the token strings of a decode back into text. Supported: ByteLevel,
// Metaspace, Replace, ByteFallback, Fuse, Strip and Sequence of them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_util.h"

namespace qserve {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // HF decode_chain: rewrites the list of token strings (the caller joins the result).
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
  // Whether a ByteFallback step is present: then a run of <0xNN> tokens decodes as one group
  // (all U+FFFD when invalid), so its text is not final until a non-byte token follows.
  virtual bool groups_byte_tokens() const { return false; }
};

std::unique_ptr<Decoder> make_decoder(const json::Json& j, const std::string& where, int depth = 0);

// Whether token is a byte-fallback token "<0xNN>" (as HF's ByteFallback decoder parses it).
bool parse_byte_token(const std::string& token, unsigned char& byte);

}  // namespace qserve
