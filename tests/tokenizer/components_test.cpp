// Building blocks: UTF-8 lossy decoding, the byte-level table, and small hand-written
// tokenizer.json files for BPE details (merge order, ignore_merges, added-token flags).
#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace qserve {
namespace {

const std::string kFFFD = "\xEF\xBF\xBD";

TEST(Utf8, LossyMatchesRustAndPython) {
  EXPECT_EQ(utf8::lossy("plain"), "plain");
  EXPECT_EQ(utf8::lossy("\xE6\x97"), kFFFD);                      // truncated 3-byte character
  EXPECT_EQ(utf8::lossy("\xF0\x9F\x98"), kFFFD);                  // truncated 4-byte character
  EXPECT_EQ(utf8::lossy("\xC3\x28"), kFFFD + "(");                // bad continuation
  EXPECT_EQ(utf8::lossy("\xED\xA0\x80"), kFFFD + kFFFD + kFFFD);  // surrogate
  EXPECT_EQ(utf8::lossy("\xF4\x90\x80\x80"), kFFFD + kFFFD + kFFFD + kFFFD);  // > U+10FFFF
  EXPECT_EQ(utf8::lossy("\xC0\xAF"), kFFFD + kFFFD);                          // overlong
  EXPECT_EQ(utf8::lossy("a\xFF"
                        "b"),
            "a" + kFFFD + "b");
  EXPECT_TRUE(utf8::is_valid("日本 😀"));
  EXPECT_FALSE(utf8::is_valid("\xE6\x97"));
}

TEST(ByteLevel, Gpt2Table) {
  EXPECT_EQ(byte_level::byte_to_char(' '), "Ġ");
  EXPECT_EQ(byte_level::byte_to_char('\n'), "Ċ");
  EXPECT_EQ(byte_level::byte_to_char('a'), "a");
  EXPECT_EQ(byte_level::byte_to_char(0xAD), "Ń");
  EXPECT_EQ(byte_level::char_to_byte(U'Ġ'), ' ');
  EXPECT_EQ(byte_level::char_to_byte(U'a'), 'a');
  EXPECT_EQ(byte_level::char_to_byte(U' '), -1);
  for (int b = 0; b < 256; ++b) {
    const std::string_view c = byte_level::byte_to_char(static_cast<unsigned char>(b));
    const size_t n = utf8::valid_sequence_length(c, 0);
    ASSERT_EQ(n, c.size());
    EXPECT_EQ(byte_level::char_to_byte(utf8::decode_at(c, 0, n)), b);
  }
}

// A tokenizer.json over the letters a, b, c with the given model fields and added tokens.
std::string tiny_json(const std::string& model_extra, const std::string& merges,
                      const std::string& added = "[]", const std::string& pre = "null") {
  return R"({"version":"1.0","added_tokens":)" + added + R"(,"normalizer":null,"pre_tokenizer":)" +
         pre + R"(,"post_processor":null,"decoder":null,"model":{"type":"BPE",)" + model_extra +
         R"("vocab":{"a":0,"b":1,"c":2,"ab":3,"bc":4,"abc":5,"aa":6," ":7},"merges":)" + merges +
         "}}";
}

TEST(Bpe, MergesByRankInEitherForm) {
  // "a b" outranks "b c": abc -> ab c -> abc.
  const auto pairs = load_tokenizer_json_string(
      tiny_json("", R"([["a","b"],["b","c"],["ab","c"]])"), "pairs.json");
  const auto strings =
      load_tokenizer_json_string(tiny_json("", R"(["a b","b c","ab c"])"), "strings.json");
  for (const Tokenizer* t : {pairs.get(), strings.get()}) {
    EXPECT_EQ(t->encode("abc", false), std::vector<int32_t>{5});
    EXPECT_EQ(t->encode("bca", false), (std::vector<int32_t>{4, 0}));
  }
  // With "b c" first, abc -> a bc, and a bc is not a merge.
  const auto other = load_tokenizer_json_string(tiny_json("", R"(["b c","a b","ab c"])"), "o.json");
  EXPECT_EQ(other->encode("abc", false), (std::vector<int32_t>{0, 4}));
  // Equal ranks merge leftmost first: aaa -> aa a.
  const auto aa = load_tokenizer_json_string(tiny_json("", R"(["a a"])"), "aa.json");
  EXPECT_EQ(aa->encode("aaa", false), (std::vector<int32_t>{6, 0}));
  EXPECT_EQ(aa->decode(std::vector<int32_t>{6, 0}, false), "aa a");  // no decoder: joined by " "
}

TEST(Bpe, IgnoreMergesAndUnknownCharacters) {
  // "abc" is in the vocab but unreachable by merges; ignore_merges emits it directly.
  const std::string merges = R"(["b c"])";
  EXPECT_EQ(load_tokenizer_json_string(tiny_json("", merges), "x")->encode("abc", false),
            (std::vector<int32_t>{0, 4}));
  EXPECT_EQ(load_tokenizer_json_string(tiny_json(R"("ignore_merges":true,)", merges), "x")
                ->encode("abc", false),
            std::vector<int32_t>{5});
  // Unknown characters: dropped without unk, else unk (fused when fuse_unk).
  EXPECT_EQ(load_tokenizer_json_string(tiny_json("", merges), "x")->encode("axyb", false),
            (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(load_tokenizer_json_string(tiny_json(R"("unk_token":" ",)", merges), "x")
                ->encode("axyb", false),
            (std::vector<int32_t>{0, 7, 7, 1}));
  EXPECT_EQ(
      load_tokenizer_json_string(tiny_json(R"("unk_token":" ","fuse_unk":true,)", merges), "x")
          ->encode("axyb", false),
      (std::vector<int32_t>{0, 7, 1}));
}

TEST(AddedTokens, FlagsAndLongestMatch) {
  const std::string added = R"([
    {"id":10,"content":"<x>","special":true,"normalized":false,"lstrip":true},
    {"id":11,"content":"<x>>","special":true,"normalized":false,"rstrip":true},
    {"id":12,"content":"cc","special":false,"normalized":true,"single_word":true},
    {"id":13,"content":"abc","special":false,"normalized":true}])";
  const auto tok = load_tokenizer_json_string(tiny_json("", R"(["a b"])", added), "added.json");
  EXPECT_EQ(tok->encode("a  <x>b", false), (std::vector<int32_t>{0, 10, 1}));   // lstrip
  EXPECT_EQ(tok->encode("a<x>>  b", false), (std::vector<int32_t>{0, 11, 1}));  // longest, rstrip
  // single_word: only where no word character touches it.
  EXPECT_EQ(tok->encode("cc acc cc", false), (std::vector<int32_t>{12, 7, 0, 2, 2, 7, 12}));
  // An added token that is also in the model's vocab takes the model's id, as in HF.
  EXPECT_EQ(tok->token_to_id("abc"), 5);
  EXPECT_EQ(tok->encode("abc", false), std::vector<int32_t>{5});
  EXPECT_EQ(tok->vocab_size(), 13);
  EXPECT_TRUE(tok->is_special(10));
  EXPECT_FALSE(tok->is_special(12));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{10, 12}, true), "cc");
  EXPECT_EQ(tok->decode(std::vector<int32_t>{10, 12}, false), "<x> cc");
}

