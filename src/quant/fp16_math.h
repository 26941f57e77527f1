// Scalar building blocks of QServe's numerics, emulated exactly on the CPU: fp16 arithmetic
// with a single rounding (what HFMA/HADD/HMUL do), and the float -> int8/uint8 conversions with
// round-to-nearest-even and saturation (cvt.rni.sat.{s8,u8}.f32, NaN -> 0).
//
// fp16 values travel as their IEEE binary16 bit patterns (uint16_t), as in core/half.h.
// Everything assumes the default floating-point environment (round to nearest even).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/half.h"

namespace qserve::quant {

inline float f16_to_f32(uint16_t h) {
  return fp16_to_float(h);
}
// One RN rounding of an fp32 value to fp16.
inline uint16_t f32_to_f16(float f) {
  return float_to_fp16(f);
}

// One RN rounding of a double to fp16 (no detour through fp32, which could round twice).
inline uint16_t f64_to_f16(double d) {
  const uint16_t sign = std::signbit(d) ? 0x8000u : 0u;
  if (std::isnan(d)) return static_cast<uint16_t>(sign | 0x7e00u);
  const double a = std::fabs(d);
  if (a >= 65520.0) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (a == 0.0) return sign;
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1)
  // fp16 keeps 11 significant bits; below 2^-14 the spacing is fixed at 2^-24 (subnormals).
  const int ulp_exp = (e - 1 - 10 < -24) ? -24 : e - 1 - 10;
  const double units = std::nearbyint(std::ldexp(a, -ulp_exp));  // exact scaling, RNE
  // units * 2^ulp_exp has at most 12 significant bits: exact in fp32 and in fp16.
  const float v = static_cast<float>(std::ldexp(units, ulp_exp));
  return static_cast<uint16_t>(sign | float_to_fp16(v));
}

// fp16 a*b + c with one rounding (HFMA). In double, a*b is exact (22 bits) and the sum is
// either exact or so far from any fp16 rounding boundary that the final rounding is still
// correct (the argument is in docs/numerics.md).
inline uint16_t f16_fma(uint16_t a, uint16_t b, uint16_t c) {
  return f64_to_f16(std::fma(static_cast<double>(f16_to_f32(a)), static_cast<double>(f16_to_f32(b)),
                             static_cast<double>(f16_to_f32(c))));
}
// fp16 a+b with one rounding (HADD): exact in double.
inline uint16_t f16_add(uint16_t a, uint16_t b) {
  return f64_to_f16(static_cast<double>(f16_to_f32(a)) + static_cast<double>(f16_to_f32(b)));
}
// fp16 a*b with one rounding (HMUL): the product of two fp16 values is exact in fp32.
inline uint16_t f16_mul(uint16_t a, uint16_t b) {
  return f32_to_f16(f16_to_f32(a) * f16_to_f32(b));
}

// cvt.rni.sat.s8.f32: round to nearest even, saturate to [-128, 127], NaN -> 0.
inline int8_t cvt_rni_sat_s8(float x) {
  if (std::isnan(x)) return 0;
  const float r = std::nearbyint(x);
  if (r <= -128.0f) return -128;
  if (r >= 127.0f) return 127;
  return static_cast<int8_t>(r);
}

// cvt.rni.sat.u8.f32: round to nearest even, saturate to [0, 255], NaN -> 0.
inline uint8_t cvt_rni_sat_u8(float x) {
  if (std::isnan(x)) return 0;
  const float r = std::nearbyint(x);
  if (r <= 0.0f) return 0;
  if (r >= 255.0f) return 255;
  return static_cast<uint8_t>(r);
}

// Two's-complement wrap of an integer to int8 (what a byte store of a wider integer does).
inline int8_t wrap_i8(int32_t v) {
  return static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint32_t>(v) & 0xffu));
}

}  // namespace qserve::quant
