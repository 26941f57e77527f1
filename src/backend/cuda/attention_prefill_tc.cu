// Tensor-core prefill attention (FlashAttention-2 style on mma.sync m16n8k16; issue 8).
//
// Why: the baseline prefill kernel (attention_prefill.cu) re-reads K/V per query token and runs
// its dots on CUDA cores (~2.4 TFLOP/s on the H200). Prefill is compute-bound, so this kernel
// keeps a 128-row Q tile in shared memory and streams 64-key K/V tiles past it, with both
// products on the tensor cores (fp16 operands, fp32 accumulation).
//
// Design (one CTA = W warps = 32 W packed rows of one (sequence, KV head); W = 4 by default,
// W = 8 selectable through prefill_attention_tc_warps so the benchmark can compare both):
//  - GQA packing. The M rows of a CTA are (token, query head of the KV group) pairs in
//    token-major order, row R = j * G + h. One K/V tile load then serves all G heads, and a
//    tile spans only 32 W / G tokens, so the causal diagonal costs few masked tiles. The q rows
//    of one token's group are contiguous in memory ([T, Hq, D]), as are the output rows.
//  - q: fp32 in memory; the CTA scales its tile by 2^e (max|q| -> [2^14, 2^15), exact) and rounds
//    to fp16 once. fp16(q * 2^e) * 2^-e is q rounded to 11 significant bits (no overflow for
//    large q, no subnormal loss for small q). S = (q 2^e) K^T in fp32; the factor
//    2^-e * scale * log2(e) is folded into the exp2 argument (one FFMA per score).
//  - P: p = exp2((s - m) c + 15), i.e. 2^15 times the softmax numerator, so the fp16 P fed to
//    the P.V MMA is never subnormal (p <= 2^15 fits fp16). The row sum l adds the same fp32 p
//    values; the 2^15 cancels in O / l.
//  - Cached context (chunked prefill): keys below context_len come from the pages. KV16 rows
//    are fp16 and copied with cp.async; KV4/KV8 rows are dequantized into the fp16 tile with the
//    exact operations of attention_kv_device.cuh (KV8: fp16_RN(s * (q - z)) with correctly
//    rounded fp32 steps; KV4: one fp16 HFMA(q, s, fp16_RN(-(s z)))), so the tensor-core B
//    operands are the reference's values bit for bit. That path loads synchronously (not
//    pipelined); fresh prompts, the benchmark's case, never take it.
//  - Each warp owns 32 rows (2 m16 tiles): S is 32 x 64 fp32 in registers, O is 32 x D fp32;
//    the S accumulators are repacked in place as the fp16 A fragments of P.V (FA2's trick).
//  - Memory: Q tile [32 W][D] fp16 and 2 stages of K and V tiles [64][D] fp16 in shared memory,
//    16-byte chunks XOR-swizzled by (row & 7) so ldmatrix (Q, K) and ldmatrix.trans (V) are
//    conflict-free. cp.async double buffering: tile i+1 is issued right after the barrier that
//    makes tile i visible, one barrier per tile.
//  - Masking: only tiles that touch the diagonal, the window edge or the sequence end are
//    masked per element (score = -inf); keys past the sequence end are zero-filled (0 * P is 0,
//    never NaN from stale bytes). Tiles no row can see are never visited.
//  - Order: CTAs with more keys (higher row tiles) are launched first (blockIdx.y reversed).
// Accuracy contract: ops_cuda_attention.h (prefill_attention_tc).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/attention_prefill_common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"

