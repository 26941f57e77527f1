#include "quant/act_quant.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/block_reduce.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

void quantize_row_per_token(const float* x, int64_t cols, int8_t* q, uint16_t* scale,
                            uint16_t* sum) {
  float amax = 0.0f;
  for (int64_t i = 0; i < cols; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  // 127 * rcp(amax): the product is rounded to fp32 before it scales each element.
  const float r = 127.0f * (1.0f / amax);
  for (int64_t i = 0; i < cols; ++i) q[i] = cvt_rni_sat_s8(x[i] * r);
  // Division by the literal 127 compiles to a multiply by its fp32 reciprocal under fast-math.
  *scale = f32_to_f16(amax * (1.0f / 127.0f));
  if (sum != nullptr) {
    const int64_t block = quant_block_dim(cols);
    std::vector<float> partials(static_cast<size_t>(block), 0.0f);
    for (int64_t i = 0; i < cols; ++i) partials[static_cast<size_t>(i % block)] += x[i];
    *sum = f32_to_f16(block_reduce_sum(partials));
  }
}

namespace {

inline float load(float v) {
  return v;
}
inline float load(uint16_t h) {
  return f16_to_f32(h);
}

template <typename T>
void quantize_rows(const T* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                   uint16_t* sum) {
  check(rows >= 0 && cols > 0, "quantize_per_token: need rows >= 0 and cols > 0");
  ThreadPool::global().parallel_for(rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = 0; i < cols; ++i) row[static_cast<size_t>(i)] = load(x[r * cols + i]);
      quantize_row_per_token(row.data(), cols, q + r * cols, scale + r,
                             sum != nullptr ? sum + r : nullptr);
    }
  });
}

}  // namespace

void quantize_per_token(const uint16_t* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                        uint16_t* sum) {
  quantize_rows(x, rows, cols, q, scale, sum);
}

void quantize_per_token(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                        uint16_t* sum) {
  quantize_rows(x, rows, cols, q, scale, sum);
}

}  // namespace qserve::quant
