// Exact integer codes of a fake-quantized linear (model/convert_dump.h). Every value that the
// Python converters round or cast without looking (zero points, s2, W/s1, the codes) is checked
// here, so that a dump that does not match its scales fails naming the tensor and the element
// instead of turning into a silently wrong checkpoint.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/half.h"
#include "model/convert_dump.h"

namespace qserve::convert_detail {

namespace {

// Converters shift a signed int4 tensor (any value negative) into [0, 15] by adding 8.
constexpr int kSignedShift = 8;
const char* kSignedZeroNote =
    " (the tensor has negative zero points, so it is read as signed int4 in [-8, 7] and shifted "
    "by 8, as QServe's converter does)";
const char* kSignedCodeNote =
    " (some codes came out negative, so the codes are read as signed int4 and shifted by 8, as "
    "DeepCompressor's converter does)";

std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

std::string at(int64_t r, int64_t c) {
  // Built by appending: GCC 12 misreports the operator+ chain as an overlapping memcpy.
  std::string s = "[";
  s += std::to_string(r);
  s += ", ";
  s += std::to_string(c);
  s += "]";
  return s;
}

[[noreturn]] void not_int(double x, const std::string& what, const std::string& where, int lo,
                          int hi, const std::string& note) {
  throw Error(what + ": element " + where + " is " + num(x) + ", expected an integer in [" +
              std::to_string(lo) + ", " + std::to_string(hi) + "]" + note);
}

// x itself when it is an integer in [lo, hi], else an error naming the tensor and element.
int exact_int(double x, int lo, int hi, const std::string& what, const std::string& where,
              const std::string& note = "") {
  if (!(x >= lo && x <= hi) || std::nearbyint(x) != x) not_int(x, what, where, lo, hi, note);
  return static_cast<int>(x);
}

// round(w / s) for a fake-quantized weight: it must lie within 0.25 of an integer (the fp16
// rounding of a genuine fake-quant weight moves it by far less), else the weight does not belong
// to this scale.
int near_int(double x, const DumpLinear& d, int64_t r, int64_t c, const char* expr) {
  const double q = std::nearbyint(x);
  if (!(std::fabs(x - q) <= 0.25) || std::fabs(q) > 1e6) {
    throw Error(d.weight_src + ": element " + at(r, c) + ": " + expr + " = " + num(x) +
                " is not within 0.25 of an integer (the weight is not fake-quantized with the "
                "scales of scale.pt)");
  }
  return static_cast<int>(q);
}

void check_scales(const DumpLinear& d) {
  for (size_t i = 0; i < d.s1.size(); ++i) {
    if (!std::isfinite(d.s1[i]) || d.s1[i] == 0.0f) {
      throw Error(d.s1_src + ": element " + std::to_string(i) + " is " + num(d.s1[i]) +
                  ", expected a finite non-zero scale");
    }
  }
}

std::vector<uint16_t> fp16_of(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_fp16(v[i]);
  return h;
}

template <typename W>
void validated(const W& w, const DumpLinear& d) {
  try {
    quant::validate(w);
  } catch (const Error& e) {
    throw Error(d.weight_src + ": " + e.what());
  }
}

}  // namespace

quant::W4PerChannel recover_per_channel(const DumpLinear& d) {
  check_scales(d);
  const int64_t n = d.n, k = d.k;
  quant::W4PerChannel q;
  q.n = n;
  q.k = k;
  q.q.resize(static_cast<size_t>(n * k));
  q.s1_scales = fp16_of(d.s1);
  q.s1_szeros.resize(static_cast<size_t>(n));
  const std::string codes =
      d.weight_src + (d.domain == ZeroDomain::kCode ? " codes round(weight / s1) + zero"
                                                    : " codes round((weight + scaled_zero) / s1)");
  auto w_at = [&](int64_t r, int64_t c) {
    return static_cast<double>(d.w[static_cast<size_t>(r * k + c)]);
  };
  if (d.domain == ZeroDomain::kCode) {
    // QServe's converter: Q = round(W / s1) + z, s1_szeros = fp16(z * s1).
    const bool is_signed = std::any_of(d.zero.begin(), d.zero.end(), [](float z) { return z < 0; });
    const int lo = is_signed ? -kSignedShift : 0, hi = lo + 15;
    for (int64_t r = 0; r < n; ++r) {
      const float s1 = d.s1[static_cast<size_t>(r)];
      const int z = exact_int(d.zero[static_cast<size_t>(r)], lo, hi, d.zero_src, std::to_string(r),
                              is_signed ? kSignedZeroNote : "") -
                    lo;
      q.s1_szeros[static_cast<size_t>(r)] = float_to_fp16(static_cast<float>(z) * s1);
      for (int64_t c = 0; c < k; ++c) {
        const int v = near_int(w_at(r, c) / s1, d, r, c, "weight / s1") + z;
        q.q[static_cast<size_t>(r * k + c)] =
            static_cast<uint8_t>(exact_int(v, 0, 15, codes, at(r, c)));
      }
    }
  } else {
    // DeepCompressor's converter: Q = round((W + z~) / s1), s1_szeros = fp16(z~); codes that come
    // out negative mean signed int4, shifted by 8 with z~ += 8 * s1.
    std::vector<int> raw(q.q.size());
    int lowest = 0;
    for (int64_t r = 0; r < n; ++r) {
      const float zt = d.zero[static_cast<size_t>(r)];
      if (!std::isfinite(zt)) {
        throw Error(d.zero_src + ": element " + std::to_string(r) + " is " + num(zt) +
                    ", expected a finite scaled zero point");
      }
      for (int64_t c = 0; c < k; ++c) {
        const int v = near_int((w_at(r, c) + zt) / d.s1[static_cast<size_t>(r)], d, r, c,
                               "(weight + scaled_zero) / s1");
        raw[static_cast<size_t>(r * k + c)] = v;
        lowest = std::min(lowest, v);
      }
    }
    const int shift = lowest < 0 ? kSignedShift : 0;
    for (int64_t r = 0; r < n; ++r) {
      const float s1 = d.s1[static_cast<size_t>(r)];
      const float zt = d.zero[static_cast<size_t>(r)];
      q.s1_szeros[static_cast<size_t>(r)] =
          float_to_fp16(shift ? zt + static_cast<float>(shift) * s1 : zt);
      for (int64_t c = 0; c < k; ++c) {
        const size_t i = static_cast<size_t>(r * k + c);
        q.q[i] = static_cast<uint8_t>(
            exact_int(raw[i] + shift, 0, 15, codes, at(r, c), shift ? kSignedCodeNote : ""));
      }
    }
  }
  validated(q, d);
  return q;
}

quant::W4G128 recover_g128(const DumpLinear& d) {
  check_scales(d);
  const int64_t n = d.n, k = d.k, G = k / quant::kGroupSize;
  quant::W4G128 q;
  q.n = n;
  q.k = k;
  q.q.resize(static_cast<size_t>(n * k));
  q.s1_scales = fp16_of(d.s1);
  q.s2_scales.resize(static_cast<size_t>(n * G));
  q.s2_zeros.resize(static_cast<size_t>(n * G));
  const std::string codes = d.weight_src + (d.domain == ZeroDomain::kCode
                                                ? " codes round(weight / s1) / s2 + zero"
                                                : " codes (round(weight / s1) + scaled_zero) / s2");
  // Level 1: w8 = round(W / s1), an int8 (the protective range keeps it there).
  auto w8_at = [&](int64_t r, int64_t c) {
    const double x = static_cast<double>(d.w[static_cast<size_t>(r * k + c)]) /
                     static_cast<double>(d.s1[static_cast<size_t>(r)]);
    const int w8 = near_int(x, d, r, c, "weight / s1");
    if (w8 < -128 || w8 > 127) {
      throw Error(d.weight_src + ": element " + at(r, c) + ": round(weight / s1) = " +
                  std::to_string(w8) + " is outside the int8 range [-128, 127] of level 1");
    }
    return w8;
  };
  const bool code_domain = d.domain == ZeroDomain::kCode;
  const bool signed_zero =
      code_domain && std::any_of(d.zero.begin(), d.zero.end(), [](float z) { return z < 0; });
  std::vector<int> raw(code_domain ? 0 : q.q.size());  // scaled: codes before the int4 shift
  std::vector<int> zeros(q.s2_zeros.size());           // z (code domain) or z~ (scaled), unshifted
  int lowest = 0;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const size_t gi = static_cast<size_t>(r * G + g);
      const int s2 = exact_int(d.s2[gi], 1, 127, d.s2_src, at(r, g));
      q.s2_scales[gi] = static_cast<int8_t>(s2);
      if (code_domain) {
        // QServe's converter: Q = w8 / s2 + z, s2_zeros = int8(-z * s2).
        const int lo = signed_zero ? -kSignedShift : 0;
        zeros[gi] = exact_int(d.zero[gi], lo, lo + 15, d.zero_src, at(r, g),
                              signed_zero ? kSignedZeroNote : "") -
                    lo;
      } else {
        // DeepCompressor's: Q = (w8 + z~) / s2 with an integer z~, s2_zeros = int8(-z~).
        // z~ = Q * s2 - w8 lies in [-127, 255 + 128]; DC itself asserts [0, 255].
        zeros[gi] = exact_int(d.zero[gi], -128, 255, d.zero_src, at(r, g));
      }
      for (int64_t c = g * quant::kGroupSize; c < (g + 1) * quant::kGroupSize; ++c) {
        const size_t i = static_cast<size_t>(r * k + c);
        const int w8 = w8_at(r, c);
        if (code_domain) {
          q.q[i] = static_cast<uint8_t>(
              exact_int(static_cast<double>(w8) / s2 + zeros[gi], 0, 15, codes, at(r, c)));
        } else {
          const double v = static_cast<double>(w8 + zeros[gi]) / s2;
          if (std::nearbyint(v) != v) not_int(v, codes, at(r, c), 0, 15, "");
          raw[i] = static_cast<int>(v);
          lowest = std::min(lowest, raw[i]);
        }
      }
    }
  }
  if (code_domain) {
    for (size_t gi = 0; gi < zeros.size(); ++gi) {
      q.s2_zeros[gi] =
          static_cast<int8_t>(static_cast<uint8_t>((-zeros[gi] * q.s2_scales[gi]) & 0xff));
    }
  } else {
    const int shift = lowest < 0 ? kSignedShift : 0;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t g = 0; g < G; ++g) {
        const size_t gi = static_cast<size_t>(r * G + g);
        const int zt = zeros[gi] + shift * q.s2_scales[gi];
        q.s2_zeros[gi] = static_cast<int8_t>(static_cast<uint8_t>(-zt & 0xff));
        for (int64_t c = g * quant::kGroupSize; c < (g + 1) * quant::kGroupSize; ++c) {
          const size_t i = static_cast<size_t>(r * k + c);
          q.q[i] = static_cast<uint8_t>(
              exact_int(raw[i] + shift, 0, 15, codes, at(r, c), shift ? kSignedCodeNote : ""));
        }
      }
    }
  }
  validated(q, d);
  return q;
}

}  // namespace qserve::convert_detail