namespace qserve::cuda {

namespace {

using attn::kPage;
using attn::PageGeom;
using pf::dequant_chunk;
using pf::exp2_ftz;
using pf::pack_h2;
using pf::pack_halves;
using pf::smem_u32;
using pf::st_shared16;

constexpr int kBN = 64;  // keys per tile (= one page, so a tile never straddles pages)
constexpr float kLog2e = 1.4426950408889634f;

// W warps per CTA, 32 packed rows each: W = 4 (128 rows, 2 CTAs per SM, the default) or
// W = 8 (256 rows, 1 CTA per SM: half the K/V re-reads from L2 per FLOP).
template <int D, int W>
struct PfGeom {
  static constexpr int kThreads = 32 * W;
  static constexpr int kBM = 32 * W;                // packed (token, head) rows per CTA
  static constexpr int kRowBytes = D * 2;           // one fp16 row in smem
  static constexpr int kChunks = D / 8;             // 16-byte chunks per row
  static constexpr int kQBytes = kBM * kRowBytes;   // Q tile
  static constexpr int kKvBytes = kBN * kRowBytes;  // one K (or V) tile
  static constexpr int kSmemBytes = kQBytes + 4 * kKvBytes + 16;  // Q, K x2, V x2, scratch
  static constexpr int kKSteps = D / 16;                          // k-steps of S = Q K^T
  static constexpr int kONTiles = D / 8;                          // n-tiles of O
};

struct PfArgs {
  const float* q;
  const uint16_t* k16;
  const uint16_t* v16;
  const uint8_t* k_pool;
  const uint8_t* v_pool;
  PageGeom geom;
  const int32_t* token_offset;
  const int32_t* num_tokens;
  const int32_t* context_len;
  const int32_t* block_table;
  int32_t block_stride;
  int num_heads;
  int kv_heads;
  int group;
  int window;
  float scale;
  float* out;
};

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled [rows][D] fp16 tile.
template <int D>
__device__ __forceinline__ uint32_t swz(int r, int c) {
  return static_cast<uint32_t>(r * (2 * D) + ((c ^ (r & 7)) << 4));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <KvFormat F, int D, int W>
__global__ void __launch_bounds__(32 * W, 8 / W) prefill_tc_kernel(PfArgs a) {
  using Geo = PfGeom<D, W>;
  constexpr int kPfThreads = Geo::kThreads, kBM = Geo::kBM;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t q_s = smem_u32(smem);
  const uint32_t k_s = q_s + Geo::kQBytes;       // 2 stages
  const uint32_t v_s = k_s + 2 * Geo::kKvBytes;  // 2 stages
  int* scratch = reinterpret_cast<int*>(smem + Geo::kQBytes + 4 * Geo::kKvBytes);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int seq = blockIdx.x / a.kv_heads, kvh = blockIdx.x % a.kv_heads;
  const int G = a.group;
  const int n = a.num_tokens[seq];
  const int tile = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  const int r0 = tile * kBM;  // first packed row
  if (r0 >= n * G) return;
  const int ctx = a.context_len[seq];
  const int tok0 = a.token_offset[seq];
  const int total = ctx + n;
  const int j_first = r0 / G;
  const int j_last = (min(n * G, r0 + kBM) - 1) / G;
  // Keys any valid row of this tile can see: [kv_lo, kv_hi).
  const int kv_lo = attn::first_key(ctx + j_first, a.window);
  const int kv_hi = ctx + j_last + 1;
  const int t_first = kv_lo / kBN, t_last = (kv_hi - 1) / kBN;
  const int32_t* bt = a.block_table + static_cast<int64_t>(seq) * a.block_stride;
  const int64_t pb = a.geom.page_bytes;

  // ---- loads of one K/V tile (keys kb .. kb+63) into stage st ------------------------------
  auto issue = [&](int kt, int st) {
    const int kb = kt * kBN;
    const uint32_t kd = k_s + st * Geo::kKvBytes, vd = v_s + st * Geo::kKvBytes;
#pragma unroll
    for (int i = 0; i < kBN * Geo::kChunks / kPfThreads; ++i) {
      const int row = tid / Geo::kChunks + i * (kPfThreads / Geo::kChunks);
      const int c = tid % Geo::kChunks;
      const int pos = kb + row;
      const uint32_t off = swz<D>(row, c);
      if (pos >= total) {
        // Past the sequence end: only padding rows could "see" it; zeros keep P.V finite.
        st_shared16(kd + off, make_uint4(0, 0, 0, 0));
        st_shared16(vd + off, make_uint4(0, 0, 0, 0));
      } else if (pos >= ctx) {
        const int64_t e =
            ((static_cast<int64_t>(tok0) + (pos - ctx)) * a.kv_heads + kvh) * D + 8 * c;
        cp_async16(kd + off, a.k16 + e);
        cp_async16(vd + off, a.v16 + e);
      } else {
        const int64_t page = bt[pos / kPage];
        const uint8_t* kp = a.k_pool + page * pb;
        const uint8_t* vp = a.v_pool + page * pb;
        const int slot = pos % kPage;
        if constexpr (F == KvFormat::kv16) {
          const int64_t e = a.geom.data_offset(kvh, slot) + 16 * c;
          cp_async16(kd + off, kp + e);
          cp_async16(vd + off, vp + e);
        } else {
          st_shared16(kd + off, dequant_chunk<F>(kp, a.geom, kvh, slot, c));
          st_shared16(vd + off, dequant_chunk<F>(vp, a.geom, kvh, slot, c));
        }
      }
    }
    cp_async_commit();
  };
  issue(t_first, 0);  // in flight while q is converted

  // ---- q tile: max|q|, power-of-two scale, fp16, swizzled ----------------------------------
  const int rows_valid = min(kBM, n * G - r0);
  auto q_src = [&](int row) {
    const int R = r0 + row, j = R / G, h = R - j * G;
    return a.q + ((static_cast<int64_t>(tok0) + j) * a.num_heads + kvh * G + h) * D;
  };
  float qmax = 0.0f;
  for (int idx = tid; idx < rows_valid * Geo::kChunks; idx += kPfThreads) {
    const int row = idx / Geo::kChunks, c = idx % Geo::kChunks;
    const float4* p = reinterpret_cast<const float4*>(q_src(row) + 8 * c);
    const float4 x = p[0], y = p[1];
    qmax = fmaxf(qmax, fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w))));
    qmax = fmaxf(qmax, fmaxf(fmaxf(fabsf(y.x), fabsf(y.y)), fmaxf(fabsf(y.z), fabsf(y.w))));
  }
  for (int o = 16; o > 0; o >>= 1) qmax = fmaxf(qmax, __shfl_xor_sync(0xffffffffu, qmax, o));
  if (tid == 0) scratch[0] = 0;
  __syncthreads();
  if (lane == 0) atomicMax(scratch, __float_as_int(qmax));  // non-negative floats order as ints
  __syncthreads();
  qmax = __int_as_float(scratch[0]);
  int e = 0;
  if (qmax > 0.0f && isfinite(qmax)) {
    int ex = 0;
    (void)frexpf(qmax, &ex);  // qmax = f 2^ex, f in [0.5, 1): 2^(15-ex) maps it to [2^14, 2^15)
    e = min(max(15 - ex, -120), 120);
  }
  const float q_mul = scalbnf(1.0f, e);
#pragma unroll 4
  for (int i = 0; i < kBM * Geo::kChunks / kPfThreads; ++i) {
    const int idx = tid + i * kPfThreads;
    const int row = idx / Geo::kChunks, c = idx % Geo::kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);  // padding rows: q = 0 (finite scores, never stored)
    if (row < rows_valid) {
      const float4* p = reinterpret_cast<const float4*>(q_src(row) + 8 * c);
      const float4 x = p[0], y = p[1];
      v.x = pack_h2(__fmul_rn(x.x, q_mul), __fmul_rn(x.y, q_mul));
      v.y = pack_h2(__fmul_rn(x.z, q_mul), __fmul_rn(x.w, q_mul));
      v.z = pack_h2(__fmul_rn(y.x, q_mul), __fmul_rn(y.y, q_mul));
      v.w = pack_h2(__fmul_rn(y.z, q_mul), __fmul_rn(y.w, q_mul));
    }
    st_shared16(q_s + swz<D>(row, c), v);
  }
  // exp2 argument per score: s * c - m * c + 15 (see the file comment).
  const float c_exp = __fmul_rn(scalbnf(a.scale, -e), kLog2e);

  // Tiles with keys in [kb, kb + 64) need no per-element mask when every row sees all of them.
  const int pos_min = ctx + j_first, pos_max = ctx + j_last;

  float o[2][Geo::kONTiles][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int j = 0; j < Geo::kONTiles; ++j)
      o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
  }
  float m_run[2][2], l_run[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      // l_run: this thread's share (its 16 keys of each tile), quad-summed at the end.
      m_run[mt][hf] = -INFINITY;
      l_run[mt][hf] = 0.0f;
    }
  }

  // ldmatrix lane roles: matrix i = lane >> 3 supplies row (lane & 7). Every row a lane
  // addresses is == lane & 7 (mod 8), so swz(row, c) = row * RB + ((lane & 7) << 4) XOR
  // (c << 4): the XOR only touches bits 4..7, where row * RB is zero. Each fragment address is
  // then a per-lane constant XOR an immediate (the k-step) plus an immediate (the row block),
  // instead of one hoisted register per (k-step, row block).
  const int lm_i = lane >> 3, lm_r = lane & 7;
  constexpr int RB = Geo::kRowBytes;
  // Q (A operand): matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) -> lm_i & 1 rows, lm_i >> 1 k.
  const uint32_t q_off =
      static_cast<uint32_t>((warp * 32 + (lm_i & 1) * 8 + lm_r) * RB + ((lm_r ^ (lm_i >> 1)) << 4));
  // K (B operand, [key][chan]): lm_i >> 1 selects the n-tile (8 keys), lm_i & 1 the k half.
  const uint32_t k_off =
      static_cast<uint32_t>(((lm_i >> 1) * 8 + lm_r) * RB + ((lm_r ^ (lm_i & 1)) << 4));
  // V (B operand via .trans, [key][chan]): lm_i & 1 selects the k half (8 keys), lm_i >> 1 the
  // n-tile (8 channels).
  const uint32_t v_off =
      static_cast<uint32_t>(((lm_i & 1) * 8 + lm_r) * RB + ((lm_r ^ (lm_i >> 1)) << 4));

  for (int kt = t_first; kt <= t_last; ++kt) {
    const int st = (kt - t_first) & 1;
    cp_async_wait_all();
    __syncthreads();  // tile kt (and the q tile) visible; everyone is done with tile kt - 1
    if (kt < t_last) issue(kt + 1, st ^ 1);
    const uint32_t kd = k_s + st * Geo::kKvBytes, vd = v_s + st * Geo::kKvBytes;
    const int kb = kt * kBN;

    // -- S = Q K^T for the warp's 32 rows x 64 keys --
    float s[2][8][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
        s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
    }
#pragma unroll
    for (int ks = 0; ks < Geo::kKSteps; ++ks) {
      uint32_t qa[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        // = swz(warp * 32 + mt * 16 + (lm_i & 1) * 8 + lm_r, 2 ks + (lm_i >> 1))
        ldsm_x4(qa[mt], q_s + (q_off ^ (ks << 5)) + mt * 16 * RB);
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t kf[4];  // b0, b1 of n-tile 2np, then of n-tile 2np + 1
        // = swz(np * 16 + (lm_i >> 1) * 8 + lm_r, 2 ks + (lm_i & 1))
        ldsm_x4(kf, kd + (k_off ^ (ks << 5)) + np * 16 * RB);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816(s[mt][2 * np], qa[mt], kf[0], kf[1]);
          mma16816(s[mt][2 * np + 1], qa[mt], kf[2], kf[3]);
        }
      }
    }

    // -- mask (only tiles touching the diagonal, the window edge or the sequence end) --
    const bool need_mask =
        kb + kBN - 1 > pos_min || (a.window > 0 && kb < attn::first_key(pos_max, a.window));
    if (need_mask) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          // Position of row g + 8 hf of m-tile mt; padding rows get positions past the end
          // (harmless: their keys are finite and they are never stored).
          const int rp = ctx + (r0 + warp * 32 + mt * 16 + hf * 8 + g) / G;
          const int lo = attn::first_key(rp, a.window);
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int u = 0; u < 2; ++u) {
              const int kp = kb + nt * 8 + 2 * t + u;
              if (kp > rp || kp < lo) s[mt][nt][2 * hf + u] = -INFINITY;
            }
          }
        }
      }
    }

    // -- online softmax (fp32), P as fp16 A fragments --
    uint32_t pa[2][4][4];
    float alpha[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
          mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_run[mt][hf], mx);
        // A row with no visible key yet keeps m = -inf; use 0 so exp2 sees -inf, not NaN.
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        // Exactly 1 when the max is unchanged, so the O rescale below can be skipped.
        alpha[mt][hf] =
            m_new == m_run[mt][hf] ? 1.0f : exp2_ftz(__fmul_rn(m_run[mt][hf] - m_use, c_exp));
        m_run[mt][hf] = m_new;
        const float moff = fmaf(m_use, c_exp, -15.0f);
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            const float p = exp2_ftz(fmaf(s[mt][nt][2 * hf + u], c_exp, -moff));
            s[mt][nt][2 * hf + u] = p;
            sum += p;
          }
        }
        l_run[mt][hf] = fmaf(l_run[mt][hf], alpha[mt][hf], sum);
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        pa[mt][kk][0] = pack_h2(s[mt][2 * kk][0], s[mt][2 * kk][1]);          // row g,   keys 2t
        pa[mt][kk][1] = pack_h2(s[mt][2 * kk][2], s[mt][2 * kk][3]);          // row g+8, keys 2t
        pa[mt][kk][2] = pack_h2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);  // row g,   keys 8+2t
        pa[mt][kk][3] = pack_h2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);  // row g+8, keys 8+2t
      }
    }

    // O *= alpha, skipped (warp-uniformly) when no row of the warp changed its max: after the
    // first tiles most rows keep theirs, and this is 2 D multiplies per thread and tile.
    const bool rescale =
        alpha[0][0] != 1.0f || alpha[0][1] != 1.0f || alpha[1][0] != 1.0f || alpha[1][1] != 1.0f;
    if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int j = 0; j < Geo::kONTiles; ++j) {
          o[mt][j][0] *= alpha[mt][0];
          o[mt][j][1] *= alpha[mt][0];
          o[mt][j][2] *= alpha[mt][1];
          o[mt][j][3] *= alpha[mt][1];
        }
      }
    }

    // -- O += P V --
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vf[4];  // b0, b1 of channel n-tile 2dp, then of n-tile 2dp + 1
        // = swz(kk * 16 + (lm_i & 1) * 8 + lm_r, 2 dp + (lm_i >> 1))
        ldsm_x4_t(vf, vd + (v_off ^ (dp << 5)) + kk * 16 * RB);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma16816(o[mt][2 * dp], pa[mt][kk], vf[0], vf[1]);
          mma16816(o[mt][2 * dp + 1], pa[mt][kk], vf[2], vf[3]);
        }
      }
    }
  }

  // ---- epilogue: O / l, fp32 rows of [T, Hq, D] --------------------------------------------
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float l = l_run[mt][hf];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int row = warp * 32 + mt * 16 + hf * 8 + g;
      if (row < rows_valid) {
        const float inv = 1.0f / l;
        const int R = r0 + row, j = R / G, h = R - j * G;
        float* dst = a.out + ((static_cast<int64_t>(tok0) + j) * a.num_heads + kvh * G + h) * D;
#pragma unroll
        for (int nt = 0; nt < Geo::kONTiles; ++nt) {
          *reinterpret_cast<float2*>(dst + nt * 8 + 2 * t) =
              make_float2(o[mt][nt][2 * hf] * inv, o[mt][nt][2 * hf + 1] * inv);
        }
      }
    }
  }
}

