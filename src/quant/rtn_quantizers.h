// Round-to-nearest quantizers that turn an fp32 weight [n, k] (HF layout) into the tensors of
// weights.h, following the QoQ recipe (qoq-algorithm.md §2). The per-row / per-group grids are
// exposed separately so GPTQ can reuse them with error feedback (static groups: grids are
// computed first from the unmodified weight, then codes column by column).
//
// round() is round-half-to-even everywhere, computed in fp32 like DeepCompressor's develop dtype.
//
// Per-channel uint4 (gchn), per output row over all of k:
//   vmin, vmax = min, max of the row (no clipping search here: ratio 1.0)
//   s = fp16((vmax - vmin) / 15), 0 -> 1
//   kPostScale (DeepCompressor, default): z~ = fp16(-vmin) (not an integer),
//       q = clamp(round((w + z~) / s), 0, 15),          s1_szeros = z~
//   kIntegerPreScale (LMQuant, what QServe's converter expects):
//       z = clamp(round(-vmin / s), 0, 15),
//       q = clamp(round(w / s) + z, 0, 15),             s1_szeros = fp16(z * s)
//   Dequantized (the kernel's view): s * q - s1_szeros.
//
// Progressive g128:
//   level 1 per row:   s1 = fp16(max|w| / P), 0 -> 1, P = 119 (protective range);
//                      x = clamp(w / s1, -P, P)  (not rounded)
//   level 2 per group of 128 along k, on x:
//     s2 = clamp(round((vmax - vmin) / 15), -127, 127), 0 -> 1     (so 1..16)
//     kPostScale:       z~ = clamp(round(-vmin), -128, 127),
//                       q = clamp(round((x + z~) / s2), 0, 15),
//                       w8 = q * s2 - z~,     s2_zeros = int8_wrap(-z~)
//     kIntegerPreScale: z = clamp(round(-vmin / s2), 0, 15),
//                       q = clamp(round(x / s2) + z, 0, 15),
//                       w8 = (q - z) * s2,    s2_zeros = int8_wrap(-z * s2)
//   P <= 119 guarantees w8 in [-128, 127] (checked; qserve::Error otherwise) and q * s2 <= 240.
//   Dequantized: s1 * w8.
//
// Symmetric per-channel int8 (W8A8): s = fp16(max|w| / 127), 0 -> 1;
//   w8 = clamp(round(w / s), -127, 127).
//
// Error bounds (tested): per-channel |w - w^| <= s/2 + fp16 rounding of s and z~ (see the test);
// g128 |w - w^| <= s1 * (s2/2 + d) where d is how far x lies outside the group's representable
// range [w8(0), w8(15)] (s2 is rounded to an integer, so 15 * s2 can fall short of vmax - vmin);
// int8 |w - w^| <= s/2.
#pragma once

#include <cstdint>
#include <span>

#include "quant/weights.h"

namespace qserve::quant {

enum class ZeroPointMode : uint8_t {
  kPostScale,        // DeepCompressor: zero added before dividing by the scale
  kIntegerPreScale,  // LMQuant / QServe's converter: integer zero added to the rounded code
};

inline constexpr float kProtectiveRange = 119.0f;

// The uint4 grid of one output row (per-channel W4A8).
struct ChannelGrid4 {
  ZeroPointMode mode = ZeroPointMode::kPostScale;
  uint16_t scale = 0;  // fp16 s1_scales
  uint16_t szero = 0;  // fp16 s1_szeros
  int zero = 0;        // kIntegerPreScale: the integer zero z
  uint8_t code(float w) const;
  float dequant(uint8_t q) const;  // s * q - szero, in fp32
};
ChannelGrid4 channel_grid4(std::span<const float> row, ZeroPointMode mode);

// Level 1 of g128: the fp16 per-row scale s1.
uint16_t g128_level1_scale(std::span<const float> row, float protective_range = kProtectiveRange);
// x = clamp(w / s1, -P, P).
float g128_level1_value(float w, uint16_t s1, float protective_range = kProtectiveRange);

// The uint4 grid of one 128-group of level-1 values x.
struct GroupGrid4 {
  ZeroPointMode mode = ZeroPointMode::kPostScale;
  int s2 = 1;
  int zero = 0;  // kPostScale: z~ (w8 = q*s2 - z~); kIntegerPreScale: z (w8 = (q - z)*s2)
  uint8_t code(float x) const;
  int w8(uint8_t q) const;
  int8_t stored_zero() const;  // QServe's s2_zeros byte: w8 == int8((q*s2 + it) mod 256)
};
GroupGrid4 group_grid4(std::span<const float> x, ZeroPointMode mode);

// Whole-matrix RTN quantizers. w: [n, k] fp32 row-major. Rows run on ThreadPool::global().
W4PerChannel quantize_w4_per_channel(const float* w, int64_t n, int64_t k,
                                     ZeroPointMode mode = ZeroPointMode::kPostScale);
W4G128 quantize_w4_g128(const float* w, int64_t n, int64_t k,
                        ZeroPointMode mode = ZeroPointMode::kPostScale,
                        float protective_range = kProtectiveRange);
W8PerChannel quantize_w8_per_channel(const float* w, int64_t n, int64_t k);

}  // namespace qserve::quant
