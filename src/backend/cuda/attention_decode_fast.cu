// Fast decode attention over paged KV4/KV8 caches (head_dim 64/128, GQA group 1/2/4/8).
//
// The reference kernel (attention_decode.cu) stays as the oracle; this one computes the same
// function with the same per-element numerics and differs only in data movement:
//  - Grid (split, KV head, sequence): one CTA of 128 threads serves all G query heads of a GQA
//    group, so every page byte is read from HBM once per decode step.
//  - Per 64-key tile the CTA loads the K and V payload with 16-byte loads (a page's rows for
//    one head are contiguous, so an aligned tile is one contiguous 4 KiB / 8 KiB run), and the
//    per-token fp16 scales and zeros of an aligned tile as 16-byte loads too. The next tile's
//    loads are issued into registers before the current tile is computed (register double
//    buffering), so HBM latency overlaps the dot products.
//  - Dequantization happens once per element, in registers, with exactly the operations of
//    attention_kv_device.cuh (KV4: fp16 HFMA(q, s, fp16(-(s*z))); KV8: fp16_RN(s * (q - z)) in
//    fp32 with explicit IEEE intrinsics), and the fp16 results go to shared memory (swizzled by
//    16-byte units so the key-parallel score reads are bank-conflict free). The values the dot
//    products see are therefore bit-identical to the reference kernel's.
//  - Scores: one thread per (key, half of the heads), fp32 dots; softmax: fp32 online, per
//    64-key tile, same max/exp/rescale structure as the reference; P.V: each thread owns a
//    few channels of one head, fp32 accumulation. Only summation order differs from the
//    reference, which the documented tolerance (ops_cuda_attention.h) already covers.
//  - Split-KV: the host picks keys per split (a multiple of 64, >= 256, so the reference's
//    workspace size suffices) so that S * Hkv * splits fills the GPU; a second kernel merges
//    the partials (log-sum-exp). With one split the CTA normalizes and writes `out` directly.
//  - The current token's own fp16 K/V (k16/v16) is the last visible key, copied unquantized
//    into the tile that contains position context_len, as the reference's semantics.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "backend/cuda/attention_decode_common.cuh"
#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"

