// Decode attention over paged KV4/KV8 caches on tensor cores with deferred dequantization
// ("keys as M"), head_dim 64/128, GQA group 1..8. The default decode kernel since issue 8's
// second pass (docs/kernels.md "Attention (decode)").
//
// Why another kernel: attention_decode_tc.cu keeps fp32-level accuracy with hi/lo splits and
// dequantizes every K/V element with the reference's exact fp16 HFMA. On the H200 it runs at
// 1.45 TB/s (KV4): Nsight Compute shows 44 warp-instructions per (key, KV head), 174 registers
// (2 warps per scheduler) and issue slots 48% busy — it is bound by instruction count and
// latency, not by HBM. This kernel cuts both:
//
//  - Keys are the M side of both MMAs (m16n8k16, fp16 in, fp32 accumulate):
//      S^T[key][head] = K[key][:] . q^T          (A = K codes,  B = q,   N = 8 heads)
//      O^T[chan][head] += V^T[chan][key] . P'^T  (A = V codes,  B = P',  N = 8 heads)
//    so one MMA covers 16 keys (S) or 16 channels (O) and no M rows are padding; the N side
//    holds the G <= 8 query heads of the KV group.
//  - Deferred scales. A page row holds codes c (uint4 or uint8) with a per-(token, head) fp16
//    scale s and zero z; the value is s (c - z). The MMAs read the *codes* (exact small
//    integers in fp16, unpacked with two or three integer ops per pair and no conversion
//    instruction) and the scales are applied per key outside the MMA:
//      score_k = s_k (q . c_k) - s_k z_k (sum q)            (per key and head, fp32)
//      O       = sum_k (p_k s_k) c_k - sum_k p_k s_k z_k     (P' = fp16(p_k s_k) is the B operand)
//  - P^T for the second MMA comes from the first MMA's accumulators through movmatrix.trans
//    (the S^T C fragment of a thread is the transpose of the B fragment it needs).
//  - Memory: as attention_decode_tc.cu, each warp streams its own page-aligned 32-key blocks
//    through a private cp.async ring (no CTA barriers in the main loop); ~100 registers, so 3-4
//    CTAs (12-16 warps) per SM instead of 2.
//
// Numerics (the bound is derived in ops_cuda_attention.h): q is rounded to fp16 once (after an
// exact power-of-two scaling that keeps it normal), P' = p s is rounded to fp16, and K/V are
// s (c - z) evaluated in fp32 instead of the reference's fp16-rounded values. Softmax, the
// normalizer and all accumulations are fp32; exponentials are exp2 with log2(e) folded in.
// QServe's own decode kernel computes in fp16 throughout.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "backend/cuda/attention_decode_common.cuh"
#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/env_override.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/pdl_device.cuh"
#include "core/error.h"

