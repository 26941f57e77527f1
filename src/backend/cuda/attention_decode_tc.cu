// Tensor-core decode attention over paged KV4/KV8 caches (head_dim 64/128, GQA group 1..8).
//
// Why a new kernel: attention_decode_fast.cu runs at ~0.68 TB/s (KV4) and ~1.2 TB/s (KV8) on
// the H200 with nearly the same time for both formats, i.e. it is bound by instruction issue /
// shared-memory traffic of its fp32 CUDA-core dots (G x D FMAs per key, each fed by shared
// loads), not by HBM. This kernel moves both products to mma.sync m16n8k16 (fp16 in, fp32
// accumulate) while keeping fp32-level accuracy:
//
//  - Exact operands. Dequantized K/V values are fp16 by definition (attention_kv_device.cuh:
//    KV4 = one fp16 HFMA, KV8 = fp16_RN of an fp32 expression), computed here with exactly the
//    same operations, so the tensor-core B operands are the reference's values bit for bit.
//  - hi/lo split of the fp32 side. q is scaled by a power of two 2^e (max|q| -> [2^14, 2^15),
//    exact) and split as q = hi + lo, hi = fp16(q), lo = fp16(q - hi) (q - hi is exact in fp32),
//    leaving a relative residual of ~2^-22 — below the fp32 summation error the documented
//    tolerance already covers. P (in [0, 1]) is scaled by 2^15 and split the same way. The
//    products hi*K, lo*K are exact in fp32; only the tensor core's accumulation order/rounding
//    differs from a sequential fp32 sum (same order of error, covered by the 2^-21*B term).
//  - The split rides in the M dimension: the A operand's rows 0..7 are the hi parts of the G
//    query heads, rows 8..15 the lo parts, so one m16n8k16 computes both and a thread finds
//    hi and lo of the same (head, key) in its own c0/c2 (c1/c3) registers: score = c0 + c2.
//  - The S accumulator layout is the P.V A-operand layout (FlashAttention-2's trick), because
//    the key order inside each 16-key step is permuted consistently: the S n-tile loader of
//    n-index j reads physical key 4(j/2) + (j%2) + 2*ntile, so a thread's C values are the
//    P values for keys 4t..4t+3, which is exactly the key set its P.V B operand (V) holds.
//    Channel orders are permuted the same way on both sides of each dot (q vs K: the
//    "kdim" map below; V vs the output: each thread owns D/8 contiguous channels of a row).
//  - Memory: each warp streams its own 32-key blocks (page-aligned, so never straddling a
//    page) through a private cp.async ring of kStages stages (K payload, V payload, and the
//    64-byte fp16 scale/zero runs of both), so many KiB per SM are in flight without
//    registers and without CTA barriers in the main loop; shared memory is read with 16/8-byte
//    loads straight into the fragment layout.
//  - Masking: blocks are aligned to 32 positions; positions outside [k_lo, min(k_hi, ctx))
//    get scale = zero = 0 (their dequantized K/V are exactly 0, never NaN from stale bytes)
//    and score -inf. The current token (position ctx, fp16 k16/v16, unquantized) is applied
//    after the in-CTA merge as one more fp32 online-softmax step, exactly as the reference.
//  - Split-KV and merge as attention_decode_fast.cu (log-sum-exp partials in the same
//    workspace layout, split sizes multiples of 64 and >= 256 keys).
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

using attn::cp_async_wait;
using attn::first_key;
using attn::h2u;
using attn::kPage;
using attn::lds_words;
using attn::PageGeom;

constexpr int kTcThreads = 128;  // 4 warps, each an independent key stream
constexpr int kTcWarps = kTcThreads / 32;
constexpr int kBlk = 32;  // keys per warp step (half a page; never straddles a page)
constexpr int kMinSplitKeys = 256;
constexpr float kPScale = 32768.0f;  // 2^15: P in [0,1] -> fp16 hi/lo without subnormal loss
constexpr float kPInv = 1.0f / 32768.0f;

