// SiLU(gate) * up, alone (fp16 or fp32 output) or fused with per-token int8 quantization
// (quant/silu_mul_quant.h; cpu::silu_mul for the fp32 W16A16 path).
//
// The fp16 variants follow the reference step by step with correctly rounded operations:
//   silu = fp16_RN(g / (1 + exp(-g))),  out = fp16_RN(float(silu) * up).
// The definition (silu_f16_ref): exp(-g) is computed in double and rounded once to fp32, i.e.
// (almost always) the correctly rounded expf, which is what glibc's expf returns except within
// 0.002 ulp of a midpoint; see ops_cuda.h for the resulting tolerance.
//
// Speed: the double exp of every element is what bounded the first kernels (0.7-0.8 TB/s). The
// current kernels evaluate SiLU in fp32 with a proven error bound and *certify* the fp16
// rounding (silu_f16_fast): when the whole error interval rounds to one fp16 value, that value
// is the definition's; otherwise (about 0.5% of elements) the element is recomputed by
// silu_f16_ref. The outputs are the same bits as the double-exp kernels (kept as baseline:: for
// bench_fused and the parity tests), not an approximation of them.
//
// The fused SiLU·mul + quant kernel (silu_mul_quant_vec_kernel, 1024 <= inter <= 16384,
// inter % 8 == 0: every Llama intermediate size up to 16K) runs one 128-thread block per row in
// one pass over memory: 16-byte loads of gate and up (physical thread p plays the reference
// quantizer's logical threads 8p .. 8p+7, quant_device.cuh), the fp16 results staged in shared
// memory (28 KB for 14336), the rare uncertain elements recomputed afterwards by the whole warp
// at once (one double-exp pass per warp instead of one per uncertain element), then one
// exchange for amax and 8-byte code stores. It is cuda::prev:: now (bench_fused's "_prev" row):
// the dispatch runs silu_mul_quant_v2_kernel on the same shapes, the same structure with about
// two thirds of the instructions per element and a third fewer on the 16-per-SM conversion/MUFU
// pipe (see its comment: a per-pair certificate, the fp16 product by __hmul2_rn for fp16
// inputs, the codes without a conversion instruction), and 512 threads per row (4 per column
// group) at every batch size without the per-token sum; with it, 512 threads up to 2 rows per SM
// (4 until the seventh session; the sum formed from the staged values, since 2026-11-30, fifth
// session) and, above that,
// silu_mul_quant_cols4_kernel (since 2026-11-30, sixth session: 256 threads per row, 4 columns
// each, the values and the sum in registers, no staging; see its comment). Above 4 rows per SM
// the with-sum kernel was the v2 kernel with 128 threads per row (one per column group, the sum
// in registers) until then: forced:: split 1. Since 2026-12-01 (eleventh session) the
// dispatch's v2 launches (up to 4 rows per SM without the sum, 2 with it) repair their
// uncertain pairs through a block-wide queue (see "The block-wide repair queue").
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "backend/cuda/act_quant_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_device.h"
#include "backend/cuda/fused_baseline.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/pdl_device.cuh"
#include "backend/cuda/quant_device.cuh"
#include "core/error.h"
#include "quant/block_reduce.h"

namespace qserve::cuda {

namespace {

using detail::f2h;
using detail::h2f;
using detail::load_f;

__device__ __forceinline__ float exp_f32_rn(float x) {
  return __double2float_rn(exp(static_cast<double>(x)));
}

// fp16 SiLU·mul of one element (the reference's two fp16 roundings), double exp: the baseline.
__device__ __forceinline__ uint16_t silu_mul_f16_elem(float g, float up) {
  const float silu = h2f(f2h(__fdiv_rn(g, __fadd_rn(1.0f, exp_f32_rn(-g)))));
  return f2h(__fmul_rn(silu, up));
}

// The definition of the fp16 SiLU value (the same expression as silu_mul_f16_elem's first step).
__device__ __forceinline__ uint16_t silu_f16_ref(float g) {
  return f2h(__fdiv_rn(g, __fadd_rn(1.0f, exp_f32_rn(-g))));
}

// The fp32 path with a certificate. With U = 2^-23 (an ulp is at most U times the value) and
// CUDA's documented bounds (Programming Guide, mathematical functions; in ulps from the
// correctly rounded value, so half an ulp more from the exact one):
//  - e = ex2.approx(fl(-g * log2 e)) is what __expf(-g) computes: (2 + floor(1.173 |g|)) ulp, so
//    within (2.5 + 1.173 |g|) U e of exp(-g) (the |g| term is the rounding of the product); the
//    definition's fl32(double exp) is within 0.51 U e;
//  - d = fl(1 + e): the two d differ by at most (3.01 + 1.173 |g| + 2 * 0.5) U d (e < d);
//  - s = g * rcp(d): rcp.approx (the 1 / x of -prec-div=false) is 1 ulp from the correctly
//    rounded reciprocal for normal results (|g| <= 87.3 keeps d < 2^126), the product adds 0.5 ulp,
//    the definition's division 0.5 ulp; so the definition's s lies within
//    (6.5 + 1.2 |g|) U |s| of ours (plus second-order terms).
// delta = (16 + 2 |g|) U |s| covers that 1.7 (|g| = 87) to 2.4 (g = 0) times over. fp16 rounding
// is monotonic, so when s - delta (rounded down) and s + delta (rounded up) round to the same
// fp16 bits, those are the definition's bits. Otherwise - s within delta of an fp16 rounding
// boundary (about 0.55% of random inputs with |g| <= 8), s = 0 (the interval then holds both
// signed zeros), g < -87.3, g = +inf - the result is not certified and the caller must use
// silu_f16_ref. A subnormal s (|g| < 2^-125, fp32 inputs only) may be flushed to a signed zero;
// both paths round it to that signed fp16 zero. The documented bounds come from extensive tests,
// not proofs: bench_fused --check and the parity tests compare with the double-exp kernel on
// every fp16 gate value (all the fp16 path can see) and on millions of fp32 ones.
__device__ __forceinline__ float ex2_approx(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
// Returns the fp16 bits; they are certified iff `uncertain` is 0. (An integer rather than a
// bool: the compiler keeps it in a register and tests it where it is used, instead of moving
// predicates through byte registers.) No range check is needed: up to |g| = 87.3 every value is
// normal and the bound holds; g > 87.3 gives e = 0 (flushed), d = 1 and s = g exactly, as the
// definition; g < -87.3 gives a flushed 1 / d, s = -0 and the interval [-0, +0], which never
// certifies; g = +inf gives the interval [NaN, inf], uncertain; g = -inf or NaN gives s = NaN
// on both paths, rounded to fp16 by the same conversion instruction (checked on every fp16 NaN
// pattern by bench_fused --check and the parity tests).
__device__ __forceinline__ uint16_t silu_f16_fast(float g, uint32_t& uncertain) {
  constexpr float kMinusLog2e = -1.4426950408889634f;
  const float e = ex2_approx(__fmul_rn(g, kMinusLog2e));
  const float ag = fabsf(g);
  const float s = __fmul_rn(g, rcp_approx(__fadd_rn(1.0f, e)));
  const float delta = __fmul_rn(fabsf(s), __fmaf_rn(ag, 0x1p-22f, 0x1p-19f));
  const uint32_t b = detail::f2h2(__fsub_rd(s, delta), __fadd_ru(s, delta));
  uncertain = __byte_perm(b, 0, 0x1032) ^ b;
  return static_cast<uint16_t>(b);
}

// fp16 SiLU·mul of one element, the definition's bits, through the certified fast path.
__device__ __forceinline__ uint16_t silu_mul_f16_fast_elem(float g, float up) {
  uint32_t uncertain;
  uint16_t h = silu_f16_fast(g, uncertain);
  if (uncertain != 0) h = silu_f16_ref(g);
  return f2h(__fmul_rn(h2f(h), up));
}

template <bool kFast>
__device__ __forceinline__ uint16_t silu_mul_elem(float g, float up) {
  return kFast ? silu_mul_f16_fast_elem(g, up) : silu_mul_f16_elem(g, up);
}

template <typename T, bool kFast>
__global__ void silu_mul_f16_kernel(const T* __restrict__ gate_up, int64_t inter,
                                    uint16_t* __restrict__ out) {
  const int64_t row = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inter) return;
  const T* g = gate_up + row * 2 * inter;
  const float gv = load_f(g[i]), uv = load_f(g[inter + i]);
  out[row * inter + i] = silu_mul_elem<kFast>(gv, uv);
}

__global__ void silu_mul_f32_kernel(const float* __restrict__ gate_up, int64_t inter,
                                    float* __restrict__ out) {
  const int64_t row = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inter) return;
  const float* g = gate_up + row * 2 * inter;
  const float gv = g[i];
  out[row * inter + i] = __fmul_rn(__fdiv_rn(gv, __fadd_rn(1.0f, exp_f32_rn(-gv))), g[inter + i]);
}

// One block per row: the fp16 SiLU·mul values are recomputed in each pass of the quantizer (a
// deterministic function of the inputs) and written to `out` in the first pass when requested.
// kFast: the certified fp32 SiLU (same bits); the baseline:: entry points use the double exp.
template <typename T, bool kFast>
__global__ void silu_mul_quant_kernel(const T* __restrict__ gate_up, int64_t inter, int stride,
                                      int8_t* __restrict__ q, uint16_t* __restrict__ scale,
                                      uint16_t* __restrict__ sum, uint16_t* __restrict__ out) {
  __shared__ float scratch[detail::kWarp + 1];
  const int64_t row = blockIdx.x;
  const T* g = gate_up + row * 2 * inter;
  if (out != nullptr && threadIdx.x < static_cast<unsigned>(stride)) {
    for (int64_t i = threadIdx.x; i < inter; i += stride) {
      out[row * inter + i] = silu_mul_elem<kFast>(load_f(g[i]), load_f(g[inter + i]));
    }
  }
  detail::quantize_row_block(
      [g, inter](int64_t i) {
        return h2f(silu_mul_elem<kFast>(load_f(g[i]), load_f(g[inter + i])));
      },
      inter, stride, q + row * inter, scale + row, sum != nullptr ? sum + row : nullptr, scratch);
}

// The same result in one pass over memory: each thread computes the fp16 SiLU·mul of its
// elements once (i = t + j * stride, quantize_row_block's mapping and order) and keeps them in
// registers for the max, the codes and the sequential per-thread sums, so q/scale/sum are
// bit-identical to silu_mul_quant_kernel's; the slow part there is recomputing the double exp in
// every pass. Rows of up to kMaxPerThread * stride elements (Llama-3-8B: 14336 = 14 x 1024).
constexpr int kMaxPerThread = 16;

template <typename T, bool kFast>
__global__ void silu_mul_quant_reg_kernel(const T* __restrict__ gate_up, int64_t inter, int stride,
                                          int8_t* __restrict__ q, uint16_t* __restrict__ scale,
                                          uint16_t* __restrict__ sum, uint16_t* __restrict__ out) {
  __shared__ float scratch[detail::kWarp + 1];
  const int64_t row = blockIdx.x;
  const T* g = gate_up + row * 2 * inter;
  const int t = threadIdx.x;
  const bool active = t < stride;
  float v[kMaxPerThread];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxPerThread; ++j) {
    const int64_t i = t + static_cast<int64_t>(j) * stride;
    v[j] = 0.0f;
    if (active && i < inter) {
      const uint16_t h = silu_mul_elem<kFast>(load_f(g[i]), load_f(g[inter + i]));
      if (out != nullptr) out[row * inter + i] = h;
      v[j] = h2f(h);
      amax = fmaxf(amax, fabsf(v[j]));
    }
  }
  amax = detail::block_max(amax, scratch);
  // As quantize_row_block: 127 * rcp(amax) rounded to fp32; amax = 0 gives NaN -> code 0.
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < kMaxPerThread; ++j) {
    const int64_t i = t + static_cast<int64_t>(j) * stride;
    if (active && i < inter) {
      q[row * inter + i] = detail::cvt_rni_sat_s8(__fmul_rn(v[j], r));
      acc = __fadd_rn(acc, v[j]);
    }
  }
  constexpr float kInv127 = 1.0f / 127.0f;
  if (t == 0) scale[row] = f2h(__fmul_rn(amax, kInv127));
  if (sum != nullptr) {
    const float total = detail::block_sum_exact(acc, scratch);
    if (t == 0) sum[row] = f2h(total);
  }
}

