#include "tokenizer_test_util.h"

#include "tokenizer/utf8.h"

namespace qserve::test {

std::string detokenize_incrementally(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                     bool skip_special) {
  IncrementalDetokenizer detok(tok, skip_special);
  std::string out;
  for (const int32_t id : ids) {
    const std::string piece = detok.push(id);
    EXPECT_TRUE(utf8::is_valid(piece)) << "push emitted broken UTF-8 after id " << id;
    out += piece;
  }
  out += detok.flush();
  return out;
}

}  // namespace qserve::test
