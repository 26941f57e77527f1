// Logits gather, greedy argmax and seeded temperature / top-k / top-p sampling on the GPU.
//
// Sampling is defined in ops_cuda_attention.h so that a CPU implementation reproduces it exactly:
// the sort order, top-k, top-p and the inverse-CDF pick all work on integer weights
// (2^40 * relative probability, rounded), whose sums are exact in any order. That lets the GPU
// avoid sorting the vocabulary: one block per row finds the k-th largest (logit, id) key and
// the top-p / sample cut points with radix selects over the 64-bit keys (8 passes of 8 bits,
// histograms of counts or of weights), which lands on exactly the element a sort-and-scan
// would. Correct first: every pass rescans the row (L2-resident for one block) and the weights
// use double exp.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "backend/cuda/sampling_device.cuh"
#include "core/error.h"

namespace qserve::cuda {

namespace {

__global__ void gather_rows_kernel(const float* logits, const int32_t* rows, int64_t vocab,
                                   float* out) {
  const int64_t b = blockIdx.x;
  const float* src = logits + static_cast<int64_t>(rows[b]) * vocab;
  float* dst = out + b * vocab;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) dst[i] = src[i];
}

__global__ void argmax_rows_kernel(const float* logits, int64_t vocab, int32_t* out) {
  const int r =
      block_argmax(logits + static_cast<int64_t>(blockIdx.x) * vocab, static_cast<int>(vocab));
  if (threadIdx.x == 0) out[blockIdx.x] = r;
}

struct RowCtx {
  const float* row;
  int vocab;
  float lmax;
  float temperature;
};

// Radix select by weight: among candidates with key >= lo_key, the first element in key order
// whose prefix weight C satisfies pred(C) (pred monotone, pred(0) false, pred(total) true).
// Returns its key and C through shared memory; all threads call it.
template <typename Pred>
__device__ void weight_select(const RowCtx& c, uint64_t lo_key, Pred pred, uint64_t* key_out,
                              uint64_t* prefix_out) {
  __shared__ unsigned long long hist[256];
  __shared__ uint64_t s_prefix, s_mask, s_above;
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_above = 0;
  }
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0;
    __syncthreads();
    const uint64_t prefix = s_prefix, mask = s_mask;
    for (int i = threadIdx.x; i < c.vocab; i += blockDim.x) {
      const float l = c.row[i];
      if (isnan(l)) continue;
      const uint64_t key = sort_key(l, i);
      if (key < lo_key || (key & mask) != prefix) continue;
      atomicAdd(&hist[(key >> shift) & 0xff],
                static_cast<unsigned long long>(weight(l, c.lmax, c.temperature)));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t above = s_above;
      int chosen = 0;
      for (int d = 255; d >= 0; --d) {
        if (pred(above + hist[d])) {
          chosen = d;
          break;
        }
        above += hist[d];
      }
      s_above = above;
      s_prefix = prefix | (static_cast<uint64_t>(chosen) << shift);
      s_mask = mask | (0xffull << shift);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const uint64_t key = s_prefix;
    const int id = key_id(key);
    *key_out = key;
    *prefix_out = s_above + weight(c.row[id], c.lmax, c.temperature);
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kRowThreads)
    sample_rows_kernel(const float* logits, int64_t vocab, const float* temperature,
                       const int32_t* top_k, const float* top_p, const double* uniform,
                       int32_t* out, bool only_unresolved) {
  const int64_t r = blockIdx.x;
  // The fast kernel's fallback: rows it resolved (out >= 0) are done.
  if (only_unresolved && out[r] >= 0) return;
  const float* row = logits + r * vocab;
  const int V = static_cast<int>(vocab);
  const float temp = temperature[r];
  if (!(temp > 0.0f)) {  // greedy
    const int id = block_argmax(row, V);
    if (threadIdx.x == 0) out[r] = id;
    return;
  }

  __shared__ float s_max[kRowThreads / 32];
  __shared__ int s_count;
  __shared__ unsigned long long s_total;
  __shared__ unsigned int count_hist[256];
  __shared__ uint64_t s_kprefix, s_kmask, s_kth;
  __shared__ int s_remaining;
  __shared__ uint64_t s_key, s_weight;

  // Largest logit and number of candidates (non-NaN).
  float m = -INFINITY;
  int cnt = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float l = row[i];
    if (!isnan(l)) {
      m = fmaxf(m, l);
      ++cnt;
    }
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();
  atomicAdd(&s_count, cnt);
  if ((threadIdx.x & 31) == 0) s_max[threadIdx.x >> 5] = m;
  __syncthreads();
  float lmax = -INFINITY;
  for (int w = 0; w < kRowThreads / 32; ++w) lmax = fmaxf(lmax, s_max[w]);
  const int n_cand = s_count;
  if (!isfinite(lmax)) {  // no finite maximum: weights are undefined, fall back to argmax
    const int id = block_argmax(row, V);
    if (threadIdx.x == 0) out[r] = id;
    return;
  }
  const RowCtx c{row, V, lmax, temp};

  // Top-k: the k-th largest key by a count radix select.
  const int k = top_k[r];
  uint64_t lo_key = 0;
  if (k > 0 && k < n_cand) {
    if (threadIdx.x == 0) {
      s_kprefix = 0;
      s_kmask = 0;
      s_remaining = k;
    }
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int d = threadIdx.x; d < 256; d += blockDim.x) count_hist[d] = 0;
      __syncthreads();
      const uint64_t prefix = s_kprefix, mask = s_kmask;
      for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float l = row[i];
        if (isnan(l)) continue;
        const uint64_t key = sort_key(l, i);
        if ((key & mask) == prefix) atomicAdd(&count_hist[(key >> shift) & 0xff], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int rem = s_remaining;
        int chosen = 0;
        for (int d = 255; d >= 0; --d) {
          if (static_cast<int>(count_hist[d]) >= rem) {
            chosen = d;
            break;
          }
          rem -= static_cast<int>(count_hist[d]);
        }
        s_remaining = rem;
        s_kprefix = prefix | (static_cast<uint64_t>(chosen) << shift);
        s_kmask = mask | (0xffull << shift);
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) s_kth = s_kprefix;
    __syncthreads();
    lo_key = s_kth;
  }

