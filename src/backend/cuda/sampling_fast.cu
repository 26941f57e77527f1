// The fast sampler: the contract of sample_rows (ops_cuda_attention.h), bit for bit, in three
// streaming passes over each row instead of the baseline's 16-24 radix-select passes.
//
// Why it is exact: every decision of the contract (top-k, the top-p cut, the inverse-CDF pick)
// looks only at a prefix of the candidates in (logit desc, id asc) order, and tokens of weight
// 0 never change a sum or get picked. Pass 1 finds the argmax (greedy rows end there) and the
// count of non-NaN logits. Pass 2 histograms d = (max - l) / T into 4095 value bins over
// [0, 30) (every token beyond has weight 0: exp(-d) * 2^40 < 0.5 once d > 41 ln 2 = 28.4) and,
// without top-k, sums the integer weights of the whole row (the top-p mass is relative to it).
// From the histogram a cut bin is chosen so that the candidates at or below it are at most
// kCap and include the first k when top-k is on. Pass 3 copies those candidates' 64-bit keys to
// shared memory; a bitonic sort orders them, a block scan gives their prefix weights, and the
// cut and the pick are read off the prefix. When a decision would need a token beyond the
// candidates (top-p mass or the drawn r below them without top-k, or more than kCap tokens in
// the bins needed for top-k), the row is marked unresolved (-1) and the baseline kernel,
// launched right after, samples just those rows. Integer weights make the sums
// order-independent, so both kernels agree exactly. Loads are 16-byte and four deep per thread
// so one block keeps enough bytes in flight to stream its row at the SM's share of HBM.
#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "backend/cuda/sampling_device.cuh"
#include "core/error.h"

namespace qserve::cuda {

namespace {

constexpr int kBins = 4096;     // value bins; the last one holds weight-0 tokens
constexpr float kSpan = 30.0f;  // bins cover d = (max - l) / T in [0, kSpan)
constexpr float kBinScale = (kBins - 1) / kSpan;
constexpr int kItems = 2;                   // candidates per thread
constexpr int kCap = kItems * kRowThreads;  // candidates a row keeps in shared memory
constexpr int kBinsPerLane = kBins / 32;

// The value bin of a non-NaN logit: monotone non-increasing in l (every float step is), so the
// bins order tokens as the contract does, ties included.
__device__ __forceinline__ int value_bin(float l, float lmax, float temp) {
  const float t = __fmul_rn(__fdiv_rn(__fsub_rn(lmax, l), temp), kBinScale);
  return t < static_cast<float>(kBins - 1) ? static_cast<int>(t) : kBins - 1;
}

// f(logit, id) for every element of the row: 16-byte loads, four in flight per thread, when
// the row is 16-byte aligned; the order of calls is unspecified.
template <typename F>
__device__ __forceinline__ void for_each_logit(const float* row, int vocab, F f) {
  int tail = 0;
  if ((reinterpret_cast<uintptr_t>(row) & 15) == 0) {
    const int v4 = vocab >> 2, bd = static_cast<int>(blockDim.x);
    const float4* r4 = reinterpret_cast<const float4*>(row);
    int i = threadIdx.x;
    for (; i + 3 * bd < v4; i += 4 * bd) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = r4[i + u * bd];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int base = 4 * (i + u * bd);
        f(v[u].x, base);
        f(v[u].y, base + 1);
        f(v[u].z, base + 2);
        f(v[u].w, base + 3);
      }
    }
    for (; i < v4; i += bd) {
      const float4 v = r4[i];
      f(v.x, 4 * i);
      f(v.y, 4 * i + 1);
      f(v.z, 4 * i + 2);
      f(v.w, 4 * i + 3);
    }
    tail = 4 * v4;
  }
  for (int i = tail + static_cast<int>(threadIdx.x); i < vocab; i += blockDim.x) f(row[i], i);
}

struct RowShared {
  unsigned int hist[kBins];
  uint64_t keys[kCap];
  float warp_v[kRowThreads / 32];
  int warp_id[kRowThreads / 32];
  int count;
  int n_keys;
  int cut_bin;
  int n_cand;
  int result;  // >= 0 id, -1 unresolved
  unsigned long long wsum;
  unsigned long long w_cut;
  int cut_index;
};

