// The generated fixtures (tools/gen_spm_tokenizers.py): SentencePiece-style tokenizer.json
// variants, a GPT-2 style byte-level one and a tokenizer.model, against the reference libraries.
#include <gtest/gtest.h>

#include "tokenizer_test_util.h"

namespace qserve {
namespace {

class Fixture : public ::testing::TestWithParam<const char*> {};

TEST_P(Fixture, MatchesGolden) {
  const std::string dir = test::fixture_dir(GetParam());
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(dir);
  const nlohmann::json golden = test::read_json(dir + "/golden.json");
  EXPECT_EQ(tok->bos_id(), golden["bos_id"].get<int32_t>());
  EXPECT_EQ(tok->eos_ids(), test::ids_of(golden["eos_ids"]));
  ASSERT_GE(golden["cases"].size(), 20u);
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE(text);
    const std::vector<int32_t> ids = test::ids_of(c["ids"]);
    const std::vector<int32_t> plain = test::ids_of(c["ids_no_special"]);
    EXPECT_EQ(tok->encode(text, true), ids);
    EXPECT_EQ(tok->encode(text, false), plain);
    if (c.contains("decoded")) {
      EXPECT_EQ(tok->decode(plain, false), c["decoded"].get<std::string>());
    }
    EXPECT_EQ(tok->decode(ids, true), c["decoded_skip_special"].get<std::string>());
    EXPECT_EQ(tok->decode(ids, false), c["decoded_with_special"].get<std::string>());
    for (const bool skip : {false, true}) {
      EXPECT_EQ(test::detokenize_incrementally(*tok, ids, skip), tok->decode(ids, skip));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Fixture,
                         ::testing::Values("spm-llama2", "spm-mistral", "spm-metaspace-split",
                                           "gpt2-bytelevel", "spm-model"),
                         [](const ::testing::TestParamInfo<const char*>& param_info) {
                           std::string name = param_info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

TEST(FixtureConfig, ChatTemplateAndAddedTokens) {
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(test::fixture_dir("spm-mistral"));
  EXPECT_NE(tok->chat_template().find("[INST]"), std::string::npos);
  const auto inst = tok->token_to_id("[INST]");
  ASSERT_TRUE(inst.has_value());
  EXPECT_TRUE(tok->is_special(*inst));
  EXPECT_EQ(tok->id_to_token(*inst), "[INST]");
  EXPECT_EQ(tok->token_to_id("<0x41>"), 3 + 0x41);
  // Mistral's Metaspace decoder has no ByteFallback step: byte tokens decode as their text.
  EXPECT_FALSE(tok->is_byte_fallback(3 + 0x41));
  EXPECT_EQ(tok->decode(std::vector<int32_t>{3 + 0x41}, false), "<0x41>");
  const std::unique_ptr<Tokenizer> llama = load_tokenizer(test::fixture_dir("spm-llama2"));
  EXPECT_TRUE(llama->is_byte_fallback(3 + 0x41));
  EXPECT_FALSE(llama->is_byte_fallback(*llama->token_to_id("</s>")));
  EXPECT_EQ(llama->decode(std::vector<int32_t>{3 + 0x41}, false), "A");
}

TEST(FixtureConfig, SentencePieceModel) {
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(test::fixture_dir("spm-model"));
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(tok->token_to_id("<s>"), 1);
  EXPECT_EQ(tok->token_to_id("</s>"), 2);
  EXPECT_FALSE(tok->token_to_id("definitely not a piece").has_value());
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_TRUE(tok->is_special(0));  // unk
  EXPECT_FALSE(tok->is_special(300));
  const auto byte_a = tok->token_to_id("<0x41>");
  ASSERT_TRUE(byte_a.has_value());
  EXPECT_TRUE(tok->is_byte_fallback(*byte_a));
  EXPECT_EQ(tok->id_to_token(*byte_a), "<0x41>");
}

}  // namespace
}  // namespace qserve