// ---- The one-pass vectorized fused kernel ---------------------------------------------------

// 8 consecutive elements of a gate or up row as loaded (one 16-byte access for fp16, two for
// fp32), widened exactly to fp32 on use; k is a compile-time index after unrolling.
template <typename T>
struct Vec8;
template <>
struct Vec8<uint16_t> {
  uint4 raw;
  __device__ __forceinline__ void load(const uint16_t* p) {
    raw = *reinterpret_cast<const uint4*>(p);
  }
  __device__ __forceinline__ float operator[](int k) const {
    const uint32_t w = k < 2 ? raw.x : k < 4 ? raw.y : k < 6 ? raw.z : raw.w;
    return k % 2 == 0 ? detail::h2f_lo(w) : detail::h2f_hi(w);
  }
};
template <>
struct Vec8<float> {
  float4 a, b;
  __device__ __forceinline__ void load(const float* p) {
    a = *reinterpret_cast<const float4*>(p);
    b = *reinterpret_cast<const float4*>(p + 4);
  }
  __device__ __forceinline__ float operator[](int k) const {
    const float4& v = k < 4 ? a : b;
    const int i = k % 4;
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
  }
};

constexpr int kVecMaxChunks = 16;  // inter <= 16 * 1024 (Llama-3-8B's 14336: 14 chunks)

// kSplit x 128 threads per row. Thread t owns the 8 columns [8p, 8p + 8), p = t % 128, of the
// chunks j = t / 128 + kSplit * m (m = 0, 1, ...), columns j * 1024 + 8p + k.
//  1. Streams gate and up in groups of chunks (32 or 64 bytes of loads per chunk in flight per
//     thread), computes the certified fp16 SiLU·mul values into shared memory (the thread's own
//     slots: no barrier needed) and a bit per uncertain element.
//  2. The warp recomputes the uncertain elements with the definition, each lane its lowest one
//     per round: one double-precision pass per round instead of one per element.
//  3. amax over the thread's values (packed fp16 max), one exchange; then the codes and, with
//     kSum, the per-logical-thread sums. The sum's order needs every chunk of a column group in
//     one thread (the reference's logical thread 8p + k sums its elements in chunk order), so
//     kSum runs with kSplit = 1; without a sum (g128 W4A8, W8A8) two threads share a column
//     group, which halves each thread's serial work and doubles the warps at small batches.
template <int kSplit>
inline constexpr int kSplitThreads = detail::kVecRowThreads* kSplit;