template <KvFormat F, int D>
struct TcGeom {
  static constexpr int RB = F == KvFormat::kv4 ? D / 2 : D;  // payload bytes per key
  static constexpr int kStages = F == KvFormat::kv4 ? 4 : 3;
  static constexpr int kPayload = kBlk * RB;                 // bytes of K (or V) per block
  static constexpr int kStageBytes = 2 * kPayload + 4 * 64;  // + K s, K z, V s, V z (64 B each)
  static constexpr int kRingBytes = kTcWarps * kStages * kStageBytes;
  static constexpr int kKWords = RB / 16;  // 32-bit words of K a thread reads per key
  static constexpr int kVWords = RB / 32;  // 32-bit words of V a thread reads per key
  static constexpr int kChunks = D / 16;   // k-chunks of the S mma
  static constexpr int kNTiles = D / 8;    // n-tiles of the P.V mma
  // Merge scratch (aliases the ring after the loop): per warp, 8 heads x (D + 2) floats.
  static constexpr int kMergeBytes = kTcWarps * 8 * (D + 2) * 4;
  static constexpr int kSmemBytes =
      (kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes) + 8 * D * 4 + 64;
  static_assert(kKWords >= 2 && kVWords >= 1, "tile mapping");
};

using TcArgs = attn::DecodeArgs;

__device__ __forceinline__ __half2 u2h(uint32_t u) {
  __half2 h;
  memcpy(&h, &u, 4);
  return h;
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// KV4: codes (nibble i, nibble 4+i) of word w as exact fp16 pairs, then HFMA(q, s, Z) per lane
// exactly as kv_pair<kv4> (one fp16 rounding). (1024 + q) - 1024 is exact in fp16.
__device__ __forceinline__ uint32_t kv4_deq(uint32_t w, int i, __half2 s2, __half2 z2) {
  const uint32_t codes = ((w >> (4 * i)) & 0x000f000fu) | 0x64006400u;
  const __half2 q = __hsub2(u2h(codes), u2h(0x64006400u));
  return h2u(__hfma2(q, s2, z2));
}
// KV8: fp16_RN(s * (q - z)) with correctly rounded fp32 steps (kv_pair<kv8>); the byte is
// widened exactly through the 2^23 magic (full-rate ALU instead of I2F).
__device__ __forceinline__ float kv8_val(uint32_t w, int byte, float s, float z) {
  const float q =
      __fsub_rn(__uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540u + byte)), 8388608.0f);
  return __fmul_rn(s, __fsub_rn(q, z));
}

// Relative channel (within a thread's D/4-channel slice) of A slot j (0: a0, 1: a1, 2: a4,
// 3: a5) of k-chunk c: must match how the K B operand is extracted below.
template <KvFormat F>
__device__ __forceinline__ int kdim(int c, int j) {
  if constexpr (F == KvFormat::kv4) {
    // b0b1 = kv4_deq(word c/2, 2(c&1)) = channels (i, i+4); b2b3 = the next i.
    // j = 0..3 -> 0, 4, 1, 5
    return 8 * (c >> 1) + 2 * (c & 1) + 4 * (j & 1) + (j >> 1);
  } else {
    return 4 * c + j;  // word c = channels 4c..4c+3 in byte order
  }
}

