// The fp32 calibration forward of one layer with statistics capture (qoq/layer_calibration.h).
#include "qoq/layer_calibration.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qserve::qoq {

void InputSite::permute(const std::vector<int64_t>& perm) {
  check(static_cast<int64_t>(perm.size()) == k, "InputSite::permute: size");
  std::vector<float> a(absmax.size());
  for (int64_t i = 0; i < k; ++i) a[i] = absmax[perm[i]];
  absmax = std::move(a);
  if (!hessian.empty()) {
    std::vector<double> h(hessian.size());
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) h[i * k + j] = hessian[perm[i] * k + perm[j]];
    }
    hessian = std::move(h);
  }
  std::vector<float> row(static_cast<size_t>(k));
  for (int64_t r = 0; r < sample_rows; ++r) {
    float* s = &sample[static_cast<size_t>(r * k)];
    for (int64_t i = 0; i < k; ++i) row[i] = s[perm[i]];
    std::copy(row.begin(), row.end(), s);
  }
}

void InputSite::divide(std::span<const float> s) {
  check(static_cast<int64_t>(s.size()) == k, "InputSite::divide: size");
  for (int64_t i = 0; i < k; ++i) absmax[i] /= s[i];
  if (!hessian.empty()) {
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) hessian[i * k + j] /= static_cast<double>(s[i]) * s[j];
    }
  }
  for (int64_t r = 0; r < sample_rows; ++r) {
    for (int64_t i = 0; i < k; ++i) sample[static_cast<size_t>(r * k + i)] /= s[i];
  }
}

namespace {

// Per-site accumulation over the samples of one pass.
class SiteAccumulator {
 public:
  SiteAccumulator(InputSite& site, int64_t k, bool hessian) : s_(site) {
    s_.k = k;
    s_.absmax.assign(static_cast<size_t>(k), 0.0f);
    if (hessian) s_.hessian.assign(static_cast<size_t>(k * k), 0.0);
  }

  // x [t, k] rows of one sample; keep[i] rows go to the subsample.
  void add(const float* x, int64_t t, const std::vector<int64_t>& keep) {
    const int64_t k = s_.k;
    for (int64_t r = 0; r < t; ++r) {
      for (int64_t j = 0; j < k; ++j)
        s_.absmax[j] = std::max(s_.absmax[j], std::fabs(x[r * k + j]));
    }
    for (int64_t r : keep) {
      s_.sample.insert(s_.sample.end(), x + r * k, x + (r + 1) * k);
      ++s_.sample_rows;
    }
    if (s_.hessian.empty()) return;
    xt_.resize(static_cast<size_t>(k * t));
    for (int64_t r = 0; r < t; ++r) {
      for (int64_t j = 0; j < k; ++j) xt_[j * t + r] = x[r * k + j];
    }
    // H is symmetric: only the row blocks' lower parts (and diagonal blocks) are computed here;
    // finish() mirrors them.
    constexpr int64_t kBlock = 128;
    g_.resize(static_cast<size_t>(std::min(kBlock, k) * k));
    for (int64_t i0 = 0; i0 < k; i0 += kBlock) {
      const int64_t m = std::min(kBlock, k - i0), n = i0 + m;
      cpu::gemm_nt(xt_.data() + i0 * t, xt_.data(), g_.data(), m, n, t);
      ThreadPool::global().parallel_for(m, 8, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          double* h = &s_.hessian[(i0 + r) * k];
          const float* g = &g_[r * n];
          for (int64_t c = 0; c < n; ++c) h[c] += g[c];
        }
      });
    }
  }

  void finish() {
    const int64_t k = s_.k;
    if (s_.hessian.empty()) return;
    for (int64_t r = 0; r < k; ++r) {
      for (int64_t c = 0; c < r; ++c) s_.hessian[c * k + r] = s_.hessian[r * k + c];
    }
  }

 private:
  InputSite& s_;
  std::vector<float> xt_, g_;
};

void absmax_into(std::vector<float>& m, const float* x, int64_t t, int64_t k) {
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t j = 0; j < k; ++j) m[j] = std::max(m[j], std::fabs(x[r * k + j]));
  }
}

}  // namespace

void causal_attention(const float* q, const float* k, const float* v, int64_t t,
                      const ModelConfig& cfg, float* out) {
  cpu::KVCacheF32 cache;
  cache.allocate(1, 1, t, cfg.num_kv_heads, cfg.head_dim);
  const SeqSpan span{0, t, 0, 0};
  cpu::kv_append(cache, 0, {&span, 1}, k, v);
  cpu::attention(q, cache, 0, {&span, 1}, cfg.num_heads, cfg.sliding_window.value_or(0), out);
}