namespace qserve::cuda {

namespace {

using attn::first_key;
using attn::kPage;
using attn::PageGeom;

constexpr int kFThreads = 128;  // 4 warps
constexpr int kFTile = 64;      // keys per tile (one page when aligned)
constexpr int kMinSplitKeys = 256;

__device__ __forceinline__ __half2 u32_as_half2(uint32_t u) {
  __half2 h;
  static_assert(sizeof(h) == 4, "half2 is 4 bytes");
  memcpy(&h, &u, 4);
  return h;
}
__device__ __forceinline__ uint32_t half2_as_u32(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

struct FastArgs {
  const float* q;       // [T, Hq, D]
  const uint16_t* k16;  // [T, Hkv, D]
  const uint16_t* v16;
  const uint8_t* k_pool;  // [pages, page_bytes]
  const uint8_t* v_pool;
  PageGeom geom;
  const int32_t* token_offset;
  const int32_t* context_len;
  const int32_t* block_table;
  int32_t block_stride;
  int num_heads;
  int window;
  int split_keys;  // keys per split (multiple of 64)
  int splits;
  float scale;
  float* out;      // splits == 1
  float* part_o;   // [S, Hq, splits, D]
  float* part_ml;  // [S, Hq, splits, 2]
};

template <int D, int G>
struct FastSmem {
  uint4 k[kFTile * D / 8];  // fp16 [64][D], 16-byte units swizzled by key & 7
  uint4 v[kFTile * D / 8];
  float q[G * D];
  float p[G * kFTile];
  uint16_t sz[4][kFTile];  // raw fp16 bits: K scale, K zero, V scale, V zero
  float m[G], l[G], alpha[G];
};

// Position of 16-byte unit u (8 channels) of key `key` in the swizzled tile.
template <int D>
__device__ __forceinline__ int unit_index(int key, int u) {
  return key * (D / 8) + (u ^ (key & 7));
}

template <KvFormat F, int D, int G>
__global__ void __launch_bounds__(kFThreads) decode_fast_kernel(FastArgs a) {
  static_assert(D == 64 || D == 128, "head_dim 64 or 128");
  static_assert(G == 1 || G == 2 || G == 4 || G == 8, "group 1, 2, 4 or 8");
  constexpr int RB = F == KvFormat::kv4 ? D / 2 : D;  // payload bytes per (token, head)
  constexpr int CPR = RB / 16;                        // 16-byte chunks per row
  constexpr int LPT = kFTile * CPR / kFThreads;       // chunks per thread per tile (K or V)
  constexpr int UPR = D / 8;                          // 16-byte fp16 units per row
  static_assert(LPT >= 1 && kFTile * CPR % kFThreads == 0, "tile mapping");
  // P.V mapping: each thread owns CPV consecutive channels of one head.
  constexpr int CPV = (D * G / kFThreads) < 2 ? 2 : (D * G / kFThreads);
  constexpr int TPH = D / CPV;          // threads per head
  constexpr int NHG = kFThreads / TPH;  // head groups (>= G)
  static_assert(NHG >= G && CPV <= 8, "P.V mapping");
  constexpr int HPT = (G + 1) / 2;  // heads per thread in the score phase

  __shared__ __align__(16) FastSmem<D, G> sm;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int ctx = a.context_len[seq];
  const int lo = first_key(ctx, a.window);
  const int k_lo = lo + split * a.split_keys;
  const int k_hi = min(ctx + 1, k_lo + a.split_keys);
  if (k_lo >= k_hi) return;  // this sequence has fewer splits; the merge does not read it
  const int64_t q_row = a.token_offset[seq];
  const int32_t* bt = a.block_table + static_cast<int64_t>(seq) * a.block_stride;
  const int64_t pb = a.geom.page_bytes;
  const int64_t scale_base = a.geom.scale_offset(kvh, 0);  // byte offset of (kvh, slot 0)
  const int64_t zero_base = a.geom.zero_offset(kvh, 0);

  // q of the G heads (contiguous G*D floats).
  {
    const float4* src = reinterpret_cast<const float4*>(
        a.q + (q_row * a.num_heads + static_cast<int64_t>(kvh) * G) * D);
    float4* dst = reinterpret_cast<float4*>(sm.q);
    for (int i = tid; i < G * D / 4; i += kFThreads) dst[i] = src[i];
  }
  if (tid < G) {
    sm.m[tid] = -INFINITY;
    sm.l[tid] = 0.0f;
  }

  // Prefetched raw tile: payload chunks of K and V, and scales/zeros.
  uint4 rk[LPT], rv[LPT];
  uint4 rs = make_uint4(0, 0, 0, 0);

  auto load_tile = [&](int t0) {
    const int n = min(kFTile, k_hi - t0);
#pragma unroll
    for (int j = 0; j < LPT; ++j) {
      const int idx = tid + j * kFThreads;
      const int key = idx / CPR, ch = idx % CPR;
      const int pos = t0 + key;
      if (key < n && pos < ctx) {
        const int64_t page = bt[pos / kPage];
        const int64_t off = page * pb + a.geom.data_offset(kvh, pos % kPage) + ch * 16;
        rk[j] = __ldg(reinterpret_cast<const uint4*>(a.k_pool + off));
        rv[j] = __ldg(reinterpret_cast<const uint4*>(a.v_pool + off));
      }
    }
    if (t0 % kPage == 0) {
      // Aligned tile: the 64 slots' scales (zeros) of this head are 128 contiguous bytes.
      // Threads 0..31: array tid / 8 (K scale, K zero, V scale, V zero), 16-byte chunk tid % 8.
      if (tid < 32 && t0 < ctx) {
        const int64_t page = bt[t0 / kPage];
        const uint8_t* pool = tid < 16 ? a.k_pool : a.v_pool;
        const int64_t base = ((tid >> 3) & 1) ? zero_base : scale_base;
        rs = __ldg(reinterpret_cast<const uint4*>(pool + page * pb + base + (tid & 7) * 16));
      }
    } else if (tid < n && t0 + tid < ctx) {
      // Unaligned tile (sliding window): one key per thread, 2-byte loads.
      const int pos = t0 + tid;
      const int64_t pbase = static_cast<int64_t>(bt[pos / kPage]) * pb;
      const int slot2 = 2 * (pos % kPage);
      rs.x = attn::load_u16(a.k_pool + pbase + scale_base + slot2);
      rs.y = attn::load_u16(a.k_pool + pbase + zero_base + slot2);
      rs.z = attn::load_u16(a.v_pool + pbase + scale_base + slot2);
      rs.w = attn::load_u16(a.v_pool + pbase + zero_base + slot2);
    }
  };

  // Dequantize one 16-byte payload chunk of key `key` into the swizzled fp16 tile.
  auto dequant_chunk = [&](const uint4& raw, uint4* dst, int key, int ch, uint16_t sbits,
                           uint16_t zbits) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    if constexpr (F == KvFormat::kv4) {
      // attention_kv_device.cuh kv_pair<kv4>: x = HFMA(fp16(q), s16, fp16_RN(-(s * z))).
      const float s = attn::h2f(sbits), z = attn::h2f(zbits);
      const __half s16 = __ushort_as_half(sbits);
      const __half zt = __float2half_rn(-__fmul_rn(s, z));
      const __half2 s2 = __halves2half2(s16, s16), z2 = __halves2half2(zt, zt);
      const __half2 magic = u32_as_half2(0x64006400u);  // (1024, 1024)
      // Chunk ch holds channels ch*32 .. ch*32+31: word wi -> unit ch*4 + wi (8 channels).
#pragma unroll
      for (int wi = 0; wi < 4; ++wi) {
        uint32_t outw[4];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const uint32_t byte = (w[wi] >> (8 * b)) & 0xffu;
          // (1024 + lo, 1024 + hi) exactly, minus 1024: the codes as fp16, exactly.
          const __half2 qh =
              __hsub2(u32_as_half2((byte & 0xfu) | ((byte >> 4) << 16) | 0x64006400u), magic);
          outw[b] = half2_as_u32(__hfma2(qh, s2, z2));
        }
        dst[unit_index<D>(key, ch * 4 + wi)] = make_uint4(outw[0], outw[1], outw[2], outw[3]);
      }
    } else {
      // kv_pair<kv8>: x = fp16_RN(s * (q - z)), each step a correctly rounded fp32 op.
      const float s = attn::h2f(sbits), z = attn::h2f(zbits);
      // Chunk ch holds channels ch*16 .. ch*16+15: words (0,1) -> unit 2ch, (2,3) -> 2ch+1.
#pragma unroll
      for (int hu = 0; hu < 2; ++hu) {
        uint32_t outw[4];
#pragma unroll
        for (int pr = 0; pr < 4; ++pr) {
          const uint32_t word = w[hu * 2 + pr / 2];
          const uint32_t b0 = (word >> (16 * (pr & 1))) & 0xffu;
          const uint32_t b1 = (word >> (16 * (pr & 1) + 8)) & 0xffu;
          const float x0 = __fmul_rn(s, __fsub_rn(static_cast<float>(b0), z));
          const float x1 = __fmul_rn(s, __fsub_rn(static_cast<float>(b1), z));
          outw[pr] = half2_as_u32(__floats2half2_rn(x0, x1));
        }
        dst[unit_index<D>(key, ch * 2 + hu)] = make_uint4(outw[0], outw[1], outw[2], outw[3]);
      }
    }
  };

