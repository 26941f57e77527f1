// RoPE on Q and K, fp16 rounding of K/V, and the paged KV append (KV4/KV8 QServe pages, or our
// KV16 pages), fused: one block per token.
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
#include "backend/cuda/ops_cuda_attention.h"
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

__device__ __forceinline__ float load_f(float v) { return v; }
__device__ __forceinline__ float load_f(uint16_t h) { return h2f(h); }

// Quantizes one (token, head) row x[0..D) (fp16 bits in shared memory) into a page, one warp.
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
  constexpr float levels = F == KvFormat::kv4 ? 15.0f : 255.0f;
  constexpr float inv_levels = 1.0f / levels;  // fl32(1/Q), as the CPU's constant
  const float range = __fsub_rn(mx, mn);
  const uint16_t s_bits = f2h(__fmul_rn(range, inv_levels));
  const uint16_t z_bits = f2h(__fmul_rn(__fmul_rn(-levels, mn), __frcp_rn(range)));
  const float inv = __frcp_rn(h2f(s_bits));
  const float z = h2f(z_bits);
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

template <typename In>
void rope_kv_impl(const In* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                  int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                  const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                  cudaStream_t stream, const char* op) {
  const std::string shape = "S=" + std::to_string(batch.num_seqs) +
                            " max_num_tokens=" + std::to_string(batch.max_num_tokens) +
                            " Hq=" + std::to_string(num_heads) + " Hkv=" +
                            std::to_string(kv_heads) + " D=" + std::to_string(head_dim);
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

  RopeArgs a{};
  a.qkv_stride = qkv_stride;
  a.token_offset = batch.token_offset;
  a.num_tokens = batch.num_tokens;
  a.context_len = batch.context_len;
  a.block_table = batch.block_table;
  a.block_stride = batch.block_stride;
  a.num_heads = static_cast<int>(num_heads);
  a.kv_heads = static_cast<int>(kv_heads);
  a.head_dim = static_cast<int>(head_dim);
  a.inv_freq = inv_freq;
  a.k_pool = append ? cache.k_pool : nullptr;
  a.v_pool = append ? cache.v_pool : nullptr;
  const KvFormat fmt = append ? cache.format : KvFormat::kv16;
  a.geom = attn::make_geom(fmt, static_cast<int>(kv_heads), static_cast<int>(head_dim));
  a.q_out = q_out;
  a.k16 = k16;
  a.v16 = v16;

  const size_t smem = static_cast<size_t>(head_dim) * sizeof(float) +
                      static_cast<size_t>(2 * kv_heads * head_dim) * sizeof(uint16_t);
  const dim3 grid(static_cast<unsigned>(batch.max_num_tokens),
                  static_cast<unsigned>(batch.num_seqs));
  auto run = [&](auto kernel) {
    if (smem > 48 * 1024) {
      cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)),
                 op, shape + " smem=" + std::to_string(smem));
    }
    kernel<<<grid, kRopeThreads, smem, stream>>>(qkv, a);
  };
  switch (fmt) {
    case KvFormat::kv4:
      run(rope_kv_kernel<KvFormat::kv4, In>);
      break;
    case KvFormat::kv8:
      run(rope_kv_kernel<KvFormat::kv8, In>);
      break;
    case KvFormat::kv16:
      run(rope_kv_kernel<KvFormat::kv16, In>);
      break;
  }
  check_launch(op, shape);
}

}  // namespace

void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, "rope_kv_append");
}

void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream) {
  rope_kv_impl(qkv, qkv_stride, batch, num_heads, kv_heads, head_dim, inv_freq, cache, q_out, k16,
               v16, stream, "rope_kv_append_f16");
}

}  // namespace qserve::cuda
