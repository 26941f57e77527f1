// The CPU forward reproduces HuggingFace's float32 logits for every test model.
#include <gtest/gtest.h>

#include <cmath>

#include "formats/safetensors.h"
#include "model/llama_model.h"
#include "test_paths.h"

namespace qserve {
namespace {

struct Golden {
  std::vector<int32_t> ids;
  Tensor logits;  // F32 [T, V]
};

Golden read_golden(const std::string& model) {
  auto f = SafetensorsFile::open(test::model_dir(model) + "/golden_logits.safetensors");
  Tensor ids = f->get("input_ids");
  Golden g;
  g.ids.assign(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
  g.logits = f->get("logits");
  return g;
}

class GoldenLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenLogits, MatchHuggingFaceAtEveryPosition) {
  const std::string name = GetParam();
  auto model = LlamaModel::load(test::model_dir(name));
  Golden g = read_golden(name);
  const int64_t T = static_cast<int64_t>(g.ids.size());
  const int64_t V = model->config().vocab_size;
  ASSERT_EQ(g.logits.shape(), (std::vector<int64_t>{T, V}));

  auto cache = model->make_cache(1, T);
  SeqSpan s{0, T, 0, 0};
  std::vector<float> out = model->forward(g.ids, {&s, 1}, cache, LogitsMode::AllTokens);
  const float* ref = g.logits.data<float>();
  for (int64_t t = 0; t < T; ++t) {
    float max_ref = 0.0f, max_diff = 0.0f;
    for (int64_t v = 0; v < V; ++v) {
      max_ref = std::max(max_ref, std::fabs(ref[t * V + v]));
      max_diff = std::max(max_diff, std::fabs(ref[t * V + v] - out[t * V + v]));
    }
    ASSERT_LE(max_diff, 1e-3f * max_ref) << name << " position " << t;
  }
}

TEST_P(GoldenLogits, ChunkedPrefillAndDecodeMatchOneShot) {
  const std::string name = GetParam();
  auto model = LlamaModel::load(test::model_dir(name));
  Golden g = read_golden(name);
  const int64_t T = static_cast<int64_t>(g.ids.size());
  const int64_t V = model->config().vocab_size;
  // Prefill the first half in chunks of about a third of it, then decode the rest one token at a
  // time; the logits of every decode step must equal the golden row.
  auto cache = model->make_cache(1, T);
  const int64_t prefix = T / 2;
  const int64_t chunk = std::max<int64_t>(1, prefix / 3);
  for (int64_t done = 0; done < prefix; done += chunk) {
    const int64_t n = std::min<int64_t>(chunk, prefix - done);
    SeqSpan s{0, n, done, 0};
    model->forward(std::span<const int32_t>(g.ids).subspan(done, n), {&s, 1}, cache,
                   LogitsMode::LastPerSequence);
  }
  const float* ref = g.logits.data<float>();
  for (int64_t t = prefix; t < T; ++t) {
    SeqSpan s{0, 1, t, 0};
    std::vector<float> out =
        model->forward(std::span<const int32_t>(g.ids).subspan(t, 1), {&s, 1}, cache,
                       LogitsMode::LastPerSequence);
    float max_ref = 0.0f, max_diff = 0.0f;
    for (int64_t v = 0; v < V; ++v) {
      max_ref = std::max(max_ref, std::fabs(ref[t * V + v]));
      max_diff = std::max(max_diff, std::fabs(ref[t * V + v] - out[v]));
    }
    ASSERT_LE(max_diff, 1e-3f * max_ref) << name << " decode position " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(AllModels, GoldenLogits,
                         ::testing::Values("doc-llama-22m", "tiny-qwen2-bias", "tiny-mistral",
                                           "tiny-llama2-mha"),
                         [](const auto& param_info) {
                           std::string s = param_info.param;
                           for (char& c : s) {
                             if (c == '-') c = '_';
                           }
                           return s;
                         });

TEST(Batching, VarlenBatchEqualsSequencesAlone) {
  auto model = LlamaModel::load(test::model_dir("tiny-llama2-mha"));
  Golden g = read_golden("tiny-llama2-mha");
  const int64_t V = model->config().vocab_size;
  // Two sequences of different lengths in one step, in different cache slots.
  std::vector<int32_t> a(g.ids.begin(), g.ids.begin() + 20), b(g.ids.begin() + 5, g.ids.begin() + 12);
  std::vector<int32_t> both = a;
  both.insert(both.end(), b.begin(), b.end());
  auto cache = model->make_cache(2, 32);
  SeqSpan spans[2] = {{0, 20, 0, 1}, {20, 7, 0, 0}};
  std::vector<float> batched = model->forward(both, spans, cache, LogitsMode::LastPerSequence);
  auto alone = [&](const std::vector<int32_t>& ids) {
    auto c = model->make_cache(1, 32);
    SeqSpan s{0, static_cast<int64_t>(ids.size()), 0, 0};
    return model->forward(ids, {&s, 1}, c, LogitsMode::LastPerSequence);
  };
  std::vector<float> la = alone(a), lb = alone(b);
  for (int64_t v = 0; v < V; ++v) {
    EXPECT_NEAR(batched[v], la[v], 1e-4f);
    EXPECT_NEAR(batched[V + v], lb[v], 1e-4f);
  }
}

}  // namespace
}  // namespace qserve
