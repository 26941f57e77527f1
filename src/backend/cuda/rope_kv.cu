// RoPE on Q and K, fp16 rounding of K/V, and the paged KV append (KV4/KV8 QServe pages, or our
// KV16 pages), fused.
//
// Four kernels compute the same bits:
//  - rope_kv_rows_kernel (the dispatch's with the step's RoPE table, up to 4 waves of 8 blocks
//    per SM: the engine's decode steps and small prefill chunks; 2026-12-01, tenth session):
//    indexed by qkv row, the row's cos/sin read from the table rope_cos_sin_table built once per
//    step, so the qkv, cos/sin and row-info loads are one round trip with no block barrier.
//  - rope_kv_v2_kernel (the dispatch's otherwise, where the vec kernel applies; since the fifth
//    session of 2026-11-30): the vec kernel's tasks with one dependent load round trip before
//    the qkv loads instead of up to three, and a token's task blocks spread over blocks while
//    that grid has <= 4 waves of 8 blocks per SM, one block per token above (see its comment).
//    Both kernels place a lane's 8 rotation pairs as two runs of 4 (PairRuns<4>, tenth session),
//    so that the fp32 q stores write whole 32-byte sectors (20-29% faster at 256-8192 tokens
//    than one run of 8, whose 16-byte stores wrote half of each sector they touched). The vec
//    kernel stays callable as cuda::prev::.
//  - rope_kv_vec_kernel (head_dim % 16 == 0 and <= 512, 16-byte aligned rows: every Llama
//    geometry): a "task" is 8 rotation pairs (i, i + D/2), i in [8l, 8l + 8), of one head of
//    one token, so D/16 consecutive lanes cover a head and every load and store is 16 bytes
//    (q: 2 x 16 B in, 4 x 16 B fp32 out). K/V tasks quantize their head straight from registers:
//    min/max over the head's lanes by shuffles, then 4 (KV4) or 8 (KV8) code bytes per half.
//    One 128-thread block handles up to kRopeMaxTasks task blocks of one token (Llama-3-8B: 48
//    heads x 8 lanes = 3 blocks, all loads issued before the cos/sin are computed); when the
//    whole batch fits in one wave the token's task blocks are spread over `parts` blocks
//    instead (blockIdx.z), which shortens each block's serial work at 256 tokens.
//  - rope_kv_kernel (any geometry, the baseline): one 128-thread block per token, scalar
//    accesses, K/V staged in shared memory and quantized one warp per (K or V, head).
//
// Numerics (the CPU path is cpu::rope, then model/paged_attention.h round_to_fp16, then
// quant::kv_page_write):
//  - angle = fp32(pos) * inv_freq[i] (one fp32 product, as cpu::rope); cos/sin in double, then
//    rounded to fp32 (within 1 ulp of glibc's cosf/sinf, usually equal);
//  - x1*cos - x2*sin and x2*cos + x1*sin as separately rounded products and a sum (explicit
//    __fmul_rn/__fadd_rn: cpu::rope turns contraction off, so must we);
//  - K/V -> fp16 with round-to-nearest-even;
//  - KV4/KV8 per (token, head), docs/numerics.md §4, every step an explicit IEEE intrinsic:
//      mx, mn (exact; fmaxf/fminf in any order), s = fp16_RN((mx - mn) * fl32(1/Q)),
//      z = fp16_RN((-Q * mn) * (1 / (mx - mn))), q_c = cvt_rni_sat_u8(fma(x_c, 1/s, z)),
//    KV4 keeps q_c & 0xF (even channel low nibble); the same bytes as quant::kv_quantize.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_device.h"
#include "backend/cuda/fused_baseline.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/pdl_device.cuh"
#include "core/error.h"

