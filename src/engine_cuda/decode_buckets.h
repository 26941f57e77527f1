// The shapes a pure-decode step runs at (docs/cuda.md, "CUDA graphs"): the batch is padded up
// to a batch bucket and the attention's context bound rounded up to a context bucket, so that a
// few launch shapes cover every step and each can be captured once as a CUDA graph. Pure host
// logic, header-only (unit-tested without a GPU in tests/gpu/cuda_graphs_test.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace qserve::cuda {

// Batch buckets for num_slots concurrent sequences: 1, 2, 4, 8, 16, 32, 48, 64, then every 32
// to 256, then every 64. Dense at small batches, where a padded row costs the most relative to
// the step; 64 is kept because it is the small-M GEMM kernel's limit. Buckets stop at the first
// one >= num_slots, and that last one is num_slots itself, so no step is ever padded beyond the
// engine's largest batch.
inline std::vector<int32_t> decode_batch_buckets(int64_t num_slots) {
  std::vector<int32_t> out;
  const auto push = [&](int64_t b) {
    out.push_back(static_cast<int32_t>(std::min(b, num_slots)));
    return b >= num_slots;
  };
  for (int64_t b : {1, 2, 4, 8, 16, 32, 48, 64}) {
    if (push(b)) return out;
  }
  for (int64_t b = 96; b <= 256; b += 32) {
    if (push(b)) return out;
  }
  for (int64_t b = 320;; b += 64) {
    if (push(b)) return out;
  }
}

// The smallest bucket >= n (n <= the last bucket).
inline int32_t decode_batch_bucket(const std::vector<int32_t>& buckets, int64_t n) {
  const auto it = std::lower_bound(buckets.begin(), buckets.end(), n);
  return it == buckets.end() ? static_cast<int32_t>(n) : *it;
}

// The context bucket of a step whose longest sequence spans max_total_len positions (context +
// its new token): the power of two >= max(64, max_total_len), capped at max_model_len rounded up
// to whole 64-token pages. It is the attention's max_total_len (which sizes the split-KV grid
// and workspace) and, over 64, the width of the step's block table.
inline int64_t decode_context_bucket(int64_t max_total_len, int64_t max_model_len) {
  int64_t c = 64;
  while (c < max_total_len) c *= 2;
  const int64_t cap = (std::max<int64_t>(max_model_len, 1) + 63) / 64 * 64;
  return std::max(std::min(c, cap), (max_total_len + 63) / 64 * 64);
}

}  // namespace qserve::cuda
