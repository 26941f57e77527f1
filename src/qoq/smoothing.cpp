// SmoothAttention (q/k) and SmoothLinear on down_proj (qoq-algorithm.md §1.4).
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "qoq/transforms.h"

namespace qserve::qoq {

namespace {

// a^alpha / b^beta with DeepCompressor's guards: 0 -> 1, any non-finite -> all 1.
std::vector<float> ratio_scales(const std::vector<double>& a, const std::vector<double>& b,
                                double alpha, double beta) {
  std::vector<float> s(a.size());
  bool finite = true;
  for (size_t i = 0; i < a.size(); ++i) {
    const double num = alpha == 0.0 ? 1.0 : std::pow(a[i], alpha);
    const double den = beta == 0.0 ? 1.0 : std::pow(b[i], beta);
    const float v = static_cast<float>(num / den);
    if (!std::isfinite(v)) finite = false;
    s[i] = v == 0.0f ? 1.0f : v;
  }
  if (!finite) std::fill(s.begin(), s.end(), 1.0f);
  return s;
}

}  // namespace

std::vector<float> smooth_attention_scales(std::span<const float> qmax, std::span<const float> kmax,
                                           const HeadShape& hs, double alpha, double beta) {
  const int64_t d = hs.head_dim, r = hs.group(), half = d / 2;
  check(static_cast<int64_t>(kmax.size()) == hs.kv_heads * d &&
            static_cast<int64_t>(qmax.size()) == hs.heads * d,
        "smooth_attention_scales: statistics sizes");
  std::vector<double> a(kmax.size()), b(kmax.size());
  for (int64_t g = 0; g < hs.kv_heads; ++g) {
    for (int64_t c = 0; c < d; ++c) {
      const int64_t pc = c < half ? c + half : c - half;  // RoPE partner (rotate_half pairing)
      a[g * d + c] = std::max(kmax[g * d + c], kmax[g * d + pc]);
      double bq = 0.0;
      for (int64_t h = g * r; h < (g + 1) * r; ++h) {
        bq = std::max<double>(bq, std::max(qmax[h * d + c], qmax[h * d + pc]));
      }
      b[g * d + c] = bq;
    }
  }
  return ratio_scales(a, b, alpha, beta);
}

void apply_smooth_attention(FpLayer& l, std::span<const float> lambda, const HeadShape& hs) {
  const int64_t d = hs.head_dim, r = hs.group(), H = l.q.k;
  for (int64_t h = 0; h < hs.heads; ++h) {
    for (int64_t c = 0; c < d; ++c) {
      const float s = lambda[static_cast<size_t>((h / r) * d + c)];
      const int64_t row = h * d + c;
      for (int64_t i = 0; i < H; ++i) l.q.w[static_cast<size_t>(row * H + i)] *= s;
      if (!l.q.bias.empty()) l.q.bias[static_cast<size_t>(row)] *= s;
    }
  }
  for (int64_t row = 0; row < hs.kv_heads * d; ++row) {
    const float s = lambda[static_cast<size_t>(row)];
    for (int64_t i = 0; i < H; ++i) l.k.w[static_cast<size_t>(row * H + i)] /= s;
    if (!l.k.bias.empty()) l.k.bias[static_cast<size_t>(row)] /= s;
  }
}

std::vector<float> down_smoothing_scales(std::span<const float> xmax, const cpu::LinearF32& down,
                                         double alpha, double beta) {
  check(static_cast<int64_t>(xmax.size()) == down.k, "down_smoothing_scales: statistics size");
  std::vector<double> a(xmax.begin(), xmax.end()), b(static_cast<size_t>(down.k), 0.0);
  for (int64_t r = 0; r < down.n; ++r) {
    for (int64_t c = 0; c < down.k; ++c) {
      b[c] = std::max<double>(b[c], std::fabs(down.w[static_cast<size_t>(r * down.k + c)]));
    }
  }
  return ratio_scales(a, b, alpha, beta);
}

void apply_down_smoothing(FpLayer& l, std::span<const float> s) {
  for (int64_t r = 0; r < l.down.n; ++r) {
    for (int64_t c = 0; c < l.down.k; ++c) l.down.w[static_cast<size_t>(r * l.down.k + c)] *= s[c];
  }
  for (int64_t r = 0; r < l.up.n; ++r) {
    for (int64_t c = 0; c < l.up.k; ++c) l.up.w[static_cast<size_t>(r * l.up.k + c)] /= s[r];
    if (!l.up.bias.empty()) l.up.bias[static_cast<size_t>(r)] /= s[r];
  }
}

}  // namespace qserve::qoq
