// Portable softmax / SwiGLU rows over std::exp, and the dispatch to the AVX2 versions.
#include "backend/cpu/vec_math.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/gemm_kernels.h"

namespace qserve::cpu::detail {

void softmax_row_portable(float* s, int64_t n, int64_t lo, int64_t hi, float scale) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = lo; i <= hi; ++i) {
    s[i] *= scale;
    mx = std::max(mx, s[i]);
  }
  float sum = 0.0f;
  for (int64_t i = lo; i <= hi; ++i) {
    s[i] = std::exp(s[i] - mx);
    sum += s[i];
  }
  // Normalise with the reciprocal, as PyTorch's softmax kernel does.
  const float inv = 1.0f / sum;
  for (int64_t i = lo; i <= hi; ++i) s[i] *= inv;
  std::fill(s, s + lo, 0.0f);
  std::fill(s + hi + 1, s + n, 0.0f);
}

void silu_mul_row_portable(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + std::exp(-g))) * up[i];
  }
}

void softmax_row(float* s, int64_t n, int64_t lo, int64_t hi, float scale) {
  if (use_avx2()) {
    softmax_row_avx2(s, n, lo, hi, scale);
  } else {
    softmax_row_portable(s, n, lo, hi, scale);
  }
}

void silu_mul_row(const float* gate, const float* up, int64_t n, float* out) {
  if (use_avx2()) {
    silu_mul_row_avx2(gate, up, n, out);
  } else {
    silu_mul_row_portable(gate, up, n, out);
  }
}

}  // namespace qserve::cpu::detail