template <typename T, bool kSum, int kSplit>
__global__ void __launch_bounds__(kSplitThreads<kSplit>, 4 / kSplit)
    silu_mul_quant_vec_kernel(const T* __restrict__ gate_up, int inter, int8_t* __restrict__ q,
                              uint16_t* __restrict__ scale, uint16_t* __restrict__ sum,
                              uint16_t* __restrict__ out) {
  static_assert(!kSum || kSplit == 1, "the sum's order needs one thread per column group");
  constexpr int kV = detail::kVecPerThread;
  constexpr int kC = detail::kVecChunk;
  constexpr int kGroups = detail::kVecRowThreads;  // column groups per chunk
  constexpr int kM = kVecMaxChunks / kSplit;       // chunks per thread (at most)
  constexpr int kWarps = detail::kVecRowWarps * kSplit;
  // Chunks per load group: 8 x 32 bytes (fp16) or 4 x 64 bytes (fp32) in flight per thread.
  constexpr int kLoadGroup = std::min(kM, sizeof(T) == 2 ? 8 : 4);
  extern __shared__ uint4 vals[];  // [chunk][column group]: 8 fp16 SiLU·mul values each
  __shared__ float ex_max[kWarps], ex_sum[detail::kWarp];
  const int t = threadIdx.x, p = t % kGroups, phase = t / kGroups;
  const int64_t row_off = static_cast<int64_t>(blockIdx.x) * inter + p * kV;
  const T* gate = gate_up + static_cast<int64_t>(blockIdx.x) * 2 * inter + p * kV;
  const T* up = gate + inter;
  auto chunk = [&](int m) { return phase + kSplit * m; };
  auto valid = [&](int m) { return chunk(m) * kC + p * kV < inter; };

  // Bit 8m + k of pend_lo (m < 8) / pend_hi (m >= 8): element (chunk(m), k) is uncertain.
  uint64_t pend_lo = 0, pend_hi = 0;
#pragma unroll
  for (int m0 = 0; m0 < kM; m0 += kLoadGroup) {
    Vec8<T> g[kLoadGroup], u[kLoadGroup];
#pragma unroll
    for (int mm = 0; mm < kLoadGroup; ++mm) {
      if (valid(m0 + mm)) {
        g[mm].load(gate + chunk(m0 + mm) * kC);
        u[mm].load(up + chunk(m0 + mm) * kC);
      }
    }
#pragma unroll
    for (int mm = 0; mm < kLoadGroup; ++mm) {
      const int m = m0 + mm;
      if (!valid(m)) continue;
      uint32_t o[kV / 2];
      uint32_t bad = 0;
#pragma unroll
      for (int k = 0; k < kV; k += 2) {
        uint32_t unc0, unc1;
        const uint16_t h0 = silu_f16_fast(g[mm][k], unc0);
        const uint16_t h1 = silu_f16_fast(g[mm][k + 1], unc1);
        o[k / 2] = detail::f2h2(__fmul_rn(h2f(h0), u[mm][k]), __fmul_rn(h2f(h1), u[mm][k + 1]));
        if (unc0 != 0) bad |= 1u << k;
        if (unc1 != 0) bad |= 2u << k;
      }
      vals[chunk(m) * kGroups + p] = make_uint4(o[0], o[1], o[2], o[3]);
      if (m < 8) {
        pend_lo |= static_cast<uint64_t>(bad) << (8 * m);
      } else {
        pend_hi |= static_cast<uint64_t>(bad) << (8 * (m - 8));
      }
    }
  }

  // 2. Each round, every lane with an uncertain element left recomputes its lowest one.
  bool mine = (pend_lo | pend_hi) != 0;
  while (__any_sync(detail::kFullMask, mine)) {
    if (mine) {
      int idx;
      if (pend_lo != 0) {
        idx = __ffsll(static_cast<long long>(pend_lo)) - 1;
        pend_lo &= pend_lo - 1;
      } else {
        idx = 64 + __ffsll(static_cast<long long>(pend_hi)) - 1;
        pend_hi &= pend_hi - 1;
      }
      const int j = chunk(idx / kV), k = idx % kV;
      const int off = j * kC + k;
      const uint16_t o = f2h(__fmul_rn(h2f(silu_f16_ref(load_f(gate[off]))), load_f(up[off])));
      reinterpret_cast<uint16_t*>(vals)[(j * kGroups + p) * kV + k] = o;
      mine = (pend_lo | pend_hi) != 0;
    }
  }

  // 3. amax = max |v| (exact in fp16: __hmax2 ignores a NaN like fmaxf, and |v| has no -0).
  {
    __half2 m2 = __half2half2(__ushort_as_half(0));
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      if (!valid(m)) continue;
      const uint4 o = vals[chunk(m) * kGroups + p];
      const uint32_t w[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        m2 = __hmax2(m2, __habs2(*reinterpret_cast<const __half2*>(&w[i])));
      }
    }
    const float mx = detail::warp_max(fmaxf(__low2float(m2), __high2float(m2)));
    if (t % detail::kWarp == 0) ex_max[t / detail::kWarp] = mx;
  }
  __syncthreads();
  float amax = ex_max[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) amax = fmaxf(amax, ex_max[w]);
  // As quantize_row_block: 127 * rcp(amax) rounded to fp32; amax = 0 gives NaN -> code 0.
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));

  float ps[kV] = {};
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    if (!valid(m)) continue;
    const int j = chunk(m);
    const uint4 o = vals[j * kGroups + p];
    if (out != nullptr) *reinterpret_cast<uint4*>(out + row_off + j * kC) = o;
    const uint32_t w[4] = {o.x, o.y, o.z, o.w};
    float v[kV];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = detail::h2f_lo(w[i]);
      v[2 * i + 1] = detail::h2f_hi(w[i]);
    }
    detail::store_codes8(q + row_off + j * kC, v, r);
    if constexpr (kSum) {
#pragma unroll
      for (int k = 0; k < kV; ++k) ps[k] = __fadd_rn(ps[k], v[k]);
    }
  }
  constexpr float kInv127 = 1.0f / 127.0f;
  if (t == 0) scale[blockIdx.x] = f2h(__fmul_rn(amax, kInv127));
  if constexpr (kSum) {
    detail::publish_logical_warp_sum(detail::logical_warp_sum8(ps), ex_sum);
    __syncthreads();
    if (t < detail::kWarp) {
      const float total = detail::logical_block_total(ex_sum);
      if (t == 0) sum[blockIdx.x] = f2h(total);
    }
  }
}

// max(m2, |w|) per half: NaN-propagating (kNan, __hmax2_nan) or NaN-ignoring (__hmax2).
template <bool kNan>
__device__ __forceinline__ __half2 habs_max2(__half2 m2, uint32_t w) {
  const __half2 a = __habs2(*reinterpret_cast<const __half2*>(&w));
  if constexpr (kNan) {
    return __hmax2_nan(m2, a);
  } else {
    return __hmax2(m2, a);
  }
}

// A row's amax over a block of kWarps warps (every thread calls it; ex_max: kWarps floats of
// shared memory). thread_max(std::bool_constant<kNan>) returns the thread's max |v| over its
// values as a __half2 (habs_max2<kNan>). First NaN-propagating, so a NaN row is recognisable
// (a NaN becomes +inf, which no finite amax exceeds; fmaxf would drop it); plain = amax finite
// and > 0 (block-uniform). Otherwise (a NaN, an infinity or all zeros) the reference's
// NaN-ignoring max again, for the scale and r; the callers' codes then use the conversion
// instruction.
template <int kWarps, class ThreadMax>
__device__ __forceinline__ float row_amax(ThreadMax thread_max, float* ex_max, int t, bool& plain) {
  {
    const __half2 m2 = thread_max(std::true_type{});
    const float lo = __low2float(m2), hi = __high2float(m2);
    const float mx = detail::warp_max(isnan(lo) || isnan(hi) ? INFINITY : fmaxf(lo, hi));
    if (t % detail::kWarp == 0) ex_max[t / detail::kWarp] = mx;
  }
  __syncthreads();
  float amax = ex_max[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) amax = fmaxf(amax, ex_max[w]);
  plain = amax > 0.0f && amax < INFINITY;
  if (!plain) {
    __syncthreads();  // every warp has read ex_max
    const __half2 m2 = thread_max(std::false_type{});
    const float mx = detail::warp_max(fmaxf(__low2float(m2), __high2float(m2)));
    if (t % detail::kWarp == 0) ex_max[t / detail::kWarp] = mx;
    __syncthreads();
    amax = ex_max[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) amax = fmaxf(amax, ex_max[w]);
  }
  return amax;
}

// The definition's pair (the repair path): silu_f16_ref and the fp32 product, for elements
// gate[0], gate[1] / up[0], up[1].
template <typename T>
__device__ __forceinline__ uint32_t silu_mul_pair_ref(const T* gate, const T* up) {
  const uint16_t o0 = f2h(__fmul_rn(h2f(silu_f16_ref(load_f(gate[0]))), load_f(up[0])));
  const uint16_t o1 = f2h(__fmul_rn(h2f(silu_f16_ref(load_f(gate[1]))), load_f(up[1])));
  return static_cast<uint32_t>(o0) | (static_cast<uint32_t>(o1) << 16);
}

// ---- The block-wide repair queue (2026-12-01, eleventh session) -----------------------------
//
// About 1% of pairs are not certified by the fp32 path and must be recomputed by the definition
// (a double exp and an IEEE division per element: ~100 instructions a pair). Repaired by their
// owner lanes, each warp runs as many rounds as its busiest lane has uncertain pairs (1-2 rounds
// in almost every warp), with the other lanes idle: ncu at 2,048 tokens counted ~32 issued
// instructions per element against ~20 in the certified path. With the queue, each thread
// appends its uncertain pairs to a block-wide list (one shared atomic per thread that has any),
// and after a barrier the whole block recomputes the list densely, 32 pairs per warp round: a
// row's ~80 uncertain pairs take ~3 warp rounds instead of one or two in each of its 8-16 warps.
// The repaired pairs go straight into the staged values (silu_mul_quant_v2_kernel; the cols4
// kernel, whose values live in registers, measured no gain from it: owners must pick their
// results up after a second barrier). Pairs beyond kRepairQueue (rows of zeros, where nothing
// certifies) stay with their owner's per-lane rounds, as before. The price is two barriers per
// row, which at full occupancy cost more than the rounds they save: the dispatch queues up to 4
// rows per SM (bench_fused, H200, us without / with the queue: 256 tokens 10.7 / 10.0, with the
// sum 11.5 / 10.6; 512 16.0 / 15.6; 4,096 94.5 / 98.3; 8,192 180.2 / 188.5).
constexpr int kRepairQueue = 512;
struct RepairQueue {
  uint32_t n;                  // pairs reserved (may exceed kRepairQueue: those stay local)
  uint16_t pos[kRepairQueue];  // the pair's staging word (= its first column / 2)
};

