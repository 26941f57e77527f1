// The norm in front of quantized linears: true RMSNorm by default, QServe's mean-subtracting
// kernel with LoadOptions::qserve_norm. Checked on layer 0's query, recomputed directly from the
// quant ops with each NormKind, and on the logits.
#include <gtest/gtest.h>

#include "precision_test_util.h"
#include "quant/norm_quant.h"

namespace qserve {
namespace {

// Layer 0's post-RoPE query for `ids` at positions 0.., from norm + quant of the embeddings.
std::vector<float> layer0_query(const LlamaModel& m, const std::vector<int32_t>& ids,
                                quant::NormKind kind) {
  const ModelConfig& cfg = m.config();
  const LayerWeights& L = m.weights().layers[0];
  const int64_t T = static_cast<int64_t>(ids.size()), H = cfg.hidden_size, qd = cfg.q_dim();
  const int64_t n = L.qkv.n();
  std::vector<float> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(&m.weights().embed[static_cast<size_t>(ids[t]) * H], H, &x[t * H]);
  }
  QuantizedActivations qa;
  qa.resize(T, H, L.qkv.needs_act_sum());
  quant::norm_quantize_per_token(
      x.data(), L.input_norm.data(), static_cast<float>(cfg.rms_norm_eps), T, H, kind,
      {.q = qa.q.data(), .scale = qa.scale.data(), .sum = qa.sum_or_null()});
  std::vector<float> qkv(static_cast<size_t>(T * n)), q(static_cast<size_t>(T * qd));
  L.qkv.apply(qa, qkv.data());
  for (int64_t t = 0; t < T; ++t) std::copy_n(&qkv[t * n], qd, &q[t * qd]);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[t] = t;
  cpu::rope(q.data(), pos.data(), T, cfg.num_heads, cfg.head_dim, cpu::rope_inv_freq(cfg));
  return q;
}

std::vector<float> traced_query(const LlamaModel& m, const std::vector<int32_t>& ids,
                                std::vector<float>* logits) {
  const int64_t T = static_cast<int64_t>(ids.size());
  KvCache cache = m.make_cache(1, T);
  SeqSpan s{0, T, 0, 0};
  ForwardTrace tr;
  tr.layer = 0;
  *logits = m.forward(ids, {&s, 1}, cache, LogitsMode::AllTokens, &tr);
  return tr.q;
}

class NormOption : public ::testing::TestWithParam<const char*> {};

TEST_P(NormOption, DefaultIsRmsNormAndTheOptionSubtractsTheMean) {
  auto plain = test::load_doc_model(GetParam());
  auto qnorm = test::load_doc_model(GetParam(), /*qserve_norm=*/true);
  EXPECT_FALSE(plain->options().qserve_norm);
  EXPECT_TRUE(qnorm->options().qserve_norm);
  const std::vector<int32_t> ids = test::doc_prompt(16);
  const std::vector<float> rms = layer0_query(*plain, ids, quant::NormKind::kRmsNorm);
  const std::vector<float> mean_sub = layer0_query(*plain, ids, quant::NormKind::kQServeLayerNorm);
  ASSERT_NE(rms, mean_sub) << "the embeddings' row means should not all be zero";

  std::vector<float> logits_plain, logits_qnorm;
  EXPECT_EQ(traced_query(*plain, ids, &logits_plain), rms);
  EXPECT_EQ(traced_query(*qnorm, ids, &logits_qnorm), mean_sub);
  const double diff = test::relative_l2(logits_qnorm, logits_plain);
  std::printf("[ measure  ] %s: logits rel L2 of --qserve-norm vs RMSNorm %.3g\n", GetParam(),
              diff);
  EXPECT_GT(diff, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(DocLlama22m, NormOption, ::testing::Values("w8a8kv8", "w4a8kv4"),
                         [](const auto& param_info) { return std::string(param_info.param); });

TEST(NormOption, NoEffectOnW16A16) {
  // QServe's W16A16 path uses true RMSNorm too (qserve-compat.md §8.2).
  auto plain = test::load_doc_model("w16a16kv8");
  auto qnorm = test::load_doc_model("w16a16kv8", /*qserve_norm=*/true);
  const std::vector<int32_t> ids = test::doc_prompt(16);
  EXPECT_EQ(test::prefill_logits(*plain, ids), test::prefill_logits(*qnorm, ids));
}

}  // namespace
}  // namespace qserve