  // P.V ownership.
  const int pv_head = tid / TPH;        // < NHG; active when < G
  const int pv_c0 = (tid % TPH) * CPV;  // first owned channel
  float acc[CPV];
#pragma unroll
  for (int c = 0; c < CPV; ++c) acc[c] = 0.0f;

  load_tile(k_lo);
  for (int t0 = k_lo; t0 < k_hi; t0 += kFTile) {
    const int n = min(kFTile, k_hi - t0);
    // (1) scales/zeros of this tile into shared memory.
    if (t0 % kPage == 0) {
      if (tid < 32) reinterpret_cast<uint4*>(&sm.sz[tid >> 3][0])[tid & 7] = rs;
    } else if (tid < n) {
      sm.sz[0][tid] = static_cast<uint16_t>(rs.x);
      sm.sz[1][tid] = static_cast<uint16_t>(rs.y);
      sm.sz[2][tid] = static_cast<uint16_t>(rs.z);
      sm.sz[3][tid] = static_cast<uint16_t>(rs.w);
    }
    __syncthreads();
    // (2) dequantize into the fp16 tiles; the current token's fp16 row as is.
#pragma unroll
    for (int j = 0; j < LPT; ++j) {
      const int idx = tid + j * kFThreads;
      const int key = idx / CPR, ch = idx % CPR;
      if (key < n && t0 + key < ctx) {
        dequant_chunk(rk[j], sm.k, key, ch, sm.sz[0][key], sm.sz[1][key]);
        dequant_chunk(rv[j], sm.v, key, ch, sm.sz[2][key], sm.sz[3][key]);
      }
    }
    if (ctx >= t0 && ctx < t0 + n) {
      const int key = ctx - t0;
      const int64_t row = (q_row * a.geom.kv_heads + kvh) * D;
      if (tid < UPR) {
        sm.k[unit_index<D>(key, tid)] = __ldg(reinterpret_cast<const uint4*>(a.k16 + row) + tid);
      } else if (tid < 2 * UPR) {
        const int u = tid - UPR;
        sm.v[unit_index<D>(key, u)] = __ldg(reinterpret_cast<const uint4*>(a.v16 + row) + u);
      }
    }
    // (3) issue the next tile's loads; they complete while this tile is computed.
    if (t0 + kFTile < k_hi) load_tile(t0 + kFTile);
    __syncthreads();

    // (4) scores: thread = (key, heads of one parity), fp32 dots over 16-byte units.
    {
      const int key = tid & (kFTile - 1), hh = tid >> 6;
      if (key < n && hh < G) {
        float dot[HPT];
#pragma unroll
        for (int j = 0; j < HPT; ++j) dot[j] = 0.0f;
#pragma unroll 4
        for (int u = 0; u < UPR; ++u) {
          const uint4 kr = sm.k[unit_index<D>(key, u)];
          const float2 k01 = __half22float2(u32_as_half2(kr.x));
          const float2 k23 = __half22float2(u32_as_half2(kr.y));
          const float2 k45 = __half22float2(u32_as_half2(kr.z));
          const float2 k67 = __half22float2(u32_as_half2(kr.w));
#pragma unroll
          for (int j = 0; j < HPT; ++j) {
            const int i = hh + 2 * j;
            if (i < G) {
              const float4 qa = reinterpret_cast<const float4*>(sm.q + i * D)[2 * u];
              const float4 qb = reinterpret_cast<const float4*>(sm.q + i * D)[2 * u + 1];
              float d = dot[j];
              d += qa.x * k01.x;
              d += qa.y * k01.y;
              d += qa.z * k23.x;
              d += qa.w * k23.y;
              d += qb.x * k45.x;
              d += qb.y * k45.y;
              d += qb.z * k67.x;
              d += qb.w * k67.y;
              dot[j] = d;
            }
          }
        }
#pragma unroll
        for (int j = 0; j < HPT; ++j) {
          const int i = hh + 2 * j;
          if (i < G) sm.p[i * kFTile + key] = __fmul_rn(dot[j], a.scale);
        }
      }
    }
    __syncthreads();
    // (5) online softmax update, one warp per head (as attention_kv_device.cuh).
    for (int i = warp; i < G; i += kFThreads / 32) {
      float* ps = sm.p + i * kFTile;
      const float s0 = lane < n ? ps[lane] : -INFINITY;
      const float s1 = lane + 32 < n ? ps[lane + 32] : -INFINITY;
      float tmax = fmaxf(s0, s1);
      for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
      const float m_old = sm.m[i];
      const float m_new = fmaxf(m_old, tmax);
      const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
      const float e0 = lane < n ? expf(s0 - m_new) : 0.0f;
      const float e1 = lane + 32 < n ? expf(s1 - m_new) : 0.0f;
      if (lane < n) ps[lane] = e0;
      if (lane + 32 < n) ps[lane + 32] = e1;
      float tsum = e0 + e1;
      for (int o = 16; o > 0; o >>= 1) tsum += __shfl_xor_sync(0xffffffffu, tsum, o);
      __syncwarp();
      if (lane == 0) {
        sm.m[i] = m_new;
        sm.l[i] = sm.l[i] * alpha + tsum;
        sm.alpha[i] = alpha;
      }
    }
    __syncthreads();
    // (6) P.V: thread owns channels pv_c0 .. +CPV of head pv_head.
    if (pv_head < G) {
      const float al = sm.alpha[pv_head];
#pragma unroll
      for (int c = 0; c < CPV; ++c) acc[c] *= al;
      const float* ps = sm.p + pv_head * kFTile;
      const int u = pv_c0 / 8, off = pv_c0 % 8;
      const uint16_t* vbase = reinterpret_cast<const uint16_t*>(sm.v);
      for (int kk = 0; kk < n; ++kk) {
        const float pk = ps[kk];
        const uint16_t* vp = vbase + unit_index<D>(kk, u) * 8 + off;
        if constexpr (CPV == 2) {
          const float2 v01 = __half22float2(*reinterpret_cast<const __half2*>(vp));
          acc[0] += pk * v01.x;
          acc[1] += pk * v01.y;
        } else if constexpr (CPV == 4) {
          const uint2 r = *reinterpret_cast<const uint2*>(vp);
          const float2 v01 = __half22float2(u32_as_half2(r.x));
          const float2 v23 = __half22float2(u32_as_half2(r.y));
          acc[0] += pk * v01.x;
          acc[1] += pk * v01.y;
          acc[2] += pk * v23.x;
          acc[3] += pk * v23.y;
        } else {
          const uint4 r = *reinterpret_cast<const uint4*>(vp);
          const uint32_t wv[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 vv = __half22float2(u32_as_half2(wv[e]));
            acc[2 * e] += pk * vv.x;
            acc[2 * e + 1] += pk * vv.y;
          }
        }
      }
    }
    __syncthreads();  // the next tile overwrites sm.k/v/p/sz
  }

