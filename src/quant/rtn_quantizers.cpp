#include "quant/rtn_quantizers.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

constexpr uint16_t kFp16One = 0x3c00;

float round_even(float x) {
  return std::nearbyint(x);
}

uint8_t clamp_code(float v) {
  return static_cast<uint8_t>(std::clamp(v, 0.0f, 15.0f));
}

void check_finite(float x) {
  if (!std::isfinite(x)) throw Error("quantizer: the weight contains a non-finite value");
}

void minmax(std::span<const float> v, float& lo, float& hi) {
  lo = v[0];
  hi = v[0];
  for (float x : v) {
    check_finite(x);
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
}

float absmax(std::span<const float> v) {
  float m = 0.0f;
  for (float x : v) {
    check_finite(x);
    m = std::max(m, std::fabs(x));
  }
  return m;
}

// fp16 scale with DeepCompressor's "a zero scale becomes 1".
uint16_t nonzero_scale(float s) {
  const uint16_t h = f32_to_f16(s);
  return (h & 0x7fffu) == 0 ? kFp16One : h;
}

void check_matrix(int64_t n, int64_t k, const char* op) {
  check(n > 0 && k > 0, std::string(op) + ": n and k must be positive");
}

}  // namespace

uint8_t ChannelGrid4::code(float w) const {
  const float s = f16_to_f32(scale);
  if (mode == ZeroPointMode::kPostScale) {
    return clamp_code(round_even((w + f16_to_f32(szero)) / s));
  }
  return clamp_code(round_even(w / s) + static_cast<float>(zero));
}

float ChannelGrid4::dequant(uint8_t q) const {
  return f16_to_f32(scale) * static_cast<float>(q) - f16_to_f32(szero);
}

ChannelGrid4 channel_grid4(std::span<const float> row, ZeroPointMode mode) {
  check(!row.empty(), "channel_grid4: empty row");
  float lo = 0.0f, hi = 0.0f;
  minmax(row, lo, hi);
  ChannelGrid4 g;
  g.mode = mode;
  g.scale = nonzero_scale((hi - lo) / 15.0f);
  if (mode == ZeroPointMode::kPostScale) {
    g.szero = f32_to_f16(-lo);
  } else {
    const float s = f16_to_f32(g.scale);
    g.zero = static_cast<int>(std::clamp(round_even(-lo / s), 0.0f, 15.0f));
    g.szero = f32_to_f16(static_cast<float>(g.zero) * s);
  }
  return g;
}

uint16_t g128_level1_scale(std::span<const float> row, float protective_range) {
  check(!row.empty(), "g128_level1_scale: empty row");
  return nonzero_scale(absmax(row) / protective_range);
}

float g128_level1_value(float w, uint16_t s1, float protective_range) {
  return std::clamp(w / f16_to_f32(s1), -protective_range, protective_range);
}

uint8_t GroupGrid4::code(float x) const {
  const float s = static_cast<float>(s2);
  if (mode == ZeroPointMode::kPostScale) {
    return clamp_code(round_even((x + static_cast<float>(zero)) / s));
  }
  return clamp_code(round_even(x / s) + static_cast<float>(zero));
}

int GroupGrid4::w8(uint8_t q) const {
  return mode == ZeroPointMode::kPostScale ? q * s2 - zero : (q - zero) * s2;
}

int8_t GroupGrid4::stored_zero() const {
  return wrap_i8(mode == ZeroPointMode::kPostScale ? -zero : -zero * s2);
}

GroupGrid4 group_grid4(std::span<const float> x, ZeroPointMode mode) {
  check(!x.empty(), "group_grid4: empty group");
  float lo = 0.0f, hi = 0.0f;
  minmax(x, lo, hi);
  GroupGrid4 g;
  g.mode = mode;
  g.s2 = static_cast<int>(std::clamp(round_even((hi - lo) / 15.0f), -127.0f, 127.0f));
  if (g.s2 == 0) g.s2 = 1;
  if (mode == ZeroPointMode::kPostScale) {
    g.zero = static_cast<int>(std::clamp(round_even(-lo), -128.0f, 127.0f));
  } else {
    g.zero = static_cast<int>(std::clamp(round_even(-lo / static_cast<float>(g.s2)), 0.0f, 15.0f));
  }
  return g;
}

