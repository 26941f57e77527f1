// Helpers shared by the quant tests: seeded random data and fp16 ulp arithmetic.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "quant/fp16_math.h"

namespace qserve::quant::test {

// Spacing of fp16 numbers around |x| (2^-24 in the subnormal range).
inline double ulp16(double x) {
  const double a = std::fabs(x);
  if (a < std::ldexp(1.0, -14)) return std::ldexp(1.0, -24);
  int e = 0;
  std::frexp(a, &e);
  return std::ldexp(1.0, e - 1 - 10);
}

inline std::vector<float> normal_floats(std::mt19937& rng, size_t n, float stddev = 1.0f,
                                        float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Normal values rounded to fp16 (bits).
inline std::vector<uint16_t> normal_f16(std::mt19937& rng, size_t n, float stddev = 1.0f,
                                        float mean = 0.0f) {
  std::vector<uint16_t> v(n);
  std::normal_distribution<float> dist(mean, stddev);
  for (uint16_t& x : v) x = f32_to_f16(dist(rng));
  return v;
}

inline std::vector<float> to_floats(const std::vector<uint16_t>& h) {
  std::vector<float> v(h.size());
  for (size_t i = 0; i < h.size(); ++i) v[i] = f16_to_f32(h[i]);
  return v;
}

inline std::vector<int8_t> random_i8(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> dist(-128, 127);
  std::vector<int8_t> v(n);
  for (int8_t& x : v) x = static_cast<int8_t>(dist(rng));
  return v;
}

inline std::vector<uint8_t> random_codes(std::mt19937& rng, size_t n, int max = 15) {
  std::uniform_int_distribution<int> dist(0, max);
  std::vector<uint8_t> v(n);
  for (uint8_t& x : v) x = static_cast<uint8_t>(dist(rng));
  return v;
}

}  // namespace qserve::quant::test
