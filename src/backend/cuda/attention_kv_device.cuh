// Device-side pieces shared by the attention kernels (attention_decode.cu, attention_prefill.cu)
// and the KV append (rope_kv.cu): the page addressing of QServe's KV4/KV8 pages and of our KV16
// pages, the exact dequantization of quant/kv_cache.h, and one block's attention of the query
// heads of one KV head over a key range (online softmax over 64-key tiles). Internal to
// src/backend/cuda.
//
// Exactness: every fp32 step of the dequantization is an explicit correctly rounded intrinsic
// (nvcc would otherwise be free to contract s*(q-z) chains), and the KV4 fp16 FMA is the
// hardware HFMA, one rounding, which quant::f16_fma emulates.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/ops_cuda_attention.h"

namespace qserve::cuda::attn {

inline constexpr int kPage = 64;          // tokens per page
inline constexpr int kMaxGroup = 16;      // query heads per KV head
inline constexpr int kMaxHeadDim = 256;   // channels per head
inline constexpr int kThreads = 128;      // threads per attention block (4 warps)
inline constexpr int kWarps = kThreads / 32;
inline constexpr int kTile = 64;          // keys per online-softmax tile
inline constexpr int kChanPerThread = kMaxHeadDim / kThreads;

__device__ __forceinline__ float h2f(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
__device__ __forceinline__ uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }

__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) {
  return *reinterpret_cast<const uint16_t*>(p);
}

// Byte offsets inside a page (quant::KvPageLayout; KV16 has data only).
struct PageGeom {
  int kv_heads;
  int head_dim;
  int64_t page_bytes;
  int bytes_per_token_head;  // D (KV8), D/2 (KV4), 2D (KV16)
  __device__ __forceinline__ int64_t data_offset(int head, int slot) const {
    return (static_cast<int64_t>(head) * kPage + slot) * bytes_per_token_head;
  }
  __device__ __forceinline__ int64_t scale_offset(int head, int slot) const {
    return static_cast<int64_t>(kv_heads) * kPage * bytes_per_token_head +
           2 * (static_cast<int64_t>(head) * kPage + slot);
  }
  __device__ __forceinline__ int64_t zero_offset(int head, int slot) const {
    return scale_offset(head, slot) + static_cast<int64_t>(kv_heads) * kPage * 2;
  }
};

inline PageGeom make_geom(KvFormat f, int kv_heads, int head_dim) {
  PageGeom g{};
  g.kv_heads = kv_heads;
  g.head_dim = head_dim;
  g.bytes_per_token_head = f == KvFormat::kv4 ? head_dim / 2 : f == KvFormat::kv8 ? head_dim
                                                                                   : 2 * head_dim;
  g.page_bytes = kv_page_bytes(f, kv_heads, head_dim);
  return g;
}

// One (token, head) row of a page, ready for dequantization: the data pointer and, for
// KV4/KV8, the fp32 scale and the precomputed zero term.
//   KV8: x = fp16_RN(s * (q - z))           (quant::kv_dequantize, fp32 sub then mul)
//   KV4: x = HFMA(fp16(q), s16, Z16), Z16 = fp16_RN(-(s * z))   (one fp16 rounding)
template <KvFormat F>
struct KvRow {
  const uint8_t* data;
  float s;         // KV8: scale; KV4: unused
  float z;         // KV8: zero
  __half s16;      // KV4: scale
  __half zterm16;  // KV4: Z
};

template <KvFormat F>
__device__ __forceinline__ KvRow<F> kv_row(const uint8_t* page, const PageGeom& g, int head,
                                           int slot) {
  KvRow<F> r{};
  r.data = page + g.data_offset(head, slot);
  if constexpr (F != KvFormat::kv16) {
    const uint16_t sb = load_u16(page + g.scale_offset(head, slot));
    const uint16_t zb = load_u16(page + g.zero_offset(head, slot));
    r.s = h2f(sb);
    r.z = h2f(zb);
    r.s16 = __ushort_as_half(sb);
    r.zterm16 = __float2half_rn(-__fmul_rn(r.s, r.z));
  }
  return r;
}