template <KvFormat F, int D>
__global__ void __launch_bounds__(kTcThreads, 2) decode_tc_kernel(TcArgs a) {
  using Geo = TcGeom<F, D>;
  constexpr int RB = Geo::RB, NS = Geo::kStages;
  extern __shared__ __align__(16) uint8_t smem[];
  float* q_s = reinterpret_cast<float*>(smem + Geo::kSmemBytes - 8 * D * 4 - 64);
  float* misc = q_s + 8 * D;  // [0]: max|q| scratch, [8..15]: current-token scores

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int G = a.group;
  const int ctx = a.context_len[seq];
  const attn::SplitRange range =
      attn::split_range(ctx, first_key(ctx, a.window), split, a.split_keys);
  if (split >= range.used) return;  // unused split; the merge does not read it
  const int k_lo = range.k_lo, k_hi = range.k_hi;
  const int kend = range.kend;  // cached keys of this split: [k_lo, kend)
  const int64_t q_row = a.token_offset[seq];
  const int32_t* bt = a.block_table + static_cast<int64_t>(seq) * a.block_stride;
  const int64_t pb = a.geom.page_bytes;

  // ---- q: stage in shared memory, max|q|, power-of-two scale, hi/lo A fragments ----------
  // 2^e maps max|q| into [2^14, 2^15): hi/lo stay normal fp16, q*K stays far below fp32 max.
  // Only the G heads are staged (the A fragments zero rows g >= G).
  const float* qg = a.q + (q_row * a.num_heads + static_cast<int64_t>(kvh) * G) * D;
  const int e = attn::stage_q_pow2<kTcThreads, D, /*kPad=*/false>(qg, G, q_s, misc, tid, lane);
  const float q_mul = scalbnf(1.0f, e);
  // score = (acc * 2^-e) * scale: the first product is exact (a power of two), the second is
  // the reference's __fmul_rn(dot, scale).
  const float q_unscale = scalbnf(1.0f, -e);

  uint32_t qa[Geo::kChunks][4];
#pragma unroll
  for (int c = 0; c < Geo::kChunks; ++c) {
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = g < G ? __fmul_rn(q_s[g * D + (D / 4) * t + kdim<F>(c, j)], q_mul) : 0.0f;
    }
    __half hi[4], lo16[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      hi[j] = __float2half_rn(v[j]);
      lo16[j] = __float2half_rn(__fsub_rn(v[j], __half2float(hi[j])));
    }
    qa[c][0] = h2u(__halves2half2(hi[0], hi[1]));      // row g,   k 2t, 2t+1
    qa[c][1] = h2u(__halves2half2(lo16[0], lo16[1]));  // row g+8, k 2t, 2t+1
    qa[c][2] = h2u(__halves2half2(hi[2], hi[3]));      // row g,   k 2t+8, 2t+9
    qa[c][3] = h2u(__halves2half2(lo16[2], lo16[3]));  // row g+8, k 2t+8, 2t+9
  }

  // ---- per-warp stream of 32-key blocks through a cp.async ring -----------------------------
  const attn::WarpKvStream<Geo, kTcWarps, kBlk> ks(smem, a.geom, bt, pb, kvh, k_lo, kend, warp,
                                                   lane);

  float o[Geo::kNTiles][4];