namespace qserve::cuda {

int64_t kv_page_bytes(KvFormat format, int64_t kv_heads, int64_t head_dim) {
  check(kv_heads > 0 && head_dim > 0 && head_dim % 2 == 0,
        "kv_page_bytes: kv_heads must be positive and head_dim positive and even, got " +
            std::to_string(kv_heads) + ", " + std::to_string(head_dim));
  switch (format) {
    case KvFormat::kv4:
      return kv_heads * kKvPageTokensCuda * (head_dim / 2) + kv_heads * kKvPageTokensCuda * 4;
    case KvFormat::kv8:
      return kv_heads * kKvPageTokensCuda * head_dim + kv_heads * kKvPageTokensCuda * 4;
    case KvFormat::kv16:
      return kv_heads * kKvPageTokensCuda * head_dim * 2;
  }
  throw Error("kv_page_bytes: unknown KV format " + std::to_string(static_cast<int>(format)));
}

namespace {

using attn::f2h;
using attn::h2f;
using attn::kPage;

constexpr int kRopeThreads = 128;

// quant::cvt_rni_sat_u8: round to nearest even, saturate to [0, 255], NaN -> 0.
__device__ __forceinline__ uint8_t cvt_rni_sat_u8(float x) {
  if (isnan(x)) return 0;
  const float r = rintf(x);
  if (r <= 0.0f) return 0;
  if (r >= 255.0f) return 255;
  return static_cast<uint8_t>(static_cast<int>(r));
}

__device__ __forceinline__ float load_f(float v) {
  return v;
}
__device__ __forceinline__ float load_f(uint16_t h) {
  return h2f(h);
}

// Quantizes one (token, head) row x[0..D) (fp16 bits in shared memory) into a page, one warp.

// A token's KV4/KV8 scale and zero from its min and max, as the CPU's quant::kv_page_write: the
// fp16 bits of s = range / Q and z = -Q min / range (both rounded as the reference rounds them),
// and the fp32 1/s and z the codes are computed with.
struct KvQuantParams {
  uint16_t s_bits, z_bits;
  float inv, z;
};
template <KvFormat F>
__device__ __forceinline__ KvQuantParams kv_quant_params(float mx, float mn) {
  constexpr float levels = F == KvFormat::kv4 ? 15.0f : 255.0f;
  constexpr float inv_levels = 1.0f / levels;  // fl32(1/Q), as the CPU's constant
  const float range = __fsub_rn(mx, mn);
  KvQuantParams p;
  p.s_bits = f2h(__fmul_rn(range, inv_levels));
  p.z_bits = f2h(__fmul_rn(__fmul_rn(-levels, mn), __frcp_rn(range)));
  p.inv = __frcp_rn(h2f(p.s_bits));
  p.z = h2f(p.z_bits);
  return p;
}

template <KvFormat F>
__device__ void quantize_row(const uint16_t* x, int d, uint8_t* page, const attn::PageGeom& g,
                             int head, int slot, int lane) {
  float mx = -INFINITY, mn = INFINITY;
  for (int c = lane; c < d; c += 32) {
    const float v = h2f(x[c]);
    mx = fmaxf(mx, v);
    mn = fminf(mn, v);
  }
  for (int o = 16; o > 0; o >>= 1) {
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
  }
  const KvQuantParams qp = kv_quant_params<F>(mx, mn);
  const uint16_t s_bits = qp.s_bits, z_bits = qp.z_bits;
  const float inv = qp.inv, z = qp.z;
  uint8_t* data = page + g.data_offset(head, slot);
  for (int p = lane; p < d / 2; p += 32) {
    const uint8_t q0 = cvt_rni_sat_u8(__fmaf_rn(h2f(x[2 * p]), inv, z));
    const uint8_t q1 = cvt_rni_sat_u8(__fmaf_rn(h2f(x[2 * p + 1]), inv, z));
    if constexpr (F == KvFormat::kv4) {
      data[p] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    } else {
      data[2 * p] = q0;
      data[2 * p + 1] = q1;
    }
  }
  if (lane == 0) {
    *reinterpret_cast<uint16_t*>(page + g.scale_offset(head, slot)) = s_bits;
    *reinterpret_cast<uint16_t*>(page + g.zero_offset(head, slot)) = z_bits;
  }
}

struct RopeArgs {
  int64_t qkv_stride;
  const int32_t* token_offset;
  const int32_t* num_tokens;
  const int32_t* context_len;
  const int32_t* block_table;
  int32_t block_stride;
  int num_heads, kv_heads, head_dim;
  const float* inv_freq;
  uint8_t* k_pool;
  uint8_t* v_pool;
  attn::PageGeom geom;
  float* q_out;
  uint16_t* k16;
  uint16_t* v16;
  // The step's cos/sin table ([T, D], rope_cos_sin_table) or nullptr (computed per block).
  const float* cos_sin;
};

// Dynamic shared memory: cos[D/2], sin[D/2] fp32, then k[Hkv*D], v[Hkv*D] fp16 bits.
template <KvFormat F, typename In>
__global__ void __launch_bounds__(kRopeThreads) rope_kv_kernel(const In* qkv, RopeArgs a) {
  extern __shared__ float smem[];
  const int j = blockIdx.x, seq = blockIdx.y;
  if (j >= a.num_tokens[seq]) return;
  const int pos = a.context_len[seq] + j;
  const int64_t row = static_cast<int64_t>(a.token_offset[seq]) + j;
  const int D = a.head_dim, half_d = D / 2, Hq = a.num_heads, Hkv = a.kv_heads;
  float* cosv = smem;
  float* sinv = smem + half_d;
  uint16_t* ks = reinterpret_cast<uint16_t*>(smem + D);
  uint16_t* vs = ks + Hkv * D;

  const float fpos = static_cast<float>(pos);
  for (int i = threadIdx.x; i < half_d; i += blockDim.x) {
    const float angle = __fmul_rn(fpos, a.inv_freq[i]);
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    cosv[i] = static_cast<float>(c);
    sinv[i] = static_cast<float>(s);
  }
  __syncthreads();

  const In* src = qkv + row * a.qkv_stride;
  // Q heads.
  for (int idx = threadIdx.x; idx < Hq * half_d; idx += blockDim.x) {
    const int h = idx / half_d, i = idx % half_d;
    const float x1 = load_f(src[h * D + i]);
    const float x2 = load_f(src[h * D + i + half_d]);
    float* o = a.q_out + (row * Hq + h) * D;
    o[i] = __fsub_rn(__fmul_rn(x1, cosv[i]), __fmul_rn(x2, sinv[i]));
    o[i + half_d] = __fadd_rn(__fmul_rn(x2, cosv[i]), __fmul_rn(x1, sinv[i]));
  }
  // K heads (rotated, then rounded to fp16) and V (rounded).
  const In* ksrc = src + static_cast<int64_t>(Hq) * D;
  const In* vsrc = ksrc + static_cast<int64_t>(Hkv) * D;
  for (int idx = threadIdx.x; idx < Hkv * half_d; idx += blockDim.x) {
    const int h = idx / half_d, i = idx % half_d;
    const float x1 = load_f(ksrc[h * D + i]);
    const float x2 = load_f(ksrc[h * D + i + half_d]);
    const uint16_t r1 = f2h(__fsub_rn(__fmul_rn(x1, cosv[i]), __fmul_rn(x2, sinv[i])));
    const uint16_t r2 = f2h(__fadd_rn(__fmul_rn(x2, cosv[i]), __fmul_rn(x1, sinv[i])));
    ks[h * D + i] = r1;
    ks[h * D + i + half_d] = r2;
  }
  for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x) vs[idx] = f2h(load_f(vsrc[idx]));
  __syncthreads();
  for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x) {
    a.k16[row * Hkv * D + idx] = ks[idx];
    a.v16[row * Hkv * D + idx] = vs[idx];
  }
  if (a.k_pool == nullptr) return;

  const int32_t page = a.block_table[static_cast<int64_t>(seq) * a.block_stride + pos / kPage];
  const int slot = pos % kPage;
  uint8_t* kpage = a.k_pool + static_cast<int64_t>(page) * a.geom.page_bytes;
  uint8_t* vpage = a.v_pool + static_cast<int64_t>(page) * a.geom.page_bytes;
  if constexpr (F == KvFormat::kv16) {
    for (int idx = threadIdx.x; idx < Hkv * D; idx += blockDim.x) {
      const int h = idx / D, c = idx % D;
      const int64_t off = a.geom.data_offset(h, slot) / 2 + c;
      reinterpret_cast<uint16_t*>(kpage)[off] = ks[idx];
      reinterpret_cast<uint16_t*>(vpage)[off] = vs[idx];
    }
  } else {
    // One warp per (K or V, head).
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int item = warp; item < 2 * Hkv; item += kRopeThreads / 32) {
      const int h = item >> 1;
      const bool is_v = (item & 1) != 0;
      quantize_row<F>((is_v ? vs : ks) + h * D, D, is_v ? vpage : kpage, a.geom, h, slot, lane);
    }
  }
}

// ---- The vectorized kernel -------------------------------------------------------------------

// Task blocks (of kRopeThreads tasks) per block: Llama geometries have 3 (48 heads x 8 lanes).
constexpr int kRopeMaxTasks = 3;
// Blocks of rope_kv_vec_kernel resident per SM (its __launch_bounds__: <= 80 registers). A
// 64-register cap (8 blocks: one wave for 1024 Llama tokens) measured 1.99 / 2.56 / 2.85 TB/s
// at 1024 / 4096 / 8192 tokens against 1.95 / 2.96 / 3.27 with this one: its spills cost more.
constexpr int kRopeBlocksPerSm = 6;