namespace qserve::cuda {

namespace {

using attn::cp_async_wait;
using attn::first_key;
using attn::h2u;
using attn::kLog2e;
using attn::kPage;
using attn::lds_words;
using attn::PageGeom;

constexpr int kBlk = 32;  // keys per warp step (half a page; never straddles a page)
constexpr int kMinSplitKeys = 256;

// W warps per CTA, each an independent key stream: 4 (the default), or 8 for KV4 where a
// (sequence, KV head) would otherwise be split across CTAs only to fill the GPU (long contexts
// at small batch, e.g. 32 x 8192): twice the warps per CTA at half the CTAs per SM keeps the
// SM's 16 streams and replaces the split-KV partials and their merge kernel by the in-CTA merge
// (decode_attention_mma_plan).
// KV4 runs a 3-stage ring at 4 CTAs (of 4 warps) per SM; a 2-stage ring at 5 CTAs per SM (more
// warps per scheduler, 102 registers) measured 25% slower on the H200 (2.35 vs 3.13 TB/s at
// 256 x 1536).
template <KvFormat F, int D, int W = 4>
struct Geom {
  static_assert(W == 4 || (W == 8 && F == KvFormat::kv4), "4 warps, or 8 for KV4");
  static constexpr int kThreads = 32 * W;
  static constexpr bool kKv4 = F == KvFormat::kv4;
  static constexpr int RB = kKv4 ? D / 2 : D;                // payload bytes per key
  static constexpr int kStages = kKv4 ? 3 : 2;               // ring depth per warp
  static constexpr int kMinBlocks = (kKv4 ? 16 : 12) / W;    // CTAs per SM
  static constexpr int kPayload = kBlk * RB;                 // bytes of K (or V) per block
  static constexpr int kStageBytes = 2 * kPayload + 4 * 64;  // + K s, K z, V s, V z
  static constexpr int kRingBytes = W * kStages * kStageBytes;
  static constexpr int kChunks = D / 16;  // k-chunks of the S MMA
  static constexpr int kMTiles = D / 16;  // m-tiles (16 channels) of the O MMA
  static constexpr int kKBytes = RB / 4;  // K bytes of one key a lane unpacks
  static constexpr int kKWords = kKBytes / 4;
  static constexpr int kVBytes = RB / 8;  // V bytes of one key a lane unpacks
  static constexpr int kVWords = kVBytes / 4;
  // Merge scratch (aliases the ring after the loop): per warp 8 heads x D outputs + (m, l).
  static constexpr int kMergeBytes = W * 8 * (D + 2) * 4;
  static constexpr int kQBytes = 8 * D * 4;  // fp32 q of the group (current token)
  static constexpr int kSmemBytes =
      (kRingBytes > kMergeBytes ? kRingBytes : kMergeBytes) + kQBytes + 64;
  static_assert(kKWords >= 1 && kVWords >= 1, "tile mapping");
  static_assert(kKWords * (kKv4 ? 4 : 2) == 2 * kChunks, "K pairs per key and lane = 2 per chunk");
};

using Args = attn::DecodeArgs;

// Where the K and V payloads' bytes sit in a ring stage: byte offset off of a page-order
// payload (key * RB + byte) goes to apply(off). The O MMA's A fragments make lane (g, t) load
// V bytes [g * RB / 8, (g + 1) * RB / 8) of keys 2t + {0, 1, 8, 9} (+ 16j): in page order the
// four t of one load phase hit the same banks (KV4 D = 128: 4-way conflicts, 4x the ideal
// wavefronts of every V load, 2026-11-30 Nsight). XORing the 32-byte unit of a row (bits 5, 6)
// with the key's t bits (key bits 1, 2) spreads them over the banks; 16-byte chunks stay whole,
// so the cp.async copies move them unchanged. K gets the same map (its loads, rows g of 8
// consecutive keys, stay conflict free) so that the stream keeps one address per K/V chunk
// pair. The offsets of keys + 8 and + 16 (8 RB, 16 RB) lie above the bits the map reads and
// writes, which the kernel's per-lane base offsets rely on.
template <KvFormat F, int D>
struct PayloadSwizzle {
  static constexpr int kSpan = 512;
  __host__ __device__ static constexpr int apply(int off) {
    if constexpr (F == KvFormat::kv4 && D == 128) {  // RB 64: key bits 1, 2 = off bits 7, 8
      return off ^ (((off >> 7) & 1) << 6) ^ (((off >> 8) & 1) << 5);
    } else if constexpr (F == KvFormat::kv4) {  // D 64, RB 32: bit 7 = key bit 2
      return off ^ (((off >> 7) & 1) << 5);
    } else {  // KV8 D 64, RB 64: bits 7, 8 = key bits 1, 2
      static_assert(D == 64, "KV8 D = 128 uses NoPayloadSwizzle");
      return off ^ (((off >> 7) & 3) << 5);
    }
  }
};
// KV8 at D = 128 (RB 128) would need key bits 1, 2 = off bits 8, 9, past the 512-byte span the
// stream assumes; it keeps the page order (it already meets its bandwidth target).
template <KvFormat F, int D>
using PayloadSwizzleFor = std::conditional_t<F == KvFormat::kv8 && D == 128, attn::NoPayloadSwizzle,
                                             PayloadSwizzle<F, D>>;

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Transposes an 8x8 matrix of b16 held one row-pair per lane (the C/A fragment layout) into the
// B fragment layout.
__device__ __forceinline__ uint32_t movmatrix_t(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

__device__ __forceinline__ uint32_t lop_and_or(uint32_t a, uint32_t mask, uint32_t magic) {
  uint32_t d;
  // (a & mask) | magic in one LOP3 (immediate LUT 0xEA = (A & B) | C).
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(mask), "r"(magic));
  return d;
}

constexpr uint32_t kMagic = 0x64006400u;  // fp16 1024 in both halves

// fp16 code pairs from one 32-bit word of a row, in the order the MMAs consume them, *with an
// offset*: a code x is widened by one LOP3 as the fp16 bits 0x6400 | x = 1024 + x, or, for a
// high nibble, 0x6400 | (x << 4) = 1024 + 16 x. The offset and the factor 16 are exact and
// are removed outside the MMAs (per head: sum q' for K, sum P' for V), which saves the
// subtraction per pair; the products stay exact (11 x 11 significant bits).
//   KV4 (8 nibbles; byte b holds channels 2b (low nibble) and 2b+1): pair n of the word =
//     n = 0: (ch 0, ch 4), 1: 16 x (1, 5), 2: (2, 6), 3: 16 x (3, 7).
//   KV8 (4 bytes = channels 0..3): n = 0: (0, 2), 1: (1, 3).
template <KvFormat F>
__device__ __forceinline__ void unpack_word(uint32_t w, uint32_t* out) {
  if constexpr (F == KvFormat::kv4) {
    const uint32_t w8 = w >> 8;
    out[0] = lop_and_or(w, 0x000f000fu, kMagic);
    out[1] = lop_and_or(w, 0x00f000f0u, kMagic);
    out[2] = lop_and_or(w8, 0x000f000fu, kMagic);
    out[3] = lop_and_or(w8, 0x00f000f0u, kMagic);
  } else {
    out[0] = lop_and_or(w, 0x00ff00ffu, kMagic);
    out[1] = lop_and_or(w >> 8, 0x00ff00ffu, kMagic);
  }
}

// The factor on K pair n's codes (16 for KV4's high nibbles).
template <KvFormat F>
__host__ __device__ constexpr float k_pair_mul(int n) {
  return F == KvFormat::kv4 && (n % 2) == 1 ? 16.0f : 1.0f;
}

// The channel (relative to a lane's K block) of the low half of K pair n; the high half is
// this + 4 (KV4) or + 2 (KV8).
template <KvFormat F>
__host__ __device__ constexpr int k_pair_chan(int n) {
  return F == KvFormat::kv4 ? 8 * (n / 4) + (n % 4) : 4 * (n / 2) + (n % 2);
}
template <KvFormat F>
__host__ __device__ constexpr int k_pair_step() {
  return F == KvFormat::kv4 ? 4 : 2;
}

// V^T A-operand pairs of two keys a, b at the same channel: for each channel slot j of the
// lane's V block (kVBytes bytes per key), out[j] = (code_a[j], code_b[j]) widened as in
// unpack_word: 1024 + x, and for KV4's odd slots (high nibbles) 1024 + 16 x.
template <KvFormat F, int NB>
__device__ __forceinline__ void unpack_v_pairs(const uint32_t* wa, const uint32_t* wb,
                                               uint32_t* out) {
#pragma unroll
  for (int wi = 0; wi < NB / 4; ++wi) {
    if constexpr (F == KvFormat::kv4) {
#pragma unroll
      for (int i = 0; i < 4; i += 2) {
        // bytes [a_i, a_i+1, b_i, b_i+1]: channels 2i..2i+3 of both keys.
        const uint32_t x = __byte_perm(wa[wi], wb[wi], i == 0 ? 0x5410u : 0x7632u);
        const uint32_t x8 = x >> 8;
        uint32_t* o = out + 8 * wi + 2 * i;
        o[0] = lop_and_or(x, 0x000f000fu, kMagic);
        o[1] = lop_and_or(x, 0x00f000f0u, kMagic);
        o[2] = lop_and_or(x8, 0x000f000fu, kMagic);
        o[3] = lop_and_or(x8, 0x00f000f0u, kMagic);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        // byte j of a into byte 0, byte j of b into byte 2.
        const uint32_t x = __byte_perm(wa[wi], wb[wi], static_cast<uint32_t>(j | ((4 + j) << 8)));
        out[4 * wi + j] = lop_and_or(x, 0x00ff00ffu, kMagic);
      }
    }
  }
}

// 2^x on the MUFU (one instruction; flushes subnormal results to zero, which the softmax
// weights tolerate: they are added to sums >= 1).
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float h2f(uint16_t b) {
  return __half2float(__ushort_as_half(b));
}

// kPrewaitKv (the default, decode_prewait_kv()): the first ring stages are issued before
// griddepcontrol.wait (pdl.h), where the kernel may still overlap the previous one: the cached
// keys' pages were written by earlier steps (the stages' masked slots may hold the current
// token's bytes half written; masked keys' bytes are never used). Otherwise they are issued
// after the q staging.
template <KvFormat F, int D, bool kPrewaitKv, int W>
__global__ void __launch_bounds__(Geom<F, D, W>::kThreads, Geom<F, D, W>::kMinBlocks)
    decode_mma_kernel(Args a) {
  using Geo = Geom<F, D, W>;
  constexpr int kWarps = W, kThreads = Geo::kThreads;
  constexpr int RB = Geo::RB, NS = Geo::kStages, KW = Geo::kKWords;
  constexpr int VW = Geo::kVWords < 1 ? 1 : Geo::kVWords;
  constexpr int NKP = 2 * Geo::kChunks;                    // K pairs per key and lane
  constexpr int NVS = Geo::kVBytes * (Geo::kKv4 ? 2 : 1);  // V channel slots per lane
  extern __shared__ __align__(16) uint8_t smem[];
  float* q_s = reinterpret_cast<float*>(smem + Geo::kSmemBytes - Geo::kQBytes - 64);
  float* misc = q_s + 8 * D;  // [0]: max|q|, [8..15]: current-token scores (log2 units)

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int G = a.group;
  const int ctx = a.context_len[seq];
  const attn::SplitRange range =
      attn::split_range(ctx, first_key(ctx, a.window), split, a.split_keys);
  if (split >= range.used) {  // unused split; the merge does not read it
    pdl_wait();               // pdl.h: no block exits before the previous kernel has completed
    return;
  }
  const int k_lo = range.k_lo, k_hi = range.k_hi;
  const int kend = range.kend;  // cached keys of this split: [k_lo, kend)
  const int64_t q_row = a.token_offset[seq];
  const int32_t* bt = a.block_table + static_cast<int64_t>(seq) * a.block_stride;
  const int64_t pb = a.geom.page_bytes;
  // ---- per-warp stream of 32-key blocks through a cp.async ring -----------------------------
  using Swz = PayloadSwizzleFor<F, D>;
  const attn::WarpKvStream<Geo, kWarps, kBlk, Swz> ks(smem, a.geom, bt, pb, kvh, k_lo, kend, warp,
                                                      lane);
  auto issue = [&](int i) { ks.issue(a, i); };  // a lambda, not direct calls: see WarpKvStream
  if constexpr (kPrewaitKv) {
#pragma unroll
    for (int i = 0; i < NS - 1; ++i) issue(i);
  }
  // Above: the step's metadata and cached keys only. q (and the current token's K/V) are the
  // previous kernel's output (pdl.h).
  pdl_wait();
  pdl_trigger();

  // ---- q: fp32 in shared memory (current token), a power of two keeping fp16 q normal -----
  // Heads G..7 are staged as zeros: the B fragments below read all 8.
  const float* qg = a.q + (q_row * a.num_heads + static_cast<int64_t>(kvh) * G) * D;
  const int e = attn::stage_q_pow2<kThreads, D, /*kPad=*/true>(qg, G, q_s, misc, tid, lane);
  const float q_mul = scalbnf(1.0f, e);
  // score (log2 units) = c1 * (s (q^.c) - s z sum q^) with q^ = fp16(q 2^e).
  const float c1 = scalbnf(1.0f, -e) * a.scale * kLog2e;

  // B fragments of S: head g, channels of K pair n = 2c (b0) and 2c+1 (b1) of lane t's block.
  // q^ = fp16(q 2^e); the B operand is q' = q^ / (pair factor), exact (a power of two).
  uint32_t qb[Geo::kChunks][2];
  float qsum_part = 0.0f;  // sum of q^ over this lane's channels of head g (zero term)
  float qoff_part = 0.0f;  // sum of q' (the 1024 offset term)
#pragma unroll
  for (int c = 0; c < Geo::kChunks; ++c) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = 2 * c + h;
      const int ch = t * (D / 4) + k_pair_chan<F>(n);
      const __half lo16 = __float2half_rn(q_s[g * D + ch] * q_mul);
      const __half hi16 = __float2half_rn(q_s[g * D + ch + k_pair_step<F>()] * q_mul);
      const __half inv = __float2half_rn(1.0f / k_pair_mul<F>(n));
      const __half2 qp = __hmul2(__halves2half2(lo16, hi16), __halves2half2(inv, inv));
      qb[c][h] = h2u(qp);
      qsum_part += __half2float(lo16) + __half2float(hi16);
      qoff_part += __low2float(qp) + __high2float(qp);
    }
  }
  // Sum over the 4 lanes of head g (same g, t = 0..3), then fetch heads 2t, 2t+1.
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    qsum_part += __shfl_xor_sync(0xffffffffu, qsum_part, off);
    qoff_part += __shfl_xor_sync(0xffffffffu, qoff_part, off);
  }
  const float qsum[2] = {__shfl_sync(0xffffffffu, qsum_part, (2 * t) * 4),
                         __shfl_sync(0xffffffffu, qsum_part, (2 * t + 1) * 4)};
  const float qoff[2] = {1024.0f * __shfl_sync(0xffffffffu, qoff_part, (2 * t) * 4),
                         1024.0f * __shfl_sync(0xffffffffu, qoff_part, (2 * t + 1) * 4)};

  // This lane's K row (key g of each 8) and V rows (keys 2t, 2t + 1 of each 16-key step) in a
  // stage; keys + 8 and + 16 are 8 RB and 16 RB further, offsets the swizzle leaves alone.
  const int k_off = Swz::apply(g * RB + t * Geo::kKBytes);
  const int v_off0 = Geo::kPayload + Swz::apply(2 * t * RB + g * Geo::kVBytes);
  const int v_off1 = Geo::kPayload + Swz::apply((2 * t + 1) * RB + g * Geo::kVBytes);

  // O^T accumulators: m-tile m, rows g (channel slot 2m) and g+8 (slot 2m+1), heads 2t, 2t+1.
  float o[Geo::kMTiles][4];