TEST(PreTokenizer, SplitBehaviours) {
  const auto make = [](const std::string& behavior) {
    return load_tokenizer_json_string(
        tiny_json("", R"(["a b"])", "[]",
                  R"({"type":"Split","pattern":{"String":"b"},"behavior":")" + behavior +
                      R"(","invert":false})"),
        behavior);
  };
  // "abab": without a split "a b" merges twice; the split decides where "ab" can form.
  EXPECT_EQ(make("Isolated")->encode("abab", false), (std::vector<int32_t>{0, 1, 0, 1}));
  EXPECT_EQ(make("Removed")->encode("abab", false), (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(make("MergedWithPrevious")->encode("abab", false), (std::vector<int32_t>{3, 3}));
  EXPECT_EQ(make("MergedWithNext")->encode("abab", false), (std::vector<int32_t>{0, 1, 0, 1}));
  EXPECT_EQ(make("Contiguous")->encode("abbab", false), (std::vector<int32_t>{0, 1, 1, 0, 1}));
}

TEST(Encode, InvalidUtf8InputIsRepaired) {
  const auto tok = load_tokenizer(test::model_dir("doc-llama-22m"));
  EXPECT_EQ(tok->encode("a\xFF"
                        "b",
                        false),
            tok->encode("a\xEF\xBF\xBD"
                        "b",
                        false));
}

}  // namespace
}  // namespace qserve
