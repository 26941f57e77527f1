// libFuzzer target: a tokenizer.json from arbitrary bytes either loads or throws qserve::Error;
// when it loads, encoding and decoding a fixed string (and incremental detokenization) must not
// crash and must keep the decode/detokenizer invariant.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

// Touches every stage: added tokens, spaces, newlines, digits, non-ASCII, broken UTF-8.
constexpr std::string_view kProbe =
    "Hello <s>world</s>  it's 12345 caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\n\t"
    "<|begin_of_text|>x\xFF\xE6\x97 end ";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  try {
    const auto tok = qserve::load_tokenizer_json_string(json, "fuzz.json");
    for (const bool special : {false, true}) {
      const std::vector<int32_t> ids = tok->encode(kProbe, special);
      const std::string text = tok->decode(ids, !special);
      qserve::IncrementalDetokenizer detok(*tok, !special);
      std::string streamed;
      for (const int32_t id : ids) streamed += detok.push(id);
      streamed += detok.flush();
      if (streamed != text) std::abort();  // the detokenizer's contract
    }
    const int32_t n = tok->vocab_size();
    for (int32_t id = 0; id < n && id < 64; ++id) {
      const std::string t = tok->id_to_token(id);
      (void)tok->token_to_id(t);
      (void)tok->is_special(id);
    }
  } catch (const qserve::Error&) {
    // Malformed input is reported, not crashed on.
  }
  return 0;
}