#pragma unroll
  for (int m = 0; m < Geo::kMTiles; ++m) o[m][0] = o[m][1] = o[m][2] = o[m][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};  // heads 2t, 2t+1 (log2 units; equal across g)
  float l_part[2] = {0.0f, 0.0f};           // this lane's share of the sum of p
  float z_part[2] = {0.0f, 0.0f};           // this lane's share of sum p s z (V zero term)
  float w_part[2] = {0.0f, 0.0f};           // this lane's share of sum fp16(p s) (V offset)

  if constexpr (!kPrewaitKv) {
#pragma unroll
    for (int i = 0; i < NS - 1; ++i) issue(i);
  }

  for (int i = 0; i < ks.nblk; ++i) {
    cp_async_wait<NS - 2>();
    __syncwarp();  // block i visible to all lanes; all lanes done with block i-1's stage
    issue(i + NS - 1);
    const uint8_t* st = ks.ring + (i % NS) * Geo::kStageBytes;
    const uint16_t* sz = reinterpret_cast<const uint16_t*>(st + 2 * Geo::kPayload);
    const int pos0 = ks.pos0(i);
    const bool full = pos0 >= k_lo && pos0 + kBlk <= kend;  // warp-uniform

    // -- S^T = K q^T over 2 sub-steps of 16 keys: rows g, g+8 = keys 16j+g, 16j+g+8 --
    float sc[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      uint32_t w0[KW], w1[KW];
      lds_words<KW>(w0, st + k_off + 16 * j * RB);
      lds_words<KW>(w1, st + k_off + (16 * j + 8) * RB);
      uint32_t p0[NKP], p1[NKP];
#pragma unroll
      for (int wi = 0; wi < KW; ++wi) {
        unpack_word<F>(w0[wi], p0 + wi * (Geo::kKv4 ? 4 : 2));
        unpack_word<F>(w1[wi], p1 + wi * (Geo::kKv4 ? 4 : 2));
      }
      // Two accumulators (even / odd chunks) halve the dependent HMMA chain.
      float ce[4] = {0.0f, 0.0f, 0.0f, 0.0f}, co[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int ch = 0; ch < Geo::kChunks; ++ch) {
        mma16816((ch & 1) ? co : ce, p0[2 * ch], p1[2 * ch], p0[2 * ch + 1], p1[2 * ch + 1],
                 qb[ch][0], qb[ch][1]);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) sc[j][r] = ce[r] + co[r];
    }

    // -- scores (log2 units) with the K scales; c0/c1: key g, heads 2t/2t+1; c2/c3: key g+8 --
    float bmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int kk = 16 * j + g + 8 * r;
        const bool valid = full || (pos0 + kk >= k_lo && pos0 + kk < kend);
        // score = s c1 (S' - 1024 sum q' - z sum q^)
        const float s = h2f(sz[kk]) * c1;
        const float z = h2f(sz[32 + kk]);
        const float x0 = s * (sc[j][2 * r] - fmaf(z, qsum[0], qoff[0]));
        const float x1 = s * (sc[j][2 * r + 1] - fmaf(z, qsum[1], qoff[1]));
        sc[j][2 * r] = valid ? x0 : -INFINITY;
        sc[j][2 * r + 1] = valid ? x1 : -INFINITY;
        bmax[0] = fmaxf(bmax[0], sc[j][2 * r]);
        bmax[1] = fmaxf(bmax[1], sc[j][2 * r + 1]);
      }
    }
    // Lazy rescaling: the reference max m_run moves only when a score exceeds it by more than
    // kLazy (log2 units), so p <= 2^kLazy and P' = p s_v <= 4 * 8734 stays finite in fp16
    // (|V| <= 65504 bounds s_v). The common block skips the cross-lane max and the rescale;
    // one vote decides. The first visible key always takes the slow path (m_run = -inf).
    constexpr float kLazy = 2.0f;
    const bool over = bmax[0] > m_run[0] + kLazy || bmax[1] > m_run[1] + kLazy;
    if (__any_sync(0xffffffffu, over)) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        bmax[h] = fmaxf(bmax[h], __shfl_xor_sync(0xffffffffu, bmax[h], 4));
        bmax[h] = fmaxf(bmax[h], __shfl_xor_sync(0xffffffffu, bmax[h], 8));
        bmax[h] = fmaxf(bmax[h], __shfl_xor_sync(0xffffffffu, bmax[h], 16));
      }
      float alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float m_new = fmaxf(m_run[h], bmax[h]);
        // m_new = -inf only while every key so far is masked: nothing to rescale.
        alpha[h] = m_new == -INFINITY ? 1.0f : ex2(m_run[h] - m_new);
        m_run[h] = m_new;
      }
