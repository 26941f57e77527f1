// Greedy generation at quantized precisions is consistent with the model's prefill: with a KV16
// cache every generated token is the argmax of the teacher-forced prefill logits at its
// position (decode reads exactly what prefill computed); with KV8 nearly every one is (decode
// reads dequantized K/V where prefill used the unquantized ones).
#include <gtest/gtest.h>

#include <cstdio>

#include "engine/generate.h"
#include "engine/sampling.h"
#include "test_paths.h"

namespace qserve {
namespace {

std::unique_ptr<LlamaModel> load(Precision p) {
  LoadOptions o;
  o.precision = p;
  return LlamaModel::load(test::model_dir("doc-llama-22m"), o);
}

// Fraction of generated tokens that equal the argmax of a single prefill of prompt + generated.
double teacher_forced_agreement(const LlamaModel& m, const std::vector<int32_t>& prompt,
                                int64_t prefill_chunk) {
  GenerateOptions opts;
  opts.max_tokens = 48;
  opts.stop_at_eos = false;
  opts.prefill_chunk = prefill_chunk;
  const GenerateResult r = generate(m, nullptr, prompt, opts);
  EXPECT_EQ(r.token_ids.size(), 48u);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), r.token_ids.begin(), r.token_ids.end());
  const int64_t T = static_cast<int64_t>(all.size()), V = m.config().vocab_size;
  KvCache cache = m.make_cache(1, T);
  SeqSpan s{0, T, 0, 0};
  const std::vector<float> logits = m.forward(all, {&s, 1}, cache, LogitsMode::AllTokens);
  int64_t same = 0;
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  for (size_t i = 0; i < r.token_ids.size(); ++i) {
    const int64_t row = n_prompt - 1 + static_cast<int64_t>(i);
    same += argmax({&logits[row * V], static_cast<size_t>(V)}) == r.token_ids[i];
  }
  return static_cast<double>(same) / static_cast<double>(r.token_ids.size());
}

const std::vector<int32_t> kPrompt = {8184, 400, 1200, 37, 990, 51, 2048, 17, 300, 4100, 77, 12};

TEST(QuantizedGenerate, Kv16DecodeEqualsTeacherForcedPrefill) {
  using W = WeightPrecision;
  for (Precision p :
       {Precision{W::kW16A16, KvPrecision::kKv16}, Precision{W::kW4A8G128, KvPrecision::kKv16},
        Precision{W::kW4A8PerChannel, KvPrecision::kKv16},
        Precision{W::kW8A8, KvPrecision::kKv16}}) {
    auto m = load(p);
    EXPECT_EQ(teacher_forced_agreement(*m, kPrompt, 0), 1.0) << p.name();
    EXPECT_EQ(teacher_forced_agreement(*m, kPrompt, 5), 1.0) << p.name() << " chunked";
  }
}

TEST(QuantizedGenerate, Kv8DecodeNearlyEqualsTeacherForcedPrefill) {
  for (const char* name : {"w4a8kv8-g128", "w8a8kv8", "w4a8kv4-g128"}) {
    const Precision p = Precision::parse(name);
    auto m = load(p);
    const double agree = teacher_forced_agreement(*m, kPrompt, 0);
    const double agree_chunked = teacher_forced_agreement(*m, kPrompt, 5);
    std::printf("[ measure  ] %s: greedy vs teacher-forced argmax %.3f (chunked prefill %.3f)\n",
                name, agree, agree_chunked);
    const double bound = p.kv == KvPrecision::kKv8 ? 0.9 : 0.8;  // measured 0.98-1.0, KV4 0.96
    EXPECT_GE(agree, bound) << name;
    EXPECT_GE(agree_chunked, bound) << name;
  }
}

}  // namespace
}  // namespace qserve
