// Exact integer dot products shared by the reference GEMMs (internal to the quant layer).
#pragma once

#include <cstdint>
#include <string>

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

// Throws unless k products of magnitude <= max_product always fit an int32 accumulator (the
// GPU's mma accumulates in int32 and would wrap).
inline void check_int32_range(int64_t k, int64_t max_product, const char* op) {
  check(k > 0 && k <= (int64_t{1} << 31) / max_product - 1,
        std::string(op) + ": k = " + std::to_string(k) +
            " is too large for an exact int32 accumulator");
}

}  // namespace qserve::quant::detail