#pragma unroll
      for (int m = 0; m < Geo::kMTiles; ++m) {
        o[m][0] *= alpha[0];
        o[m][1] *= alpha[1];
        o[m][2] *= alpha[0];
        o[m][3] *= alpha[1];
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        l_part[h] *= alpha[h];
        z_part[h] *= alpha[h];
        w_part[h] *= alpha[h];
      }
    }

    // -- P' = p s_v in fp16, transposed into B fragments; O^T += V^T P'^T --
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      uint32_t pq[2];  // C-layout halves: row key g (r = 0) / g+8 (r = 1), heads 2t, 2t+1
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int kk = 16 * j + g + 8 * r;
        const bool valid = full || (pos0 + kk >= k_lo && pos0 + kk < kend);
        const float p0 = m_run[0] == -INFINITY ? 0.0f : ex2(sc[j][2 * r] - m_run[0]);
        const float p1 = m_run[1] == -INFINITY ? 0.0f : ex2(sc[j][2 * r + 1] - m_run[1]);
        // Masked keys may hold stale bytes: their scale and zero are never used.
        const float vs = valid ? h2f(sz[64 + kk]) : 0.0f;
        const float vz = valid ? h2f(sz[96 + kk]) : 0.0f;
        l_part[0] += p0;
        l_part[1] += p1;
        const float ps0 = p0 * vs, ps1 = p1 * vs;
        z_part[0] = fmaf(ps0, vz, z_part[0]);
        z_part[1] = fmaf(ps1, vz, z_part[1]);
        const __half2 ph = __floats2half2_rn(ps0, ps1);
        w_part[0] += __low2float(ph);
        w_part[1] += __high2float(ph);
        pq[r] = h2u(ph);
      }
      const uint32_t b0 = movmatrix_t(pq[0]);  // P'[keys 2t, 2t+1][head g]
      const uint32_t b1 = movmatrix_t(pq[1]);  // P'[keys 8+2t, 8+2t+1][head g]
      // V codes of keys 2t, 2t+1 (a0/a1) and 2t+8, 2t+9 (a2/a3), lane g's channel block.
      uint32_t va[VW], vb[VW], vc[VW], vd[VW];
      lds_words<VW>(va, st + v_off0 + 16 * j * RB);
      lds_words<VW>(vb, st + v_off1 + 16 * j * RB);
      lds_words<VW>(vc, st + v_off0 + (16 * j + 8) * RB);
      lds_words<VW>(vd, st + v_off1 + (16 * j + 8) * RB);
      uint32_t lo_pairs[NVS], hi_pairs[NVS];
      unpack_v_pairs<F, Geo::kVBytes>(va, vb, lo_pairs);
      unpack_v_pairs<F, Geo::kVBytes>(vc, vd, hi_pairs);