// Dequantized channels (2p, 2p+1) of a row as fp32 values of the fp16 results.
template <KvFormat F>
__device__ __forceinline__ float2 kv_pair(const KvRow<F>& r, int p) {
  if constexpr (F == KvFormat::kv16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(r.data);
    return make_float2(h2f(h[2 * p]), h2f(h[2 * p + 1]));
  } else if constexpr (F == KvFormat::kv8) {
    const float q0 = static_cast<float>(r.data[2 * p]);
    const float q1 = static_cast<float>(r.data[2 * p + 1]);
    return make_float2(__half2float(__float2half_rn(__fmul_rn(r.s, __fsub_rn(q0, r.z)))),
                       __half2float(__float2half_rn(__fmul_rn(r.s, __fsub_rn(q1, r.z)))));
  } else {
    const uint8_t b = r.data[p];
    const __half lo = __ushort2half_rn(static_cast<unsigned short>(b & 0x0f));
    const __half hi = __ushort2half_rn(static_cast<unsigned short>(b >> 4));
    return make_float2(__half2float(__hfma(lo, r.s16, r.zterm16)),
                       __half2float(__hfma(hi, r.s16, r.zterm16)));
  }
}

// One dequantized channel c.
template <KvFormat F>
__device__ __forceinline__ float kv_chan(const KvRow<F>& r, int c) {
  if constexpr (F == KvFormat::kv16) {
    return h2f(reinterpret_cast<const uint16_t*>(r.data)[c]);
  } else if constexpr (F == KvFormat::kv8) {
    const float q = static_cast<float>(r.data[c]);
    return __half2float(__float2half_rn(__fmul_rn(r.s, __fsub_rn(q, r.z))));
  } else {
    const uint8_t b = r.data[c >> 1];
    const unsigned q = (c & 1) ? (b >> 4) : (b & 0x0f);
    return __half2float(__hfma(__ushort2half_rn(static_cast<unsigned short>(q)), r.s16, r.zterm16));
  }
}

// Everything one attention block needs (device pointers and sizes; passed by value).
struct AttnArgs {
  const float* q;          // [T, Hq, D]
  const uint16_t* k16;     // [T, Hkv, D]
  const uint16_t* v16;     // [T, Hkv, D]
  const uint8_t* k_pool;   // [pages, page_bytes]
  const uint8_t* v_pool;
  PageGeom geom;
  const int32_t* token_offset;
  const int32_t* num_tokens;
  const int32_t* context_len;
  const int32_t* block_table;
  int32_t block_stride;
  int num_heads;
  int group;  // Hq / Hkv
  int head_dim;
  int window;
  float scale;
};

// Where a key position's K (or V) row is: the pages below ctx, the step's fp16 rows above.
template <KvFormat F>
__device__ __forceinline__ KvRow<F> key_row(const AttnArgs& a, const uint8_t* pool,
                                            const uint16_t* cur, int seq, int ctx, int tok0,
                                            int kvh, int pos) {
  if (pos < ctx) {
    const int32_t page = a.block_table[static_cast<int64_t>(seq) * a.block_stride + pos / kPage];
    return kv_row<F>(pool + static_cast<int64_t>(page) * a.geom.page_bytes, a.geom, kvh,
                     pos % kPage);
  }
  // The current chunk: plain fp16, read through the KV16 path.
  KvRow<F> r{};
  const int64_t row = static_cast<int64_t>(tok0) + (pos - ctx);
  r.data = reinterpret_cast<const uint8_t*>(cur + (row * a.geom.kv_heads + kvh) * a.head_dim);
  return r;
}

template <KvFormat F>
__device__ __forceinline__ float2 key_pair(const KvRow<F>& r, bool fp16_row, int p) {
  if (fp16_row) return kv_pair<KvFormat::kv16>(KvRow<KvFormat::kv16>{r.data, 0.f, 0.f, {}, {}}, p);
  return kv_pair<F>(r, p);
}
template <KvFormat F>
__device__ __forceinline__ float key_chan(const KvRow<F>& r, bool fp16_row, int c) {
  if (fp16_row) return kv_chan<KvFormat::kv16>(KvRow<KvFormat::kv16>{r.data, 0.f, 0.f, {}, {}}, c);
  return kv_chan<F>(r, c);
}

// Shared memory of one attention block.
struct AttnSmem {
  float q[kMaxGroup * kMaxHeadDim];
  float p[kMaxGroup * kTile];  // scores, then probabilities, of the current tile
  float m[kMaxGroup];          // running max
  float l[kMaxGroup];          // running sum of exp
  float alpha[kMaxGroup];      // rescale factor of the current tile
};

