#include "quant/weights.h"

#include <string>

#include "core/error.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

void check_size(size_t got, int64_t want, const char* what) {
  check(static_cast<int64_t>(got) == want, std::string(what) + " has " + std::to_string(got) +
                                               " elements, expected " + std::to_string(want));
}

void check_codes(const std::vector<uint8_t>& q, const char* what) {
  for (size_t i = 0; i < q.size(); ++i) {
    // Build the message only on failure: this loop visits every weight.
    if (q[i] > 15) {
      throw Error(std::string(what) + ": 4-bit code " + std::to_string(q[i]) + " at index " +
                  std::to_string(i) + " is above 15");
    }
  }
}

}  // namespace

void validate(const W4PerChannel& w) {
  check(w.n > 0 && w.k > 0, "W4PerChannel: n and k must be positive");
  check_size(w.q.size(), w.n * w.k, "W4PerChannel.q");
  check_size(w.s1_scales.size(), w.n, "W4PerChannel.s1_scales");
  check_size(w.s1_szeros.size(), w.n, "W4PerChannel.s1_szeros");
  check_codes(w.q, "W4PerChannel.q");
}

void validate(const W4G128& w) {
  check(w.n > 0 && w.k > 0, "W4G128: n and k must be positive");
  check(w.k % kGroupSize == 0,
        "W4G128: k = " + std::to_string(w.k) + " is not a multiple of the group size 128");
  const int64_t groups = w.k / kGroupSize;
  check_size(w.q.size(), w.n * w.k, "W4G128.q");
  check_size(w.s1_scales.size(), w.n, "W4G128.s1_scales");
  check_size(w.s2_scales.size(), w.n * groups, "W4G128.s2_scales");
  check_size(w.s2_zeros.size(), w.n * groups, "W4G128.s2_zeros");
  check_codes(w.q, "W4G128.q");
  for (int64_t r = 0; r < w.n; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int s2 = w.s2_scales[static_cast<size_t>(r * groups + g)];
      if (s2 < 0) {
        throw Error("W4G128: s2 scale " + std::to_string(s2) + " of row " + std::to_string(r) +
                    " group " + std::to_string(g) + " is negative");
      }
      const uint8_t* q = w.q.data() + r * w.k + g * kGroupSize;
      for (int64_t i = 0; i < kGroupSize; ++i) {
        if (q[i] * s2 > 255) {
          throw Error("W4G128: code " + std::to_string(q[i]) + " * s2 " + std::to_string(s2) +
                      " exceeds 255 at row " + std::to_string(r) + " group " + std::to_string(g) +
                      " (the kernel's byte-wise multiply would carry)");
        }
      }
    }
  }
}

void validate(const W8PerChannel& w) {
  check(w.n > 0 && w.k > 0, "W8PerChannel: n and k must be positive");
  check_size(w.w.size(), w.n * w.k, "W8PerChannel.w");
  check_size(w.dequant_scale.size(), w.n, "W8PerChannel.dequant_scale");
}

void g128_int8_row(const W4G128& w, int64_t row, int8_t* out) {
  const int64_t groups = w.k / kGroupSize;
  const uint8_t* q = w.q.data() + row * w.k;
  for (int64_t g = 0; g < groups; ++g) {
    const int32_t s2 = w.s2_scales[static_cast<size_t>(row * groups + g)];
    const int32_t zero = static_cast<uint8_t>(w.s2_zeros[static_cast<size_t>(row * groups + g)]);
    for (int64_t i = g * kGroupSize; i < (g + 1) * kGroupSize; ++i) {
      out[i] = wrap_i8(q[i] * s2 + zero);  // __vadd4: per-byte add, carries dropped
    }
  }
}

std::vector<float> dequantize(const W4PerChannel& w) {
  validate(w);
  std::vector<float> out(static_cast<size_t>(w.n * w.k));
  for (int64_t r = 0; r < w.n; ++r) {
    const float s1 = f16_to_f32(w.s1_scales[static_cast<size_t>(r)]);
    const float sz = f16_to_f32(w.s1_szeros[static_cast<size_t>(r)]);
    for (int64_t i = 0; i < w.k; ++i) {
      const size_t idx = static_cast<size_t>(r * w.k + i);
      out[idx] = s1 * static_cast<float>(w.q[idx]) - sz;
    }
  }
  return out;
}

std::vector<float> dequantize(const W4G128& w) {
  validate(w);
  std::vector<float> out(static_cast<size_t>(w.n * w.k));
  std::vector<int8_t> w8(static_cast<size_t>(w.k));
  for (int64_t r = 0; r < w.n; ++r) {
    g128_int8_row(w, r, w8.data());
    const float s1 = f16_to_f32(w.s1_scales[static_cast<size_t>(r)]);
    for (int64_t i = 0; i < w.k; ++i) {
      out[static_cast<size_t>(r * w.k + i)] = s1 * static_cast<float>(w8[static_cast<size_t>(i)]);
    }
  }
  return out;
}

std::vector<float> dequantize(const W8PerChannel& w) {
  validate(w);
  std::vector<float> out(static_cast<size_t>(w.n * w.k));
  for (int64_t r = 0; r < w.n; ++r) {
    const float s = f16_to_f32(w.dequant_scale[static_cast<size_t>(r)]);
    for (int64_t i = 0; i < w.k; ++i) {
      const size_t idx = static_cast<size_t>(r * w.k + i);
      out[idx] = s * static_cast<float>(w.w[idx]);
    }
  }
  return out;
}

}  // namespace qserve::quant
