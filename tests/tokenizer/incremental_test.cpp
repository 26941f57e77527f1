// IncrementalDetokenizer: pushing ids one at a time and then flushing yields exactly decode() of
// all of them, for random id sequences (broken UTF-8, byte-fallback runs, specials, spaces).
#include <gtest/gtest.h>

#include <random>

#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace qserve {
namespace {

std::vector<int32_t> random_ids(const Tokenizer& tok, std::mt19937& rng) {
  const int32_t vocab = tok.vocab_size();
  std::vector<int32_t> specials;
  std::vector<int32_t> bytes;
  for (int32_t id = 0; id < vocab; ++id) {
    if (tok.is_special(id)) specials.push_back(id);
    if (tok.is_byte_fallback(id)) bytes.push_back(id);
  }
  // Ids of multi-byte characters split across tokens, and of spaces (leading-space handling).
  std::vector<int32_t> text_ids = tok.encode("é日本 😀 \xF0\x9F\x8E\x89  \n\t x", false);
  std::uniform_int_distribution<int> kind(0, 99);
  std::uniform_int_distribution<int> len(1, 40);
  std::vector<int32_t> ids(len(rng));
  for (int32_t& id : ids) {
    const int k = kind(rng);
    auto pick = [&](const std::vector<int32_t>& v) {
      return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
    };
    if (k < 40 || (k < 60 && bytes.empty())) {
      id = std::uniform_int_distribution<int32_t>(0, vocab - 1)(rng);
    } else if (k < 60) {
      id = pick(bytes);
    } else if (k < 75 && !specials.empty()) {
      id = pick(specials);
    } else if (k < 97 && !text_ids.empty()) {
      id = pick(text_ids);
    } else {
      id = k % 2 == 0 ? -1 : vocab + 7;  // ids decode() drops
    }
  }
  return ids;
}

void check_random(const Tokenizer& tok, int rounds, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int r = 0; r < rounds; ++r) {
    const std::vector<int32_t> ids = random_ids(tok, rng);
    for (const bool skip : {false, true}) {
      const std::string expected = tok.decode(ids, skip);
      ASSERT_EQ(test::detokenize_incrementally(tok, ids, skip), expected)
          << "round " << r << " skip " << skip;
      ASSERT_TRUE(utf8::is_valid(expected));
    }
  }
}

TEST(IncrementalDetokenizer, RandomIdsDocLlama) {
  check_random(*load_tokenizer(test::model_dir("doc-llama-22m")), 400, 1);
}

TEST(IncrementalDetokenizer, RandomIdsFixtures) {
  for (const char* name :
       {"spm-llama2", "spm-mistral", "spm-metaspace-split", "gpt2-bytelevel", "spm-model"}) {
    SCOPED_TRACE(name);
    check_random(*load_tokenizer(test::fixture_dir(name)), 300, 2);
  }
}

TEST(IncrementalDetokenizer, WaitsForCompleteCharacters) {
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(test::model_dir("doc-llama-22m"));
  // "😀" is four byte-level tokens: nothing may come out until the last one.
  const std::vector<int32_t> ids = tok->encode("a😀", false);
  ASSERT_GE(ids.size(), 3u);
  IncrementalDetokenizer detok(*tok, false);
  std::string out = detok.push(ids[0]);
  EXPECT_EQ(out, "a");
  for (size_t i = 1; i + 1 < ids.size(); ++i) EXPECT_EQ(detok.push(ids[i]), "");
  EXPECT_EQ(detok.push(ids.back()), "😀");
  EXPECT_EQ(detok.flush(), "");
  // A sequence cut inside a character: flush gives the replacement character.
  IncrementalDetokenizer cut(*tok, false);
  EXPECT_EQ(cut.push(ids[1]), "");
  EXPECT_EQ(cut.flush(), "\xEF\xBF\xBD");
}

TEST(IncrementalDetokenizer, ByteFallbackRunIsHeldUntilClosed) {
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(test::fixture_dir("spm-llama2"));
  // "日" is 3 byte tokens; a 4th (an unfinished second character) makes the whole run invalid,
  // which HF decodes as one U+FFFD per byte token: nothing may be emitted early.
  const std::vector<int32_t> ids = {3 + 0xE6, 3 + 0x97, 3 + 0xA5, 3 + 0xE6};
  const std::string all = tok->decode(ids, false);
  EXPECT_EQ(all, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(test::detokenize_incrementally(*tok, ids, false), all);
  const std::vector<int32_t> closed = {3 + 0xE6, 3 + 0x97, 3 + 0xA5, *tok->token_to_id("</s>")};
  EXPECT_EQ(test::detokenize_incrementally(*tok, closed, true), "日");
}

}  // namespace
}  // namespace qserve
