// Exact integer dot products shared by the reference GEMMs (internal to the quant layer).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/error.h"

namespace qserve::quant::detail {

// sum_i a[i] * b[i] in int32. Exact (no wrap) as long as k * max|a*b| < 2^31, which callers
// check once with check_int32_range.
template <typename A, typename B>
inline int32_t dot_i32(const A* a, const B* b, int64_t k) {
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return s;
}

#if defined(__x86_64__)
// AVX2 versions of the int8 x int8 and int8 x uint8 dots (the reference GEMMs' inner loop): the
// int8 values are widened to int16 and multiplied-and-pair-summed into int32 lanes
// (_mm256_madd_epi16; |a*b| <= 2^14, so a pair never overflows). Integer sums are exact in any
// order, so the result equals the scalar loop bit for bit.
template <typename B>
__attribute__((target("avx2"))) inline int32_t dot_i32_avx2(const int8_t* a, const B* b,
                                                            int64_t k) {
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m256i va =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m128i rb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i));
    const __m256i vb = std::is_signed_v<B> ? _mm256_cvtepi8_epi16(rb) : _mm256_cvtepu8_epi16(rb);
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(va, vb));
  }
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  int32_t r = _mm_cvtsi128_si32(s);
  for (; i < k; ++i) r += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return r;
}

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

template <>
inline int32_t dot_i32<int8_t, int8_t>(const int8_t* a, const int8_t* b, int64_t k) {
  if (cpu_has_avx2()) return dot_i32_avx2(a, b, k);
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return s;
}

template <>
inline int32_t dot_i32<int8_t, uint8_t>(const int8_t* a, const uint8_t* b, int64_t k) {
  if (cpu_has_avx2()) return dot_i32_avx2(a, b, k);
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return s;
}
#endif

// Throws unless k products of magnitude <= max_product always fit an int32 accumulator (the
// GPU's mma accumulates in int32 and would wrap).
inline void check_int32_range(int64_t k, int64_t max_product, const char* op) {
  check(k > 0 && k <= (int64_t{1} << 31) / max_product - 1,
        std::string(op) + ": k = " + std::to_string(k) +
            " is too large for an exact int32 accumulator");
}

}  // namespace qserve::quant::detail
