// SmoothAttention's 39-candidate search (qoq/smooth_attention_search.h).
#include "qoq/smooth_attention_search.h"

#include <algorithm>
#include <cmath>

#include "core/half.h"
#include "qoq/layer_calibration.h"
#include "qoq/transforms.h"

namespace qserve::qoq {

void fake_quantize_kv4(float* x, int64_t n) {
  const auto [mn, mx] = std::minmax_element(x, x + n);
  float s = fp16_to_float(float_to_fp16((*mx - *mn) / 15.0f));
  if (s == 0.0f) s = 1.0f;
  const float z = fp16_to_float(float_to_fp16(-*mn));
  for (int64_t i = 0; i < n; ++i) {
    const float q = std::clamp(std::nearbyint((x[i] + z) / s), 0.0f, 15.0f);
    x[i] = q * s - z;
  }
}

SmoothAttentionChoice search_smooth_attention(const FpLayer& L, const ModelConfig& cfg,
                                              std::span<const float> inv_freq, const float* x,
                                              int64_t samples, int64_t seq_len,
                                              std::span<const float> qmax,
                                              std::span<const float> kmax, int64_t max_samples) {
  const HeadShape hs = head_shape(cfg);
  const int64_t T = seq_len, H = cfg.hidden_size, qd = cfg.q_dim(), kvd = cfg.kv_dim(),
                d = hs.head_dim;
  const int64_t S = std::min(samples, max_samples);
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) pos[i] = i;

  // Post-RoPE q, k, v and the reference block output of each searched sample.
  std::vector<std::vector<float>> qs(S), ks(S), vs(S), ref(S);
  std::vector<float> h(static_cast<size_t>(T * H)), attn(static_cast<size_t>(T * qd));
  for (int64_t s = 0; s < S; ++s) {
    cpu::rms_norm(x + s * T * H, L.input_norm.data(), eps, T, H, h.data());
    qs[s].resize(static_cast<size_t>(T * qd));
    ks[s].resize(static_cast<size_t>(T * kvd));
    vs[s].resize(static_cast<size_t>(T * kvd));
    cpu::linear(h.data(), T, L.q, qs[s].data());
    cpu::linear(h.data(), T, L.k, ks[s].data());
    cpu::linear(h.data(), T, L.v, vs[s].data());
    cpu::rope(qs[s].data(), pos.data(), T, cfg.num_heads, d, inv_freq);
    cpu::rope(ks[s].data(), pos.data(), T, cfg.num_kv_heads, d, inv_freq);
    causal_attention(qs[s].data(), ks[s].data(), vs[s].data(), T, cfg, attn.data());
    ref[s].resize(static_cast<size_t>(T * H));
    cpu::linear(attn.data(), T, L.o, ref[s].data());
  }

  std::vector<std::pair<double, double>> cands{{0.0, 0.0}};
  for (int i = 1; i < 20; ++i) cands.emplace_back(i / 20.0, 0.0);
  for (int i = 1; i < 20; ++i) cands.emplace_back(i / 20.0, 1.0 - i / 20.0);

  SmoothAttentionChoice best;
  best.samples = S;
  best.error = std::numeric_limits<double>::infinity();
  std::vector<float> q(static_cast<size_t>(T * qd)), k(static_cast<size_t>(T * kvd)),
      out(static_cast<size_t>(T * H));
  for (const auto& [a, b] : cands) {
    const std::vector<float> lambda = smooth_attention_scales(qmax, kmax, hs, a, b);
    double err = 0.0;
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t hh = 0; hh < hs.heads; ++hh) {
          for (int64_t c = 0; c < d; ++c) {
            const int64_t i = t * qd + hh * d + c;
            q[i] = qs[s][i] * lambda[(hh / hs.group()) * d + c];
          }
        }
        for (int64_t c = 0; c < kvd; ++c) k[t * kvd + c] = ks[s][t * kvd + c] / lambda[c];
        for (int64_t g = 0; g < hs.kv_heads; ++g) fake_quantize_kv4(&k[t * kvd + g * d], d);
      }
      causal_attention(q.data(), k.data(), vs[s].data(), T, cfg, attn.data());
      cpu::linear(attn.data(), T, L.o, out.data());
      for (int64_t i = 0; i < T * H; ++i) {
        const double e = static_cast<double>(out[i]) - ref[s][i];
        err += e * e;
      }
    }
    if (a == 0.0 && b == 0.0) best.error_identity = err;
    if (err < best.error) {
      best.error = err;
      best.alpha = a;
      best.beta = b;
    }
  }
  return best;
}

}  // namespace qserve::qoq