// Reserves `count` queue slots for this thread; returns the run's start (count = 0: no atomic).
__device__ __forceinline__ uint32_t repair_queue_reserve(RepairQueue& rq, int count) {
  return count > 0 ? atomicAdd(&rq.n, static_cast<uint32_t>(count)) : 0u;
}
// How many of a run of `count` starting at `base` fit in the queue.
__device__ __forceinline__ int repair_queue_fit(uint32_t base, int count) {
  return base >= static_cast<uint32_t>(kRepairQueue)
             ? 0
             : min(count, kRepairQueue - static_cast<int>(base));
}
// The dense pass (after a barrier that follows every reserve): each entry's pair, by the
// definition, handed to store(pos, packed pair). gate_row / up_row: the row's first element.
template <typename T, class Store>
__device__ __forceinline__ void repair_queue_run(const RepairQueue& rq, const T* gate_row,
                                                 const T* up_row, Store store) {
  const int n = min(static_cast<int>(rq.n), kRepairQueue);
  for (int e = static_cast<int>(threadIdx.x); e < n; e += static_cast<int>(blockDim.x)) {
    const int pos = rq.pos[e];
    store(pos, silu_mul_pair_ref(gate_row + 2 * pos, up_row + 2 * pos));
  }
}

// ---- The leaner fused kernel (silu_mul_quant_v2_kernel) ------------------------------------
//
// The vec kernel's structure (16-byte loads, values staged in shared memory, uncertain elements
// repaired by warp rounds, one exchange) with fewer instructions per element, most of them on
// the 16-lane-per-SM conversion/MUFU pipe that bounded it:
//  - the certificate per pair of elements: lo = fma_rd(|s|, -c, s) and hi = fma_ru(|s|, c, s)
//    (c = (16 + 2|g|) 2^-23: the same bound as silu_f16_fast, without the rounding of the
//    product |s| c), the two lows and the two highs rounded to fp16 by one conversion each, and
//    one XOR: the pair is certified iff the packed words agree (lo's bits are then the
//    definition's), instead of one conversion, a byte permute and a compare per element;
//  - fp16 inputs: out = fp16_RN(float(silu) * up) is fp16_RN of an exact product (11-bit times
//    11-bit significands fit fp32's 24, and the exponents stay within fp32's normal range), i.e.
//    the correctly rounded fp16 product, which __hmul2_rn computes for two elements in one
//    instruction (the fp32 route: two widenings, two multiplies, one conversion). Only a NaN's
//    bit pattern could differ (fp16 and fp32 arithmetic need not return the same NaN), so a pair
//    whose product is not finite is repaired like an uncertain one: through the fp32 route;
//  - the codes cvt_rni_sat_s8(v * r) as bits of fl32(v * r + 1.5 * 2^23) (exact for |v r| <= 2^22,
//    round to nearest even like cvt.rni; the low byte is the two's-complement code), no
//    conversion instruction. Saturation never acts when amax is finite and nonzero (|v| <= amax,
//    so |fl(v r)| < 127.5); rows with a NaN, an infinity or amax = 0 (then r = inf and a code may
//    come from a NaN product) take the conversion instruction instead (block-uniform branch);
//  - fp32 inputs keep the vec kernel's per-element arithmetic (the certificate aside).
// The repair rounds work per pair (bit 4m + i of `pend`: pair i of chunk slot m). kSplit x 128
// threads per row as in the vec kernel: kSplit = 4 (512 threads, at most 4 chunks per thread)
// without the sum, and with it up to 2 rows per SM (above that the dispatch runs the cols4
// kernel; kSplit = 1, its with-sum kernel there until 2026-11-30, sixth session, and kSplit = 2
// remain for bench_fused's comparison).
//
// The per-token sum (kSum, the per-channel W4A8 down projection) with kSplit > 1: the
// reference's sum of logical thread 8p + k runs over the chunks of column group p in chunk order,
// which kSplit threads hold between them. Until 2026-11-30 (fifth session) the sum therefore forced
// kSplit = 1 (128 threads per row, 14 chunks of serial work per thread), which is what made the sum
// cost 2.5-14 us on the H200 (bench_fused 2026-11-30: 13.0 / 31.8 / 102.1 / 193.8 us against 10.4
// / 29.4 / 94.0 / 179.5 without it). Now the sum is formed after the amax barrier from the staged
// values in shared memory (sum_from_staged): no other barrier, no extra global traffic. The
// dispatch takes it up to 2 rows per SM and silu_mul_quant_cols4_kernel above (kSplit = 1 until
// 2026-11-30, sixth session; see silu_mul_quant_impl).
__device__ __forceinline__ float fmaf_rd(float a, float b, float c) {
  return __fmaf_rd(a, b, c);
}
__device__ __forceinline__ float fmaf_ru(float a, float b, float c) {
  return __fmaf_ru(a, b, c);
}
// The fp32 SiLU of two gates and its certificate: returns the packed fp16 lows (low half = g0's);
// `unc` is 0 iff both are the definition's bits (the bound of silu_f16_fast, same special cases:
// zeros, g < -87.3 and g = +inf never certify; NaN certifies as the conversion's NaN, which is
// what the definition's conversion returns).
__device__ __forceinline__ uint32_t silu2_f16_cert(float g0, float g1, uint32_t& unc) {
  constexpr float kMinusLog2e = -1.4426950408889634f;
  const float s0 =
      __fmul_rn(g0, rcp_approx(__fadd_rn(1.0f, ex2_approx(__fmul_rn(g0, kMinusLog2e)))));
  const float s1 =
      __fmul_rn(g1, rcp_approx(__fadd_rn(1.0f, ex2_approx(__fmul_rn(g1, kMinusLog2e)))));
  const float c0 = __fmaf_rn(fabsf(g0), 0x1p-22f, 0x1p-19f);
  const float c1 = __fmaf_rn(fabsf(g1), 0x1p-22f, 0x1p-19f);
  const uint32_t lo = detail::f2h2(fmaf_rd(fabsf(s0), -c0, s0), fmaf_rd(fabsf(s1), -c1, s1));
  const uint32_t hi = detail::f2h2(fmaf_ru(fabsf(s0), c0, s0), fmaf_ru(fabsf(s1), c1, s1));
  unc = lo ^ hi;
  return lo;
}

// The magic-number conversion: bits of fl32(x + 1.5 * 2^23), whose low byte is cvt_rni_s8(x) for
// |x| <= 128 (the caller guarantees |x| < 127.5 and x not NaN).
__device__ __forceinline__ uint32_t rni_bits(float x) {
  return __float_as_uint(__fadd_rn(x, 12582912.0f));
}
__device__ __forceinline__ uint32_t pack_low_bytes(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// The per-token sum from the staged fp16 values (vals, [chunk][column group] x 8 values, complete
// after a barrier), for kSplit x 128 threads. Each row has 512 words (pairs of logical threads)
// per chunk; thread t takes words i = t + kSplit * 128 * r (r < 4 / kSplit): column group
// pg = i / 4, logical threads 8 pg + 2 (i % 4) and + 1. It adds its two logical threads'
// values over the chunks in chunk order, from 0, exactly as the reference's per-thread loop
// (consecutive threads read consecutive words: no bank conflict), then replays the first level
// of the reference's tree (logical_warp_sum8's butterfly, masks 16, 8, 4, 2, 1) on this layout:
// logical lane 8 (pg % 4) + k lies in physical lane bits (pg % 4) << 2 | (k >> 1), so masks 16
// and 8 are lane XOR 8 and 4, masks 4 and 2 lane XOR 2 and 1, and mask 1 is the thread's own
// pair. The logical warp i / 16's total is published in ex_sum[i / 16] (32 per row), after which
// a barrier and logical_block_total give block_sum_exact's result. fp32 addition is
// commutative, so only which pairs are added matters, and these are the reference's pairs.
template <int kSplit>
__device__ __forceinline__ void sum_from_staged(const uint4* vals, int inter, float* ex_sum) {
  constexpr int kGroups = detail::kVecRowThreads;
  constexpr int kWords = kGroups * 4;                 // 32-bit words per chunk
  constexpr int kReps = kWords / (kGroups * kSplit);  // words per thread
  const uint32_t* words = reinterpret_cast<const uint32_t*>(vals);
#pragma unroll
  for (int r = 0; r < kReps; ++r) {
    const int i = static_cast<int>(threadIdx.x) + r * kGroups * kSplit;
    const int pg = i / 4;
    float a = 0.0f, b = 0.0f;  // logical threads 8 pg + 2 (i % 4) and 8 pg + 2 (i % 4) + 1
#pragma unroll
    for (int j = 0; j < kVecMaxChunks; ++j) {
      if (j * detail::kVecChunk + pg * detail::kVecPerThread < inter) {
        const uint32_t w = words[j * kWords + i];
        a = __fadd_rn(a, detail::h2f_lo(w));
        b = __fadd_rn(b, detail::h2f_hi(w));
      }
    }
#pragma unroll
    for (int lane_mask = 8; lane_mask >= 1; lane_mask /= 2) {
      a = __fadd_rn(a, __shfl_xor_sync(detail::kFullMask, a, lane_mask));
      b = __fadd_rn(b, __shfl_xor_sync(detail::kFullMask, b, lane_mask));
    }
    if (i % 16 == 0) ex_sum[i / 16] = __fadd_rn(a, b);
  }
}

// One chunk of 8 elements (the v2 kernel's per-pair step): the packed fp16 SiLU·mul pairs o[i]
// and a 4-bit mask of the pairs to repair (an uncertain SiLU, or for fp16 inputs a non-finite
// product, whose NaN bits the fp32 route defines).
template <typename T>
__device__ __forceinline__ uint32_t silu_mul_chunk8(const Vec8<T>& g, const Vec8<T>& u,
                                                    uint32_t (&o)[4]) {
  uint32_t bad4 = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t unc;
    const uint32_t h = silu2_f16_cert(g[2 * i], g[2 * i + 1], unc);
    uint32_t bad;
    if constexpr (sizeof(T) == 2) {
      const uint32_t uw = i == 0 ? u.raw.x : i == 1 ? u.raw.y : i == 2 ? u.raw.z : u.raw.w;
      const __half2 prod =
          __hmul2_rn(*reinterpret_cast<const __half2*>(&h), *reinterpret_cast<const __half2*>(&uw));
      // fma(prod, 0, +0): +0 for a finite half, NaN for an infinite or NaN one.
      const __half2 z =
          __hfma2(prod, __half2half2(__ushort_as_half(0)), __half2half2(__ushort_as_half(0)));
      o[i] = *reinterpret_cast<const uint32_t*>(&prod);
      bad = unc | *reinterpret_cast<const uint32_t*>(&z);
    } else {
      o[i] = detail::f2h2(__fmul_rn(detail::h2f_lo(h), u[2 * i]),
                          __fmul_rn(detail::h2f_hi(h), u[2 * i + 1]));
      bad = unc;
    }
    if (bad != 0) bad4 |= 1u << i;
  }
  return bad4;
}

