// What the two tensor-core decode kernels (attention_decode_tc.cu, attention_decode_mma.cu)
// share: the q staging prologue, the cp.async ring primitives, per-warp page streams and
// shared-memory word loads, the in-CTA merge of the warp streams with the current token, the
// host-side argument checks, launch arguments and geometry dispatch of their entry points (also
// used by attention_decode_fast.cu), and the kernel that merges split-KV partials. Internal to
// src/backend/cuda.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_device.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/pdl_device.cuh"
#include "core/error.h"

namespace qserve::cuda::attn {

// The launch arguments of the split-KV decode kernels (the tc and mma kernels take exactly
// this; the fast kernel's FastArgs is the same without `group`).
struct DecodeArgs {
  const float* q;
  const uint16_t* k16;
  const uint16_t* v16;
  const uint8_t* k_pool;
  const uint8_t* v_pool;
  PageGeom geom;
  const int32_t* token_offset;
  const int32_t* context_len;
  const int32_t* block_table;
  int32_t block_stride;
  int num_heads;
  int group;
  int window;
  int split_keys;
  int splits;
  float scale;
  float* out;
  float* part_o;   // [S, Hq, splits, D]
  float* part_ml;  // [S, Hq, splits, 2]: (running max in the kernel's exp units, sum)
};

__device__ __forceinline__ uint32_t h2u(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// NW consecutive 32-bit words from shared memory with the widest aligned loads.
template <int NW>
__device__ __forceinline__ void lds_words(uint32_t (&w)[NW], const uint8_t* p) {
  if constexpr (NW % 4 == 0) {
#pragma unroll
    for (int i = 0; i < NW / 4; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  } else if constexpr (NW == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x;
    w[1] = v.y;
  } else {
    static_assert(NW == 1, "word count");
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  }
}

inline constexpr float kLog2e = 1.4426950408889634f;

// e^x, or 2^x when kLog2 (the libdevice functions, not the MUFU approximations).
template <bool kLog2>
__device__ __forceinline__ float exp_base(float x) {
  if constexpr (kLog2) {
    return exp2f(x);
  } else {
    return expf(x);
  }
}

// The q prologue of a decode CTA of Threads threads: stages the fp32 q of its G query heads
// (qg, G x D) in q_s, zero-padding heads G..7 when kPad, and returns the exponent e of the power
// of two 2^e that maps the CTA-wide max|q| into [2^14, 2^15) (e = 0 when max|q| is 0 or not
// finite; clamped to [-120, 120]). misc[0] is scratch for the maximum. Every thread of the CTA
// calls it (two __syncthreads).
template <int Threads, int D, bool kPad>
__device__ __forceinline__ int stage_q_pow2(const float* qg, int G, float* q_s, float* misc,
                                            int tid, int lane) {
  float qmax = 0.0f;
  for (int i = tid; i < (kPad ? 8 * D : G * D); i += Threads) {
    const float v = (!kPad || i < G * D) ? qg[i] : 0.0f;
    q_s[i] = v;
    qmax = fmaxf(qmax, fabsf(v));
  }
  for (int o = 16; o > 0; o >>= 1) qmax = fmaxf(qmax, __shfl_xor_sync(0xffffffffu, qmax, o));
  if (tid == 0) misc[0] = 0.0f;
  __syncthreads();
  if (lane == 0) atomicMax(reinterpret_cast<int*>(misc), __float_as_int(qmax));  // >= 0 floats
  __syncthreads();
  qmax = misc[0];
  int e = 0;
  if (qmax > 0.0f && isfinite(qmax)) {
    int ex = 0;
    (void)frexpf(qmax, &ex);  // qmax = f 2^ex, f in [0.5, 1): 2^e q has max in [2^14, 2^15)
    e = min(max(15 - ex, -120), 120);
  }
  return e;
}

// The page stream of one warp of a decode CTA of Warps warps: warp w takes the Blk-key blocks
// b_first + w, b_first + w + Warps, ... of the cached keys [k_lo, kend) and stages block i
// through its private cp.async ring (ring, in the CTA's dynamic shared memory smem) of
// Geo::kStages stages of Geo::kStageBytes bytes: the K payload (Geo::kPayload bytes, Geo::RB per
// key), the V payload, then the 64-byte runs of the block's 32 fp16 K scales, K zeros, V scales
// and V zeros. bt is the sequence's block-table row, pb the page bytes.
//
// Written so that both kernels compile to the same SASS as their former inline code; ptxas'
// register allocation proved sensitive to the form: issue reads the pool pointers from the
// kernel arguments at each call (copies held here cost registers), the kernels call issue
// through a local lambda and compute a stage's address (ring + (i % kStages) * kStageBytes) in
// their loop themselves. Direct calls, or a stage() helper, each changed the code
// (decode_mma_kernel<kv4, 128>: 117 -> 123 registers).
//
// Swz::apply(off) places the 16-byte chunk at byte off of the K payload, and of the V payload,
// in the stage (a permutation that keeps 16-byte chunks whole; readers apply the same map; one
// map for both, so a V chunk's address stays its K chunk's + kPayload). The mma kernel uses it
// to make its V^T loads bank-conflict free; the tc kernel keeps the identity.
// kSpan: apply(off + k kSpan) = apply(off) + k kSpan (the map reads and moves only bits below
// it), so the stream adds each lane's later chunks (32 chunks = 512 bytes apart) to one
// swizzled offset instead of mapping every chunk.
struct NoPayloadSwizzle {
  static constexpr int kSpan = 16;
  __host__ __device__ static constexpr int apply(int off) { return off; }
};
template <class Geo, int Warps, int Blk, class Swz = NoPayloadSwizzle>
struct WarpKvStream {
  static_assert(Blk == 32 && kPage % Blk == 0, "32-key blocks (64-byte fp16 runs), in one page");
  static_assert(Geo::kPayload == Blk * Geo::RB, "payload bytes per block");
  static_assert(Geo::kStageBytes == 2 * Geo::kPayload + 4 * 64, "stage layout");

  uint8_t* ring;  // this warp's stages
  const int32_t* bt;
  int64_t pb;
  int warp, lane;
  int b_first, nblk;  // first block of the split; blocks of this warp
  int data_off;       // the head's payload in a page (page offsets fit in 32 bits)
  int sc_off;         // lanes 0-15: the page offset of their 16-byte run of scales / zeros

  __device__ __forceinline__ WarpKvStream(uint8_t* smem, const PageGeom& geom, const int32_t* bt_,
                                          int64_t pb_, int kvh, int k_lo, int kend, int warp_,
                                          int lane_)
      : bt(bt_), pb(pb_), warp(warp_), lane(lane_) {
    ring = smem + warp * Geo::kStages * Geo::kStageBytes;
    b_first = k_lo / Blk;
    const int b_last = kend > k_lo ? (kend - 1) / Blk : b_first - 1;
    const int nblk_total = b_last - b_first + 1;
    nblk = nblk_total > warp ? (nblk_total - warp + Warps - 1) / Warps : 0;
    data_off = static_cast<int>(geom.data_offset(kvh, 0));
    // Lane l < 16 copies run l & 3 of array l >> 2 (K s, K z, V s, V z); its stage offset
    // is 2 * kPayload + 16 l.
    const int64_t arr_off =
        ((lane >> 2) & 1) ? geom.zero_offset(kvh, 0) : geom.scale_offset(kvh, 0);
    sc_off = static_cast<int>(arr_off) + (lane & 3) * 16;
  }

  // First key position of this warp's block i.
  __device__ __forceinline__ int pos0(int i) const { return (b_first + warp + i * Warps) * Blk; }

  // Issues the copies of block i (none past the last block) and commits a group; a: the
  // kernel's arguments (k_pool, v_pool).
  template <class Args>
  __device__ __forceinline__ void issue(const Args& a, int i) const {
    if (i < nblk) {
      // Unsigned (positions are >= 0): shifts and masks, not signed division sequences.
      const unsigned pos0 = static_cast<unsigned>((b_first + warp + i * Warps) * Blk);
      // Page index times page bytes as one 32 x 32 -> 64-bit multiply (pages and page bytes
      // are below 2^31).
      const uint64_t page_off = static_cast<uint64_t>(static_cast<uint32_t>(bt[pos0 / kPage])) *
                                static_cast<uint32_t>(pb);
      const int slot0 = static_cast<int>(pos0 % kPage);
      uint8_t* st = ring + (static_cast<unsigned>(i) % Geo::kStages) * Geo::kStageBytes;
      // One 64-bit base per pool and one shared-memory base per lane, the lane's later chunks
      // (32 chunks = 512 bytes apart) as immediate offsets: per-chunk 64-bit address arithmetic
      // was ~8% of the mma kernel's loop (2026-11-30 SASS).
      static_assert(Geo::kPayload % 512 == 0, "whole 32-chunk rounds per payload");
      static_assert(512 % Swz::kSpan == 0, "chunks of a lane are 512 bytes apart");
      const uint8_t* kpage = a.k_pool + page_off;
      const uint8_t* vpage = a.v_pool + page_off;
      const int row0 = data_off + slot0 * Geo::RB + lane * 16;
      uint8_t* sd = st + Swz::apply(lane * 16);
#pragma unroll
      for (int r = 0; r < Geo::kPayload / 512; ++r) {
        cp_async16(sd + r * 512, kpage + row0 + r * 512);
        cp_async16(sd + Geo::kPayload + r * 512, vpage + row0 + r * 512);
      }
      if (lane < 16) {
        cp_async16(st + 2 * Geo::kPayload + lane * 16,
                   (lane < 8 ? kpage : vpage) + sc_off + 2 * slot0);
      }
    }
    cp_async_commit();  // always, so group counting stays uniform
  }
};

// The end of a decode CTA of Warps warps (a: the kernel's arguments; G: its query heads per KV
// head, passed in because re-reading a.group here changed the generated code), once every warp
// has written its stream's unnormalized output red_o[warp][h][D] and (max, sum)
// red_ml[warp][h][2] for the heads h < 8 and no warp reads its ring any more. The CTA serves
// split `split` ([k_lo, k_hi)) of KV head kvh of sequence seq (context ctx, q row q_row).
//  - When the split holds the current token (position ctx), its scores: fp32 dots of the
//    unrounded q (q_s) with k16, times the scale (and log2(e) when kLog2), one warp per head,
//    into misc[8 + h].
//  - Per (head, channel): the merge of the warp streams, one more online-softmax step with the
//    current token's unquantized fp16 K/V, and the store: O / L with one split, otherwise the
//    split's partial O and (M, L).
// kLog2: maxima and scores in log2 units, weights 2^x (exp2f); otherwise natural-log units, e^x
// (expf).
// Index of (row, channel c) in the merge scratch red_o (row = warp * 8 + head). kSwz XORs the
// low bits of c with (c / 32) and the head pair (head / 2): the mma kernel's epilogue, where
// lanes (g, t) store channel g * (D / 8) + j of heads 2t, 2t + 1, then hits 32 distinct banks
// (16-way conflicts without it, 2026-11-30 Nsight), and the merge's reads of 32 consecutive
// channels of one row stay a permutation of one 128-byte line.
template <int D, bool kSwz>
__device__ __forceinline__ int red_o_index(int row, int c) {
  static_assert(D == 64 || D == 128, "head_dim");
  if constexpr (kSwz) {
    return row * D + (c ^ ((c >> 5) | (((row & 7) >> 1) << (D == 128 ? 2 : 1))));
  } else {
    return row * D + c;
  }
}

template <bool kLog2, int Warps, int D, bool kSwz, class Args>
__device__ __forceinline__ void merge_warps_and_store(const Args& a, const float* red_o,
                                                      const float* red_ml, const float* q_s,
                                                      float* misc, int G, int64_t q_row, int kvh,
                                                      int seq, int split, int ctx, int k_lo,
                                                      int k_hi, int tid, int lane, int warp) {
  const bool has_cur = ctx >= k_lo && ctx < k_hi;
  const int64_t cur_row = (q_row * a.geom.kv_heads + kvh) * D;
  if (has_cur) {
    for (int h = warp; h < G; h += Warps) {
      float d = 0.0f;
      for (int c = lane; c < D; c += 32) d += q_s[h * D + c] * h2f(a.k16[cur_row + c]);
      for (int off = 16; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
      if (lane == 0) {
        if constexpr (kLog2) {
          misc[8 + h] = d * a.scale * kLog2e;
        } else {
          misc[8 + h] = __fmul_rn(d, a.scale);
        }
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < G * D; idx += Warps * 32) {
    const int h = idx / D, c = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < Warps; ++w) M = fmaxf(M, red_ml[(w * 8 + h) * 2]);
    float L = 0.0f, O = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < Warps; ++w) {
        const float mw = red_ml[(w * 8 + h) * 2];
        const float wt = mw == -INFINITY ? 0.0f : exp_base<kLog2>(mw - M);
        L += red_ml[(w * 8 + h) * 2 + 1] * wt;
        O += red_o[red_o_index<D, kSwz>(w * 8 + h, c)] * wt;
      }
    }
    if (has_cur) {  // one more online-softmax step with the unquantized fp16 K/V
      const float s = misc[8 + h];
      const float m2 = fmaxf(M, s);
      const float al = M == -INFINITY ? 0.0f : exp_base<kLog2>(M - m2);
      const float pc = exp_base<kLog2>(s - m2);
      O = O * al + pc * h2f(a.v16[cur_row + c]);
      L = L * al + pc;
      M = m2;
    }
    const int64_t hq = static_cast<int64_t>(kvh) * G + h;
    if (a.splits == 1) {
      a.out[(q_row * a.num_heads + hq) * D + c] = O / L;
    } else {
      const int64_t pidx = (static_cast<int64_t>(seq) * a.num_heads + hq) * a.splits + split;
      a.part_o[pidx * D + c] = O;
      if (c == 0) {
        a.part_ml[pidx * 2] = M;
        a.part_ml[pidx * 2 + 1] = L;
      }
    }
  }
}

// The split-KV ranges of the tensor-core decode kernels. The cached positions [lo, ctx) of a
// sequence are cut into runs of split_keys; the current token (position ctx, read from k16/v16)
// joins the last run, so a context that is a multiple of the split size does not get an extra
// split holding only the current token (nor a longer first split: 32 x 8192 took 4160-key
// splits, 33 blocks for some warps, instead of 4096 + 1). `used` splits hold keys.
struct SplitRange {
  int used;  // splits of this sequence (>= 1)
  int k_lo;  // first cached position of this split
  int kend;  // cached positions [k_lo, kend)
  int k_hi;  // kend, or ctx + 1 when this split also holds the current token
};
// Splits of a sequence with cached positions [lo, ctx) that hold keys (>= 1: the current token).
__device__ __forceinline__ int used_splits(int ctx, int lo, int split_keys) {
  return max(1, (ctx - lo + split_keys - 1) / split_keys);
}
__device__ __forceinline__ SplitRange split_range(int ctx, int lo, int split, int split_keys) {
  SplitRange r;
  r.used = used_splits(ctx, lo, split_keys);
  r.k_lo = lo + split * split_keys;
  r.kend = min(ctx, r.k_lo + split_keys);
  r.k_hi = split == r.used - 1 ? ctx + 1 : r.kend;
  return r;
}

// out = sum_j o_j w_j / sum_j l_j w_j over the used splits, w_j = e^(m_j - M) (natural-log
// maxima) or 2^(m_j - M) (kLog2: maxima in log2 units).
template <bool kLog2>
__global__ void decode_split_merge_kernel(const float* part_o, const float* part_ml,
                                          const int32_t* token_offset, const int32_t* context_len,
                                          int num_heads, int head_dim, int splits, int split_keys,
                                          int window, float* out) {
  const auto weight = [](float m, float M) {
    return m == -INFINITY ? 0.0f : (kLog2 ? exp2f(m - M) : expf(m - M));
  };
  const int h = blockIdx.x, seq = blockIdx.y;
  const int ctx = context_len[seq];
  const int used = used_splits(ctx, first_key(ctx, window), split_keys);
  const int64_t base = (static_cast<int64_t>(seq) * num_heads + h) * splits;
  pdl_wait();  // the partials are the previous kernel's output (pdl.h)
  pdl_trigger();
  float M = -INFINITY;
  for (int j = 0; j < used; ++j) M = fmaxf(M, part_ml[(base + j) * 2]);
  float L = 0.0f;
  for (int j = 0; j < used; ++j)
    L += part_ml[(base + j) * 2 + 1] * weight(part_ml[(base + j) * 2], M);
  const int64_t row = token_offset[seq];
  for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
    float o = 0.0f;
    for (int j = 0; j < used; ++j) {
      o += part_o[(base + j) * head_dim + c] * weight(part_ml[(base + j) * 2], M);
    }
    out[(row * num_heads + h) * head_dim + c] = o / L;
  }
}

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// The entry-point checks of a decode kernel `op` (tensor-core, or attention_decode_fast.cu):
// geometry (`supported`; `groups` names the supported Hq/Hkv in the message), sequence count,
// and — when there is work — 16-byte alignment and the workspace size. Returns the shape
// string for later messages; throws qserve::Error naming op and shape.
inline std::string check_decode_call(const char* op, bool supported, const float* q,
                                     const uint16_t* k16, const uint16_t* v16,
                                     const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                     int64_t num_heads, const void* workspace,
                                     size_t workspace_bytes, const char* groups = "1..8") {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = "S=" + std::to_string(S) + " Hq=" + std::to_string(num_heads) +
                            " Hkv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                            " max_total_len=" + std::to_string(batch.max_total_len);
  const std::string name(op);
  check(supported,
        name + ": needs KV4/KV8, head_dim 64 or 128 and Hq/Hkv in " + groups + " (" + shape + ")");
  check(S >= 0 && S <= 65535 && batch.max_total_len >= 0,
        name + ": 0..65535 sequences (" + shape + ")");
  if (S == 0) return shape;
  check(aligned16(q) && aligned16(k16) && aligned16(v16) && aligned16(cache.k_pool) &&
            aligned16(cache.v_pool),
        name + ": q, k16, v16 and the pools must be 16-byte aligned (" + shape + ")");
  const size_t need = decode_attention_workspace_bytes(S, num_heads, d, batch.max_total_len);
  check(workspace != nullptr && workspace_bytes >= need,
        name + ": workspace of " + std::to_string(workspace_bytes) + " bytes, need " +
            std::to_string(need) + " (" + shape + ")");
  return shape;
}

// The arguments of a decode call for a kernel whose splits hold `split_keys` keys each
// (ArgsT: DecodeArgs, or a struct with the same fields and without `group`).
template <class ArgsT>
ArgsT make_decode_args(const float* q, const uint16_t* k16, const uint16_t* v16,
                       const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                       int64_t num_heads, int64_t window, float* out, void* workspace,
                       int64_t split_keys, bool cached_splits = false) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  ArgsT a{};
  a.q = q;
  a.k16 = k16;
  a.v16 = v16;
  a.k_pool = cache.k_pool;
  a.v_pool = cache.v_pool;
  a.geom = make_geom(cache.format, static_cast<int>(hkv), static_cast<int>(d));
  a.token_offset = batch.token_offset;
  a.context_len = batch.context_len;
  a.block_table = batch.block_table;
  a.block_stride = batch.block_stride;
  a.num_heads = static_cast<int>(num_heads);
  if constexpr (requires { a.group; }) a.group = static_cast<int>(num_heads / hkv);
  a.window = static_cast<int>(std::max<int64_t>(0, window));
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));  // as the reference
  a.split_keys = static_cast<int>(split_keys);
  // cached_splits: the kernel cuts only the cached keys (split_range; the current token joins
  // the last split); otherwise all max_total_len positions.
  const int64_t positions = std::max<int64_t>(1, batch.max_total_len - (cached_splits ? 1 : 0));
  a.splits = static_cast<int>(std::max<int64_t>(1, (positions + split_keys - 1) / split_keys));
  a.out = out;
  a.part_o = static_cast<float*>(workspace);
  a.part_ml = a.part_o + S * num_heads * a.splits * d;
  return a;
}

