// Helpers shared by the attention / RoPE parity tests (tests/parity/parity_attention*_test.cpp,
// parity_rope_kv_test.cpp): seeded fp16 inputs, a vector's max |x|, the KV format's name for
// report lines, and q rounded to 11 significant bits (what the tensor-core kernels feed their
// MMAs: fp16(q 2^e) 2^-e).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cuda/ops_cuda_attention.h"
#include "core/half.h"
#include "parity/parity_main_util.h"

namespace qserve::parity {

// n fp16 values from N(0, stddev), clamped into fp16's finite range so "largest magnitude"
// cases stay finite.
inline std::vector<uint16_t> fp16_normal(ParityRng& rng, size_t n, float stddev) {
  const std::vector<float> f = rng.normal(n, 0.0f, stddev);
  std::vector<uint16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = float_to_fp16(std::clamp(f[i], -65000.0f, 65000.0f));
  return h;
}

inline float max_abs(const std::vector<float>& v) {
  float m = 0.0f;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

inline const char* fmt_name(cuda::KvFormat f) {
  return f == cuda::KvFormat::kv4 ? "kv4" : f == cuda::KvFormat::kv8 ? "kv8" : "kv16";
}

// q rounded to 11 significant bits, round-to-nearest-even, no exponent limits: what the
// kernels' fp16(q * 2^e) * 2^-e is for every element within 2^29 of the tile's max|q|.
inline std::vector<float> round11(const std::vector<float>& q) {
  std::vector<float> r(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i] == 0.0f || !std::isfinite(q[i])) {
      r[i] = q[i];
      continue;
    }
    int ex = 0;
    const double m = std::frexp(static_cast<double>(q[i]), &ex);  // [0.5, 1)
    r[i] = static_cast<float>(std::ldexp(std::nearbyint(std::ldexp(m, 11)), ex - 11));
  }
  return r;
}

}  // namespace qserve::parity
