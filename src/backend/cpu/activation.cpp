// SwiGLU's gate: silu(gate) * up over fused gate_up rows, with PyTorch's silu formula
// g / (1 + exp(-g)) (row kernels in vec_math.h).
#include <algorithm>

#include "backend/cpu/ops_cpu.h"
#include "backend/cpu/vec_math.h"
#include "core/thread_pool.h"

namespace qserve::cpu {

void silu_mul(const float* gu, int64_t t, int64_t inter, float* out) {
  if (t <= 0 || inter <= 0) return;
  // exp dominates; a few thousand per chunk amortises the pool's wake-up.
  const int64_t grain = std::max<int64_t>(1, 4096 / inter);
  ThreadPool::global().parallel_for(t, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* gate = gu + r * 2 * inter;
      detail::silu_mul_row(gate, gate + inter, inter, out + r * inter);
    }
  });
}

}  // namespace qserve::cpu
