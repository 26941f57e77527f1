#include "quant/silu_mul_quant.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/act_quant.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

inline float load(float v) {
  return v;
}
inline float load(uint16_t h) {
  return f16_to_f32(h);
}

template <typename T>
void silu_mul_rows(const T* gate_up, int64_t rows, int64_t inter, uint16_t* out) {
  check(rows >= 0 && inter > 0, "silu_mul: need rows >= 0 and inter > 0");
  ThreadPool::global().parallel_for(rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* gate = gate_up + r * 2 * inter;
      const T* up = gate + inter;
      for (int64_t i = 0; i < inter; ++i) {
        const float g = load(gate[i]);
        const uint16_t silu = f32_to_f16(g / (1.0f + std::exp(-g)));
        out[r * inter + i] = f32_to_f16(f16_to_f32(silu) * load(up[i]));
      }
    }
  });
}

template <typename T>
void silu_mul_quantize_rows(const T* gate_up, int64_t rows, int64_t inter, int8_t* q,
                            uint16_t* scale, uint16_t* sum, uint16_t* out) {
  std::vector<uint16_t> tmp;
  if (out == nullptr) {
    tmp.resize(static_cast<size_t>(rows * inter));
    out = tmp.data();
  }
  silu_mul_rows(gate_up, rows, inter, out);
  quantize_per_token(out, rows, inter, q, scale, sum);
}

}  // namespace

void silu_mul(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out) {
  silu_mul_rows(gate_up, rows, inter, out);
}
void silu_mul(const float* gate_up, int64_t rows, int64_t inter, uint16_t* out) {
  silu_mul_rows(gate_up, rows, inter, out);
}

void silu_mul_quantize_per_token(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                                 uint16_t* scale, uint16_t* sum, uint16_t* out) {
  silu_mul_quantize_rows(gate_up, rows, inter, q, scale, sum, out);
}
void silu_mul_quantize_per_token(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                                 uint16_t* scale, uint16_t* sum, uint16_t* out) {
  silu_mul_quantize_rows(gate_up, rows, inter, q, scale, sum, out);
}

}  // namespace qserve::quant