#pragma unroll
  for (int j = 0; j < Geo::kNTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_run = -INFINITY, l_part = 0.0f;  // head g; l_part is this thread's share

  auto issue = [&](int i) { ks.issue(a, i); };  // a lambda, not direct calls: see WarpKvStream
#pragma unroll
  for (int i = 0; i < NS - 1; ++i) issue(i);

  for (int i = 0; i < ks.nblk; ++i) {
    cp_async_wait<NS - 2>();
    __syncwarp();  // block i visible to all lanes; all lanes done with block i-1's stage
    issue(i + NS - 1);
    const uint8_t* st = ks.ring + (i % NS) * Geo::kStageBytes;
    const uint16_t* sz = reinterpret_cast<const uint16_t*>(st + 2 * Geo::kPayload);
    const int pos0 = ks.pos0(i);

    // -- S = q K^T: 2 sub-blocks x 2 n-tiles of 8 keys --
    float sc[2][2][4];
#pragma unroll
    for (int sb = 0; sb < 2; ++sb) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int kk = 16 * sb + 4 * (g >> 1) + (g & 1) + 2 * nt;  // this lane's B key
        const int pos = pos0 + kk;
        const bool valid = pos >= k_lo && pos < kend;
        uint32_t w[Geo::kKWords];
        lds_words<Geo::kKWords>(w, st + kk * RB + t * (RB / 4));
        float(&c)[4] = sc[sb][nt];
        c[0] = c[1] = c[2] = c[3] = 0.0f;
        if constexpr (F == KvFormat::kv4) {
          const uint16_t sbits = valid ? sz[kk] : uint16_t{0};
          const uint16_t zbits = valid ? sz[32 + kk] : uint16_t{0};
          const float s = attn::h2f(sbits), z = attn::h2f(zbits);
          const __half s16 = __ushort_as_half(sbits);
          const __half zt = __float2half_rn(-__fmul_rn(s, z));
          const __half2 s2 = __halves2half2(s16, s16), z2 = __halves2half2(zt, zt);
#pragma unroll
          for (int ch = 0; ch < Geo::kChunks; ++ch) {
            const uint32_t wd = w[ch >> 1];
            mma16816(c, qa[ch], kv4_deq(wd, 2 * (ch & 1), s2, z2),
                     kv4_deq(wd, 2 * (ch & 1) + 1, s2, z2));
          }
        } else {
          const float s = valid ? attn::h2f(sz[kk]) : 0.0f;
          const float z = valid ? attn::h2f(sz[32 + kk]) : 0.0f;
#pragma unroll
          for (int ch = 0; ch < Geo::kChunks; ++ch) {
            const uint32_t wd = w[ch];
            const uint32_t b0 = h2u(__floats2half2_rn(kv8_val(wd, 0, s, z), kv8_val(wd, 1, s, z)));
            const uint32_t b1 = h2u(__floats2half2_rn(kv8_val(wd, 2, s, z), kv8_val(wd, 3, s, z)));
            mma16816(c, qa[ch], b0, b1);
          }
        }
      }
    }

    // -- scores of head g for keys 16sb + 4t + 2nt + u; online softmax (fp32) --
    float p[2][2][2];
    float bmax = -INFINITY;
#pragma unroll
    for (int sb = 0; sb < 2; ++sb) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int pos = pos0 + 16 * sb + 4 * t + 2 * nt + u;
          const float acc = sc[sb][nt][u] + sc[sb][nt][2 + u];  // hi + lo rows
          const float s = __fmul_rn(__fmul_rn(acc, q_unscale), a.scale);
          p[sb][nt][u] = (pos >= k_lo && pos < kend) ? s : -INFINITY;
          bmax = fmaxf(bmax, p[sb][nt][u]);
        }
      }
    }
    bmax = fmaxf(bmax, __shfl_xor_sync(0xffffffffu, bmax, 1));
    bmax = fmaxf(bmax, __shfl_xor_sync(0xffffffffu, bmax, 2));
    const float m_new = fmaxf(m_run, bmax);
    const float alpha = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
    m_run = m_new;
    float psum = 0.0f;
#pragma unroll
    for (int sb = 0; sb < 2; ++sb) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const float s = p[sb][nt][u];
          const float e = s == -INFINITY ? 0.0f : expf(s - m_new);
          p[sb][nt][u] = e;
          psum += e;
        }
      }
    }
    l_part = l_part * alpha + psum;
#pragma unroll
    for (int j = 0; j < Geo::kNTiles; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) o[j][r] *= alpha;
    }

    // -- O += P V: per 16-key sub-block one k-step; A rows g = hi(P'), g+8 = lo(P') --