// cvt.rni.sat.u8.f32 as one instruction: cvt_rni_sat_u8 above.
__device__ __forceinline__ uint32_t cvt_u8_bits(float x) {
  uint32_t r;
  asm("cvt.rni.sat.u8.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

// 8 consecutive input elements, widened exactly to fp32.
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8(const uint16_t* p, float (&v)[8]) {
  const uint4 a = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = h2f(static_cast<uint16_t>(w[i] & 0xffffu));
    v[2 * i + 1] = h2f(static_cast<uint16_t>(w[i] >> 16));
  }
}
// The raw 16 or 32 bytes of 8 input elements (kept as loaded until the cos/sin are ready).
template <typename In>
struct Raw8 {
  uint4 w[sizeof(In) / 2];
  __device__ __forceinline__ void load(const In* p) {
#pragma unroll
    for (int i = 0; i < static_cast<int>(sizeof(In)) / 2; ++i) {
      w[i] = reinterpret_cast<const uint4*>(p)[i];
    }
  }
  // Elements 0..3 from p0, 4..7 from p1 (the two runs of a kC = 4 lane, PairRuns).
  __device__ __forceinline__ void load_split(const In* p0, const In* p1) {
    if constexpr (sizeof(In) == 2) {
      uint2* d = reinterpret_cast<uint2*>(w);
      d[0] = *reinterpret_cast<const uint2*>(p0);
      d[1] = *reinterpret_cast<const uint2*>(p1);
    } else {
      w[0] = *reinterpret_cast<const uint4*>(p0);
      w[1] = *reinterpret_cast<const uint4*>(p1);
    }
  }
  __device__ __forceinline__ void get(float (&v)[8]) const {
    load8(reinterpret_cast<const In*>(w), v);
  }
};

// Where the 8 rotation pairs of lane l of a head (L = D/16 lanes) lie in the head's first half:
// kC = 8, one run of 8 pairs [8l, 8l + 8) (16-byte fp16 accesses; the lane's fp32 q outputs are
// 32 bytes, so each 16-byte store of a warp writes half of every 32-byte sector it touches);
// kC = 4, two runs of 4 pairs, [4l, 4l + 4) and [D/4 + 4l, D/4 + 4l + 4) (8-byte fp16
// accesses; the L lanes' 16-byte q stores of a run are one contiguous D/4-float span, so every
// store instruction writes whole sectors). Element k of a lane's x1/x2/outputs is pair
// base(run k / kC) + k % kC.
template <int kC>
struct PairRuns {
  static_assert(kC == 8 || kC == 4);
  static constexpr int kRuns = 8 / kC;
  __device__ __forceinline__ static int base(int l, int half_d, int r) {
    return kC == 8 ? 8 * l : 4 * l + r * (half_d / 2);
  }
};
// 8 fp32 values rounded to fp16 (each __float2half_rn), packed.
__device__ __forceinline__ uint4 pack_f16x8(const float (&v)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2 h = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    w[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ void unpack_f16x8(const uint4& p, float (&v)[8]) {
  load8(reinterpret_cast<const uint16_t*>(&p), v);
}

// Quantizes one (token, head) row held by the `lanes` lanes of an aligned group (each lane's 8
// pairs at PairRuns<kC> bases b[r]: channels b[r] + i and half + b[r] + i; x1, x2 as fp32 values
// of fp16 bits) into the page, exactly as quantize_row: mx/mn over the row (exact in any order),
// s, z, codes. Every lane of the warp must call (the shuffles); `active` lanes write.
template <KvFormat F, int kC>
__device__ __forceinline__ void quantize_group(const float (&x1)[8], const float (&x2)[8],
                                               int lanes, bool active, uint8_t* page,
                                               const attn::PageGeom& g, int head, int slot,
                                               const int (&b)[PairRuns<kC>::kRuns], int half,
                                               bool leader) {
  float mx = -INFINITY, mn = INFINITY;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    mx = fmaxf(mx, fmaxf(x1[k], x2[k]));
    mn = fminf(mn, fminf(x1[k], x2[k]));
  }
  for (int o = lanes / 2; o > 0; o >>= 1) {
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
  }
  if (!active) return;
  const KvQuantParams qp = kv_quant_params<F>(mx, mn);
  const uint16_t s_bits = qp.s_bits, z_bits = qp.z_bits;
  const float inv = qp.inv, z = qp.z;
  uint32_t q1[8], q2[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    q1[k] = cvt_u8_bits(__fmaf_rn(x1[k], inv, z));
    q2[k] = cvt_u8_bits(__fmaf_rn(x2[k], inv, z));
  }
  uint8_t* data = page + g.data_offset(head, slot);
  if constexpr (F == KvFormat::kv4) {
    // Byte c/2 holds channel c (even) in its low nibble and c + 1 in its high nibble: a run of
    // kC codes is kC/2 bytes.
    auto pack4 = [](const uint32_t(&q)[8], int k0) {
      uint32_t w = 0;
#pragma unroll
      for (int m = 0; m < kC / 2; ++m) {
        w |= (((q[k0 + 2 * m] & 0x0fu) | ((q[k0 + 2 * m + 1] & 0x0fu) << 4)) << (8 * m));
      }
      return w;
    };
#pragma unroll
    for (int r = 0; r < PairRuns<kC>::kRuns; ++r) {
      if constexpr (kC == 8) {
        *reinterpret_cast<uint32_t*>(data + b[r] / 2) = pack4(q1, 0);
        *reinterpret_cast<uint32_t*>(data + (half + b[r]) / 2) = pack4(q2, 0);
      } else {
        *reinterpret_cast<uint16_t*>(data + b[r] / 2) = static_cast<uint16_t>(pack4(q1, kC * r));
        *reinterpret_cast<uint16_t*>(data + (half + b[r]) / 2) =
            static_cast<uint16_t>(pack4(q2, kC * r));
      }
    }
  } else {
    auto pack8 = [](const uint32_t(&q)[8], int k0) {
      return q[k0] | (q[k0 + 1] << 8) | (q[k0 + 2] << 16) | (q[k0 + 3] << 24);
    };
#pragma unroll
    for (int r = 0; r < PairRuns<kC>::kRuns; ++r) {
      if constexpr (kC == 8) {
        *reinterpret_cast<uint2*>(data + b[r]) = make_uint2(pack8(q1, 0), pack8(q1, 4));
        *reinterpret_cast<uint2*>(data + half + b[r]) = make_uint2(pack8(q2, 0), pack8(q2, 4));
      } else {
        *reinterpret_cast<uint32_t*>(data + b[r]) = pack8(q1, kC * r);
        *reinterpret_cast<uint32_t*>(data + half + b[r]) = pack8(q2, kC * r);
      }
    }
  }
  if (leader) {
    *reinterpret_cast<uint16_t*>(page + g.scale_offset(head, slot)) = s_bits;
    *reinterpret_cast<uint16_t*>(page + g.zero_offset(head, slot)) = z_bits;
  }
}

// The cos and sin of lane l's 8 pairs (PairRuns<kC>) from a token's [cos[D/2], sin[D/2]] row
// (the block's shared copy, or the step's table in global memory).
template <int kC>
__device__ __forceinline__ void lane_cos_sin(const float* cs, int l, int half_d, float (&cv)[8],
                                             float (&sv)[8]) {
  using Runs = PairRuns<kC>;
#pragma unroll
  for (int r = 0; r < Runs::kRuns; ++r) {
    const int b = Runs::base(l, half_d, r);
#pragma unroll
    for (int v = 0; v < kC / 4; ++v) {
      *reinterpret_cast<float4*>(cv + kC * r + 4 * v) =
          *reinterpret_cast<const float4*>(cs + b + 4 * v);
      *reinterpret_cast<float4*>(sv + kC * r + 4 * v) =
          *reinterpret_cast<const float4*>(cs + half_d + b + 4 * v);
    }
  }
}

// Task tau of a token: head hh = tau / L (q heads, then k, then v), lane-in-head l = tau % L
// (L = D / 16), rotation pairs at PairRuns<kC>::base(l, D/2, r) + i. x1, x2: the task's inputs
// (the pairs' first-half channels and D/2 + those); cv, sv: their cos and sin (lane_cos_sin).
// Every lane of the warp must call (the K/V quantization shuffles over a head's lanes); `valid`
// lanes have a task.
template <KvFormat F, int kC = 8>
__device__ __forceinline__ void rope_task(const RopeArgs& a, const float (&cv)[8],
                                          const float (&sv)[8], int64_t row, int tau, bool valid,
                                          const float (&x1)[8], const float (&x2)[8], int32_t page,
                                          int slot) {
  using Runs = PairRuns<kC>;
  const int D = a.head_dim, half_d = D / 2, L = D / 16, Hq = a.num_heads, Hkv = a.kv_heads;
  const int hh = tau / L, l = tau % L;
  int b[Runs::kRuns];
#pragma unroll
  for (int r = 0; r < Runs::kRuns; ++r) b[r] = Runs::base(l, half_d, r);
  const bool is_q = hh < Hq;
  auto rotate = [&](float(&o1)[8], float(&o2)[8]) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      o1[k] = __fsub_rn(__fmul_rn(x1[k], cv[k]), __fmul_rn(x2[k], sv[k]));
      o2[k] = __fadd_rn(__fmul_rn(x2[k], cv[k]), __fmul_rn(x1[k], sv[k]));
    }
  };
  if (valid && is_q) {
    float o1[8], o2[8];
    rotate(o1, o2);
    float* o = a.q_out + (row * Hq + hh) * D;
#pragma unroll
    for (int r = 0; r < Runs::kRuns; ++r) {
#pragma unroll
      for (int v = 0; v < kC / 4; ++v) {
        const int k = kC * r + 4 * v;
        reinterpret_cast<float4*>(o + b[r])[v] =
            make_float4(o1[k], o1[k + 1], o1[k + 2], o1[k + 3]);
        reinterpret_cast<float4*>(o + half_d + b[r])[v] =
            make_float4(o2[k], o2[k + 1], o2[k + 2], o2[k + 3]);
      }
    }
  }
  // K (rotated) and V heads: fp16 rows out, then the page. Groups never mix q and k/v lanes (a
  // head is one aligned group), but a warp may, so the shuffles run on the whole warp.
  const bool is_kv = valid && !is_q;
  if (!__any_sync(0xffffffffu, is_kv)) return;
  const int kvh = hh - Hq;
  const bool is_v = kvh >= Hkv;
  const int h = is_v ? kvh - Hkv : kvh;
  uint4 p1 = make_uint4(0, 0, 0, 0), p2 = p1;  // the fp16 bits of elements 0..7
  if (is_kv) {
    if (!is_v) {
      float o1[8], o2[8];
      rotate(o1, o2);
      p1 = pack_f16x8(o1);
      p2 = pack_f16x8(o2);
    } else {
      p1 = pack_f16x8(x1);
      p2 = pack_f16x8(x2);
    }
    uint16_t* dst = (is_v ? a.v16 : a.k16) + (row * Hkv + h) * D;
    if constexpr (kC == 8) {
      *reinterpret_cast<uint4*>(dst + b[0]) = p1;
      *reinterpret_cast<uint4*>(dst + half_d + b[0]) = p2;
    } else {
      *reinterpret_cast<uint2*>(dst + b[0]) = make_uint2(p1.x, p1.y);
      *reinterpret_cast<uint2*>(dst + b[1]) = make_uint2(p1.z, p1.w);
      *reinterpret_cast<uint2*>(dst + half_d + b[0]) = make_uint2(p2.x, p2.y);
      *reinterpret_cast<uint2*>(dst + half_d + b[1]) = make_uint2(p2.z, p2.w);
    }
  }
  if (a.k_pool == nullptr) return;
  uint8_t* pg = (is_v ? a.v_pool : a.k_pool) + static_cast<int64_t>(page) * a.geom.page_bytes;
  if constexpr (F == KvFormat::kv16) {
    if (is_kv) {
      uint8_t* data = pg + a.geom.data_offset(h, slot);
      if constexpr (kC == 8) {
        *reinterpret_cast<uint4*>(data + 2 * b[0]) = p1;
        *reinterpret_cast<uint4*>(data + 2 * (half_d + b[0])) = p2;
      } else {
        *reinterpret_cast<uint2*>(data + 2 * b[0]) = make_uint2(p1.x, p1.y);
        *reinterpret_cast<uint2*>(data + 2 * b[1]) = make_uint2(p1.z, p1.w);
        *reinterpret_cast<uint2*>(data + 2 * (half_d + b[0])) = make_uint2(p2.x, p2.y);
        *reinterpret_cast<uint2*>(data + 2 * (half_d + b[1])) = make_uint2(p2.z, p2.w);
      }
    }
  } else {
    float v1[8], v2[8];
    unpack_f16x8(p1, v1);
    unpack_f16x8(p2, v2);
    quantize_group<F, kC>(v1, v2, L, is_kv, pg, a.geom, h, slot, b, half_d, l == 0);
  }
}

