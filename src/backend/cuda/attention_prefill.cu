// Prefill attention (varlen, causal, GQA, chunked prefill over cached pages, sliding window).
//
// Grid (query token j, KV head, sequence): each block serves the Hq/Hkv query heads of one KV
// head for one query token over its whole visible key range, with an online softmax over
// 64-key tiles (attention_kv_device.cuh). Keys before the sequence's context_len come from the
// pages (dequantized exactly as quant::kv_page_read), the chunk's own keys from the step's fp16
// k16/v16 rows. A correct baseline, not a flash-attention kernel: K/V are re-read per query
// token (from L2) and the dots run on CUDA cores.
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

template <KvFormat F>
__global__ void __launch_bounds__(kThreads) prefill_kernel(AttnArgs a, float* out) {
  __shared__ AttnSmem sm;
  const int j = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  if (j >= a.num_tokens[seq]) return;
  const int ctx = a.context_len[seq];
  const int pos = ctx + j;
  const int64_t q_row = static_cast<int64_t>(a.token_offset[seq]) + j;

  float acc[kChanPerThread][kMaxGroup];
  attend_range<F>(a, sm, seq, kvh, q_row, first_key(pos, a.window), pos + 1, acc);

  const int D = a.head_dim, G = a.group;
#pragma unroll
  for (int ci = 0; ci < kChanPerThread; ++ci) {
    const int c = threadIdx.x + ci * kThreads;
    if (c < D) {
#pragma unroll
      for (int i = 0; i < kMaxGroup; ++i) {
        if (i < G) {
          const int64_t h = static_cast<int64_t>(kvh) * G + i;
          out[(q_row * a.num_heads + h) * D + c] = acc[ci][i] / sm.l[i];
        }
      }
    }
  }
}

template <KvFormat F>
void launch(const AttnArgs& a, const VarlenBatchDevice& b, float* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(b.max_num_tokens), static_cast<unsigned>(a.geom.kv_heads),
                  static_cast<unsigned>(b.num_seqs));
  prefill_kernel<F><<<grid, kThreads, 0, stream>>>(a, out);
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

}  // namespace

void prefill_attention(const float* q, const uint16_t* k16, const uint16_t* v16,
                       const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                       int64_t num_heads, int64_t window, float* out, cudaStream_t stream) {
  // Issue 8: the tensor-core kernels for the common geometries (their own, fp16-q accuracy
  // bound; ops_cuda_attention.h), the fp32 baseline for everything else. The wgmma kernel for
  // chunks of >= kWgmmaMinTokens tokens, the mma.sync kernel below: on the H200 (bench_attention,
  // 2026-11-30) wgmma 480 vs 301 TFLOP/s at 4 x 4096, 523-561 vs 327 at 1 x 8192, 317-332 vs 264
  // at 8 x 2048 and 222 vs 207 at 16 x 1024; shorter chunks were not measured.
  constexpr int64_t kWgmmaMinTokens = 1024;
  const int64_t hkv = cache.kv_heads;
  if (prefill_attention_tc_supported(cache.format, num_heads, hkv, cache.head_dim) &&
      batch.num_seqs >= 0 &&
      prefill_attention_tc_row_tiles(batch.max_num_tokens, num_heads / hkv) <= 65535 &&
      static_cast<int64_t>(batch.num_seqs) * hkv <= 0x7fffffff && aligned16(q) && aligned16(k16) &&
      aligned16(v16) && aligned16(cache.k_pool) && aligned16(cache.v_pool) && aligned16(out)) {
    if (batch.max_num_tokens >= kWgmmaMinTokens &&
        prefill_attention_wgmma_supported(cache.format, num_heads, hkv, cache.head_dim)) {
      prefill_attention_wgmma(q, k16, v16, cache, batch, num_heads, window, out, stream);
    } else {
      prefill_attention_tc(q, k16, v16, cache, batch, num_heads, window, out, stream);
    }
    return;
  }
  prefill_attention_baseline(q, k16, v16, cache, batch, num_heads, window, out, stream);
}

void prefill_attention_baseline(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out,
                                cudaStream_t stream) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = "S=" + std::to_string(S) + " Hq=" + std::to_string(num_heads) +
                            " Hkv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                            " max_num_tokens=" + std::to_string(batch.max_num_tokens);
  check(hkv > 0 && num_heads > 0 && num_heads % hkv == 0 && num_heads / hkv <= kMaxGroup,
        "prefill_attention: Hq must be a multiple of Hkv with Hq/Hkv <= 16 (" + shape + ")");
  check(d > 0 && d % 2 == 0 && d <= kMaxHeadDim,
        "prefill_attention: head_dim must be even and <= 256 (" + shape + ")");
  check(S >= 0 && S <= 65535 && hkv <= 65535 && batch.max_num_tokens >= 0,
        "prefill_attention: 0..65535 sequences and KV heads (" + shape + ")");
  if (S == 0 || batch.max_num_tokens == 0) return;

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

  switch (cache.format) {
    case KvFormat::kv4:
      launch<KvFormat::kv4>(a, batch, out, stream);
      break;
    case KvFormat::kv8:
      launch<KvFormat::kv8>(a, batch, out, stream);
      break;
    case KvFormat::kv16:
      launch<KvFormat::kv16>(a, batch, out, stream);
      break;
  }
  check_launch("prefill_attention", shape);
}

}  // namespace qserve::cuda