#pragma unroll
    for (int sb = 0; sb < 2; ++sb) {
      uint32_t pa[4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const float x0 = __fmul_rn(p[sb][nt][0], kPScale), x1 = __fmul_rn(p[sb][nt][1], kPScale);
        const __half h0 = __float2half_rn(x0), h1 = __float2half_rn(x1);
        const __half l0 = __float2half_rn(__fsub_rn(x0, __half2float(h0)));
        const __half l1 = __float2half_rn(__fsub_rn(x1, __half2float(h1)));
        pa[2 * nt] = h2u(__halves2half2(h0, h1));
        pa[2 * nt + 1] = h2u(__halves2half2(l0, l1));
      }
      // V rows of keys 16sb + 4t + r, channels g*(D/8) .. +D/8 (RB/8 bytes).
      uint32_t vw[4][Geo::kVWords];
      float vs[4], vz[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int kk = 16 * sb + 4 * t + r;
        const int pos = pos0 + kk;
        const bool valid = pos >= k_lo && pos < kend;
        lds_words<Geo::kVWords>(vw[r], st + Geo::kPayload + kk * RB + g * (RB / 8));
        const uint16_t sbits = valid ? sz[64 + kk] : uint16_t{0};
        const uint16_t zbits = valid ? sz[96 + kk] : uint16_t{0};
        vs[r] = attn::h2f(sbits);
        vz[r] = attn::h2f(zbits);
      }
      if constexpr (F == KvFormat::kv4) {
        __half2 s2[2], z2[2];
#pragma unroll
        for (int pr = 0; pr < 2; ++pr) {
          s2[pr] = __halves2half2(__float2half_rn(vs[2 * pr]), __float2half_rn(vs[2 * pr + 1]));
          z2[pr] = __halves2half2(__float2half_rn(-__fmul_rn(vs[2 * pr], vz[2 * pr])),
                                  __float2half_rn(-__fmul_rn(vs[2 * pr + 1], vz[2 * pr + 1])));
        }
#pragma unroll
        for (int wi = 0; wi < Geo::kVWords; ++wi) {
          // Bytes of keys (4t, 4t+1) and (4t+2, 4t+3) interleaved: nibble i -> key a, 4+i ->
          // key b, for channels 0..3 (bytes 0,1) and 4..7 (bytes 2,3) of the word.
          const uint32_t t00 = __byte_perm(vw[0][wi], vw[1][wi], 0x5410u);
          const uint32_t t01 = __byte_perm(vw[0][wi], vw[1][wi], 0x7632u);
          const uint32_t t10 = __byte_perm(vw[2][wi], vw[3][wi], 0x5410u);
          const uint32_t t11 = __byte_perm(vw[2][wi], vw[3][wi], 0x7632u);
#pragma unroll
          for (int di = 0; di < 8; ++di) {
            const uint32_t b0 = kv4_deq(di < 4 ? t00 : t01, di & 3, s2[0], z2[0]);
            const uint32_t b1 = kv4_deq(di < 4 ? t10 : t11, di & 3, s2[1], z2[1]);
            mma16816(o[8 * wi + di], pa, b0, b1);
          }
        }
      } else {
#pragma unroll
        for (int wi = 0; wi < Geo::kVWords; ++wi) {
#pragma unroll
          for (int bi = 0; bi < 4; ++bi) {
            const uint32_t b0 = h2u(__floats2half2_rn(kv8_val(vw[0][wi], bi, vs[0], vz[0]),
                                                      kv8_val(vw[1][wi], bi, vs[1], vz[1])));
            const uint32_t b1 = h2u(__floats2half2_rn(kv8_val(vw[2][wi], bi, vs[2], vz[2]),
                                                      kv8_val(vw[3][wi], bi, vs[3], vz[3])));
            mma16816(o[4 * wi + bi], pa, b0, b1);
          }
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its ring: the merge scratch aliases it

  // ---- in-CTA merge of the 4 warp streams -------------------------------------------------
  float* red_o = reinterpret_cast<float*>(smem);  // [warp][8][D]
  float* red_ml = red_o + kTcWarps * 8 * D;       // [warp][8][2]
  l_part += __shfl_xor_sync(0xffffffffu, l_part, 1);
  l_part += __shfl_xor_sync(0xffffffffu, l_part, 2);
  {
    float* ro = red_o + (warp * 8 + g) * D;
#pragma unroll
    for (int j = 0; j < Geo::kNTiles; ++j) {
      // Output channel of n-index n in n-tile j is n*(D/8) + j; hi + lo rows, undo 2^15.
      ro[(2 * t) * (D / 8) + j] = __fmul_rn(o[j][0] + o[j][2], kPInv);
      ro[(2 * t + 1) * (D / 8) + j] = __fmul_rn(o[j][1] + o[j][3], kPInv);
    }
    if (t == 0) {
      red_ml[(warp * 8 + g) * 2] = m_run;
      red_ml[(warp * 8 + g) * 2 + 1] = l_part;
    }
  }
  // Current token (scores: fp32 dot as the reference), the merge of the warp streams with
  // exp, and the store (maxima of partials in natural-log units).
  attn::merge_warps_and_store</*kLog2=*/false, kTcWarps, D, /*kSwz=*/false>(
      a, red_o, red_ml, q_s, misc, G, q_row, kvh, seq, split, ctx, k_lo, k_hi, tid, lane, warp);
}

template <KvFormat F, int D>
void launch_tc(const TcArgs& a, int num_seqs, int kv_heads, cudaStream_t stream) {
  constexpr int smem = TcGeom<F, D>::kSmemBytes;
  // Idempotent and cheap; needed once per instantiation for > 48 KiB of dynamic smem.
  QSERVE_CUDA_CHECK(cudaFuncSetAttribute(decode_tc_kernel<F, D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                    "decode_attention_tc smem attribute");
  const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(kv_heads),
                  static_cast<unsigned>(num_seqs));
  decode_tc_kernel<F, D><<<grid, kTcThreads, smem, stream>>>(a);
}

}  // namespace

bool decode_attention_tc_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                   int64_t head_dim) {
  if (format != KvFormat::kv4 && format != KvFormat::kv8) return false;
  if (head_dim != 64 && head_dim != 128) return false;
  if (kv_heads <= 0 || kv_heads > 65535 || num_heads <= 0 || num_heads % kv_heads != 0) {
    return false;
  }
  const int64_t g = num_heads / kv_heads;
  return g >= 1 && g <= 8;  // the 8 hi rows / 8 lo rows of the m16 A operand
}