LayerCalibration calibrate_layer(const FpLayer& L, const ModelConfig& cfg,
                                 std::span<const float> inv_freq, const float* x, int64_t samples,
                                 int64_t seq_len, float* y, const CalibrationPassOptions& opts) {
  const int64_t T = seq_len, H = cfg.hidden_size, I = cfg.intermediate_size;
  const int64_t qd = cfg.q_dim(), kvd = cfg.kv_dim();
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  LayerCalibration c;
  c.tokens = samples * seq_len;
  SiteAccumulator a_qkv(c.qkv, H, opts.hessians), a_o(c.o, qd, opts.hessians),
      a_gu(c.gate_up, H, opts.hessians), a_down(c.down, I, opts.hessians);
  c.q_absmax.assign(static_cast<size_t>(qd), 0.0f);
  c.k_absmax.assign(static_cast<size_t>(kvd), 0.0f);

  // Subsample rows: blocks of 64 tokens, every floor(blocks / 8)-th, at most 8 blocks.
  std::vector<int64_t> kept;
  if (opts.subsample) {
    const int64_t blocks = c.tokens / 64, stride = std::max<int64_t>(1, blocks / 8);
    for (int64_t b = 0; b < blocks && static_cast<int64_t>(kept.size()) < 8 * 64; b += stride) {
      for (int64_t i = 0; i < 64; ++i) kept.push_back(b * 64 + i);
    }
  }

  const cpu::LinearF32 gate_up = cpu::concat_linear({L.gate, L.up});
  cpu::KVCacheF32 cache;
  cache.allocate(1, 1, T, cfg.num_kv_heads, cfg.head_dim);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) pos[i] = i;
  std::vector<float> h(static_cast<size_t>(T * H)), q(static_cast<size_t>(T * qd)),
      k(static_cast<size_t>(T * kvd)), v(static_cast<size_t>(T * kvd)),
      attn(static_cast<size_t>(T * qd)), proj(static_cast<size_t>(T * H)),
      x2(static_cast<size_t>(T * H)), gu(static_cast<size_t>(T * 2 * I)),
      act(static_cast<size_t>(T * I));
  const SeqSpan span{0, T, 0, 0};
  for (int64_t s = 0; s < samples; ++s) {
    const float* xs = x + s * T * H;
    std::vector<int64_t> keep;
    for (int64_t g : kept) {
      if (g >= s * T && g < (s + 1) * T) keep.push_back(g - s * T);
    }
    cpu::rms_norm(xs, L.input_norm.data(), eps, T, H, h.data());
    a_qkv.add(h.data(), T, keep);
    cpu::linear(h.data(), T, L.q, q.data());
    cpu::linear(h.data(), T, L.k, k.data());
    cpu::linear(h.data(), T, L.v, v.data());
    cpu::rope(q.data(), pos.data(), T, cfg.num_heads, cfg.head_dim, inv_freq);
    cpu::rope(k.data(), pos.data(), T, cfg.num_kv_heads, cfg.head_dim, inv_freq);
    absmax_into(c.q_absmax, q.data(), T, qd);
    absmax_into(c.k_absmax, k.data(), T, kvd);
    cpu::kv_append(cache, 0, {&span, 1}, k.data(), v.data());
    cpu::attention(q.data(), cache, 0, {&span, 1}, cfg.num_heads, cfg.sliding_window.value_or(0),
                   attn.data());
    a_o.add(attn.data(), T, keep);
    cpu::linear(attn.data(), T, L.o, proj.data());
    for (int64_t i = 0; i < T * H; ++i) x2[i] = xs[i] + proj[i];
    cpu::rms_norm(x2.data(), L.post_norm.data(), eps, T, H, h.data());
    a_gu.add(h.data(), T, keep);
    cpu::linear(h.data(), T, gate_up, gu.data());
    cpu::silu_mul(gu.data(), T, I, act.data());
    a_down.add(act.data(), T, keep);
    cpu::linear(act.data(), T, L.down, proj.data());
    float* ys = y + s * T * H;
    for (int64_t i = 0; i < T * H; ++i) ys[i] = x2[i] + proj[i];
  }
  for (SiteAccumulator* a : {&a_qkv, &a_o, &a_gu, &a_down}) a->finish();
  return c;
}

}  // namespace qserve::qoq