  // Output: normalized directly (one split) or the unnormalized partial and (m, l).
  if (pv_head < G) {
    const int64_t h = static_cast<int64_t>(kvh) * G + pv_head;
    if (a.splits == 1) {
      const float l = sm.l[pv_head];
      float* o = a.out + (q_row * a.num_heads + h) * D + pv_c0;
#pragma unroll
      for (int c = 0; c < CPV; ++c) o[c] = acc[c] / l;
    } else {
      const int64_t idx = (static_cast<int64_t>(seq) * a.num_heads + h) * a.splits + split;
      float* o = a.part_o + idx * D + pv_c0;
#pragma unroll
      for (int c = 0; c < CPV; ++c) o[c] = acc[c];
    }
  }
  if (a.splits > 1 && tid < G) {
    const int64_t h = static_cast<int64_t>(kvh) * G + tid;
    const int64_t idx = (static_cast<int64_t>(seq) * a.num_heads + h) * a.splits + split;
    a.part_ml[idx * 2] = sm.m[tid];
    a.part_ml[idx * 2 + 1] = sm.l[tid];
  }
}

// out[row, h, :] = sum_j o_j e^(m_j - M) / sum_j l_j e^(m_j - M) over the used splits (the
// reference's merge, with this kernel's split size).
__global__ void decode_fast_merge_kernel(const float* part_o, const float* part_ml,
                                         const int32_t* token_offset, const int32_t* context_len,
                                         int num_heads, int head_dim, int splits, int split_keys,
                                         int window, float* out) {
  const int h = blockIdx.x, seq = blockIdx.y;
  const int ctx = context_len[seq];
  const int lo = first_key(ctx, window);
  const int used = (ctx + 1 - lo + split_keys - 1) / split_keys;
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

template <KvFormat F, int D, int G>
void launch_fast(const FastArgs& a, int num_seqs, int kv_heads, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(kv_heads),
                  static_cast<unsigned>(num_seqs));
  decode_fast_kernel<F, D, G><<<grid, kFThreads, 0, stream>>>(a);
}

template <KvFormat F, int D>
void launch_fast_g(const FastArgs& a, int g, int num_seqs, int kv_heads, cudaStream_t stream) {
  switch (g) {
    case 1:
      launch_fast<F, D, 1>(a, num_seqs, kv_heads, stream);
      break;
    case 2:
      launch_fast<F, D, 2>(a, num_seqs, kv_heads, stream);
      break;
    case 4:
      launch_fast<F, D, 4>(a, num_seqs, kv_heads, stream);
      break;
    default:
      launch_fast<F, D, 8>(a, num_seqs, kv_heads, stream);
      break;
  }
}

}  // namespace