int64_t decode_attention_tc_split_keys(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                       int64_t num_sms) {
  // Two CTAs are resident per SM; ask for about two waves of them so the tail is short, but
  // never splits below 256 keys (the workspace is sized for 256-key splits, and each of the 4
  // warps should still stream a few 32-key blocks).
  const int64_t base = std::max<int64_t>(1, num_seqs * kv_heads);
  const int64_t want = std::max<int64_t>(1, (4 * std::max<int64_t>(1, num_sms) + base - 1) / base);
  int64_t keys = (std::max<int64_t>(1, max_total_len) + want - 1) / want;
  keys = (keys + kPage - 1) / kPage * kPage;
  return std::max<int64_t>(kMinSplitKeys, keys);
}

void decode_attention_tc(const float* q, const uint16_t* k16, const uint16_t* v16,
                         const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                         int64_t num_heads, int64_t window, float* out, void* workspace,
                         size_t workspace_bytes, cudaStream_t stream) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = attn::check_decode_call(
      "decode_attention_tc", decode_attention_tc_supported(cache.format, num_heads, hkv, d), q, k16,
      v16, cache, batch, num_heads, workspace, workspace_bytes);
  if (S == 0) return;

  const int64_t keys =
      decode_attention_tc_split_keys(S, hkv, batch.max_total_len, current_device_sm_count());
  const TcArgs a = attn::make_decode_args<TcArgs>(q, k16, v16, cache, batch, num_heads, window, out,
                                                  workspace, keys,
                                                  /*cached_splits=*/true);
  const int ns = static_cast<int>(S), nh = static_cast<int>(hkv);
  attn::dispatch_decode_geometry(cache.format, d,
                                 [&]<KvFormat F, int D>() { launch_tc<F, D>(a, ns, nh, stream); });
  check_launch("decode_attention_tc split", shape);
  attn::launch_split_merge<false>(a, batch, d, stream, "decode_attention_tc merge", shape);
}

}  // namespace qserve::cuda