  // Total weight of the kept candidates (integer: exact in any order).
  if (threadIdx.x == 0) s_total = 0;
  __syncthreads();
  unsigned long long part = 0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float l = row[i];
    if (isnan(l) || sort_key(l, i) < lo_key) continue;
    part += weight(l, lmax, temp);
  }
  atomicAdd(&s_total, part);
  __syncthreads();
  uint64_t total = s_total;

  // Top-p: the shortest prefix with double(C) >= double(p) * double(W).
  const float p = top_p[r];
  if (p > 0.0f && p < 1.0f) {
    const double target = static_cast<double>(p) * static_cast<double>(total);
    weight_select(
        c, lo_key, [target](uint64_t cum) { return static_cast<double>(cum) >= target; }, &s_key,
        &s_weight);
    lo_key = s_key;
    total = s_weight;
  }

  // Inverse CDF: the first element whose prefix weight exceeds r = floor(u * W').
  uint64_t rr = static_cast<uint64_t>(uniform[r] * static_cast<double>(total));
  if (rr > total - 1) rr = total - 1;
  weight_select(
      c, lo_key, [rr](uint64_t cum) { return cum > rr; }, &s_key, &s_weight);
  if (threadIdx.x == 0) out[r] = key_id(s_key);
}

}  // namespace

void check_rows(int64_t n, int64_t vocab, const char* op) {
  check(n >= 0 && n <= 2147483647 && vocab > 0 && vocab < 2147483647,
        std::string(op) + ": need 0 <= rows < 2^31 and 0 < vocab < 2^31, got rows=" +
            std::to_string(n) + " vocab=" + std::to_string(vocab));
}

void gather_rows(const float* logits, const int32_t* rows, int64_t n, int64_t vocab, float* out,
                 cudaStream_t stream) {
  check_rows(n, vocab, "gather_rows");
  if (n == 0) return;
  gather_rows_kernel<<<static_cast<unsigned>(n), 256, 0, stream>>>(logits, rows, vocab, out);
  check_launch("gather_rows", "rows=" + std::to_string(n) + " vocab=" + std::to_string(vocab));
}

void argmax_rows(const float* logits, int64_t n, int64_t vocab, int32_t* out, cudaStream_t stream) {
  check_rows(n, vocab, "argmax_rows");
  if (n == 0) return;
  argmax_rows_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(logits, vocab, out);
  check_launch("argmax_rows", "rows=" + std::to_string(n) + " vocab=" + std::to_string(vocab));
}

void sample_rows(const float* logits, int64_t n, int64_t vocab, const float* temperature,
                 const int32_t* top_k, const float* top_p, const double* uniform, int32_t* out,
                 cudaStream_t stream) {
  check_rows(n, vocab, "sample_rows");
  if (n == 0) return;
  sample_rows_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
      logits, vocab, temperature, top_k, top_p, uniform, out, false);
  check_launch("sample_rows", "rows=" + std::to_string(n) + " vocab=" + std::to_string(vocab));
}

namespace detail {

void sample_rows_unresolved(const float* logits, int64_t n, int64_t vocab, const float* temperature,
                            const int32_t* top_k, const float* top_p, const double* uniform,
                            int32_t* out, cudaStream_t stream) {
  sample_rows_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
      logits, vocab, temperature, top_k, top_p, uniform, out, true);
  check_launch("sample_rows (fallback rows)",
               "rows=" + std::to_string(n) + " vocab=" + std::to_string(vocab));
}

}  // namespace detail

}  // namespace qserve::cuda