bool decode_attention_fast_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                     int64_t head_dim) {
  if (format != KvFormat::kv4 && format != KvFormat::kv8) return false;
  if (head_dim != 64 && head_dim != 128) return false;
  if (kv_heads <= 0 || kv_heads > 65535 || num_heads <= 0 || num_heads % kv_heads != 0) {
    return false;
  }
  const int64_t g = num_heads / kv_heads;
  return g == 1 || g == 2 || g == 4 || g == 8;
}

int64_t decode_attention_fast_split_keys(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                         int64_t num_sms) {
  // Enough CTAs for about two resident waves (~5 CTAs of this size fit an SM), but never
  // splits shorter than 256 keys: shorter splits only add merge traffic, and the reference's
  // workspace (256-key splits) must stay large enough.
  const int64_t base = std::max<int64_t>(1, num_seqs * kv_heads);
  const int64_t want = std::max<int64_t>(1, (8 * std::max<int64_t>(1, num_sms) + base - 1) / base);
  int64_t keys = (std::max<int64_t>(1, max_total_len) + want - 1) / want;
  keys = (keys + kFTile - 1) / kFTile * kFTile;
  return std::max<int64_t>(kMinSplitKeys, keys);
}

void decode_attention_fast(const float* q, const uint16_t* k16, const uint16_t* v16,
                           const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                           int64_t num_heads, int64_t window, float* out, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = attn::check_decode_call(
      "decode_attention_fast", decode_attention_fast_supported(cache.format, num_heads, hkv, d), q,
      k16, v16, cache, batch, num_heads, workspace, workspace_bytes, "{1,2,4,8}");
  if (S == 0) return;

  const int64_t keys =
      decode_attention_fast_split_keys(S, hkv, batch.max_total_len, current_device_sm_count());
  const FastArgs a = attn::make_decode_args<FastArgs>(q, k16, v16, cache, batch, num_heads, window,
                                                      out, workspace, keys);
  const int g = static_cast<int>(num_heads / hkv);
  const int ns = static_cast<int>(S), nh = static_cast<int>(hkv);
  attn::dispatch_decode_geometry(
      cache.format, d, [&]<KvFormat F, int D>() { launch_fast_g<F, D>(a, g, ns, nh, stream); });
  check_launch("decode_attention_fast split", shape);
  if (a.splits > 1) {
    const dim3 grid(static_cast<unsigned>(num_heads), static_cast<unsigned>(S));
    decode_fast_merge_kernel<<<grid, 128, 0, stream>>>(
        a.part_o, a.part_ml, batch.token_offset, batch.context_len, a.num_heads,
        static_cast<int>(d), a.splits, a.split_keys, a.window, out);
    check_launch("decode_attention_fast merge", shape);
  }
}

}  // namespace qserve::cuda