template <KvFormat F, int D, int W>
void launch_pf(const PfArgs& a, int num_seqs, int kv_heads, int row_tiles, cudaStream_t stream) {
  constexpr int smem = PfGeom<D, W>::kSmemBytes;
  // Idempotent and cheap; needed once per instantiation for > 48 KiB of dynamic smem.
  QSERVE_CUDA_CHECK(cudaFuncSetAttribute(prefill_tc_kernel<F, D, W>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                    "prefill_attention_tc smem attribute");
  const dim3 grid(static_cast<unsigned>(num_seqs) * static_cast<unsigned>(kv_heads),
                  static_cast<unsigned>(row_tiles));
  prefill_tc_kernel<F, D, W><<<grid, PfGeom<D, W>::kThreads, smem, stream>>>(a);
}

template <int D, int W>
void launch_fmt(const PfArgs& a, KvFormat f, int ns, int nh, int tiles, cudaStream_t stream) {
  switch (f) {
    case KvFormat::kv4:
      launch_pf<KvFormat::kv4, D, W>(a, ns, nh, tiles, stream);
      break;
    case KvFormat::kv8:
      launch_pf<KvFormat::kv8, D, W>(a, ns, nh, tiles, stream);
      break;
    case KvFormat::kv16:
      launch_pf<KvFormat::kv16, D, W>(a, ns, nh, tiles, stream);
      break;
  }
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

}  // namespace

bool prefill_attention_tc_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                    int64_t head_dim) {
  if (format != KvFormat::kv4 && format != KvFormat::kv8 && format != KvFormat::kv16) return false;
  if (head_dim != 64 && head_dim != 128) return false;
  if (kv_heads <= 0 || kv_heads > 65535 || num_heads <= 0 || num_heads % kv_heads != 0) {
    return false;
  }
  const int64_t g = num_heads / kv_heads;
  return g >= 1 && g <= 8;
}