// The token's cos/sin (double precision, rounded to fp32: the baseline's values) into cs.
__device__ __forceinline__ void rope_cos_sin(const RopeArgs& a, int pos, float* cs) {
  const int half_d = a.head_dim / 2;
  const float fpos = static_cast<float>(pos);
  for (int i = threadIdx.x; i < half_d; i += blockDim.x) {
    const float angle = __fmul_rn(fpos, a.inv_freq[i]);
    double sn, c;
    sincos(static_cast<double>(angle), &sn, &c);
    cs[i] = static_cast<float>(c);
    cs[half_d + i] = static_cast<float>(sn);
  }
}

// One token per block (blockIdx.x = token of sequence blockIdx.y); the block takes task blocks
// part, part + parts, ... (at most kRopeMaxTasks).
template <KvFormat F, typename In>
__global__ void __launch_bounds__(kRopeThreads, kRopeBlocksPerSm)
    rope_kv_vec_kernel(const In* __restrict__ qkv, RopeArgs a, int parts) {
  extern __shared__ float cs[];  // cos[D/2], sin[D/2]
  const int j = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
  if (j >= a.num_tokens[seq]) return;
  const int pos = a.context_len[seq] + j;
  const int64_t row = static_cast<int64_t>(a.token_offset[seq]) + j;
  const int D = a.head_dim, half_d = D / 2, L = D / 16;
  const int tasks = (a.num_heads + 2 * a.kv_heads) * L;
  const int t = threadIdx.x;
  const In* src = qkv + row * a.qkv_stride;

  // Issue every load of this block before the (slow, double-precision) cos/sin.
  Raw8<In> r1[kRopeMaxTasks], r2[kRopeMaxTasks];
#pragma unroll
  for (int m = 0; m < kRopeMaxTasks; ++m) {
    const int tau = (part + parts * m) * kRopeThreads + t;
    if (tau < tasks) {
      const In* p = src + (tau / L) * D + (tau % L) * 8;
      r1[m].load(p);
      r2[m].load(p + half_d);
    }
  }
  rope_cos_sin(a, pos, cs);
  __syncthreads();

  int32_t page = 0;
  if (a.k_pool != nullptr) {
    page = a.block_table[static_cast<int64_t>(seq) * a.block_stride + pos / kPage];
  }
#pragma unroll
  for (int m = 0; m < kRopeMaxTasks; ++m) {
    const int tb = part + parts * m;
    if (tb * kRopeThreads >= tasks) break;  // uniform over the block
    const int tau = tb * kRopeThreads + t;
    const bool valid = tau < tasks;
    float x1[8], x2[8];
    if (valid) {
      r1[m].get(x1);
      r2[m].get(x2);
    }
    float cv[8], sv[8];
    lane_cos_sin<8>(cs, tau % L, half_d, cv, sv);
    rope_task<F>(a, cv, sv, row, tau, valid, x1, x2, page, pos % kPage);
  }
}

