// Decode attention over paged KV4/KV8/KV16 caches: one query token per sequence, split-KV.
//
// Grid (split, KV head, sequence): each block serves the Hq/Hkv query heads of one KV head
// (GQA: the K/V rows are dequantized once per block for the whole group) over one 256-key
// chunk of the sequence's visible range [lo, ctx], and leaves an unnormalized partial
// (max m, sum l, accumulator o) in the workspace; a second kernel merges the partials of each
// (sequence, head) with the usual rescaling. Simple and exact in structure, not yet fast (no
// vectorized loads, no tensor cores, one warp per key for the dots).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"

namespace qserve::cuda {

namespace {

using namespace attn;

constexpr int kSplitKeys = 256;  // keys per split (four pages)

int64_t num_splits(int64_t max_total_len) {
  return std::max<int64_t>(1, (max_total_len + kSplitKeys - 1) / kSplitKeys);
}

// Partials: o [S, Hq, splits, D] then ml [S, Hq, splits, 2] (fp32).
template <KvFormat F>
__global__ void __launch_bounds__(kThreads)
    decode_split_kernel(AttnArgs a, int splits, float* part_o, float* part_ml) {
  __shared__ AttnSmem sm;
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int ctx = a.context_len[seq];
  const int lo = first_key(ctx, a.window);
  const int k_lo = lo + split * kSplitKeys;
  const int k_hi = min(ctx + 1, k_lo + kSplitKeys);
  if (k_lo >= k_hi) return;  // this sequence has fewer splits; the merge does not read it

  float acc[kChanPerThread][kMaxGroup];
  const int64_t q_row = a.token_offset[seq];
  attend_range<F>(a, sm, seq, kvh, q_row, k_lo, k_hi, acc);

  const int D = a.head_dim, G = a.group;
#pragma unroll
  for (int ci = 0; ci < kChanPerThread; ++ci) {
    const int c = threadIdx.x + ci * kThreads;
    if (c < D) {
#pragma unroll
      for (int i = 0; i < kMaxGroup; ++i) {
        if (i < G) {
          const int64_t h = static_cast<int64_t>(kvh) * G + i;
          const int64_t idx = (static_cast<int64_t>(seq) * a.num_heads + h) * splits + split;
          part_o[idx * D + c] = acc[ci][i];
        }
      }
    }
  }
  if (threadIdx.x < G) {
    const int64_t h = static_cast<int64_t>(kvh) * G + threadIdx.x;
    const int64_t idx = (static_cast<int64_t>(seq) * a.num_heads + h) * splits + split;
    part_ml[idx * 2] = sm.m[threadIdx.x];
    part_ml[idx * 2 + 1] = sm.l[threadIdx.x];
  }
}

// out[row, h, :] = sum_j o_j e^(m_j - M) / sum_j l_j e^(m_j - M) over the sequence's splits.
__global__ void decode_merge_kernel(const float* part_o, const float* part_ml,
                                    const int32_t* token_offset, const int32_t* context_len,
                                    int num_heads, int head_dim, int splits, int window,
                                    float* out) {
  const int h = blockIdx.x, seq = blockIdx.y;
  const int ctx = context_len[seq];
  const int lo = first_key(ctx, window);
  const int used = (ctx + 1 - lo + kSplitKeys - 1) / kSplitKeys;
  const int64_t base = (static_cast<int64_t>(seq) * num_heads + h) * splits;
  float M = -INFINITY;
  for (int j = 0; j < used; ++j) M = fmaxf(M, part_ml[(base + j) * 2]);
  float L = 0.0f;
  for (int j = 0; j < used; ++j) {
    const float m = part_ml[(base + j) * 2];
    L += part_ml[(base + j) * 2 + 1] * (m == -INFINITY ? 0.0f : expf(m - M));
  }
  const int64_t row = token_offset[seq];
  for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
    float o = 0.0f;
    for (int j = 0; j < used; ++j) {
      const float m = part_ml[(base + j) * 2];
      const float w = m == -INFINITY ? 0.0f : expf(m - M);
      o += part_o[(base + j) * head_dim + c] * w;
    }
    out[(row * num_heads + h) * head_dim + c] = o / L;
  }
}

template <KvFormat F>
void launch_split(const AttnArgs& a, int num_seqs, int splits, float* part_o, float* part_ml,
                  cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(a.geom.kv_heads),
                  static_cast<unsigned>(num_seqs));
  decode_split_kernel<F><<<grid, kThreads, 0, stream>>>(a, splits, part_o, part_ml);
}

}  // namespace

size_t decode_attention_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t head_dim,
                                        int64_t max_total_len) {
  const int64_t splits = num_splits(max_total_len);
  return static_cast<size_t>(num_seqs * num_heads * splits * (head_dim + 2)) * sizeof(float);
}