#pragma unroll
      for (int m = 0; m < Geo::kMTiles; ++m) {
        mma16816(o[m], lo_pairs[2 * m], lo_pairs[2 * m + 1], hi_pairs[2 * m], hi_pairs[2 * m + 1],
                 b0, b1);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its ring: the merge scratch aliases it

  // ---- per-warp totals, then the in-CTA merge of the 4 warp streams ------------------------
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      l_part[h] += __shfl_xor_sync(0xffffffffu, l_part[h], off);
      z_part[h] += __shfl_xor_sync(0xffffffffu, z_part[h], off);
      w_part[h] += __shfl_xor_sync(0xffffffffu, w_part[h], off);
    }
  }
  float* red_o = reinterpret_cast<float*>(smem);  // [warp][8][D]
  float* red_ml = red_o + kWarps * 8 * D;         // [warp][8][2]
  {
#pragma unroll
    for (int m = 0; m < Geo::kMTiles; ++m) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int chan = g * NVS + 2 * m + r;  // slot 2m + r of lane g's channel block
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // O = sum p s c - sum p s z: the offset 1024 sum P', the factor 16 of KV4's odd
          // slots (rows g+8) and the zero term are one number per head.
          const float inv = Geo::kKv4 && r == 1 ? 0.0625f : 1.0f;
          red_o[attn::red_o_index<D, true>(warp * 8 + 2 * t + h, chan)] =
              (o[m][2 * r + h] - 1024.0f * w_part[h]) * inv - z_part[h];
        }
      }
    }
    if (g == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        red_ml[(warp * 8 + 2 * t + h) * 2] = m_run[h];
        red_ml[(warp * 8 + 2 * t + h) * 2 + 1] = l_part[h];
      }
    }
  }
  // Current token (scores: fp32 dot on the unrounded q, as the reference, in log2 units), the
  // merge of the warp streams with exp2, and the store (maxima of partials in log2 units).
  attn::merge_warps_and_store</*kLog2=*/true, kWarps, D, /*kSwz=*/true>(
      a, red_o, red_ml, q_s, misc, G, q_row, kvh, seq, split, ctx, k_lo, k_hi, tid, lane, warp);
}