// ---- The vectorized kernel, v2 (2026-11-30, fifth session): the dispatch's kernel ----------
//
// rope_kv_vec_kernel's arithmetic (rope_task, the same bits), with its per-block latency chain
// shortened and the batch shapes chosen so that small batches fill the GPU:
//  - one dependent round trip before the qkv loads instead of up to three: the sequence's
//    num_tokens, context_len and token_offset are issued together (the vec kernel's early exit
//    on num_tokens came first, so the other two waited for it), inv_freq before them (it does
//    not depend on the token), and the page number (block_table) together with the qkv loads
//    instead of after the cos/sin barrier, where it cost a further round trip;
//  - kR = the block's task blocks at most: 3 (one block per Llama token, as the vec kernel at
//    large batches) or 1 (a token's task blocks spread over blocks, with up to kRopeSpreadBlocks
//    blocks per SM: 8 x 128 threads, one 16-byte pair of loads per thread). The dispatch spreads
//    while the spread grid has at most kRopeSpreadWaves waves: at 1024 Llama tokens the vec
//    kernel had 1024 blocks of 3 task blocks for 6 x 132 slots, 1.3 waves, i.e. two rounds of
//    the block's whole latency chain (bench_fused 2026-11-30: 17.6 us against 8.6 for a copy of
//    the same bytes).
// Both launch forms stay selectable (cuda::forced::rope_kv_append_f16, bench_fused's
// "rope_kv4_append_spread" / "_token" rows) so a GPU run shows which one wins where. A third
// form, one task block of each of two consecutive tokens per block, was measured slower than
// both (bench_fused 2026-11-30, docs/kernels.md) and removed.
//
// Round trips: the first version issued the sequence's loads together but tested num_tokens
// alone for the early exit; ptxas then sank the context_len / token_offset loads below the exit
// (SASS: EXIT, then their LDGs), so the qkv loads still waited for two round trips. The exit
// test now reads all three (one branch), which keeps them in the first round trip.
// The v2 kernel's lane layout (PairRuns): two runs of 4 pairs per lane (whole-sector q stores).
constexpr int kRopeChunkPairs = 4;
constexpr int kRopeSpreadBlocks = 8;  // __launch_bounds__ of the kR = 1 form: <= 64 registers
constexpr int kRopeSpreadWaves = 4;

// A 32-bit load issued where it stands: `asm volatile` keeps the compiler from sinking it below
// the early exit or the cos/sin (nvcc sinks loads to their first use), so these loads overlap.
__device__ __forceinline__ int32_t ld_issue(const int32_t* p) {
  int32_t v;
  asm volatile("ld.global.nc.s32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ float ld_issue(const float* p) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];" : "=f"(v) : "l"(p));
  return v;
}

// Task tau's 16 input elements of row src (the lane's pairs as two runs of 4, PairRuns<4>).
template <typename In>
__device__ __forceinline__ void load_task(const In* src, int tau, int D, Raw8<In>& r1,
                                          Raw8<In>& r2) {
  const int L = D / 16, half_d = D / 2;
  const In* hp = src + (tau / L) * D;
  const int l = tau % L;
  const int b0 = PairRuns<4>::base(l, half_d, 0), b1 = PairRuns<4>::base(l, half_d, 1);
  r1.load_split(hp + b0, hp + b1);
  r2.load_split(hp + half_d + b0, hp + half_d + b1);
}

template <KvFormat F, typename In, int kR, int kMinBlocks>
__global__ void __launch_bounds__(kRopeThreads, kMinBlocks)
    rope_kv_v2_kernel(const In* __restrict__ qkv, RopeArgs a, int parts) {
  constexpr int kC = kRopeChunkPairs;
  extern __shared__ float cs[];  // cos[D/2], sin[D/2]
  const int j = blockIdx.x, seq = blockIdx.y, part = blockIdx.z;
  const int t = threadIdx.x;
  const int D = a.head_dim, half_d = D / 2, L = D / 16;
  // Round trip 1: every load that needs no other load's result.
  const float f0 = t < half_d ? ld_issue(a.inv_freq + t) : 0.0f;
  const int32_t n = ld_issue(a.num_tokens + seq);
  const int32_t ctx = ld_issue(a.context_len + seq);
  const int32_t first = ld_issue(a.token_offset + seq);
  // The exit test reads all three loads (context_len and token_offset are never negative; `|`,
  // not `||`, so that it is one branch): with a test of n alone, ptxas sinks the other two loads
  // below the exit, which makes them a second round trip before the qkv loads.
  if ((j >= n) | ((ctx | first) < 0)) {
    pdl_wait();  // pdl.h: no block exits before the previous kernel has completed
    return;
  }
  const int pos = ctx + j;
  const int64_t row = static_cast<int64_t>(first) + j;
  // Round trip 2: the page number and this block's inputs, all in flight before the cos/sin.
  const int32_t page =
      a.k_pool != nullptr
          ? ld_issue(a.block_table + static_cast<int64_t>(seq) * a.block_stride + pos / kPage)
          : 0;
  // Everything above reads the step's metadata (uploaded before the step's first kernel); qkv
  // is the previous kernel's output, and the pages' slots may be read by it (pdl.h).
  pdl_wait();
  pdl_trigger();
  const int tasks = (a.num_heads + 2 * a.kv_heads) * L;
  const In* src = qkv + row * a.qkv_stride;
  Raw8<In> r1[kR], r2[kR];
#pragma unroll
  for (int m = 0; m < kR; ++m) {
    const int tau = (part + parts * m) * kRopeThreads + t;
    if (tau < tasks) load_task(src, tau, D, r1[m], r2[m]);
  }
  // The token's cos/sin (as rope_cos_sin; the first inv_freq value is already here).
  for (int i = t; i < half_d; i += kRopeThreads) {
    const float angle = __fmul_rn(static_cast<float>(pos), i == t ? f0 : a.inv_freq[i]);
    double sn, c;
    sincos(static_cast<double>(angle), &sn, &c);
    cs[i] = static_cast<float>(c);
    cs[half_d + i] = static_cast<float>(sn);
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < kR; ++m) {
    const int tb = part + parts * m;
    if (tb * kRopeThreads >= tasks) break;  // uniform over the block
    const int tau = tb * kRopeThreads + t;
    const bool valid = tau < tasks;
    float x1[8], x2[8];
    if (valid) {
      r1[m].get(x1);
      r2[m].get(x2);
    }
    float cv[8], sv[8];
    lane_cos_sin<kC>(cs, tau % L, half_d, cv, sv);
    rope_task<F, kC>(a, cv, sv, row, tau, valid, x1, x2, page, pos % kPage);
  }
}

