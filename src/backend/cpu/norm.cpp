// RMSNorm in fp32, in the order HF LlamaRMSNorm computes it: x * rsqrt(mean(x^2) + eps), then
// times the weight.
#include <algorithm>
#include <cmath>

#include "backend/cpu/ops_cpu.h"
#include "core/thread_pool.h"

namespace qserve::cpu {

namespace {

// Sum of squares with eight interleaved partial sums: vectorisable without -ffast-math, and
// more accurate than one running sum.
float sum_squares(const float* x, int64_t n) {
  float acc[8] = {};
  const int64_t n8 = n - n % 8;
  for (int64_t i = 0; i < n8; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * x[i + l];
  }
  for (int64_t i = n8; i < n; ++i) acc[i - n8] += x[i] * x[i];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

}  // namespace

void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t dim, float* out) {
  if (rows <= 0 || dim <= 0) return;
  // Rows are independent; only big batches are worth waking the pool for.
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / dim);
  ThreadPool::global().parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * dim;
      float* yr = out + r * dim;  // may alias xr: each element is read before it is written
      const float mean = sum_squares(xr, dim) / static_cast<float>(dim);
      const float inv = 1.0f / std::sqrt(mean + eps);
      for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] * inv) * w[i];
    }
  });
}

}  // namespace qserve::cpu