// The query heads kvh*group .. +group of query row `q_row` attend to key positions
// [k_lo, k_hi) of sequence `seq`. Leaves, per head i and owned channel c, the unnormalized
// accumulator in acc[ci][i] and the running max/sum in sm.m/sm.l. Called by all kThreads
// threads of the block; requires k_lo < k_hi.
template <KvFormat F>
__device__ void attend_range(const AttnArgs& a, AttnSmem& sm, int seq, int kvh, int64_t q_row,
                             int k_lo, int k_hi, float (&acc)[kChanPerThread][kMaxGroup]) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int G = a.group, D = a.head_dim, half_d = D / 2;
  const int ctx = a.context_len[seq];
  const int tok0 = a.token_offset[seq];

  for (int i = tid; i < G * D; i += kThreads) {
    const int h = kvh * G + i / D;
    sm.q[i] = a.q[(q_row * a.num_heads + h) * D + (i % D)];
  }
  if (tid < G) {
    sm.m[tid] = -INFINITY;
    sm.l[tid] = 0.0f;
  }
#pragma unroll
  for (int ci = 0; ci < kChanPerThread; ++ci) {
#pragma unroll
    for (int i = 0; i < kMaxGroup; ++i) acc[ci][i] = 0.0f;
  }
  __syncthreads();

  for (int t0 = k_lo; t0 < k_hi; t0 += kTile) {
    const int n = min(kTile, k_hi - t0);
    // Scores: one warp per key, lanes over channel pairs, butterfly sum.
    for (int kk = warp; kk < n; kk += kWarps) {
      const int pos = t0 + kk;
      const KvRow<F> r = key_row<F>(a, a.k_pool, a.k16, seq, ctx, tok0, kvh, pos);
      const bool cur = pos >= ctx;
      float part[kMaxGroup];
#pragma unroll
      for (int i = 0; i < kMaxGroup; ++i) part[i] = 0.0f;
      for (int p = lane; p < half_d; p += 32) {
        const float2 kv = key_pair<F>(r, cur, p);
#pragma unroll
        for (int i = 0; i < kMaxGroup; ++i) {
          if (i < G) {
            part[i] += sm.q[i * D + 2 * p] * kv.x;
            part[i] += sm.q[i * D + 2 * p + 1] * kv.y;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kMaxGroup; ++i) {
        if (i < G) {
          float v = part[i];
          for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
          if (lane == 0) sm.p[i * kTile + kk] = __fmul_rn(v, a.scale);
        }
      }
    }
    __syncthreads();
    // Online softmax update: one warp per head.
    for (int i = warp; i < G; i += kWarps) {
      float* ps = sm.p + i * kTile;
      const float s0 = lane < n ? ps[lane] : -INFINITY;
      const float s1 = lane + 32 < n ? ps[lane + 32] : -INFINITY;
      float tmax = fmaxf(s0, s1);
      for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
      const float m_old = sm.m[i];
      const float m_new = fmaxf(m_old, tmax);
      // exp(-inf) = 0 rescales the empty initial state; m_new is finite once a key is seen.
      const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
      const float e0 = lane < n ? expf(s0 - m_new) : 0.0f;
      const float e1 = lane + 32 < n ? expf(s1 - m_new) : 0.0f;
      if (lane < n) ps[lane] = e0;
      if (lane + 32 < n) ps[lane + 32] = e1;
      float tsum = e0 + e1;
      for (int o = 16; o > 0; o >>= 1) tsum += __shfl_xor_sync(0xffffffffu, tsum, o);
      if (lane == 0) {
        sm.m[i] = m_new;
        sm.l[i] = sm.l[i] * alpha + tsum;
        sm.alpha[i] = alpha;
      }
    }
    __syncthreads();
    // P·V: each thread owns channels tid, tid + kThreads, ... for all heads of the group.
#pragma unroll
    for (int ci = 0; ci < kChanPerThread; ++ci) {
      const int c = tid + ci * kThreads;
      if (c < D) {
#pragma unroll
        for (int i = 0; i < kMaxGroup; ++i) {
          if (i < G) acc[ci][i] *= sm.alpha[i];
        }
        for (int kk = 0; kk < n; ++kk) {
          const int pos = t0 + kk;
          const KvRow<F> r = key_row<F>(a, a.v_pool, a.v16, seq, ctx, tok0, kvh, pos);
          const float v = key_chan<F>(r, pos >= ctx, c);
#pragma unroll
          for (int i = 0; i < kMaxGroup; ++i) {
            if (i < G) acc[ci][i] += sm.p[i * kTile + kk] * v;
          }
        }
      }
    }
    __syncthreads();  // the next tile overwrites sm.p
  }
}

// First key position visible from query position `pos` (cpu attention's first_key).
__device__ __forceinline__ int first_key(int pos, int window) {
  return window > 0 ? max(0, pos - window + 1) : 0;
}

}  // namespace qserve::cuda::attn