// The end of a staged row (silu_mul_quant_v2_kernel): amax over the staged fp16 values,
// the codes (and `out`), the scale and, with kSum, the per-token sum. vals: the row's staging,
// complete (every repair stored, a barrier passed). row: the token's row; p / phase: the thread's
// column group and chunk phase (chunk(m) = phase + kSplit m).
template <bool kSum, int kSplit>
__device__ __forceinline__ void finish_staged_row(const uint4* vals, int inter, int64_t row, int p,
                                                  int phase, int8_t* __restrict__ q,
                                                  uint16_t* __restrict__ scale,
                                                  uint16_t* __restrict__ sum,
                                                  uint16_t* __restrict__ out, float* ex_max,
                                                  float* ex_sum) {
  constexpr int kV = detail::kVecPerThread;
  constexpr int kC = detail::kVecChunk;
  constexpr int kGroups = detail::kVecRowThreads;
  constexpr int kM = kVecMaxChunks / kSplit;
  constexpr int kWarps = detail::kVecRowWarps * kSplit;
  const int t = threadIdx.x;
  const int64_t row_off = row * inter + p * kV;
  auto chunk = [&](int m) { return phase + kSplit * m; };
  auto valid = [&](int m) { return chunk(m) * kC + p * kV < inter; };
  bool plain;
  const float amax = row_amax<kWarps>(
      [&](auto nan) {
        __half2 m2 = __half2half2(__ushort_as_half(0));
#pragma unroll
        for (int m = 0; m < kM; ++m) {
          if (!valid(m)) continue;
          const uint4 o = vals[chunk(m) * kGroups + p];
          const uint32_t w[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
          for (int i = 0; i < 4; ++i) m2 = habs_max2<decltype(nan)::value>(m2, w[i]);
        }
        return m2;
      },
      ex_max, t, plain);
  // As quantize_row_block: 127 * rcp(amax) rounded to fp32; amax = 0 gives NaN -> code 0.
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));

  float ps[kV] = {};
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    if (!valid(m)) continue;
    const int j = chunk(m);
    const uint4 o = vals[j * kGroups + p];
    if (out != nullptr) *reinterpret_cast<uint4*>(out + row_off + j * kC) = o;
    const uint32_t w[4] = {o.x, o.y, o.z, o.w};
    float v[kV];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = detail::h2f_lo(w[i]);
      v[2 * i + 1] = detail::h2f_hi(w[i]);
    }
    if (plain) {
      uint32_t b[kV];
#pragma unroll
      for (int k = 0; k < kV; ++k) b[k] = rni_bits(__fmul_rn(v[k], r));
      *reinterpret_cast<uint2*>(q + row_off + j * kC) = make_uint2(
          pack_low_bytes(b[0], b[1], b[2], b[3]), pack_low_bytes(b[4], b[5], b[6], b[7]));
    } else {
      detail::store_codes8(q + row_off + j * kC, v, r);
    }
    if constexpr (kSum && kSplit == 1) {
#pragma unroll
      for (int k = 0; k < kV; ++k) ps[k] = __fadd_rn(ps[k], v[k]);
    }
  }
  constexpr float kInv127 = 1.0f / 127.0f;
  if (t == 0) scale[row] = f2h(__fmul_rn(amax, kInv127));
  if constexpr (kSum) {
    if constexpr (kSplit == 1) {
      // One thread per column group: the partials are this thread's registers.
      detail::publish_logical_warp_sum(detail::logical_warp_sum8(ps), ex_sum);
    } else {
      // vals is complete since the amax barrier and nobody writes it any more.
      sum_from_staged<kSplit>(vals, inter, ex_sum);
    }
    __syncthreads();
    if (t < detail::kWarp) {
      const float total = detail::logical_block_total(ex_sum);
      if (t == 0) sum[row] = f2h(total);
    }
  }
}

template <typename T, bool kSum, int kSplit, bool kQueue = false>
__global__ void __launch_bounds__(kSplitThreads<kSplit>, kSplit == 4 ? 2 : 4 / kSplit)
    silu_mul_quant_v2_kernel(const T* __restrict__ gate_up, int inter, int8_t* __restrict__ q,
                             uint16_t* __restrict__ scale, uint16_t* __restrict__ sum,
                             uint16_t* __restrict__ out) {
  constexpr bool kF16 = sizeof(T) == 2;
  constexpr int kV = detail::kVecPerThread;
  constexpr int kC = detail::kVecChunk;
  constexpr int kGroups = detail::kVecRowThreads;  // column groups per chunk
  constexpr int kM = kVecMaxChunks / kSplit;       // chunks per thread (at most)
  constexpr int kWarps = detail::kVecRowWarps * kSplit;
  // Chunks per load group: 8 x 32 bytes (fp16) or 4 x 64 bytes (fp32; 2 at kSplit = 4, whose
  // 512 threads have 64 registers each) in flight per thread.
  constexpr int kLoadGroup = std::min(kM, kF16 ? 8 : kSplit == 4 ? 2 : 4);
  static_assert(4 * kM <= 64, "4 pair bits per chunk slot in a 64-bit mask");
  extern __shared__ uint4 vals[];  // [chunk][column group]: 8 fp16 SiLU·mul values each
  __shared__ float ex_max[kWarps], ex_sum[detail::kWarp];
  __shared__ RepairQueue rq;
  if constexpr (kQueue) {
    if (threadIdx.x == 0) rq.n = 0;
    __syncthreads();
  }
  pdl_wait();  // gate_up is the previous kernel's output (pdl.h)
  pdl_trigger();
  const int t = threadIdx.x, p = t % kGroups, phase = t / kGroups;
  const T* gate = gate_up + static_cast<int64_t>(blockIdx.x) * 2 * inter + p * kV;
  const T* up = gate + inter;
  auto chunk = [&](int m) { return phase + kSplit * m; };
  auto valid = [&](int m) { return chunk(m) * kC + p * kV < inter; };

  uint64_t pend = 0;  // bit 4m + i: pair i (elements 2i, 2i + 1) of chunk slot m to repair
#pragma unroll
  for (int m0 = 0; m0 < kM; m0 += kLoadGroup) {
    Vec8<T> g[kLoadGroup], u[kLoadGroup];
#pragma unroll
    for (int mm = 0; mm < kLoadGroup; ++mm) {
      if (valid(m0 + mm)) {
        g[mm].load(gate + chunk(m0 + mm) * kC);
        u[mm].load(up + chunk(m0 + mm) * kC);
      }
    }
#pragma unroll
    for (int mm = 0; mm < kLoadGroup; ++mm) {
      const int m = m0 + mm;
      if (!valid(m)) continue;
      uint32_t o[kV / 2];
      pend |= uint64_t{silu_mul_chunk8(g[mm], u[mm], o)} << (4 * m);
      vals[chunk(m) * kGroups + p] = make_uint4(o[0], o[1], o[2], o[3]);
    }
  }

  // Pair slot idx (chunk slot idx / 4, pair idx % 4) lives in staging word w = (chunk *
  // kGroups + p) * 4 + pair, which holds columns 2w, 2w + 1 (kC = 2 * 4 * kGroups): the word is
  // the pair's position for the repairs and the queue alike.
  auto word = [&](int idx) { return (chunk(idx / 4) * kGroups + p) * 4 + idx % 4; };
  const T* gate_row = gate_up + static_cast<int64_t>(blockIdx.x) * 2 * inter;
  const T* up_row = gate_row + inter;
  uint32_t* const words = reinterpret_cast<uint32_t*>(vals);
  if constexpr (kQueue) {
    const int cnt = __popcll(pend);
    const uint32_t base = repair_queue_reserve(rq, cnt);
    const int fit = repair_queue_fit(base, cnt);
    for (int k = 0; k < fit; ++k) {
      const int idx = __ffsll(static_cast<long long>(pend)) - 1;
      pend &= pend - 1;
      rq.pos[base + k] = static_cast<uint16_t>(word(idx));
    }
  }
  // Repair: each round, every lane with a pair left recomputes its lowest one by the definition
  // (the fp32 route for the product); with kQueue only the pairs the queue had no room for.
  bool mine = pend != 0;
  while (__any_sync(detail::kFullMask, mine)) {
    if (mine) {
      const int idx = __ffsll(static_cast<long long>(pend)) - 1;
      pend &= pend - 1;
      const int w = word(idx);
      words[w] = silu_mul_pair_ref(gate_row + 2 * w, up_row + 2 * w);
      mine = pend != 0;
    }
  }
  if constexpr (kQueue) {
    __syncthreads();  // every thread's reserve and positions
    repair_queue_run(rq, gate_row, up_row, [words](int pos, uint32_t w) { words[pos] = w; });
    __syncthreads();  // the repaired pairs, before the owners read their values for the amax
  }

  finish_staged_row<kSum, kSplit>(vals, inter, blockIdx.x, p, phase, q, scale, sum, out, ex_max,
                                  ex_sum);
}