// Whether the kPrewaitKv kernel runs: yes unless QSERVE_DECODE_PREWAIT_KV=0 (an A/B switch;
// anything but 0 or 1 is an error). Read once per process. With PDL on, the H200 measured
// (bench_attention, 2026-11-30, eighth session) KV4 256 x 1536 / 32 x 8192 3.533 / 3.335 TB/s
// against 3.482 / 3.319 with the stages issued after the q staging, KV8 3.928 / 3.845 against
// 3.889 / 3.796 (the fourth session measured the pre-wait order 1% slower without PDL).
bool decode_prewait_kv() {
  static const bool on = env_switch("QSERVE_DECODE_PREWAIT_KV", true);
  return on;
}

template <KvFormat F, int D, int W>
void launch(const Args& a, int num_seqs, int kv_heads, cudaStream_t stream) {
  using Geo = Geom<F, D, W>;
  constexpr int smem = Geo::kSmemBytes;
  const auto kernel =
      decode_prewait_kv() ? decode_mma_kernel<F, D, true, W> : decode_mma_kernel<F, D, false, W>;
  // Idempotent and cheap; needed once per instantiation for > 48 KiB of dynamic smem.
  QSERVE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                    "decode_attention_mma smem attribute");
  const dim3 grid(static_cast<unsigned>(a.splits), static_cast<unsigned>(kv_heads),
                  static_cast<unsigned>(num_seqs));
  cuda_check(launch_pdl(kernel, grid, dim3(Geo::kThreads), smem, stream, a),
             "decode_attention_mma");
}

