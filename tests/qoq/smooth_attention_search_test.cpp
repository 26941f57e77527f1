// SmoothAttention search: the KV4 fake quantizer's error bound, and on doc-llama-22m (whose keys
// have outlier channels) the chosen candidate lowers the attention output error under 4-bit keys
// well below no smoothing.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "formats/safetensors.h"
#include "qoq/layer_calibration.h"
#include "qoq/smooth_attention_search.h"
#include "qoq/transforms.h"
#include "test_paths.h"

namespace qserve::qoq {
namespace {

TEST(SmoothAttentionSearch, Kv4FakeQuantErrorIsHalfAStep) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> x(128);
  for (float& v : x) v = 3.0f * nd(rng);
  const auto [mn, mx] = std::minmax_element(x.begin(), x.end());
  const float step = (*mx - *mn) / 15.0f;
  std::vector<float> q = x;
  fake_quantize_kv4(q.data(), 128);
  for (size_t i = 0; i < x.size(); ++i)
    EXPECT_LE(std::fabs(q[i] - x[i]), 0.5f * step * 1.01f + 1e-3f);
}

TEST(SmoothAttentionSearch, ChosenCandidateBeatsNoSmoothing) {
  const std::string dir = test::model_dir("doc-llama-22m");
  const ModelConfig cfg = load_hf_config(dir);
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(dir);
  const std::vector<float> embed =
      read_fp_tensor(ck, "model.embed_tokens.weight", {cfg.vocab_size, cfg.hidden_size}, dir);
  const int64_t S = 2, T = 128, H = cfg.hidden_size;
  std::vector<float> x(static_cast<size_t>(S * T * H)), y(x.size());
  std::mt19937 rng(2);
  for (int64_t i = 0; i < S * T; ++i) std::copy_n(&embed[(rng() % 8000) * H], H, &x[i * H]);
  FpLayer L = read_fp_layer(ck, cfg, 0, dir);
  fold_norms(L);
  const std::vector<float> inv_freq = cpu::rope_inv_freq(cfg);
  const LayerCalibration c =
      calibrate_layer(L, cfg, inv_freq, x.data(), S, T, y.data(), {.hessians = false});
  const SmoothAttentionChoice ch =
      search_smooth_attention(L, cfg, inv_freq, x.data(), S, T, c.q_absmax, c.k_absmax);
  EXPECT_EQ(ch.samples, S);
  EXPECT_GT(ch.error_identity, 0.0);
  EXPECT_LT(ch.error, 0.9 * ch.error_identity) << "alpha " << ch.alpha << " beta " << ch.beta;
  EXPECT_TRUE(ch.alpha > 0.0 || ch.beta > 0.0);
}

}  // namespace
}  // namespace qserve::qoq