// Calls launch.template operator()<F, D>() for the cache's format (KV4 / KV8) and head_dim
// (128 / 64): the geometries every decode kernel is instantiated for.
template <class Launch>
void dispatch_decode_geometry(KvFormat format, int64_t head_dim, Launch&& launch) {
  if (format == KvFormat::kv4) {
    if (head_dim == 128)
      launch.template operator()<KvFormat::kv4, 128>();
    else
      launch.template operator()<KvFormat::kv4, 64>();
  } else {
    if (head_dim == 128)
      launch.template operator()<KvFormat::kv8, 128>();
    else
      launch.template operator()<KvFormat::kv8, 64>();
  }
}

// The split merge after a tensor-core decode kernel (nothing to merge with one split).
template <bool kLog2>
void launch_split_merge(const DecodeArgs& a, const VarlenBatchDevice& batch, int64_t head_dim,
                        cudaStream_t stream, const char* what, const std::string& shape) {
  if (a.splits <= 1) return;
  const dim3 grid(static_cast<unsigned>(a.num_heads), static_cast<unsigned>(batch.num_seqs));
  cuda_check(launch_pdl(decode_split_merge_kernel<kLog2>, grid, dim3(128), 0, stream, a.part_o,
                        a.part_ml, batch.token_offset, batch.context_len, a.num_heads,
                        static_cast<int>(head_dim), a.splits, a.split_keys, a.window, a.out),
             what, shape);
}

}  // namespace qserve::cuda::attn