// ---- With the step's table (2026-12-01, tenth session): one round trip ---------------------
//
// rope_cos_sin_table (once per step, for all layers) writes, per qkv row of the step, the
// token's cos/sin and a RopeRowInfo (page, slot; rows of no token are marked invalid). The
// kernel below is then indexed by row instead of (token, sequence): a block's qkv row, its
// lanes' cos/sin and the row's info need no other load's result, so they are all issued at
// once, where rope_kv_v2_kernel needs the sequence's metadata first (two dependent round trips)
// and computes the cos/sin behind a block barrier. Its blocks take one task block each (the
// spread form): holding three tasks' cos/sin in registers spills.
struct RopeRowInfo {
  int32_t valid;  // 1: a token of the step; anything else (the memset's -1): no token
  int32_t page;   // the page of its position (0 when the batch has no block table)
  int32_t slot;   // its position's slot in that page
  int32_t pad;    // (16-byte rows: one load)
};
static_assert(sizeof(RopeRowInfo) == kRopeRowInfoBytes);

// The row info through the coherent path (not .nc): the table may be the previous kernel's
// output, read right after the PDL wait.
__device__ __forceinline__ int4 ld_issue_v4(const int4* p) {
  int4 v;
  asm volatile("ld.global.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

template <KvFormat F, typename In>
__global__ void __launch_bounds__(kRopeThreads, kRopeSpreadBlocks)
    rope_kv_rows_kernel(const In* __restrict__ qkv, RopeArgs a, const RopeRowInfo* info) {
  constexpr int kC = kRopeChunkPairs;
  const int64_t row = blockIdx.x;
  const int t = threadIdx.x, tau = blockIdx.y * kRopeThreads + t;
  const int D = a.head_dim, half_d = D / 2, L = D / 16;
  const int tasks = (a.num_heads + 2 * a.kv_heads) * L;
  const bool valid = tau < tasks;
  // Everything is read after the wait: qkv is the previous kernel's output, and the table may
  // be too (a caller may build it just before; pdl.h). One round trip: the row's info, the
  // lanes' cos/sin and qkv inputs are independent loads. Rows without a token are loaded too
  // (the row exists: rows < the table's rows, which the caller sizes to its buffers) and then
  // dropped.
  pdl_wait();
  pdl_trigger();
  const int4 ri = ld_issue_v4(reinterpret_cast<const int4*>(info + row));
  Raw8<In> r1, r2;
  float cv[8], sv[8];
  if (valid) {
    load_task(qkv + row * a.qkv_stride, tau, D, r1, r2);
    lane_cos_sin<kC>(a.cos_sin + row * D, tau % L, half_d, cv, sv);
  }
  if (ri.x != 1) return;
  float x1[8], x2[8];
  if (valid) {
    r1.get(x1);
    r2.get(x2);
  }
  rope_task<F, kC>(a, cv, sv, row, tau, valid, x1, x2, ri.y, ri.z);
}

// The step's cos/sin table and row infos: row r = token_offset[s] + j (position pos =
// context_len[s] + j) gets [cos(pos inv_freq[i]) for i < D/2, sin(...)] in fp32, the values
// rope_cos_sin computes (double sincos of the fp32 angle, rounded), and its RopeRowInfo. One
// block per token; the infos of rows of no token stay as the memset before left them.
__global__ void __launch_bounds__(kRopeThreads)
    rope_cos_sin_table_kernel(RopeArgs a, float* __restrict__ table, RopeRowInfo* info,
                              int64_t rows) {
  const int j = blockIdx.x, seq = blockIdx.y;
  const int t = threadIdx.x;
  const int half_d = a.head_dim / 2;
  const int32_t n = ld_issue(a.num_tokens + seq);
  const int32_t ctx = ld_issue(a.context_len + seq);
  const int32_t first = ld_issue(a.token_offset + seq);
  // The metadata was written before the step; the table may still be read by the kernel before
  // this one (pdl.h).
  pdl_wait();
  pdl_trigger();
  if ((j >= n) | ((ctx | first) < 0)) return;
  const int64_t r = static_cast<int64_t>(first) + j;
  if (r >= rows) return;  // outside the table (the caller's contract: it never is)
  const int pos = ctx + j;
  float* out = table + r * a.head_dim;
  for (int i = t; i < half_d; i += kRopeThreads) {
    const float angle = __fmul_rn(static_cast<float>(pos), a.inv_freq[i]);
    double sn, c;
    sincos(static_cast<double>(angle), &sn, &c);
    out[i] = static_cast<float>(c);
    out[half_d + i] = static_cast<float>(sn);
  }
  if (t == 0) {
    int32_t page = 0;
    if (a.block_table != nullptr && pos / kPage < a.block_stride) {
      page = a.block_table[static_cast<int64_t>(seq) * a.block_stride + pos / kPage];
    }
    info[r] = RopeRowInfo{1, page, pos % kPage, 0};
  }
}

// Whether the vectorized kernel applies (16-byte accesses everywhere; a head's D/16 lanes form
// an aligned group of a warp).
template <typename In>
bool rope_vec_applies(const In* qkv, int64_t qkv_stride, int64_t head_dim, const float* q_out,
                      const uint16_t* k16, const uint16_t* v16, const PagedKvDevice& cache,
                      bool append) {
  auto a16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const int64_t lanes = head_dim / 16;  // a power of two <= 32: the groups tile warps
  return head_dim % 16 == 0 && head_dim <= 512 && (lanes & (lanes - 1)) == 0 &&
         (qkv_stride * static_cast<int64_t>(sizeof(In))) % 16 == 0 && a16(qkv) && a16(q_out) &&
         a16(k16) && a16(v16) && (!append || (a16(cache.k_pool) && a16(cache.v_pool)));
}

// Calls fn.template operator()<F>() with the compile-time cache format F = fmt (fn: a template
// lambda [&]<KvFormat F>() { ... }), so that fn names the kernel instantiation for fmt.
template <typename Fn>
void dispatch_kv_format(KvFormat fmt, Fn&& fn) {
  switch (fmt) {
    case KvFormat::kv4:
      fn.template operator()<KvFormat::kv4>();
      break;
    case KvFormat::kv8:
      fn.template operator()<KvFormat::kv8>();
      break;
    case KvFormat::kv16:
      fn.template operator()<KvFormat::kv16>();
      break;
  }
}

// Which kernel runs: the dispatch (kAuto: rope_kv_v2_kernel, spread or one block per token), the
// v2 kernel in one launch form at every size (kSpread: kR = 1, a token's task blocks over
// blocks; kToken: kR = kRopeMaxTasks, as few blocks per token as that allows), the vec kernel
// with its own dispatch (kPrev, the kernel before 2026-11-30 (fifth session)), or the scalar kernel
// (kBaseline). Shapes the vectorized kernels do not take run the scalar kernel whatever the path.
enum class RopePath { kAuto, kSpread, kToken, kPrev, kBaseline };

// The batch's metadata, geometry-free part of RopeArgs (rope_kv_impl, rope_cos_sin_table).
RopeArgs rope_batch_args(const VarlenBatchDevice& batch, int64_t head_dim, const float* inv_freq) {
  RopeArgs a{};
  a.token_offset = batch.token_offset;
  a.num_tokens = batch.num_tokens;
  a.context_len = batch.context_len;
  a.block_table = batch.block_table;
  a.block_stride = batch.block_stride;
  a.head_dim = static_cast<int>(head_dim);
  a.inv_freq = inv_freq;
  return a;
}

// A token's task blocks: kRopeThreads tasks of 8 rotation pairs each, over its q, k and v heads.
int64_t rope_task_blocks(int64_t num_heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t tasks = (num_heads + 2 * kv_heads) * (head_dim / 16);
  return (tasks + kRopeThreads - 1) / kRopeThreads;
}

// The dispatch's launch form: a token's task blocks spread over blocks while that grid has at
// most kRopeSpreadWaves waves of kRopeSpreadBlocks blocks per SM, one block per token above.
// (The RoPE table serves the spread form only: rope_table_applies.)
bool rope_spread_form(int64_t token_slots, int64_t num_heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t blocks = rope_task_blocks(num_heads, kv_heads, head_dim);
  return token_slots * blocks <=
         kRopeSpreadWaves * kRopeSpreadBlocks * static_cast<int64_t>(current_device_sm_count());
}

template <typename In>
void rope_kv_impl(const In* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                  int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                  const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                  cudaStream_t stream, const RopeTableDevice* table, const char* op,
                  RopePath path = RopePath::kAuto) {
  const bool allow_vec = path != RopePath::kBaseline;
  const std::string shape = "S=" + std::to_string(batch.num_seqs) +
                            " max_num_tokens=" + std::to_string(batch.max_num_tokens) +
                            " Hq=" + std::to_string(num_heads) +
                            " Hkv=" + std::to_string(kv_heads) + " D=" + std::to_string(head_dim);
  check(num_heads > 0 && kv_heads > 0 && head_dim > 0 && head_dim % 2 == 0 && head_dim <= 1024,
        std::string(op) + ": need positive heads and an even head_dim <= 1024 (" + shape + ")");
  check(qkv_stride >= (num_heads + 2 * kv_heads) * head_dim,
        std::string(op) + ": qkv_stride " + std::to_string(qkv_stride) +
            " is shorter than a q|k|v row (" + shape + ")");
  check(batch.num_seqs >= 0 && batch.num_seqs <= 65535 && batch.max_num_tokens >= 0,
        std::string(op) + ": 0..65535 sequences (" + shape + ")");
  const bool append = cache.k_pool != nullptr;
  if (append) {
    check(cache.v_pool != nullptr && cache.kv_heads == kv_heads && cache.head_dim == head_dim,
          std::string(op) + ": the cache's geometry (Hkv=" + std::to_string(cache.kv_heads) +
              " D=" + std::to_string(cache.head_dim) + ") does not match (" + shape + ")");
  }
  if (batch.num_seqs == 0 || batch.max_num_tokens == 0) return;

  RopeArgs a = rope_batch_args(batch, head_dim, inv_freq);
  a.qkv_stride = qkv_stride;
  a.num_heads = static_cast<int>(num_heads);
  a.kv_heads = static_cast<int>(kv_heads);
  a.k_pool = append ? cache.k_pool : nullptr;
  a.v_pool = append ? cache.v_pool : nullptr;
  const KvFormat fmt = append ? cache.format : KvFormat::kv16;
  a.geom = attn::make_geom(fmt, static_cast<int>(kv_heads), static_cast<int>(head_dim));
  a.q_out = q_out;
  a.k16 = k16;
  a.v16 = v16;
  if (table != nullptr) {
    check(table->cos_sin != nullptr && table->row_info != nullptr && table->rows >= 0 &&
              table->rows <= 0x7fffffff,
          std::string(op) + ": the RoPE table needs cos_sin, row_info and 0..2^31-1 rows (" +
              shape + ")");
    check(reinterpret_cast<uintptr_t>(table->cos_sin) % 16 == 0 &&
              reinterpret_cast<uintptr_t>(table->row_info) % 16 == 0,
          std::string(op) + ": the RoPE table must be 16-byte aligned (" + shape + ")");
    a.cos_sin = table->cos_sin;
  }

  const bool vec =
      allow_vec && rope_vec_applies(qkv, qkv_stride, head_dim, q_out, k16, v16, cache, append);
  if (vec && path != RopePath::kPrev) {
    const int64_t blocks = rope_task_blocks(num_heads, kv_heads, head_dim);
    const int64_t token_slots = table != nullptr ? table->rows
                                                 : static_cast<int64_t>(batch.max_num_tokens) *
                                                       static_cast<int64_t>(batch.num_seqs);
    RopePath form = path;
    if (path == RopePath::kAuto) {
      form = rope_spread_form(token_slots, num_heads, kv_heads, head_dim) ? RopePath::kSpread
                                                                          : RopePath::kToken;
    }
    const int64_t parts =
        form == RopePath::kToken ? (blocks + kRopeMaxTasks - 1) / kRopeMaxTasks : blocks;
    check(parts <= 64, std::string(op) + ": too many heads (" + shape + ")");
    const dim3 grid(static_cast<unsigned>(batch.max_num_tokens),
                    static_cast<unsigned>(batch.num_seqs), static_cast<unsigned>(parts));
    // The table (the row-indexed kernel) serves the spread form only: holding three tasks'
    // cos/sin in registers spills (80 registers), and one block per token computes its cos/sin
    // once for 3 task blocks.
    if (table != nullptr && form == RopePath::kSpread) {
      const dim3 rows_grid(static_cast<unsigned>(table->rows), static_cast<unsigned>(blocks));
      if (table->rows == 0) return;
      const auto* info = static_cast<const RopeRowInfo*>(table->row_info);
      dispatch_kv_format(fmt, [&]<KvFormat F>() {
        cuda_check(launch_pdl(rope_kv_rows_kernel<F, In>, rows_grid, dim3(kRopeThreads), 0, stream,
                              qkv, a, info),
                   op, shape);
      });
      return;
    }
    const size_t smem = static_cast<size_t>(head_dim) * sizeof(float);
    dispatch_kv_format(fmt, [&]<KvFormat F>() {
      auto kernel = form == RopePath::kSpread
                        ? rope_kv_v2_kernel<F, In, 1, kRopeSpreadBlocks>
                        : rope_kv_v2_kernel<F, In, kRopeMaxTasks, kRopeBlocksPerSm>;
      cuda_check(launch_pdl(kernel, grid, dim3(kRopeThreads), smem, stream, qkv, a,
                            static_cast<int>(parts)),
                 op, shape);
    });
    return;
  }
  if (vec) {
    // The vec kernel with its own dispatch (cuda::prev::).
    const int64_t blocks = rope_task_blocks(num_heads, kv_heads, head_dim);
    const int64_t token_slots =
        static_cast<int64_t>(batch.max_num_tokens) * static_cast<int64_t>(batch.num_seqs);
    int64_t parts = (blocks + kRopeMaxTasks - 1) / kRopeMaxTasks;
    // Spread a token over `blocks` blocks when even that many fit in one wave: at small
    // batches this shortens each block's serial work.
    if (token_slots * blocks <=
        kRopeBlocksPerSm * static_cast<int64_t>(current_device_sm_count())) {
      parts = blocks;
    }
    check(parts <= 64, std::string(op) + ": too many heads (" + shape + ")");
    const dim3 grid(static_cast<unsigned>(batch.max_num_tokens),
                    static_cast<unsigned>(batch.num_seqs), static_cast<unsigned>(parts));
    const size_t smem = static_cast<size_t>(head_dim) * sizeof(float);
    dispatch_kv_format(fmt, [&]<KvFormat F>() {
      rope_kv_vec_kernel<F, In>
          <<<grid, kRopeThreads, smem, stream>>>(qkv, a, static_cast<int>(parts));
    });
    check_launch(op, shape);
    return;
  }

  const size_t smem = static_cast<size_t>(head_dim) * sizeof(float) +
                      static_cast<size_t>(2 * kv_heads * head_dim) * sizeof(uint16_t);
  const dim3 grid(static_cast<unsigned>(batch.max_num_tokens),
                  static_cast<unsigned>(batch.num_seqs));
  dispatch_kv_format(fmt, [&]<KvFormat F>() {
    if (smem > 48 * 1024) {
      cuda_check(
          cudaFuncSetAttribute(rope_kv_kernel<F, In>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          op, shape + " smem=" + std::to_string(smem));
    }
    rope_kv_kernel<F, In><<<grid, kRopeThreads, smem, stream>>>(qkv, a);
  });
  check_launch(op, shape);
}

}  // namespace

namespace baseline {

void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, nullptr, "baseline::rope_kv_append", RopePath::kBaseline);
}

void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, nullptr, "baseline::rope_kv_append_f16", RopePath::kBaseline);
}

}  // namespace baseline

