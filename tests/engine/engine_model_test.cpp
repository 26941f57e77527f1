// The engine on the real CPU model (doc-llama-22m): in-flight batching with chunked prefill
// must give each request the tokens it gets alone; seeds reproduce across batchings; stop
// strings never reach the output; abort frees everything.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>

#include "engine/engine.h"
#include "eval/perplexity.h"
#include "model/llama_model.h"
#include "test_paths.h"
#include "tokenizer/tokenizer.h"

namespace qserve {
namespace {

class EngineDocLlama : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = test::model_dir("doc-llama-22m");
    model_ = LlamaModel::load(dir).release();
    tok_ = load_tokenizer(dir).release();
    text_ids_ = new std::vector<int32_t>(tok_->encode(
        read_text_file(test::shared_dir() + "/data/eval/doc-heldout.txt").substr(0, 200000),
        false));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tok_;
    delete text_ids_;
  }

  // A prompt of `len` tokens: BOS and a window of held-out text.
  static std::vector<int32_t> prompt(std::mt19937_64& rng, int64_t len) {
    std::vector<int32_t> p{*tok_->bos_id()};
    const int64_t start = std::uniform_int_distribution<int64_t>(
        0, static_cast<int64_t>(text_ids_->size()) - len)(rng);
    p.insert(p.end(), text_ids_->begin() + start, text_ids_->begin() + start + len - 1);
    return p;
  }

  static std::unique_ptr<Engine> engine(int64_t max_seqs, int64_t budget,
                                        std::optional<int64_t> pages = {}) {
    EngineConfig cfg;
    cfg.max_num_seqs = max_seqs;
    cfg.max_num_batched_tokens = budget;
    cfg.max_model_len = 1024;
    cfg.num_pages = pages;
    return Engine::create(*model_, tok_, cfg);
  }

  static LlamaModel* model_;
  static Tokenizer* tok_;
  static std::vector<int32_t>* text_ids_;
};
LlamaModel* EngineDocLlama::model_ = nullptr;
Tokenizer* EngineDocLlama::tok_ = nullptr;
std::vector<int32_t>* EngineDocLlama::text_ids_ = nullptr;

TEST_F(EngineDocLlama, SixtyFourRequestsBatchedEqualAlone) {
  std::mt19937_64 rng(42);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 64; ++i) {
    // Lengths 1..700, spread so short and long prompts mix in every step.
    const int64_t len = i == 0 ? 1 : 1 + (i * 701 / 64 + std::uniform_int_distribution<int>(0, 9)(rng)) % 700;
    GenerationRequest r{prompt(rng, len), {}};
    r.params.max_tokens = 8 + i % 9;
    r.params.ignore_eos = true;
    reqs.push_back(std::move(r));
  }
  // 16 sequences at once and a 256-token budget: long prompts are prefilled in chunks while
  // other requests decode in the same step.
  auto batched = engine(16, 256);
  const std::vector<CompletedRequest> got = generate(*batched, reqs);
  auto alone = engine(1, 1024);
  int mismatched = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const CompletedRequest solo = generate(*alone, {reqs[i]}).front();
    EXPECT_EQ(got[i].token_ids, solo.token_ids) << "request " << i;
    EXPECT_EQ(got[i].text, solo.text) << "request " << i;
    mismatched += got[i].token_ids != solo.token_ids;
  }
  EXPECT_EQ(mismatched, 0);
  EXPECT_EQ(batched->blocks().num_free(), batched->blocks().num_pages());
}

TEST_F(EngineDocLlama, SeededSamplingReproducesAcrossBatchings) {
  std::mt19937_64 rng(7);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 8; ++i) {
    GenerationRequest r{prompt(rng, 20 + 37 * i), {}};
    r.params.temperature = 0.9f;
    r.params.top_p = 0.95f;
    r.params.top_k = 40;
    r.params.seed = 100 + static_cast<uint64_t>(i);
    r.params.max_tokens = 16;
    reqs.push_back(std::move(r));
  }
  auto a = engine(8, 512), b = engine(3, 64);
  const auto ra = generate(*a, reqs), rb = generate(*b, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(ra[i].token_ids, rb[i].token_ids) << i;
    EXPECT_EQ(ra[i].text, rb[i].text) << i;
  }
}

TEST_F(EngineDocLlama, StopStringsNeverReachTextOrStream) {
  std::mt19937_64 rng(9);
  // First learn what the model says, then stop on pieces of it.
  GenerationRequest probe{prompt(rng, 60), {}};
  probe.params.max_tokens = 40;
  probe.params.ignore_eos = true;
  auto e = engine(4, 256);
  const std::string full = generate(*e, {probe}).front().text;
  ASSERT_GT(full.size(), 20u);
  const std::vector<std::string> stops = {full.substr(10, 5), full.substr(full.size() / 2, 3),
                                          " the", "\n"};
  for (const std::string& stop : stops) {
    SCOPED_TRACE("stop '" + stop + "'");
    GenerationRequest r = probe;
    r.params.stop = {stop};
    std::string streamed;
    const int64_t id = e->add_request(r.prompt_ids, r.params, [&](const RequestOutput& o) {
      streamed += o.text;
    });
    (void)id;
    while (e->has_unfinished()) e->step();
    EXPECT_EQ(streamed.find(stop), std::string::npos);
    const size_t cut = full.find(stop);
    if (cut != std::string::npos) {
      EXPECT_EQ(streamed, full.substr(0, cut));
    } else {
      EXPECT_EQ(streamed, full);
    }
  }
}

TEST_F(EngineDocLlama, AbortMidGenerationFreesAllPages) {
  std::mt19937_64 rng(11);
  auto e = engine(4, 128);
  SamplingParams p;
  p.max_tokens = 100;
  p.ignore_eos = true;
  std::vector<int64_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(e->add_request(prompt(rng, 50 + 40 * i), p));
  for (int s = 0; s < 6; ++s) e->step();
  EXPECT_GT(e->blocks().num_used(), 0);
  for (int64_t id : ids) e->abort(id);
  EXPECT_EQ(e->blocks().num_used(), 0);
  while (e->has_unfinished()) e->step();
  EXPECT_EQ(e->blocks().num_free(), e->blocks().num_pages());
}

TEST_F(EngineDocLlama, QuantizedKvRunsThroughTheEngine) {
  // W4A8KV4 g128: paged KV4 with the BlockManager's pages, preemption included.
  LoadOptions o;
  o.precision = Precision::parse("w4a8kv4-g128");
  const auto q = LlamaModel::load(test::model_dir("doc-llama-22m"), o);
  EngineConfig cfg;
  cfg.max_num_seqs = 6;
  cfg.max_num_batched_tokens = 128;
  cfg.max_model_len = 1024;
  cfg.num_pages = 10;
  auto e = Engine::create(*q, tok_, cfg);
  std::mt19937_64 rng(5);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest r{prompt(rng, 30 + 50 * i), {}};
    r.params.max_tokens = 40;
    r.params.ignore_eos = true;
    reqs.push_back(std::move(r));
  }
  const auto got = generate(*e, reqs);
  for (const CompletedRequest& c : got) EXPECT_EQ(c.token_ids.size(), 40u);
  EXPECT_GT(e->stats().preemptions, 0);
  EXPECT_EQ(e->blocks().num_free(), e->blocks().num_pages());
}

}  // namespace
}  // namespace qserve