// ---- The register-resident kernel (silu_mul_quant_cols4_kernel, 2026-11-30, sixth session) --
//
// The dispatch's with-sum kernel above 2 rows per SM (4 until the seventh session). The v2
// kernel's arithmetic (pair certificate, __hmul2_rn product for fp16 inputs, magic-number codes;
// the same bits) with another split of a row over threads: thread t (256 per row) owns the 4
// consecutive columns [4t, 4t + 4) of every 1024-column chunk, i.e. it plays the reference
// quantizer's logical threads 4t .. 4t + 3 entirely (all their chunks). So:
//  - the per-token sum stays in registers in the reference's order (logical thread L adds its
//    chunks in chunk order, from 0) with 256 threads per row: the v2 kernel has to choose
//    between one thread per column group (split 1, 128 threads, the sum in registers: 16 warps
//    per SM, 14 chunks of serial work per thread) and the staged sum of split 4 (a shared load
//    and two conversions per pair more);
//  - a thread's values (14 chunks x 4 fp16 values for Llama-3-8B: 28 registers) stay in
//    registers: no shared-memory staging at all (the v2 kernel stores and reloads them twice),
//    only the two 32-float exchanges remain in shared memory, so occupancy is set by registers
//    alone (256 threads x <= 64 registers: 4 rows, 32 warps per SM);
//  - the price: 8-byte loads for fp16 inputs (a warp still reads 256 contiguous bytes per
//    access) and 4-byte code stores.
// The first level of the sum's tree on this layout: logical lane L % 32 = 4 (t % 8) + c, so the
// reference's masks 16, 8, 4 flip physical lane bits (lane XOR mask / 4, a shuffle) and masks 2
// and 1 flip c inside the thread; logical warp L / 32 = t / 8 (32 per row), published for
// logical_block_total as in the v2 kernel. Without the sum the kernel is forced:: only: split 4
// stays ahead there (bench_fused, 256 / 1024 tokens: 11.0 / 30.1 us against 10.4 / 29.5).
constexpr int kCols = 4;                                 // columns per thread and chunk
constexpr int kColsThreads = detail::kVecChunk / kCols;  // threads per row

// 4 consecutive elements as loaded (one 8-byte access for fp16, one 16-byte access for fp32).
template <typename T>
struct Raw4 {
  static constexpr int kWords = kCols * static_cast<int>(sizeof(T)) / 4;
  static_assert(kWords == 2 || kWords == 4, "8- or 16-byte accesses");
  uint32_t w[kWords];
  __device__ __forceinline__ void load(const T* p) {
    if constexpr (kWords == 2) {
      const uint2 v = *reinterpret_cast<const uint2*>(p);
      w[0] = v.x, w[1] = v.y;
    } else {
      const uint4 v = *reinterpret_cast<const uint4*>(p);
      w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    }
  }
  __device__ __forceinline__ float operator[](int k) const {
    if constexpr (sizeof(T) == 2) {
      return k % 2 == 0 ? detail::h2f_lo(w[k / 2]) : detail::h2f_hi(w[k / 2]);
    } else {
      return __uint_as_float(w[k]);
    }
  }
};

// The v2 kernel's per-pair step: the packed fp16 SiLU·mul of elements (2i, 2i + 1) and whether
// the pair must be repaired (an uncertain SiLU, or for fp16 inputs a non-finite product).
template <typename T>
__device__ __forceinline__ uint32_t silu_mul_pair(const Raw4<T>& g, const Raw4<T>& u, int i,
                                                  bool& bad) {
  uint32_t unc;
  const uint32_t h = silu2_f16_cert(g[2 * i], g[2 * i + 1], unc);
  if constexpr (sizeof(T) == 2) {
    const uint32_t uw = u.w[i];
    const __half2 prod =
        __hmul2_rn(*reinterpret_cast<const __half2*>(&h), *reinterpret_cast<const __half2*>(&uw));
    // fma(prod, 0, +0): +0 for a finite half, NaN for an infinite or NaN one.
    const __half2 z =
        __hfma2(prod, __half2half2(__ushort_as_half(0)), __half2half2(__ushort_as_half(0)));
    bad = (unc | *reinterpret_cast<const uint32_t*>(&z)) != 0;
    return *reinterpret_cast<const uint32_t*>(&prod);
  } else {
    bad = unc != 0;
    return detail::f2h2(__fmul_rn(detail::h2f_lo(h), u[2 * i]),
                        __fmul_rn(detail::h2f_hi(h), u[2 * i + 1]));
  }
}