namespace prev {

void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, nullptr, "prev::rope_kv_append", RopePath::kPrev);
}

void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, nullptr, "prev::rope_kv_append_f16", RopePath::kPrev);
}

}  // namespace prev

namespace forced {

static RopePath rope_form(int task_blocks, const char* op) {
  check(task_blocks == 0 || task_blocks == 1 || task_blocks == kRopeMaxTasks,
        std::string(op) + ": task_blocks must be 0 (the dispatch's), 1 or " +
            std::to_string(kRopeMaxTasks) + ", got " + std::to_string(task_blocks));
  return task_blocks == 0   ? RopePath::kAuto
         : task_blocks == 1 ? RopePath::kSpread
                            : RopePath::kToken;
}

void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream, int task_blocks, const RopeTableDevice* table) {
  const char* op = "forced::rope_kv_append";
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, table, op, rope_form(task_blocks, op));
}

void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream, int task_blocks,
                        const RopeTableDevice* table) {
  const char* op = "forced::rope_kv_append_f16";
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, table, op, rope_form(task_blocks, op));
}

}  // namespace forced

void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream, const RopeTableDevice* table) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, table, "rope_kv_append");
}

void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream,
                        const RopeTableDevice* table) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, table, "rope_kv_append_f16");
}

bool rope_table_applies(int64_t rows, int64_t num_heads, int64_t kv_heads, int64_t head_dim) {
  return rows > 0 && num_heads > 0 && kv_heads > 0 && head_dim > 0 &&
         rope_spread_form(rows, num_heads, kv_heads, head_dim);
}