// QSERVE_DECODE_MMA_WARPS: 4 or 8 forces the CTA size of every decode_attention_mma call that
// leaves it to the plan (8 applies to KV4 caches; KV8 keeps 4), for same-binary A/B runs; unset
// or "auto": the plan. Anything else is an error. Read once per process.
int decode_mma_warps_override() {
  static const int w = env_override("QSERVE_DECODE_MMA_WARPS", &parse_decode_mma_warps).value_or(0);
  return w;
}

// Resident CTAs per SM of one instantiation (registers and shared memory decide), asked once.
template <KvFormat F, int D, int W>
int ctas_per_sm() {
  static const int n = [] {
    using Geo = Geom<F, D, W>;
    constexpr int smem = Geo::kSmemBytes;
    int blocks = 0;
    if (cudaFuncSetAttribute(decode_mma_kernel<F, D, true, W>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_mma_kernel<F, D, true, W>,
                                                      Geo::kThreads, smem) != cudaSuccess ||
        blocks <= 0) {
      (void)cudaGetLastError();
      return Geo::kMinBlocks;
    }
    return blocks;
  }();
  return n;
}

// Calls fn.template operator()<F, D, W>() for the geometry and warp count (W = 8 only for KV4).
template <class Fn>
void dispatch_warps(KvFormat format, int64_t head_dim, int warps, Fn&& fn) {
  attn::dispatch_decode_geometry(format, head_dim, [&]<KvFormat F, int D>() {
    if constexpr (F == KvFormat::kv4) {
      if (warps == 8) {
        fn.template operator()<F, D, 8>();
        return;
      }
    }
    fn.template operator()<F, D, 4>();
  });
}

// Split efficiency of keys-per-split choices for one CTA size: the best (keys, splits, fill).
struct SplitChoice {
  int64_t keys = 0, splits = 0;
  double eff = 0.0;
};
SplitChoice best_split(int64_t base, int64_t total, int64_t slots) {
  const auto keys_for = [&](int64_t splits) {
    int64_t keys = (total + splits - 1) / splits;
    keys = (keys + kPage - 1) / kPage * kPage;
    return std::max<int64_t>(kMinSplitKeys, keys);
  };
  SplitChoice best{keys_for(1), 1, 0.0};
  const int64_t max_splits = std::min<int64_t>((total + kMinSplitKeys - 1) / kMinSplitKeys,
                                               std::max<int64_t>(1, 4 * slots / base + 1));
  for (int64_t want = 1; want <= max_splits; ++want) {
    const int64_t keys = keys_for(want);
    const int64_t splits = (total + keys - 1) / keys;
    const int64_t n = base * splits;
    const int64_t waves = (n + slots - 1) / slots;
    const double eff = static_cast<double>(n) / static_cast<double>(waves * slots);
    if (eff > best.eff + 1e-9) best = {keys, splits, eff};
  }
  return best;
}

}  // namespace

int parse_decode_mma_warps(const std::string& text) {
  if (text == "auto") return 0;
  if (text == "4") return 4;
  if (text == "8") return 8;
  throw Error("expected 4, 8 or auto, got '" + text + "'");
}

bool decode_attention_mma_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                    int64_t head_dim) {
  if (format != KvFormat::kv4 && format != KvFormat::kv8) return false;
  if (head_dim != 64 && head_dim != 128) return false;
  if (kv_heads <= 0 || kv_heads > 65535 || num_heads <= 0 || num_heads % kv_heads != 0) {
    return false;
  }
  const int64_t g = num_heads / kv_heads;
  return g >= 1 && g <= 8;  // the N = 8 side of the MMAs
}

int64_t decode_attention_mma_split_keys(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                        int64_t num_sms, int64_t slots_per_sm) {
  // Every (sequence, KV head) is one CTA per split. Pick the split count whose CTAs fill the
  // resident slots best (the last wave of a 2.4-wave grid runs 40% full), among splits of at
  // least 256 keys (the shared workspace is sized for 256-key splits); ties go to fewer splits.
  // Splits cut the cached keys (the current token joins the last split: attn::split_range).
  const int64_t base = std::max<int64_t>(1, num_seqs * kv_heads);
  const int64_t slots = std::max<int64_t>(1, num_sms) * std::max<int64_t>(1, slots_per_sm);
  return best_split(base, std::max<int64_t>(1, max_total_len - 1), slots).keys;
}

