#include "quant/gemm_w4a8.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/fp16_math.h"
#include "quant/int_dot.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

// Cheap shape checks on every call; the per-element checks live in validate() (weights.h),
// which loaders and quantizers run once.
void check_shapes(const W4PerChannel& w) {
  check(w.n > 0 && w.k > 0 && w.q.size() == static_cast<size_t>(w.n * w.k) &&
            w.s1_scales.size() == static_cast<size_t>(w.n) &&
            w.s1_szeros.size() == static_cast<size_t>(w.n),
        "w4a8 per-channel: weight arrays do not match n and k");
}

void check_shapes(const W4G128& w) {
  const size_t groups = static_cast<size_t>(w.k / kGroupSize);
  check(w.n > 0 && w.k > 0 && w.k % kGroupSize == 0 &&
            w.q.size() == static_cast<size_t>(w.n * w.k) &&
            w.s1_scales.size() == static_cast<size_t>(w.n) &&
            w.s2_scales.size() == static_cast<size_t>(w.n) * groups &&
            w.s2_zeros.size() == static_cast<size_t>(w.n) * groups,
        "w4a8 g128: weight arrays do not match n and k (k must be a multiple of 128)");
}

// Output channels are the unit of work: each weight row is read (and, for g128, expanded to
// int8) once and dotted with every activation row.
constexpr int64_t kRowsPerTask = 16;

}  // namespace

void w4a8_per_channel_accumulate(const int8_t* aq, int64_t m, const W4PerChannel& w, int32_t* acc) {
  check_shapes(w);
  check(m >= 0, "w4a8 per-channel: m must be >= 0");
  detail::check_int32_range(w.k, 128 * 15, "w4a8 per-channel");
  ThreadPool::global().parallel_for(w.n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* q = w.q.data() + n * w.k;
      for (int64_t r = 0; r < m; ++r) acc[r * w.n + n] = detail::dot_i32(aq + r * w.k, q, w.k);
    }
  });
}

uint16_t w4a8_per_channel_output(int32_t acc, uint16_t a_scale, uint16_t a_sum, uint16_t s1,
                                 uint16_t s1_szero) {
  const float scaled_acc = static_cast<float>(acc) * f16_to_f32(s1);
  const float zero_term = f16_to_f32(s1_szero) * f16_to_f32(a_sum);
  return f32_to_f16(std::fma(f16_to_f32(a_scale), scaled_acc, -zero_term));
}

void w4a8_per_channel_epilogue(const int32_t* acc, int64_t m, const uint16_t* a_scale,
                               const uint16_t* a_sum, const W4PerChannel& w, const uint16_t* bias,
                               uint16_t* y) {
  check_shapes(w);
  check(a_sum != nullptr, "w4a8 per-channel: the activation sums are required");
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t n = 0; n < w.n; ++n) {
      uint16_t v = w4a8_per_channel_output(acc[r * w.n + n], a_scale[r], a_sum[r],
                                           w.s1_scales[static_cast<size_t>(n)],
                                           w.s1_szeros[static_cast<size_t>(n)]);
      if (bias != nullptr) v = f16_add(v, bias[n]);
      y[r * w.n + n] = v;
    }
  }
}

void w4a8_per_channel_gemm(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                           int64_t m, const W4PerChannel& w, const uint16_t* bias, uint16_t* y) {
  std::vector<int32_t> acc(static_cast<size_t>(m * w.n));
  w4a8_per_channel_accumulate(aq, m, w, acc.data());
  w4a8_per_channel_epilogue(acc.data(), m, a_scale, a_sum, w, bias, y);
}

void w4a8_g128_accumulate(const int8_t* aq, int64_t m, const W4G128& w, int32_t* acc) {
  check_shapes(w);
  check(m >= 0, "w4a8 g128: m must be >= 0");
  detail::check_int32_range(w.k, 128 * 128, "w4a8 g128");
  ThreadPool::global().parallel_for(w.n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> w8(static_cast<size_t>(w.k));
    for (int64_t n = begin; n < end; ++n) {
      g128_int8_row(w, n, w8.data());
      for (int64_t r = 0; r < m; ++r) {
        acc[r * w.n + n] = detail::dot_i32(aq + r * w.k, w8.data(), w.k);
      }
    }
  });
}

uint16_t w4a8_g128_output(int32_t acc, uint16_t a_scale, uint16_t s1) {
  const float scale = f16_to_f32(s1) * f16_to_f32(a_scale);
  return f32_to_f16(static_cast<float>(acc) * scale);
}

void w4a8_g128_epilogue(const int32_t* acc, int64_t m, const uint16_t* a_scale, const W4G128& w,
                        const uint16_t* bias, uint16_t* y) {
  check_shapes(w);
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t n = 0; n < w.n; ++n) {
      uint16_t v =
          w4a8_g128_output(acc[r * w.n + n], a_scale[r], w.s1_scales[static_cast<size_t>(n)]);
      if (bias != nullptr) v = f16_add(v, bias[n]);
      y[r * w.n + n] = v;
    }
  }
}

void w4a8_g128_gemm(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128& w,
                    const uint16_t* bias, uint16_t* y) {
  std::vector<int32_t> acc(static_cast<size_t>(m * w.n));
  w4a8_g128_accumulate(aq, m, w, acc.data());
  w4a8_g128_epilogue(acc.data(), m, a_scale, w, bias, y);
}

}  // namespace qserve::quant
