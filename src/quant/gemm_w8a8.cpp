#include "quant/gemm_w8a8.h"

#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/fp16_math.h"
#include "quant/int_dot.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

void check_shapes(const W8PerChannel& w) {
  check(w.n > 0 && w.k > 0 && w.w.size() == static_cast<size_t>(w.n * w.k) &&
            w.dequant_scale.size() == static_cast<size_t>(w.n),
        "w8a8: weight arrays do not match n and k");
}

constexpr int64_t kRowsPerTask = 16;

}  // namespace

void w8a8_accumulate(const int8_t* aq, int64_t m, const W8PerChannel& w, int32_t* acc) {
  check_shapes(w);
  check(m >= 0, "w8a8: m must be >= 0");
  detail::check_int32_range(w.k, 128 * 128, "w8a8");
  ThreadPool::global().parallel_for(w.n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* row = w.w.data() + n * w.k;
      for (int64_t r = 0; r < m; ++r) acc[r * w.n + n] = detail::dot_i32(aq + r * w.k, row, w.k);
    }
  });
}

uint16_t w8a8_output(int32_t acc, uint16_t a_scale, uint16_t dequant_scale) {
  const float scale = f16_to_f32(dequant_scale) * f16_to_f32(a_scale);
  return f32_to_f16(static_cast<float>(acc) * scale);
}

void w8a8_epilogue(const int32_t* acc, int64_t m, const uint16_t* a_scale, const W8PerChannel& w,
                   uint16_t* y) {
  check_shapes(w);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t n = 0; n < w.n; ++n) {
      y[r * w.n + n] =
          w8a8_output(acc[r * w.n + n], a_scale[r], w.dequant_scale[static_cast<size_t>(n)]);
    }
  }
}

void w8a8_gemm(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannel& w,
               uint16_t* y) {
  std::vector<int32_t> acc(static_cast<size_t>(m * w.n));
  w8a8_accumulate(aq, m, w, acc.data());
  w8a8_epilogue(acc.data(), m, a_scale, w, y);
}

}  // namespace qserve::quant
