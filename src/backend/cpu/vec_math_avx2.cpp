// AVX2/FMA softmax and SwiGLU rows around a vectorised expf (see vec_math.h for its accuracy).
// Compiled for avx2+fma through target attributes; only called after the run-time CPU check.
#include "backend/cpu/vec_math.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include <algorithm>
#include <limits>

#define QSERVE_AVX2 __attribute__((target("avx2,fma")))

namespace qserve::cpu::detail {

namespace {

// Cephes expf. x is clamped to [-104, 89] (NaN passes through: max/min return their second
// operand when one is NaN), which covers every input whose exp is neither 0 nor inf in fp32.
QSERVE_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  // n = round(x / ln 2); r = x - n ln 2 with ln 2 split so n * C1 is exact.
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  // p * 2^n as p * 2^(n/2) * 2^(n - n/2): each factor stays a normal float for n in
  // [-150, 128], so large results overflow to inf and tiny ones round into denormals.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1);
  const __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

// Lanes [0, rem) set.
QSERVE_AVX2 inline __m256i lane_mask(int64_t rem) {
  alignas(32) static const int32_t kSrc[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                               0,  0,  0,  0,  0,  0,  0,  0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kSrc + 8 - rem));
}

QSERVE_AVX2 inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

QSERVE_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// g / (1 + exp(-g)) * u, PyTorch's silu formula.
QSERVE_AVX2 inline __m256 silu_mul8(__m256 g, __m256 u) {
  const __m256 e = exp256(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f)));
  return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

}  // namespace

QSERVE_AVX2 void exp_avx2(const float* x, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp256(_mm256_loadu_ps(x + i)));
  if (i < n) {
    const __m256i m = lane_mask(n - i);
    _mm256_maskstore_ps(out + i, m, exp256(_mm256_maskload_ps(x + i, m)));
  }
}

QSERVE_AVX2 void softmax_row_avx2(float* s, int64_t n, int64_t lo, int64_t hi, float scale) {
  float* p = s + lo;
  const int64_t len = hi - lo + 1;
  const int64_t len8 = len & ~int64_t{7};
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256i tail = lane_mask(len - len8);

  // Scale, and the row maximum (masked-off tail lanes read as -inf).
  __m256 vmax = ninf;
  int64_t i = 0;
  for (; i < len8; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + i), vscale);
    _mm256_storeu_ps(p + i, v);
    vmax = _mm256_max_ps(vmax, v);
  }
  if (i < len) {
    const __m256 v = _mm256_mul_ps(_mm256_maskload_ps(p + i, tail), vscale);
    _mm256_maskstore_ps(p + i, tail, v);
    vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(ninf, v, _mm256_castsi256_ps(tail)));
  }
  const __m256 mx = _mm256_set1_ps(hmax(vmax));

  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i < len8; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p + i), mx));
    _mm256_storeu_ps(p + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  if (i < len) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_maskload_ps(p + i, tail), mx));
    _mm256_maskstore_ps(p + i, tail, e);
    vsum = _mm256_add_ps(vsum, _mm256_and_ps(e, _mm256_castsi256_ps(tail)));
  }

  const __m256 inv = _mm256_set1_ps(1.0f / hsum(vsum));
  for (i = 0; i < len8; i += 8) _mm256_storeu_ps(p + i, _mm256_mul_ps(_mm256_loadu_ps(p + i), inv));
  if (i < len) {
    _mm256_maskstore_ps(p + i, tail, _mm256_mul_ps(_mm256_maskload_ps(p + i, tail), inv));
  }
  std::fill(s, s + lo, 0.0f);
  std::fill(s + hi + 1, s + n, 0.0f);
}

QSERVE_AVX2 void silu_mul_row_avx2(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, silu_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  }
  if (i < n) {
    const __m256i m = lane_mask(n - i);
    _mm256_maskstore_ps(out + i, m,
                        silu_mul8(_mm256_maskload_ps(gate + i, m), _mm256_maskload_ps(up + i, m)));
  }
}

}  // namespace qserve::cpu::detail

#else  // not x86: use_avx2() is false there, so these only keep the linker happy

#include <cmath>

namespace qserve::cpu::detail {
void exp_avx2(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i]);
}
void softmax_row_avx2(float* s, int64_t n, int64_t lo, int64_t hi, float scale) {
  softmax_row_portable(s, n, lo, hi, scale);
}
void silu_mul_row_avx2(const float* gate, const float* up, int64_t n, float* out) {
  silu_mul_row_portable(gate, up, n, out);
}
}  // namespace qserve::cpu::detail

#endif