template <typename T, bool kSum>
__global__ void __launch_bounds__(kColsThreads, 2048 / kColsThreads / 2)
    silu_mul_quant_cols4_kernel(const T* __restrict__ gate_up, int inter, int8_t* __restrict__ q,
                                uint16_t* __restrict__ scale, uint16_t* __restrict__ sum,
                                uint16_t* __restrict__ out) {
  constexpr int kC = detail::kVecChunk;
  constexpr int kP = kCols / 2;  // pairs per chunk
  constexpr int kM = kVecMaxChunks;
  constexpr int kSlots = kM * kP;
  static_assert(kSlots <= 32, "one pending bit per pair slot in 32 bits");
  constexpr int kWarps = kColsThreads / detail::kWarp;
  // Chunks per load group: 32 (fp16) or 16 (fp32) bytes of gate and up loads each in flight per
  // thread.
  constexpr int kLoadGroup = sizeof(T) == 2 ? 4 : 1;
  __shared__ float ex_max[kWarps], ex_sum[detail::kWarp];
  pdl_wait();  // gate_up is the previous kernel's output (pdl.h)
  pdl_trigger();
  const int t = threadIdx.x;
  const int64_t row_off = static_cast<int64_t>(blockIdx.x) * inter + t * kCols;
  const T* gate = gate_up + static_cast<int64_t>(blockIdx.x) * 2 * inter + t * kCols;
  const T* up = gate + inter;
  auto valid = [&](int m) { return m * kC + t * kCols < inter; };

  uint32_t o[kSlots];
  uint32_t pend = 0;  // bit s: pair slot s (chunk s / kP, pair s % kP) to repair
#pragma unroll
  for (int m0 = 0; m0 < kM; m0 += kLoadGroup) {
    Raw4<T> g[kLoadGroup], u[kLoadGroup];
#pragma unroll
    for (int mm = 0; mm < kLoadGroup; ++mm) {
      if (valid(m0 + mm)) {
        g[mm].load(gate + (m0 + mm) * kC);
        u[mm].load(up + (m0 + mm) * kC);
      }
    }
#pragma unroll
    for (int mm = 0; mm < kLoadGroup; ++mm) {
      const int m = m0 + mm;
#pragma unroll
      for (int i = 0; i < kP; ++i) {
        o[m * kP + i] = 0;
        if (valid(m)) {
          bool bad;
          o[m * kP + i] = silu_mul_pair(g[mm], u[mm], i, bad);
          if (bad) pend |= 1u << (m * kP + i);
        }
      }
    }
  }

  int8_t* const q_row = q + row_off;
  uint16_t* const out_row = out != nullptr ? out + row_off : nullptr;
  uint16_t* const scale_out = scale + blockIdx.x;
  uint16_t* const sum_out = kSum ? sum + blockIdx.x : nullptr;

  // Repair rounds: each lane with a pair left recomputes its lowest one per round, as in the v2
  // kernel; o[] is selected by an unrolled compare, so it stays in registers.
  bool mine = pend != 0;
  while (__any_sync(detail::kFullMask, mine)) {
    if (mine) {
      const int s = __ffs(static_cast<int>(pend)) - 1;
      pend &= pend - 1;
      const int off = (s / kP) * kC + 2 * (s % kP);
      const uint32_t w = silu_mul_pair_ref(gate + off, up + off);
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        if (k == s) o[k] = w;
      }
      mine = pend != 0;
    }
  }

  bool plain;
  const float amax = row_amax<kWarps>(
      [&](auto nan) {
        __half2 m2 = __half2half2(__ushort_as_half(0));
#pragma unroll
        for (int k = 0; k < kSlots; ++k) {
          if (valid(k / kP)) m2 = habs_max2<decltype(nan)::value>(m2, o[k]);
        }
        return m2;
      },
      ex_max, t, plain);
  // As quantize_row_block: 127 * rcp(amax) rounded to fp32; amax = 0 gives NaN -> code 0.
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));

  float ps[kCols] = {};
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    if (!valid(m)) continue;
    uint32_t codes[kP];
#pragma unroll
    for (int i = 0; i < kP; ++i) {
      const uint32_t w = o[m * kP + i];
      const float v0 = detail::h2f_lo(w), v1 = detail::h2f_hi(w);
      if (plain) {
        codes[i] = __byte_perm(rni_bits(__fmul_rn(v0, r)), rni_bits(__fmul_rn(v1, r)), 0x0040);
      } else {
        codes[i] = __byte_perm(detail::cvt_s8_bits(__fmul_rn(v0, r)),
                               detail::cvt_s8_bits(__fmul_rn(v1, r)), 0x0040);
      }
      if constexpr (kSum) {
        ps[2 * i] = __fadd_rn(ps[2 * i], v0);
        ps[2 * i + 1] = __fadd_rn(ps[2 * i + 1], v1);
      }
    }
    *reinterpret_cast<uint32_t*>(q_row + m * kC) = __byte_perm(codes[0], codes[1], 0x5410);
    if (out_row != nullptr) {
      *reinterpret_cast<uint2*>(out_row + m * kC) = make_uint2(o[2 * m], o[2 * m + 1]);
    }
  }
  constexpr float kInv127 = 1.0f / 127.0f;
  if (t == 0) *scale_out = f2h(__fmul_rn(amax, kInv127));
  if constexpr (kSum) {
    constexpr int kGroupLanes = detail::kWarp / kCols;  // physical lanes per logical warp
#pragma unroll
    for (int mask = 16; mask >= kCols; mask /= 2) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        ps[c] = __fadd_rn(ps[c], __shfl_xor_sync(detail::kFullMask, ps[c], mask / kCols));
      }
    }
#pragma unroll
    for (int mask = kCols / 2; mask >= 1; mask /= 2) {
      float n[kCols];
#pragma unroll
      for (int c = 0; c < kCols; ++c) n[c] = __fadd_rn(ps[c], ps[c ^ mask]);
#pragma unroll
      for (int c = 0; c < kCols; ++c) ps[c] = n[c];
    }
    if (t % kGroupLanes == 0) ex_sum[t / kGroupLanes] = ps[0];
    __syncthreads();
    if (t < detail::kWarp) {
      const float total = detail::logical_block_total(ex_sum);
      if (t == 0) *sum_out = f2h(total);
    }
  }
}

std::string shape(int64_t rows, int64_t inter) {
  return "rows=" + std::to_string(rows) + " inter=" + std::to_string(inter);
}

void check_shape(const char* op, int64_t rows, int64_t inter) {
  check(rows >= 0 && inter > 0 && rows <= 65535 * 1024LL,
        std::string(op) + ": bad shape " + shape(rows, inter));
}

// Elementwise launches: grid (ceil(inter / 256), rows); rows go on grid.y (<= 65535), chunked.
template <typename F>
void launch_elementwise(const char* op, int64_t rows, int64_t inter, F launch_chunk) {
  constexpr int64_t kMaxY = 65535;
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxY) {
    const int64_t nr = std::min(kMaxY, rows - r0);
    const dim3 grid(static_cast<unsigned>((inter + 255) / 256), static_cast<unsigned>(nr));
    launch_chunk(r0, grid);
    check_launch(op, shape(rows, inter));
  }
}

template <typename T, bool kFast = true>
void silu_mul_f16_impl(const char* op, const T* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                       cudaStream_t stream) {
  check_shape(op, rows, inter);
  launch_elementwise(op, rows, inter, [&](int64_t r0, dim3 grid) {
    silu_mul_f16_kernel<T, kFast>
        <<<grid, 256, 0, stream>>>(gate_up + r0 * 2 * inter, inter, out + r0 * inter);
  });
}

// Which kernel runs: the dispatch (kAuto), the previous dispatch (kPrev: the vec kernel), the
// first kernels (kBaseline), the v2 kernel with a forced split (kV2Split1: one thread per column
// group, with a sum only, the dispatch's with-sum kernel above 4 rows per SM until 2026-11-30
// (sixth session); without a sum it runs the dispatch's choice), or silu_mul_quant_cols4_kernel
// (kCols4: with a sum, the dispatch's kernel above 4 rows per SM since then, above 2 since the
// seventh session).
enum class SiluPath { kAuto, kPrev, kBaseline, kV2Split1, kV2Split2, kV2Split4, kCols4 };