W4PerChannel quantize_w4_per_channel(const float* w, int64_t n, int64_t k, ZeroPointMode mode) {
  check_matrix(n, k, "quantize_w4_per_channel");
  W4PerChannel out;
  out.n = n;
  out.k = k;
  out.q.resize(static_cast<size_t>(n * k));
  out.s1_scales.resize(static_cast<size_t>(n));
  out.s1_szeros.resize(static_cast<size_t>(n));
  ThreadPool::global().parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const std::span<const float> row(w + r * k, static_cast<size_t>(k));
      const ChannelGrid4 g = channel_grid4(row, mode);
      out.s1_scales[static_cast<size_t>(r)] = g.scale;
      out.s1_szeros[static_cast<size_t>(r)] = g.szero;
      for (int64_t i = 0; i < k; ++i) out.q[static_cast<size_t>(r * k + i)] = g.code(row[i]);
    }
  });
  return out;
}

W4G128 quantize_w4_g128(const float* w, int64_t n, int64_t k, ZeroPointMode mode,
                        float protective_range) {
  check_matrix(n, k, "quantize_w4_g128");
  check(k % kGroupSize == 0,
        "quantize_w4_g128: k = " + std::to_string(k) + " is not a multiple of 128");
  check(protective_range > 0.0f && protective_range <= 127.0f,
        "quantize_w4_g128: the protective range must lie in (0, 127]");
  const int64_t groups = k / kGroupSize;
  W4G128 out;
  out.n = n;
  out.k = k;
  out.q.resize(static_cast<size_t>(n * k));
  out.s1_scales.resize(static_cast<size_t>(n));
  out.s2_scales.resize(static_cast<size_t>(n * groups));
  out.s2_zeros.resize(static_cast<size_t>(n * groups));
  ThreadPool::global().parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> x(static_cast<size_t>(k));
    for (int64_t r = begin; r < end; ++r) {
      const std::span<const float> row(w + r * k, static_cast<size_t>(k));
      const uint16_t s1 = g128_level1_scale(row, protective_range);
      out.s1_scales[static_cast<size_t>(r)] = s1;
      for (int64_t i = 0; i < k; ++i) {
        x[static_cast<size_t>(i)] = g128_level1_value(row[i], s1, protective_range);
      }
      for (int64_t g = 0; g < groups; ++g) {
        const std::span<const float> xg(x.data() + g * kGroupSize, kGroupSize);
        const GroupGrid4 grid = group_grid4(xg, mode);
        out.s2_scales[static_cast<size_t>(r * groups + g)] = static_cast<int8_t>(grid.s2);
        out.s2_zeros[static_cast<size_t>(r * groups + g)] = grid.stored_zero();
        for (int64_t i = 0; i < kGroupSize; ++i) {
          const uint8_t q = grid.code(xg[i]);
          const int w8 = grid.w8(q);
          if (w8 < -128 || w8 > 127) {
            throw Error("quantize_w4_g128: row " + std::to_string(r) + " group " +
                        std::to_string(g) + " dequantizes to " + std::to_string(w8) +
                        ", outside int8 (protective range too large)");
          }
          out.q[static_cast<size_t>(r * k + g * kGroupSize + i)] = q;
        }
      }
    }
  });
  validate(out);
  return out;
}

W8PerChannel quantize_w8_per_channel(const float* w, int64_t n, int64_t k) {
  check_matrix(n, k, "quantize_w8_per_channel");
  W8PerChannel out;
  out.n = n;
  out.k = k;
  out.w.resize(static_cast<size_t>(n * k));
  out.dequant_scale.resize(static_cast<size_t>(n));
  ThreadPool::global().parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const std::span<const float> row(w + r * k, static_cast<size_t>(k));
      const uint16_t s = nonzero_scale(absmax(row) / 127.0f);
      out.dequant_scale[static_cast<size_t>(r)] = s;
      const float sf = f16_to_f32(s);
      for (int64_t i = 0; i < k; ++i) {
        out.w[static_cast<size_t>(r * k + i)] =
            static_cast<int8_t>(std::clamp(round_even(row[i] / sf), -127.0f, 127.0f));
      }
    }
  });
  return out;
}

}  // namespace qserve::quant