// Dispatch: the tensor-core kernels (attention_decode_mma.cu, attention_decode_tc.cu), then the
// fast kernel (attention_decode_fast.cu), where they support the geometry and the pointers are
// 16-byte aligned; the reference kernel below otherwise. All compute the same function within the
// documented tolerance (tests/parity/parity_attention*_test.cpp).
void decode_attention(const float* q, const uint16_t* k16, const uint16_t* v16,
                      const PagedKvDevice& cache, const VarlenBatchDevice& batch, int64_t num_heads,
                      int64_t window, float* out, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  const bool all_aligned =
      aligned(q) && aligned(k16) && aligned(v16) && aligned(cache.k_pool) && aligned(cache.v_pool);
  // The deferred-dequantization tensor-core kernel first (attention_decode_mma.cu, issue 8),
  // then the fp32-accurate tensor-core kernel; the CUDA-core fast kernel remains the fallback
  // for what it alone supports, the baseline for everything else.
  if (all_aligned &&
      decode_attention_mma_supported(cache.format, num_heads, cache.kv_heads, cache.head_dim)) {
    decode_attention_mma(q, k16, v16, cache, batch, num_heads, window, out, workspace,
                         workspace_bytes, stream);
    return;
  }
  if (all_aligned &&
      decode_attention_tc_supported(cache.format, num_heads, cache.kv_heads, cache.head_dim)) {
    decode_attention_tc(q, k16, v16, cache, batch, num_heads, window, out, workspace,
                        workspace_bytes, stream);
    return;
  }
  if (decode_attention_fast_supported(cache.format, num_heads, cache.kv_heads, cache.head_dim) &&
      aligned(q) && aligned(k16) && aligned(v16) && aligned(cache.k_pool) &&
      aligned(cache.v_pool)) {
    decode_attention_fast(q, k16, v16, cache, batch, num_heads, window, out, workspace,
                          workspace_bytes, stream);
    return;
  }
  decode_attention_baseline(q, k16, v16, cache, batch, num_heads, window, out, workspace,
                            workspace_bytes, stream);
}

void decode_attention_baseline(const float* q, const uint16_t* k16, const uint16_t* v16,
                               const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                               int64_t num_heads, int64_t window, float* out, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = "S=" + std::to_string(S) + " Hq=" + std::to_string(num_heads) +
                            " Hkv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                            " max_total_len=" + std::to_string(batch.max_total_len);
  check(hkv > 0 && num_heads > 0 && num_heads % hkv == 0 && num_heads / hkv <= kMaxGroup,
        "decode_attention: Hq must be a multiple of Hkv with Hq/Hkv <= 16 (" + shape + ")");
  check(d > 0 && d % 2 == 0 && d <= kMaxHeadDim,
        "decode_attention: head_dim must be even and <= 256 (" + shape + ")");
  check(S >= 0 && S <= 65535 && batch.max_total_len >= 0,
        "decode_attention: 0..65535 sequences (" + shape + ")");
  if (S == 0) return;
  const size_t need = decode_attention_workspace_bytes(S, num_heads, d, batch.max_total_len);
  check(workspace != nullptr && workspace_bytes >= need,
        "decode_attention: workspace of " + std::to_string(workspace_bytes) + " bytes, need " +
            std::to_string(need) + " (" + shape + ")");

  AttnArgs a{};
  a.q = q;
  a.k16 = k16;
  a.v16 = v16;
  a.k_pool = cache.k_pool;
  a.v_pool = cache.v_pool;
  a.geom = make_geom(cache.format, static_cast<int>(hkv), static_cast<int>(d));
  a.token_offset = batch.token_offset;
  a.num_tokens = batch.num_tokens;
  a.context_len = batch.context_len;
  a.block_table = batch.block_table;
  a.block_stride = batch.block_stride;
  a.num_heads = static_cast<int>(num_heads);
  a.group = static_cast<int>(num_heads / hkv);
  a.head_dim = static_cast<int>(d);
  a.window = static_cast<int>(std::max<int64_t>(0, window));
  // HF and quant::attention_ref: 1/sqrt(D) in double, rounded to fp32.
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));

  const int splits = static_cast<int>(num_splits(batch.max_total_len));
  float* part_o = static_cast<float*>(workspace);
  float* part_ml = part_o + S * num_heads * splits * d;
  switch (cache.format) {
    case KvFormat::kv4:
      launch_split<KvFormat::kv4>(a, static_cast<int>(S), splits, part_o, part_ml, stream);
      break;
    case KvFormat::kv8:
      launch_split<KvFormat::kv8>(a, static_cast<int>(S), splits, part_o, part_ml, stream);
      break;
    case KvFormat::kv16:
      launch_split<KvFormat::kv16>(a, static_cast<int>(S), splits, part_o, part_ml, stream);
      break;
  }
  check_launch("decode_attention split", shape);
  const dim3 grid(static_cast<unsigned>(num_heads), static_cast<unsigned>(S));
  decode_merge_kernel<<<grid, 128, 0, stream>>>(part_o, part_ml, batch.token_offset,
                                                batch.context_len, a.num_heads, a.head_dim, splits,
                                                a.window, out);
  check_launch("decode_attention merge", shape);
}

}  // namespace qserve::cuda
