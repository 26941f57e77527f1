// doc-llama-22m's byte-level BPE tokenizer (Llama-3 style) against HF's golden outputs.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>

#include "eval/perplexity.h"
#include "tokenizer_test_util.h"

namespace qserve {
namespace {

class DocLlamaTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tok_ = load_tokenizer(test::model_dir("doc-llama-22m")).release();
    golden_ =
        new nlohmann::json(test::read_json(test::model_dir("doc-llama-22m") + "/golden.json"));
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete golden_;
  }
  static Tokenizer* tok_;
  static nlohmann::json* golden_;
};

Tokenizer* DocLlamaTokenizer::tok_ = nullptr;
nlohmann::json* DocLlamaTokenizer::golden_ = nullptr;

TEST_F(DocLlamaTokenizer, GoldenCases) {
  const auto& cases = (*golden_)["tokenizer"];
  ASSERT_EQ(cases.size(), 8u);
  for (const auto& c : cases) {
    const std::string text = c["text"];
    SCOPED_TRACE(text);
    EXPECT_EQ(tok_->encode(text, true), test::ids_of(c["ids"]));
    const std::vector<int32_t> plain = test::ids_of(c["ids_no_special"]);
    EXPECT_EQ(tok_->encode(text, false), plain);
    EXPECT_EQ(tok_->decode(plain, false), text);
    EXPECT_EQ(test::detokenize_incrementally(*tok_, plain, false), text);
    const std::vector<int32_t> with_bos = test::ids_of(c["ids"]);
    EXPECT_EQ(test::detokenize_incrementally(*tok_, with_bos, true), tok_->decode(with_bos, true));
  }
}

TEST_F(DocLlamaTokenizer, PromptsAndGreedyText) {
  const auto& prompts = (*golden_)["prompts"];
  ASSERT_EQ(prompts.size(), 4u);
  for (const auto& p : prompts) {
    SCOPED_TRACE(p["text"].get<std::string>());
    EXPECT_EQ(tok_->encode(p["text"].get<std::string>(), true), test::ids_of(p["input_ids"]));
    const std::vector<int32_t> greedy = test::ids_of(p["greedy_32"]);
    EXPECT_EQ(tok_->decode(greedy, true), p["greedy_32_text"].get<std::string>());
    EXPECT_EQ(test::detokenize_incrementally(*tok_, greedy, true),
              p["greedy_32_text"].get<std::string>());
  }
}

TEST_F(DocLlamaTokenizer, SpecialTokensAndConfig) {
  EXPECT_EQ(tok_->vocab_size(), 8192);
  EXPECT_EQ(tok_->bos_id(), 8184);
  // tokenizer_config's eos_token first, then generation_config's list, deduplicated.
  EXPECT_EQ(tok_->eos_ids(), (std::vector<int32_t>{8188, 8185}));
  EXPECT_EQ(tok_->token_to_id("<|eot_id|>"), 8188);
  EXPECT_EQ(tok_->id_to_token(8188), "<|eot_id|>");
  EXPECT_TRUE(tok_->is_special(8188));
  EXPECT_FALSE(tok_->is_special(39));
  EXPECT_EQ(tok_->id_to_token(-1), "");
  EXPECT_EQ(tok_->id_to_token(100000), "");
  EXPECT_FALSE(tok_->token_to_id("no such token").has_value());
  EXPECT_NE(tok_->chat_template().find("<|start_header_id|>"), std::string::npos);
  // Skipping specials drops them; rendering them shows their text.
  const std::vector<int32_t> ids = {8184, 39, 8188};
  EXPECT_EQ(tok_->decode(ids, false), "<|begin_of_text|>H<|eot_id|>");
  EXPECT_EQ(tok_->decode(ids, true), "H");
  EXPECT_EQ(tok_->encode("", true), std::vector<int32_t>{8184});
  EXPECT_TRUE(tok_->encode("", false).empty());
}

// The perplexity protocol's token stream: the whole WikiText-2 test text with one BOS. The file
// has CRLF line ends; the reference count (457,420) is of the text as Python's text mode reads it,
// with CRLF turned into LF. Encoding the raw bytes gives 460,311, as HF does on them too.
TEST_F(DocLlamaTokenizer, WikiText2TokenCount) {
  const std::string raw = test::read_text(test::shared_dir() + "/data/wikitext-2/wiki.test.raw");
  // The same universal-newline reading `qserve perplexity` uses (eval/perplexity.h).
  const std::string text = read_text_file(test::shared_dir() + "/data/wikitext-2/wiki.test.raw");
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok_->encode(text, true);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ids.size(), 457420u);
  std::printf("encode: %zu bytes -> %zu ids in %.3f s (%.2f MB/s)\n", text.size(), ids.size(), s,
              static_cast<double>(text.size()) / s / 1e6);
  // Speed is reported, not asserted: tests are not benchmarks (sanitizer builds run ~25x slower).
  EXPECT_EQ(tok_->decode(std::span(ids).subspan(1), false), text);
  EXPECT_EQ(tok_->encode(raw, true).size(), 460311u);
}

// The held-out documents: [BOS] + encode(doc) + [EOS] per document, 308,393 tokens in all.
TEST_F(DocLlamaTokenizer, HeldoutDocsTokenCount) {
  const std::string text = test::read_text(test::shared_dir() + "/data/eval/doc-heldout.txt");
  const std::string sep = "\n\n<|doc|>\n\n";
  size_t total = 0;
  size_t docs = 0;
  for (size_t pos = 0;;) {
    const size_t next = text.find(sep, pos);
    const std::string doc =
        text.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    total += tok_->encode(doc, false).size() + 2;
    ++docs;
    if (next == std::string::npos) break;
    pos = next + sep.size();
  }
  EXPECT_EQ(docs, 200u);
  EXPECT_EQ(total, 308393u);
}

// encode is const and shared by request threads: concurrent use (the word cache) must agree
// with single-threaded results.
TEST_F(DocLlamaTokenizer, ConcurrentEncodeAgrees) {
  const std::string text =
      test::read_text(test::shared_dir() + "/data/eval/doc-heldout.txt").substr(0, 200000);
  std::vector<std::string> chunks;
  for (size_t i = 0; i < text.size(); i += 25000) chunks.push_back(text.substr(i, 25000));
  std::vector<std::vector<int32_t>> expected;
  for (const auto& c : chunks) expected.push_back(tok_->encode(c, true));
  // A fresh tokenizer, so the threads race on an empty cache.
  const std::unique_ptr<Tokenizer> fresh = load_tokenizer(test::model_dir("doc-llama-22m"));
  std::vector<std::vector<int32_t>> got(chunks.size());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < chunks.size(); i += 4) got[i] = fresh->encode(chunks[i], true);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(got, expected);
}

}  // namespace
}  // namespace qserve