template <typename T>
void silu_mul_quant_impl(const char* op, const T* gate_up, int64_t rows, int64_t inter, int8_t* q,
                         uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                         SiluPath path = SiluPath::kAuto) {
  check_shape(op, rows, inter);
  check(rows <= 0x7fffffff, std::string(op) + ": too many rows");
  check(q != nullptr && scale != nullptr, std::string(op) + ": q and scale are required");
  if (rows == 0) return;
  using detail::aligned_to;
  const bool allow_vec = path != SiluPath::kBaseline;
  if (allow_vec && inter >= detail::kVecChunk && inter % detail::kVecPerThread == 0 &&
      inter <= kVecMaxChunks * detail::kVecChunk && aligned_to(gate_up, 16) && aligned_to(q, 8) &&
      aligned_to(out, 16)) {
    const int64_t chunks = (inter + detail::kVecChunk - 1) / detail::kVecChunk;
    const size_t smem = static_cast<size_t>(chunks) * detail::kVecRowThreads * sizeof(uint4);
    const auto grid = static_cast<unsigned>(rows);
    const auto in = static_cast<int>(inter);
    // The v2 and cols4 kernels keep pdl.h's contract; the vec kernel (kPrev) does not.
    auto launch = [&](auto kernel, unsigned threads, size_t bytes) {
      cuda_check(launch_pdl(kernel, dim3(grid), dim3(threads), bytes, stream, gate_up, in, q, scale,
                            sum, out),
                 op, shape(rows, inter));
    };
    const int64_t sms = current_device_sm_count();
    if (path == SiluPath::kPrev) {
      if (sum != nullptr) {
        silu_mul_quant_vec_kernel<T, true, 1>
            <<<grid, detail::kVecRowThreads, smem, stream>>>(gate_up, in, q, scale, sum, out);
      } else {
        silu_mul_quant_vec_kernel<T, false, 2>
            <<<grid, 2 * detail::kVecRowThreads, smem, stream>>>(gate_up, in, q, scale, sum, out);
      }
    } else if (sum != nullptr) {
      // With the sum: 4 threads per column group of the v2 kernel (sum_from_staged) up to one
      // wave of its 2 blocks per SM (2 rows per SM), the cols4 kernel (4 columns per thread,
      // the values and the sum in registers) above. On the H200 (bench_fused 2026-11-30, sixth
      // session, inter 14336; split 4 / cols4 / split 1) 256 tokens 11.3 / 11.5 / 12.8 us, 1024
      // 32.1 / 31.0 / 32.0, 4096 105.2 / 96.0 / 102.3, 8192 201.5 / 178.9 / 194.0: at 256
      // tokens (2 rows per SM) split 4's 512-thread blocks spread a row over more warps; once
      // the GPU is full, cols4 saves the shared-memory staging and split 1's long per-thread
      // chains (our reading, not profiled). Split 1 (the v2 kernel's sum in registers) was the
      // with-sum kernel above 4 rows per SM until then (forced:: split 1). Forming the staged sum
      // before the amax exchange measured no better than split 4 (11.2 / 32.6 / 105.7 / 203.4 us,
      // fifth session) and was removed. The threshold moved from 4 to 2 rows per SM on the
      // seventh session's run with 512 tokens (the b512 decode step; split 4 / cols4 17.4 / 16.0
      // us; 256 tokens 11.4 / 11.5, 1024 32.2 / 31.1; 2026-11-30-fused-h200-s7.json). The v2
      // launch repairs through the block-wide queue (2026-12-01, 256 tokens: 11.3-11.5 ->
      // 10.6-10.8 us); the cols4 kernel gains nothing from it (its values live in registers, so
      // the owners need a second barrier to collect the repaired pairs: 512 tokens 16.3 / 16.1,
      // 4,096 96.4 / 98.7, 8,192 179.6 / 184.3 us without / with it).
      if (path == SiluPath::kAuto) {
        if (rows <= 2 * sms) {
          launch(silu_mul_quant_v2_kernel<T, true, 4, true>, 4 * detail::kVecRowThreads, smem);
        } else {
          launch(silu_mul_quant_cols4_kernel<T, true>, kColsThreads, 0);
        }
      } else if (path == SiluPath::kCols4) {
        launch(silu_mul_quant_cols4_kernel<T, true>, kColsThreads, 0);
      } else if (path == SiluPath::kV2Split1) {
        launch(silu_mul_quant_v2_kernel<T, true, 1>, detail::kVecRowThreads, smem);
      } else if (path == SiluPath::kV2Split2) {
        launch(silu_mul_quant_v2_kernel<T, true, 2>, 2 * detail::kVecRowThreads, smem);
      } else {
        launch(silu_mul_quant_v2_kernel<T, true, 4>, 4 * detail::kVecRowThreads, smem);
      }
    } else {
      // 4 threads per column group (512 per row) at every size: on the H200 (bench_fused,
      // 2026-11-30, inter 14336; split 4 / split 2) 256 tokens 10.3 / 10.9 us, 1024 29.6 /
      // 32.8, 4096 94.6 / 105.1, 8192 179.8 / 199.0. Up to 4 rows per SM with the repair queue
      // (2026-12-01: 256 tokens 10.5 -> 10.0 us, 512 15.9 -> 15.6; 1,024 29.8 / 29.9, no gain;
      // 4,096 94.5 -> 98.3 and 8,192 180.2 -> 188.5 with it everywhere).
      if (path == SiluPath::kCols4) {  // forced:: only: 11.0 / 30.1 us at 256 / 1024 tokens
        launch(silu_mul_quant_cols4_kernel<T, false>, kColsThreads, 0);
      } else if (path == SiluPath::kAuto && rows <= 4 * sms) {
        launch(silu_mul_quant_v2_kernel<T, false, 4, true>, 4 * detail::kVecRowThreads, smem);
      } else if (path != SiluPath::kV2Split2) {
        launch(silu_mul_quant_v2_kernel<T, false, 4>, 4 * detail::kVecRowThreads, smem);
      } else {
        launch(silu_mul_quant_v2_kernel<T, false, 2>, 2 * detail::kVecRowThreads, smem);
      }
    }
    check_launch(op, shape(rows, inter));
    return;
  }
  const int64_t stride = quant::quant_block_dim(inter);
  const auto grid = static_cast<unsigned>(rows);
  const int threads = detail::threads_for(stride);
  if (inter <= kMaxPerThread * stride) {
    (allow_vec ? silu_mul_quant_reg_kernel<T, true>
               : silu_mul_quant_reg_kernel<T, false>)<<<grid, threads, 0, stream>>>(
        gate_up, inter, static_cast<int>(stride), q, scale, sum, out);
  } else {
    (allow_vec ? silu_mul_quant_kernel<T, true>
               : silu_mul_quant_kernel<T, false>)<<<grid, threads, 0, stream>>>(
        gate_up, inter, static_cast<int>(stride), q, scale, sum, out);
  }
  check_launch(op, shape(rows, inter));
}

}  // namespace

void silu_mul_f32_to_f16(const float* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                         cudaStream_t stream) {
  silu_mul_f16_impl("silu_mul_f32_to_f16", gate_up, rows, inter, out, stream);
}

void silu_mul_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                  cudaStream_t stream) {
  silu_mul_f16_impl("silu_mul_f16", gate_up, rows, inter, out, stream);
}

void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream) {
  silu_mul_quant_impl("silu_mul_quant_f32", gate_up, rows, inter, q, scale, sum, out, stream);
}

void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream) {
  silu_mul_quant_impl("silu_mul_quant_f16", gate_up, rows, inter, q, scale, sum, out, stream);
}

namespace baseline {

void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream) {
  silu_mul_quant_impl("baseline::silu_mul_quant_f16", gate_up, rows, inter, q, scale, sum, out,
                      stream, SiluPath::kBaseline);
}

void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream) {
  silu_mul_quant_impl("baseline::silu_mul_quant_f32", gate_up, rows, inter, q, scale, sum, out,
                      stream, SiluPath::kBaseline);
}

void silu_mul_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                  cudaStream_t stream) {
  silu_mul_f16_impl<uint16_t, false>("baseline::silu_mul_f16", gate_up, rows, inter, out, stream);
}

}  // namespace baseline

namespace prev {

void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream) {
  silu_mul_quant_impl("prev::silu_mul_quant_f16", gate_up, rows, inter, q, scale, sum, out, stream,
                      SiluPath::kPrev);
}

void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream) {
  silu_mul_quant_impl("prev::silu_mul_quant_f32", gate_up, rows, inter, q, scale, sum, out, stream,
                      SiluPath::kPrev);
}

}  // namespace prev

namespace forced {

void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        int split) {
  check(split == 1 || split == 2 || split == 4,
        "forced::silu_mul_quant_f16: split must be 1, 2 or 4, got " + std::to_string(split));
  silu_mul_quant_impl("forced::silu_mul_quant_f16", gate_up, rows, inter, q, scale, sum, out,
                      stream,
                      split == 1   ? SiluPath::kV2Split1
                      : split == 2 ? SiluPath::kV2Split2
                                   : SiluPath::kV2Split4);
}

void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        int split) {
  check(split == 1 || split == 2 || split == 4,
        "forced::silu_mul_quant_f32: split must be 1, 2 or 4, got " + std::to_string(split));
  silu_mul_quant_impl("forced::silu_mul_quant_f32", gate_up, rows, inter, q, scale, sum, out,
                      stream,
                      split == 1   ? SiluPath::kV2Split1
                      : split == 2 ? SiluPath::kV2Split2
                                   : SiluPath::kV2Split4);
}

namespace {
SiluPath silu_form_path(SiluForm form) {
  switch (form) {
    case SiluForm::kCols4:
      return SiluPath::kCols4;
  }
  throw Error("forced::silu_mul_quant: unknown form " + std::to_string(static_cast<int>(form)));
}
}  // namespace

void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        SiluForm form) {
  silu_mul_quant_impl("forced::silu_mul_quant_f16", gate_up, rows, inter, q, scale, sum, out,
                      stream, silu_form_path(form));
}

void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        SiluForm form) {
  silu_mul_quant_impl("forced::silu_mul_quant_f32", gate_up, rows, inter, q, scale, sum, out,
                      stream, silu_form_path(form));
}

}  // namespace forced

void silu_mul_f32(const float* gate_up, int64_t rows, int64_t inter, float* out,
                  cudaStream_t stream) {
  const char* op = "silu_mul_f32";
  check_shape(op, rows, inter);
  launch_elementwise(op, rows, inter, [&](int64_t r0, dim3 grid) {
    silu_mul_f32_kernel<<<grid, 256, 0, stream>>>(gate_up + r0 * 2 * inter, inter,
                                                  out + r0 * inter);
  });
}

}  // namespace qserve::cuda
