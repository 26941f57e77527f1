// doc-llama-22m end to end on the CPU: tokenizer ids, last-position top-10, per-position logit
// norms and 32 greedy tokens all match HuggingFace (golden.json).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"
#include "engine/generate.h"
#include "engine/sampling.h"
#include "test_paths.h"

namespace qserve {
namespace {

class DocLlama : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = test::model_dir("doc-llama-22m");
    model_ = LlamaModel::load(dir).release();
    tok_ = load_tokenizer(dir).release();
    std::ifstream in(dir + "/golden.json");
    golden_ = new nlohmann::json(nlohmann::json::parse(in));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tok_;
    delete golden_;
  }
  static LlamaModel* model_;
  static Tokenizer* tok_;
  static nlohmann::json* golden_;
};
LlamaModel* DocLlama::model_ = nullptr;
Tokenizer* DocLlama::tok_ = nullptr;
nlohmann::json* DocLlama::golden_ = nullptr;

TEST_F(DocLlama, PromptLogitsMatchGolden) {
  const int64_t V = model_->config().vocab_size;
  for (const auto& p : (*golden_)["prompts"]) {
    const std::vector<int32_t> ids = tok_->encode(p["text"].get<std::string>(), true);
    ASSERT_EQ(ids, p["input_ids"].get<std::vector<int32_t>>()) << p["text"];
    const int64_t T = static_cast<int64_t>(ids.size());
    auto cache = model_->make_cache(1, T);
    SeqSpan s{0, T, 0, 0};
    std::vector<float> logits = model_->forward(ids, {&s, 1}, cache, LogitsMode::AllTokens);
    // Per-position L2 norms.
    const auto norms = p["logits_l2_per_position"].get<std::vector<double>>();
    for (int64_t t = 0; t < T; ++t) {
      double ss = 0.0;
      for (int64_t v = 0; v < V; ++v) ss += double(logits[t * V + v]) * logits[t * V + v];
      EXPECT_NEAR(std::sqrt(ss), norms[t], 1e-4 * norms[t]) << p["text"] << " position " << t;
    }
    // Top-10 of the last position, in order, with values.
    const float* last = &logits[(T - 1) * V];
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 10, order.end(),
                      [&](int32_t a, int32_t b) { return last[a] > last[b]; });
    order.resize(10);
    EXPECT_EQ(order, p["last_logits_top10"].get<std::vector<int32_t>>()) << p["text"];
    const auto vals = p["last_logits_top10_values"].get<std::vector<double>>();
    for (size_t i = 0; i < 10; ++i) EXPECT_NEAR(last[order[i]], vals[i], 2e-3) << p["text"];
  }
}

TEST_F(DocLlama, Greedy32MatchesGolden) {
  for (const auto& p : (*golden_)["prompts"]) {
    GenerateOptions opts;
    opts.max_tokens = 32;
    opts.stop_at_eos = false;
    std::string streamed;
    GenerateResult r = generate(*model_, tok_, p["input_ids"].get<std::vector<int32_t>>(), opts,
                                [&](const std::string& s) { streamed += s; });
    EXPECT_EQ(r.token_ids, p["greedy_32"].get<std::vector<int32_t>>()) << p["text"];
    EXPECT_EQ(r.text, p["greedy_32_text"].get<std::string>()) << p["text"];
    EXPECT_EQ(streamed, r.text) << p["text"];
  }
}

TEST_F(DocLlama, ChunkedPrefillGivesSameGreedyTokens) {
  const auto& p = (*golden_)["prompts"][2];
  GenerateOptions opts;
  opts.max_tokens = 8;
  opts.stop_at_eos = false;
  opts.prefill_chunk = 3;
  GenerateResult r = generate(*model_, tok_, p["input_ids"].get<std::vector<int32_t>>(), opts);
  auto want = p["greedy_32"].get<std::vector<int32_t>>();
  want.resize(8);
  EXPECT_EQ(r.token_ids, want);
}

TEST_F(DocLlama, SeededSamplingIsReproducible) {
  GenerateOptions opts;
  opts.max_tokens = 16;
  opts.stop_at_eos = false;
  opts.sampling = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 7};
  const auto ids = (*golden_)["prompts"][0]["input_ids"].get<std::vector<int32_t>>();
  GenerateResult a = generate(*model_, tok_, ids, opts);
  GenerateResult b = generate(*model_, tok_, ids, opts);
  EXPECT_EQ(a.token_ids, b.token_ids);
  opts.sampling.seed = 8;
  GenerateResult c = generate(*model_, tok_, ids, opts);
  EXPECT_NE(a.token_ids, c.token_ids);  // 16 sampled tokens at T=0.8 almost surely differ
}

TEST_F(DocLlama, OversizedPromptIsRejected) {
  std::vector<int32_t> ids(static_cast<size_t>(model_->config().max_position_embeddings), 300);
  GenerateOptions opts;
  EXPECT_THROW(generate(*model_, tok_, ids, opts), Error);
}

}  // namespace
}  // namespace qserve
