#include "quant/block_reduce.h"

#include <algorithm>
#include <array>

#include "core/error.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

constexpr int kWarp = 32;

// XOR butterfly over one warp; every lane ends with the same value, lane 0's is returned.
// Each step adds v[i] and v[i ^ mask]; fp32 addition is commutative, so the order of the two
// operands does not matter, only the tree shape does.
float warp_reduce_sum(std::array<float, kWarp> v) {
  for (int mask = 16; mask >= 1; mask /= 2) {
    std::array<float, kWarp> next{};
    for (int i = 0; i < kWarp; ++i) next[i] = v[i] + v[i ^ mask];
    v = next;
  }
  return v[0];
}

}  // namespace

float block_reduce_sum(std::span<const float> partials) {
  const int64_t n = static_cast<int64_t>(partials.size());
  check(n <= kWarp * kWarp, "block_reduce_sum: a CUDA block has at most 1024 threads");
  const int64_t warps = (n + kWarp - 1) / kWarp;
  std::array<float, kWarp> totals{};
  for (int64_t w = 0; w < warps; ++w) {
    std::array<float, kWarp> lanes{};
    for (int64_t l = 0; l < kWarp; ++l) {
      const int64_t t = w * kWarp + l;
      lanes[l] = t < n ? partials[t] : 0.0f;
    }
    totals[w] = warp_reduce_sum(lanes);
  }
  return warp_reduce_sum(totals);
}

int64_t norm_quant_block_dim(int64_t cols) {
  const int64_t c = std::min<int64_t>(cols, 1024);
  return (c + kWarp - 1) / kWarp * kWarp;
}

int64_t quant_block_dim(int64_t cols) {
  return std::min<int64_t>(cols, 1024);
}

}  // namespace qserve::quant
