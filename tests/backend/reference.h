// Naive double-precision references for the CPU ops tests, plus seeded random inputs. Written
// for clarity, straight from the contract in backend/ops.h, sharing no code with the ops.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "backend/ops.h"

namespace qserve::test {

inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline double max_abs(std::span<const double> v) {
  double m = 0.0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// C = A B^T in double. Also returns, per element, sum |a||b| (the scale of rounding error).
inline std::vector<double> ref_gemm_nt(const float* a, const float* b, int64_t m, int64_t n,
                                       int64_t k, std::vector<double>* abs_scale = nullptr) {
  std::vector<double> c(static_cast<size_t>(m * n));
  if (abs_scale) abs_scale->assign(c.size(), 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0, sa = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double x = static_cast<double>(a[i * k + p]) * static_cast<double>(b[j * k + p]);
        s += x;
        sa += std::abs(x);
      }
      c[static_cast<size_t>(i * n + j)] = s;
      if (abs_scale) (*abs_scale)[static_cast<size_t>(i * n + j)] = sa;
    }
  }
  return c;
}

// Attention over explicit per-sequence K/V histories laid out like the cache rows
// ([pos][kv_heads][head_dim]); q/out [T, heads, head_dim].
struct RefSeq {
  SeqSpan span;
  const float* k;  // positions 0 .. context_len + num_tokens - 1
  const float* v;
};

inline std::vector<double> ref_attention(const float* q, std::span<const RefSeq> seqs,
                                         int64_t total_tokens, int64_t heads, int64_t kv_heads,
                                         int64_t hd, int64_t window) {
  std::vector<double> out(static_cast<size_t>(total_tokens * heads * hd), 0.0);
  const int64_t group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (const RefSeq& s : seqs) {
    for (int64_t j = 0; j < s.span.num_tokens; ++j) {
      const int64_t t = s.span.token_offset + j;
      const int64_t pos = s.span.context_len + j;
      const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t g = h / group;
        const float* qv = q + (t * heads + h) * hd;
        std::vector<double> w;
        double mx = -1e300;
        for (int64_t p = lo; p <= pos; ++p) {
          const float* kv = s.k + (p * kv_heads + g) * hd;
          double d = 0.0;
          for (int64_t e = 0; e < hd; ++e) d += static_cast<double>(qv[e]) * kv[e];
          w.push_back(d * scale);
          mx = std::max(mx, w.back());
        }
        double sum = 0.0;
        for (double& x : w) sum += (x = std::exp(x - mx));
        double* o = &out[static_cast<size_t>((t * heads + h) * hd)];
        for (int64_t p = lo; p <= pos; ++p) {
          const float* vv = s.v + (p * kv_heads + g) * hd;
          const double pr = w[static_cast<size_t>(p - lo)] / sum;
          for (int64_t e = 0; e < hd; ++e) o[e] += pr * vv[e];
        }
      }
    }
  }
  return out;
}

}  // namespace qserve::test
