// Device helpers shared by the sampling kernels (sampling.cu: gather, argmax and the baseline
// radix-select sampler; sampling_fast.cu: the two-pass candidate sampler). They define the
// order and the integer weights of the sampling contract in ops_cuda_attention.h, so both
// kernels pick bit-identical tokens.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace qserve::cuda {

constexpr int kRowThreads = 1024;
constexpr double kWeightScale = 1099511627776.0;  // 2^40

// (value, id) with "better" = larger value, then lower id; NaN values are never candidates.
struct Best {
  float v;
  int id;  // -1: no candidate
};

__device__ __forceinline__ Best better(Best a, Best b) {
  if (a.id < 0) return b;
  if (b.id < 0) return a;
  if (a.v > b.v || (a.v == b.v && a.id < b.id)) return a;
  return b;
}

// Block-wide argmax of one row (all threads get the result). Engine semantics: NaN entries are
// never picked; a row of NaNs only gives 0.
__device__ inline int block_argmax(const float* row, int vocab) {
  __shared__ float sv[kRowThreads / 32];
  __shared__ int si[kRowThreads / 32];
  __shared__ int result;
  Best b{0.0f, -1};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = row[i];
    if (!isnan(v)) b = better(b, Best{v, i});
  }
  for (int o = 16; o > 0; o >>= 1) {
    Best other{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.id, o)};
    b = better(b, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = b.v;
    si[warp] = b.id;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Best t{0.0f, -1};
    for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) t = better(t, Best{sv[w], si[w]});
    result = t.id < 0 ? 0 : t.id;
  }
  __syncthreads();
  const int r = result;
  __syncthreads();  // `result` may be rewritten by a later call
  return r;
}

// Order-preserving 64-bit key: (logit, then lower id) descending <=> key descending.
// -0 and +0 compare equal on the CPU, so both map to +0's key.
__device__ __forceinline__ uint64_t sort_key(float l, int id) {
  uint32_t b = __float_as_uint(l == 0.0f ? 0.0f : l);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(b) << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ int key_id(uint64_t key) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

// Integer weight of logit l: nearbyint(2^40 * exp(double(l - lmax) / double(T))).
__device__ __forceinline__ uint64_t weight(float l, float lmax, float temperature) {
  const double x = static_cast<double>(__fsub_rn(l, lmax)) / static_cast<double>(temperature);
  return static_cast<uint64_t>(rint(exp(x) * kWeightScale));
}

// Rows validation shared by the launchers (throws qserve::Error).
void check_rows(int64_t n, int64_t vocab, const char* op);

namespace detail {
// The baseline sampler over the rows whose out[r] is still negative (the fast sampler's
// fallback); rows with out[r] >= 0 are left as they are.
void sample_rows_unresolved(const float* logits, int64_t n, int64_t vocab, const float* temperature,
                            const int32_t* top_k, const float* top_p, const double* uniform,
                            int32_t* out, cudaStream_t stream);
}  // namespace detail

}  // namespace qserve::cuda