int64_t prefill_attention_tc_row_tiles(int64_t max_num_tokens, int64_t group) {
  return (std::max<int64_t>(0, max_num_tokens) * group + 127) / 128;
}

void prefill_attention_tc_warps(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out, int warps,
                                cudaStream_t stream) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = "S=" + std::to_string(S) + " Hq=" + std::to_string(num_heads) +
                            " Hkv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                            " max_num_tokens=" + std::to_string(batch.max_num_tokens) +
                            " warps=" + std::to_string(warps);
  check(prefill_attention_tc_supported(cache.format, num_heads, hkv, d),
        "prefill_attention_tc: needs head_dim 64 or 128 and Hq/Hkv in 1..8 (" + shape + ")");
  check(warps == 4 || warps == 8, "prefill_attention_tc: warps must be 4 or 8 (" + shape + ")");
  check(S >= 0 && S * hkv <= 0x7fffffff && batch.max_num_tokens >= 0,
        "prefill_attention_tc: sequences x KV heads must fit a grid dimension (" + shape + ")");
  if (S == 0 || batch.max_num_tokens == 0) return;
  const int64_t tiles = prefill_attention_tc_row_tiles(batch.max_num_tokens, num_heads / hkv);
  check(tiles <= 65535,
        "prefill_attention_tc: max_num_tokens * Hq/Hkv must be <= 65535 * 128 (" + shape + ")");
  check(aligned16(q) && aligned16(k16) && aligned16(v16) && aligned16(cache.k_pool) &&
            aligned16(cache.v_pool) && aligned16(out),
        "prefill_attention_tc: q, k16, v16, out and the pools must be 16-byte aligned (" + shape +
            ")");

  PfArgs a{};
  a.q = q;
  a.k16 = k16;
  a.v16 = v16;
  a.k_pool = cache.k_pool;
  a.v_pool = cache.v_pool;
  a.geom = attn::make_geom(cache.format, static_cast<int>(hkv), static_cast<int>(d));
  a.token_offset = batch.token_offset;
  a.num_tokens = batch.num_tokens;
  a.context_len = batch.context_len;
  a.block_table = batch.block_table;
  a.block_stride = batch.block_stride;
  a.num_heads = static_cast<int>(num_heads);
  a.kv_heads = static_cast<int>(hkv);
  a.group = static_cast<int>(num_heads / hkv);
  a.window = static_cast<int>(std::max<int64_t>(0, window));
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));  // as the reference
  a.out = out;

  const int ns = static_cast<int>(S), nh = static_cast<int>(hkv);
  if (warps == 4) {
    const int nt = static_cast<int>(tiles);
    if (d == 128) {
      launch_fmt<128, 4>(a, cache.format, ns, nh, nt, stream);
    } else {
      launch_fmt<64, 4>(a, cache.format, ns, nh, nt, stream);
    }
  } else {
    const int nt = static_cast<int>((tiles + 1) / 2);  // 256-row tiles
    if (d == 128) {
      launch_fmt<128, 8>(a, cache.format, ns, nh, nt, stream);
    } else {
      launch_fmt<64, 8>(a, cache.format, ns, nh, nt, stream);
    }
  }
  check_launch("prefill_attention_tc", shape);
}

void prefill_attention_tc(const float* q, const uint16_t* k16, const uint16_t* v16,
                          const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                          int64_t num_heads, int64_t window, float* out, cudaStream_t stream) {
  prefill_attention_tc_warps(q, k16, v16, cache, batch, num_heads, window, out,
                             kPrefillTcDefaultWarps, stream);
}

}  // namespace qserve::cuda