size_t rope_table_row_bytes(int64_t head_dim) {
  return static_cast<size_t>(head_dim) * sizeof(float) + sizeof(RopeRowInfo);
}

void rope_cos_sin_table(const VarlenBatchDevice& batch, int64_t head_dim, const float* inv_freq,
                        const RopeTableDevice& table, cudaStream_t stream) {
  const std::string shape = "S=" + std::to_string(batch.num_seqs) +
                            " max_num_tokens=" + std::to_string(batch.max_num_tokens) +
                            " D=" + std::to_string(head_dim) +
                            " rows=" + std::to_string(table.rows);
  check(head_dim > 0 && head_dim % 2 == 0 && head_dim <= 1024,
        "rope_cos_sin_table: need an even head_dim <= 1024 (" + shape + ")");
  check(batch.num_seqs >= 0 && batch.num_seqs <= 65535 && batch.max_num_tokens >= 0,
        "rope_cos_sin_table: 0..65535 sequences (" + shape + ")");
  check(table.rows >= 0 && table.rows <= 0x7fffffff,
        "rope_cos_sin_table: 0..2^31-1 rows (" + shape + ")");
  if (table.rows == 0) return;
  check(table.cos_sin != nullptr && table.row_info != nullptr && inv_freq != nullptr,
        "rope_cos_sin_table: null table, row infos or inv_freq (" + shape + ")");
  // Every row starts as "no token"; the kernel then marks the batch's rows.
  cuda_check(cudaMemsetAsync(table.row_info, 0xff,
                             static_cast<size_t>(table.rows) * sizeof(RopeRowInfo), stream),
             "rope_cos_sin_table memset", shape);
  if (batch.num_seqs == 0 || batch.max_num_tokens == 0) return;
  const RopeArgs a = rope_batch_args(batch, head_dim, inv_freq);
  const dim3 grid(static_cast<unsigned>(batch.max_num_tokens),
                  static_cast<unsigned>(batch.num_seqs));
  cuda_check(launch_pdl(rope_cos_sin_table_kernel, grid, dim3(kRopeThreads), 0, stream, a,
                        table.cos_sin, static_cast<RopeRowInfo*>(table.row_info), table.rows),
             "rope_cos_sin_table", shape);
}

}  // namespace qserve::cuda