__global__ void __launch_bounds__(kRowThreads, 1)
    sample_rows_fast_kernel(const float* logits, int64_t vocab, const float* temperature,
                            const int32_t* top_k, const float* top_p, const double* uniform,
                            int32_t* out) {
  using BlockScan = cub::BlockScan<unsigned long long, kRowThreads>;
  __shared__ RowShared s;
  __shared__ typename BlockScan::TempStorage scan_tmp;

  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  const int V = static_cast<int>(vocab);
  const float temp = temperature[r];
  const bool greedy = !(temp > 0.0f);

  // ---- pass 1: argmax (largest value, lowest id; NaN never) and the non-NaN count.
  for (int d = threadIdx.x; d < kBins; d += blockDim.x) s.hist[d] = 0;
  if (threadIdx.x == 0) {
    s.count = 0;
    s.n_keys = 0;
    s.wsum = 0;
    s.result = -1;
    s.cut_index = -1;
  }
  Best best{0.0f, -1};
  int cnt = 0;
  for_each_logit(row, V, [&](float l, int i) {
    if (isnan(l)) return;
    best = better(best, Best{l, i});
    ++cnt;
  });
  for (int o = 16; o > 0; o >>= 1) {
    best = better(best, Best{__shfl_xor_sync(0xffffffffu, best.v, o),
                             __shfl_xor_sync(0xffffffffu, best.id, o)});
    cnt += __shfl_xor_sync(0xffffffffu, cnt, o);
  }
  if ((threadIdx.x & 31) == 0) {
    s.warp_v[threadIdx.x >> 5] = best.v;
    s.warp_id[threadIdx.x >> 5] = best.id;
    atomicAdd(&s.count, cnt);
  }
  __syncthreads();
  best = Best{0.0f, -1};
  for (int w = 0; w < kRowThreads / 32; ++w) best = better(best, Best{s.warp_v[w], s.warp_id[w]});
  const float lmax = best.v;
  const int n_valid = s.count;
  // Greedy, or no finite maximum (the contract's argmax fallback); a row of NaNs gives 0.
  if (greedy || best.id < 0 || !isfinite(lmax)) {
    if (threadIdx.x == 0) out[r] = best.id < 0 ? 0 : best.id;
    return;
  }
  const int k = top_k[r];
  const bool use_top_k = k > 0 && k < n_valid;

  // ---- pass 2: value histogram (weight-0 tokens not counted); without top-k, the row's weight.
  unsigned long long wsum = 0;
  for_each_logit(row, V, [&](float l, int) {
    if (isnan(l)) return;
    const int b = value_bin(l, lmax, temp);
    if (b == kBins - 1) return;  // weight 0: never sampled, adds nothing
    atomicAdd(&s.hist[b], 1u);
    if (!use_top_k) wsum += weight(l, lmax, temp);
  });
  if (!use_top_k) {
    for (int o = 16; o > 0; o >>= 1) wsum += __shfl_xor_sync(0xffffffffu, wsum, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(&s.wsum, wsum);
  }
  __syncthreads();

  // ---- the cut bin, by warp 0: lane j owns bins [128 j, 128 j + 128), lane 0 the best.
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    const int lo = lane * kBinsPerLane;
    unsigned int lane_sum = 0;
    for (int j = 0; j < kBinsPerLane; ++j) lane_sum += s.hist[lo + j];
    unsigned int incl = lane_sum;
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const unsigned int excl = incl - lane_sum;
    // top-k: the first bin whose cumulative count reaches k; else (or when fewer than k tokens
    // have a weight) the last bin whose cumulative count stays within kCap.
    const bool reach_k = use_top_k && incl >= static_cast<unsigned int>(k);
    const unsigned int ballot_k = __ballot_sync(0xffffffffu, reach_k);
    const unsigned int ballot_cap =
        __ballot_sync(0xffffffffu, incl > static_cast<unsigned int>(kCap));
    // Under top-k with fewer than k weighted tokens, the kept mass is that of every weighted
    // token: all of them must be candidates, or the baseline decides.
    const bool by_k = use_top_k && ballot_k != 0;
    const unsigned int ballot = by_k ? ballot_k : ballot_cap;
    if (ballot == 0) {
      if (lane == 31) {  // every weighted token fits
        s.cut_bin = kBins - 2;
        s.n_cand = static_cast<int>(incl);
      }
    } else if (use_top_k && !by_k) {
      if (lane == 0) s.n_cand = kCap + 1;  // unresolved
    } else if (lane == __ffs(ballot) - 1) {
      unsigned int cum = excl;
      int cut = lo - 1;
      for (int j = 0; j < kBinsPerLane; ++j) {
        const int d = lo + j;
        if (by_k) {
          cum += s.hist[d];
          if (cum >= static_cast<unsigned int>(k)) {
            cut = d;
            break;
          }
        } else {
          if (cum + s.hist[d] > static_cast<unsigned int>(kCap)) break;
          cum += s.hist[d];
          cut = d;
        }
      }
      s.cut_bin = cut;
      s.n_cand = static_cast<int>(cum);
    }
  }
  __syncthreads();
  const int cut_bin = s.cut_bin;
  const int n_cand = s.n_cand;
  if (n_cand == 0 || n_cand > kCap) {  // the best bin alone overflows, or top-k needs too many
    if (threadIdx.x == 0) out[r] = -1;
    return;
  }

  // ---- pass 3: the candidates' keys.
  for_each_logit(row, V, [&](float l, int i) {
    if (isnan(l)) return;
    if (value_bin(l, lmax, temp) <= cut_bin) s.keys[atomicAdd(&s.n_keys, 1)] = sort_key(l, i);
  });
  // Pad to a power of two with key 0, below every real key (NaN is never a candidate).
  int padded = 1;
  while (padded < n_cand) padded <<= 1;
  __syncthreads();
  for (int i = n_cand + static_cast<int>(threadIdx.x); i < padded; i += blockDim.x) s.keys[i] = 0;
  __syncthreads();

  // ---- bitonic sort, descending.
  for (int size = 2; size <= padded; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < padded / 2; t += blockDim.x) {
        const int a = 2 * t - (t & (stride - 1));
        const int b = a + stride;
        const bool descending = (a & size) == 0;
        const uint64_t ka = s.keys[a], kb = s.keys[b];
        if ((ka < kb) == descending) {
          s.keys[a] = kb;
          s.keys[b] = ka;
        }
      }
      __syncthreads();
    }
  }

  // ---- prefix weights of the kept candidates (blocked: thread t owns 2t, 2t+1). Under top-k
  // the first k are kept; when fewer than k tokens have a weight, all candidates (the rest of
  // the top k weighs 0).
  const int n_kept = use_top_k ? min(k, n_cand) : n_cand;
  unsigned long long w[kItems], pre[kItems];
  for (int j = 0; j < kItems; ++j) {
    const int i = static_cast<int>(threadIdx.x) * kItems + j;
    w[j] = i < n_kept ? weight(row[key_id(s.keys[i])], lmax, temp) : 0ull;
  }
  unsigned long long cand_sum = 0;
  BlockScan(scan_tmp).InclusiveSum(w, pre, cand_sum);
  const uint64_t total = use_top_k ? cand_sum : s.wsum;

  // ---- top-p: the first candidate whose prefix reaches p * total.
  const float p = top_p[r];
  uint64_t w_prime = total;
  int limit = n_kept;
  if (p > 0.0f && p < 1.0f) {
    const double target = static_cast<double>(p) * static_cast<double>(total);
    if (static_cast<double>(cand_sum) < target) {  // the cut lies below the candidates
      if (threadIdx.x == 0) out[r] = -1;
      return;
    }
    for (int j = 0; j < kItems; ++j) {
      const int i = static_cast<int>(threadIdx.x) * kItems + j;
      if (i < n_kept && static_cast<double>(pre[j]) >= target &&
          static_cast<double>(pre[j] - w[j]) < target) {
        s.cut_index = i;
        s.w_cut = pre[j];
      }
    }
    __syncthreads();
    w_prime = s.w_cut;
    limit = s.cut_index + 1;
  }

  // ---- inverse CDF: the first kept candidate whose prefix exceeds r.
  uint64_t rr = static_cast<uint64_t>(uniform[r] * static_cast<double>(w_prime));
  if (rr > w_prime - 1) rr = w_prime - 1;
  for (int j = 0; j < kItems; ++j) {
    const int i = static_cast<int>(threadIdx.x) * kItems + j;
    if (i < limit && pre[j] > rr && pre[j] - w[j] <= rr) s.result = key_id(s.keys[i]);
  }
  __syncthreads();
  // Not found: r lies beyond the candidates (no top-k, no top-p); the baseline resolves it.
  if (threadIdx.x == 0) out[r] = s.result;
}

}  // namespace

void sample_rows_fast(const float* logits, int64_t n, int64_t vocab, const float* temperature,
                      const int32_t* top_k, const float* top_p, const double* uniform, int32_t* out,
                      cudaStream_t stream) {
  check_rows(n, vocab, "sample_rows_fast");
  if (n == 0) return;
  sample_rows_fast_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, stream>>>(
      logits, vocab, temperature, top_k, top_p, uniform, out);
  check_launch("sample_rows_fast", "rows=" + std::to_string(n) + " vocab=" + std::to_string(vocab));
  detail::sample_rows_unresolved(logits, n, vocab, temperature, top_k, top_p, uniform, out, stream);
}

}  // namespace qserve::cuda
