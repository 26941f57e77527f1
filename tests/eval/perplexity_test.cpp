// The perplexity protocol: stream construction (token counts from ../shared/README.md) and the
// windowed loss.
#include "eval/perplexity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "test_paths.h"

namespace qserve {
namespace {

std::string read_file(const std::string& path) {
  return read_text_file(path);
}

class PerplexityDocLlama : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = LlamaModel::load(test::model_dir("doc-llama-22m")).release();
    tok_ = load_tokenizer(test::model_dir("doc-llama-22m")).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tok_;
  }
  static LlamaModel* model_;
  static Tokenizer* tok_;
};
LlamaModel* PerplexityDocLlama::model_ = nullptr;
Tokenizer* PerplexityDocLlama::tok_ = nullptr;

TEST_F(PerplexityDocLlama, HeldoutStreamHasReferenceTokenCount) {
  const std::string text = read_file(test::shared_dir() + "/data/eval/doc-heldout.txt");
  const auto stream = perplexity_stream(*tok_, text, "\n\n<|doc|>\n\n");
  EXPECT_EQ(stream.size(), 308393u);
  EXPECT_EQ(stream.front(), 8184);  // <|begin_of_text|>
  EXPECT_EQ(stream.back(), 8185);   // <|end_of_text|>
}

TEST_F(PerplexityDocLlama, WikitextStreamHasReferenceTokenCount) {
  const std::string text = read_file(test::shared_dir() + "/data/wikitext-2/wiki.test.raw");
  const auto stream = perplexity_stream(*tok_, text, "");
  EXPECT_EQ(stream.size(), 457420u);
  EXPECT_EQ(stream.front(), 8184);
}

TEST_F(PerplexityDocLlama, WindowLossMatchesDirectComputation) {
  const std::string text = read_file(test::shared_dir() + "/data/eval/doc-heldout.txt");
  const auto stream = perplexity_stream(*tok_, text, "\n\n<|doc|>\n\n");
  const int64_t W = 64;
  PerplexityResult r = perplexity(*model_, stream, W, /*max_windows=*/3);
  EXPECT_EQ(r.windows, 3);
  // Recompute window by window with the model directly.
  const int64_t V = model_->config().vocab_size;
  double total = 0.0;
  for (int64_t w = 0; w < 3; ++w) {
    std::vector<int32_t> ids(stream.begin() + w * W, stream.begin() + (w + 1) * W);
    auto cache = model_->make_cache(1, W);
    SeqSpan s{0, W, 0, 0};
    auto logits = model_->forward(ids, {&s, 1}, cache, LogitsMode::AllTokens);
    for (int64_t t = 0; t + 1 < W; ++t) {
      double mx = -1e30, sum = 0.0;
      for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(logits[t * V + v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(logits[t * V + v]) - mx);
      total += std::log(sum) + mx - logits[t * V + ids[t + 1]];
    }
  }
  EXPECT_NEAR(r.ppl, std::exp(total / (3.0 * (W - 1))), 1e-6 * r.ppl);
  // A trained model on in-domain text: far better than uniform over 8192 tokens.
  EXPECT_LT(r.ppl, 60.0);
  EXPECT_GT(r.ppl, 2.0);
}

// --prefill-chunk: with the fp32 cache, chunked prefill gives the one-prefill perplexity; with a
// KV4 cache the later chunks read quantized pages, which one prefill never does.
TEST_F(PerplexityDocLlama, ChunkedPrefillReadsTheQuantizedCache) {
  const std::string text = read_file(test::shared_dir() + "/data/eval/doc-heldout.txt");
  const auto stream = perplexity_stream(*tok_, text, "\n\n<|doc|>\n\n");
  const double whole = perplexity(*model_, stream, 128, 2).ppl;
  EXPECT_NEAR(perplexity(*model_, stream, 128, 2, {}, 32).ppl, whole, 1e-5 * whole);
  LoadOptions kv4;
  kv4.precision = Precision::parse("w16a16kv4");
  const auto m4 = LlamaModel::load(test::model_dir("doc-llama-22m"), kv4);
  const double one = perplexity(*m4, stream, 128, 2).ppl;
  const double chunked = perplexity(*m4, stream, 128, 2, {}, 32).ppl;
  EXPECT_NEAR(one, whole, 1e-3 * whole);  // only the fp16 rounding of K/V
  EXPECT_GT(std::fabs(chunked - one), 1e-4 * one);
  EXPECT_THROW(perplexity(*model_, stream, 128, 1, {}, -1), Error);
}

TEST_F(PerplexityDocLlama, RejectsImpossibleWindows) {
  std::vector<int32_t> stream(100, 300);
  EXPECT_THROW(perplexity(*model_, stream, 1, 0), Error);
  EXPECT_THROW(perplexity(*model_, stream, 4096, 0), Error);  // beyond the 2048 context
  EXPECT_THROW(perplexity(*model_, stream, 200, 0), Error);   // text shorter than one window
}

TEST(ReadTextFile, UniversalNewlines) {
  const std::string path = ::testing::TempDir() + "/qserve_crlf.txt";
  {
    std::ofstream out(path, std::ios::binary);
    out << "a\r\nb\rc\n\r\n";
  }
  EXPECT_EQ(read_text_file(path), "a\nb\nc\n\n");
  EXPECT_EQ(read_text_file(path, false), "a\r\nb\rc\n\r\n");
  EXPECT_THROW(read_text_file(path + ".missing"), Error);
}

TEST(TokenNll, UniformLogits) {
  std::vector<float> l(8, 1.5f);
  EXPECT_NEAR(token_nll(l.data(), 8, 3), std::log(8.0), 1e-12);
}

}  // namespace
}  // namespace qserve