DecodeMmaPlan decode_attention_mma_plan(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                        int64_t num_sms, int64_t slots_w4, int64_t slots_w8) {
  const int64_t base = std::max<int64_t>(1, num_seqs * kv_heads);
  const int64_t total = std::max<int64_t>(1, max_total_len - 1);
  const int64_t sms = std::max<int64_t>(1, num_sms);
  const SplitChoice w4 = best_split(base, total, sms * std::max<int64_t>(1, slots_w4));
  if (w4.splits > 1 && slots_w8 > 0) {
    // 8-warp CTAs cover a split with twice the streams: take them when they need fewer splits
    // for at least the same fill (32 x 8192 KV4: 2 splits of 4-warp CTAs fill 512 of 528 slots,
    // one split of 8-warp CTAs 256 of 264).
    const SplitChoice w8 = best_split(base, total, sms * slots_w8);
    if (w8.splits < w4.splits && w8.eff + 1e-9 >= w4.eff) return {w8.keys, 8};
  }
  return {w4.keys, 4};
}

namespace {

// The split (and, for warps 0, the CTA size) of a call on this device: decode_attention_mma_plan
// with the instantiations' resident CTAs per SM, or the split picker for the given CTA size.
DecodeMmaPlan plan_for(KvFormat format, int64_t head_dim, int64_t num_seqs, int64_t kv_heads,
                       int64_t max_total_len, int warps) {
  int per_sm4 = 0, per_sm8 = 0;
  attn::dispatch_decode_geometry(format, head_dim, [&]<KvFormat F, int D>() {
    per_sm4 = ctas_per_sm<F, D, 4>();
    if constexpr (F == KvFormat::kv4) per_sm8 = ctas_per_sm<F, D, 8>();
  });
  const int64_t sms = current_device_sm_count();
  if (warps == 0) {
    return decode_attention_mma_plan(num_seqs, kv_heads, max_total_len, sms, per_sm4, per_sm8);
  }
  return {decode_attention_mma_split_keys(num_seqs, kv_heads, max_total_len, sms,
                                          warps == 8 ? per_sm8 : per_sm4),
          warps};
}

// split_keys <= 0: the plan's split; warps 0: the plan's (or QSERVE_DECODE_MMA_WARPS') CTA size.
void decode_mma_impl(const float* q, const uint16_t* k16, const uint16_t* v16,
                     const PagedKvDevice& cache, const VarlenBatchDevice& batch, int64_t num_heads,
                     int64_t window, float* out, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream, int64_t split_keys, int warps) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = attn::check_decode_call(
      "decode_attention_mma", decode_attention_mma_supported(cache.format, num_heads, hkv, d), q,
      k16, v16, cache, batch, num_heads, workspace, workspace_bytes);
  check(warps == 0 || warps == 4 || (warps == 8 && cache.format == KvFormat::kv4),
        "decode_attention_mma: warps must be 4, or 8 with a KV4 cache, got " +
            std::to_string(warps) + " (" + shape + ")");
  if (S == 0) return;

  // Warps: given, 4 under a forced split, else QSERVE_DECODE_MMA_WARPS or the plan (0); the
  // switch's 8 applies to KV4 caches only.
  int w = warps != 0 ? warps : split_keys > 0 ? 4 : decode_mma_warps_override();
  if (w == 8 && cache.format != KvFormat::kv4) w = 4;
  int64_t keys = split_keys;
  if (keys <= 0) {
    const DecodeMmaPlan plan = plan_for(cache.format, d, S, hkv, batch.max_total_len, w);
    keys = plan.split_keys;
    w = plan.warps;
  }
  const Args a = attn::make_decode_args<Args>(q, k16, v16, cache, batch, num_heads, window, out,
                                              workspace, keys,
                                              /*cached_splits=*/true);
  const int ns = static_cast<int>(S), nh = static_cast<int>(hkv);
  dispatch_warps(cache.format, d, w,
                 [&]<KvFormat F, int D, int W>() { launch<F, D, W>(a, ns, nh, stream); });
  check_launch("decode_attention_mma split", shape);
  attn::launch_split_merge<true>(a, batch, d, stream, "decode_attention_mma merge", shape);
}

}  // namespace

void decode_attention_mma(const float* q, const uint16_t* k16, const uint16_t* v16,
                          const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                          int64_t num_heads, int64_t window, float* out, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream) {
  decode_mma_impl(q, k16, v16, cache, batch, num_heads, window, out, workspace, workspace_bytes,
                  stream, 0, 0);
}

void decode_attention_mma_split(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream, int64_t split_keys) {
  check(split_keys >= kMinSplitKeys && split_keys % kPage == 0,
        "decode_attention_mma_split: split_keys must be a multiple of 64 and >= 256, got " +
            std::to_string(split_keys));
  decode_mma_impl(q, k16, v16, cache, batch, num_heads, window, out, workspace, workspace_bytes,
                  stream, split_keys, 0);
}

void decode_attention_mma_warps(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream, int warps) {
  check(warps == 4 || warps == 8,
        "decode_attention_mma_warps: warps must be 4 or 8, got " + std::to_string(warps));
  decode_mma_impl(q, k16, v16, cache, batch, num_heads, window, out, workspace, workspace_bytes,
                  stream, 0, warps);
}

}  // namespace qserve::cuda
