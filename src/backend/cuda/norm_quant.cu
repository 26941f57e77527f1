// Fused (residual add +) norm + per-token int8 quantization, bit-exact with
// quant::norm_quantize_per_token (quant/norm_quant.h), and the plain fp32 RMSNorm of the W16A16
// path (cpu::rms_norm, within rounding).
//
// Three kernels compute the same bits:
//  - norm_quant_split_kernel (the vec kernel's shapes with >= 2 chunks, small batches: up to
//    kNormSplit2RowsPerSm rows per SM, 2 threads per column group; 4 for rows of > 4 chunks):
//    kS threads share a column group, each holding kM <= 2 of its chunks, so a 4096-wide row has
//    512 threads with 8 columns each. Every global load (residual, delta, gamma) is issued before
//    any arithmetic; the reference's sequential per-logical-thread partials are formed in chunk
//    order by every lane of the group from its neighbours' values (shuffles), then reduced with
//    the same trees. Why: at 256 tokens the vec kernel is latency-bound (0.32 waves of 4-warp
//    blocks, ~0.2 eligible warps per scheduler, gamma read after two block reductions); this
//    gives 4x the warps per row, a 4x shorter chain per thread and one memory round trip less.
//  - norm_quant_vec_kernel (1024 <= cols <= 8192, cols % 8 == 0, 16-byte aligned rows: every
//    Llama hidden size): one 128-thread block per row in one pass over memory. Physical thread
//    p plays the reference's logical threads 8p .. 8p+7 (quant_device.cuh, "Vectorized rows"),
//    so it reads its 8 consecutive columns of each 1024-column chunk with 16-byte accesses,
//    keeps the row in registers, and holds the 8 logical per-thread partials in registers; the
//    block reductions are the reference's butterfly trees (logical_warp_sum8) with one shared
//    memory exchange and one barrier each (mean, sum of squares, then amax + sum together).
//    Used beyond the split kernel's batch sizes (more rows per SM in flight) and for 1024
//    columns; cuda::prev:: runs it at every size (bench_fused's "_prev" row).
//  - norm_quant_kernel (any shape, the baseline): one block of B = norm_quant_block_dim(cols)
//    threads per row; thread t owns elements t, t+B, t+2B, ... exactly like the CPU emulation,
//    and every pass re-reads x. Kept for the other shapes and as baseline:: for bench_fused.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_device.h"
#include "backend/cuda/fused_baseline.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/pdl_device.cuh"
#include "backend/cuda/quant_device.cuh"
#include "core/half.h"
#include "quant/block_reduce.h"

namespace qserve::cuda {

namespace {

using detail::block_max;
using detail::block_sum_exact;
using detail::cvt_rni_sat_s8;
using detail::f2h;
using detail::h2f;
using detail::load_f;

// Residual modes: none (x is the input), or residual += delta (fp32 or fp16 delta) first.
enum class Residual { kNone, kF32Delta, kF16Delta };

template <typename TX, typename TG, Residual kRes>
__global__ void norm_quant_kernel(const TX* __restrict__ x, float* __restrict__ residual,
                                  const void* __restrict__ delta, const TG* __restrict__ gamma,
                                  float eps, int64_t cols, int stride, bool subtract_mean,
                                  float amax_floor, NormQuantOut out) {
  __shared__ float scratch[detail::kWarp + 1];
  const int64_t row = blockIdx.x;
  const int t = threadIdx.x;
  const bool active = t < stride;  // threads past the logical block own no elements
  const float n = static_cast<float>(cols);

  // The row being normalized. With a residual, each thread first writes its own elements of
  // residual + delta back in place and reads only those afterwards (no cross-thread hazard).
  const TX* xr = nullptr;
  if constexpr (kRes == Residual::kNone) {
    xr = x + row * cols;
  } else {
    float* rr = residual + row * cols;
    if (active) {
      for (int64_t i = t; i < cols; i += stride) {
        float d;
        if constexpr (kRes == Residual::kF32Delta) {
          d = static_cast<const float*>(delta)[row * cols + i];
        } else {
          d = h2f(static_cast<const uint16_t*>(delta)[row * cols + i]);
        }
        rr[i] = __fadd_rn(rr[i], d);
      }
    }
    xr = rr;
  }

  float mu = 0.0f;
  if (subtract_mean) {
    float acc = 0.0f;
    if (active) {
      for (int64_t i = t; i < cols; i += stride) acc = __fadd_rn(acc, load_f(xr[i]));
    }
    mu = __fdiv_rn(block_sum_exact(acc, scratch), n);
  }
  float acc2 = 0.0f;
  if (active) {
    for (int64_t i = t; i < cols; i += stride) {
      const float d = __fsub_rn(load_f(xr[i]), mu);
      acc2 = __fmaf_rn(d, d, acc2);
    }
  }
  const float s2 = block_sum_exact(acc2, scratch);
  const float rho = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(s2, n), eps)));

  auto u_at = [&](int64_t i) {
    const float g = gamma != nullptr ? load_f(gamma[i]) : 1.0f;
    return __fmul_rn(__fmul_rn(__fsub_rn(load_f(xr[i]), mu), rho), g);
  };

  // amax over the fp16-rounded v_i, floored at fp16(1e-6).
  float amax = amax_floor;
  if (active) {
    for (int64_t i = t; i < cols; i += stride) {
      const uint16_t v = f2h(u_at(i));
      if (out.normed != nullptr) out.normed[row * cols + i] = v;
      amax = fmaxf(amax, fabsf(h2f(v)));
    }
  }
  amax = block_max(amax, scratch);
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));

  // Codes from the fp32 u_i; the fp16 running sum of the v_i per thread (QServe's fuse_sum).
  __half s = __ushort_as_half(0);
  if (active) {
    for (int64_t i = t; i < cols; i += stride) {
      const float u = u_at(i);
      out.q[row * cols + i] = cvt_rni_sat_s8(__fmul_rn(u, r));
      if (out.sum != nullptr) s = __hadd_rn(s, __float2half_rn(u));
    }
  }
  constexpr float kInv127 = 1.0f / 127.0f;
  if (t == 0) out.scale[row] = f2h(__fmul_rn(amax, kInv127));
  if (out.sum != nullptr) {
    const float total = block_sum_exact(__half2float(s), scratch);
    if (t == 0) out.sum[row] = f2h(total);
  }
}

std::string shape(const char* what, int64_t rows, int64_t cols) {
  return std::string(what) + " rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
}

void check_args(const char* op, int64_t rows, int64_t cols, const NormQuantOut& out) {
  check(rows >= 0 && cols > 0,
        std::string(op) + ": need rows >= 0 and cols > 0, got " + shape("", rows, cols));
  check(rows <= 0x7fffffff,
        std::string(op) + ": too many rows for one grid: " + shape("", rows, cols));
  check(out.q != nullptr && out.scale != nullptr,
        std::string(op) + ": the q and scale outputs are required");
}

// ---- The one-pass vectorized kernel -------------------------------------------------------
//
// Same arithmetic as norm_quant_kernel, element for element and tree for tree. Thread t holds
// columns j * 1024 + 8t + k (chunk j < kChunks, k < 8) of its row in registers: x (after the
// residual add, written back at once), then u. The per-logical-thread partials p[k] are the
// reference's sequential sums over j.
template <typename TX, typename TG, Residual kRes, int kChunks>
__global__ void __launch_bounds__(detail::kVecRowThreads)
    norm_quant_vec_kernel(const TX* __restrict__ x, float* __restrict__ residual,
                          const void* __restrict__ delta, const TG* __restrict__ gamma, float eps,
                          int cols, bool subtract_mean, float amax_floor, NormQuantOut out) {
  constexpr int kV = detail::kVecPerThread;
  // One exchange buffer per reduction, so no barrier is needed before reusing one.
  __shared__ float ex_mean[detail::kWarp], ex_var[detail::kWarp], ex_sum[detail::kWarp];
  __shared__ float ex_max[detail::kVecRowWarps];
  pdl_wait();  // every input (x or the residual, delta) is the previous kernel's output
  pdl_trigger();
  const int t = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols + t * kV;
  const float n = static_cast<float>(cols);
  auto valid = [&](int j) { return j * detail::kVecChunk + t * kV < cols; };

  // All loads first (up to kChunks x 48 bytes in flight per thread), then the residual add.
  float xv[kChunks][kV];
  if constexpr (kRes == Residual::kNone) {
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      if (valid(j)) detail::load8(x + base + j * detail::kVecChunk, xv[j]);
    }
  } else {
    float dv[kChunks][kV];
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      if (valid(j)) {
        detail::load8(residual + base + j * detail::kVecChunk, xv[j]);
        if constexpr (kRes == Residual::kF32Delta) {
          detail::load8(static_cast<const float*>(delta) + base + j * detail::kVecChunk, dv[j]);
        } else {
          detail::load8(static_cast<const uint16_t*>(delta) + base + j * detail::kVecChunk, dv[j]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      if (valid(j)) {
#pragma unroll
        for (int k = 0; k < kV; ++k) xv[j][k] = __fadd_rn(xv[j][k], dv[j][k]);
        detail::store8(residual + base + j * detail::kVecChunk, xv[j]);
      }
    }
  }

  float mu = 0.0f;
  if (subtract_mean) {
    float p[kV] = {};
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      if (valid(j)) {
#pragma unroll
        for (int k = 0; k < kV; ++k) p[k] = __fadd_rn(p[k], xv[j][k]);
      }
    }
    detail::publish_logical_warp_sum(detail::logical_warp_sum8(p), ex_mean);
    __syncthreads();
    mu = __fdiv_rn(detail::logical_block_total(ex_mean), n);
  }
  {
    float p[kV] = {};
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      if (valid(j)) {
#pragma unroll
        for (int k = 0; k < kV; ++k) {
          const float d = __fsub_rn(xv[j][k], mu);
          p[k] = __fmaf_rn(d, d, p[k]);
        }
      }
    }
    detail::publish_logical_warp_sum(detail::logical_warp_sum8(p), ex_var);
  }
  __syncthreads();
  const float s2 = detail::logical_block_total(ex_var);
  const float rho = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(s2, n), eps)));

  // u (fp32, kept for the codes), v = fp16(u) (packed pairs), amax over |v|, and the per-thread
  // fp16 running sums of v (QServe's fuse_sum), two logical threads per __hadd2_rn.
  float amax = amax_floor;
  __half2 hs[kV / 2];
#pragma unroll
  for (int k = 0; k < kV / 2; ++k) hs[k] = __half2half2(__ushort_as_half(0));
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (valid(j)) {
      float g[kV];
      if (gamma != nullptr) {
        detail::load8(gamma + t * kV + j * detail::kVecChunk, g);
      } else {
#pragma unroll
        for (int k = 0; k < kV; ++k) g[k] = 1.0f;
      }
      uint32_t vh[kV / 2];
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        xv[j][k] = __fmul_rn(__fmul_rn(__fsub_rn(xv[j][k], mu), rho), g[k]);
      }
#pragma unroll
      for (int k = 0; k < kV / 2; ++k) {
        vh[k] = detail::f2h2(xv[j][2 * k], xv[j][2 * k + 1]);
        amax = fmaxf(amax, fmaxf(fabsf(detail::h2f_lo(vh[k])), fabsf(detail::h2f_hi(vh[k]))));
        hs[k] = __hadd2_rn(hs[k], *reinterpret_cast<const __half2*>(&vh[k]));
      }
      if (out.normed != nullptr) {
        *reinterpret_cast<uint4*>(out.normed + base + j * detail::kVecChunk) =
            make_uint4(vh[0], vh[1], vh[2], vh[3]);
      }
    }
  }
  // One exchange for amax and the sum: both only depend on values known now.
  {
    const float m = detail::warp_max(amax);
    if (t % detail::kWarp == 0) ex_max[t / detail::kWarp] = m;
    if (out.sum != nullptr) {
      float p[kV];
#pragma unroll
      for (int k = 0; k < kV / 2; ++k) {
        p[2 * k] = __low2float(hs[k]);
        p[2 * k + 1] = __high2float(hs[k]);
      }
      detail::publish_logical_warp_sum(detail::logical_warp_sum8(p), ex_sum);
    }
  }
  __syncthreads();
  detail::vec_row_codes_scale_sum(xv, valid, ex_max, ex_sum, out.q, base, out.scale, out.sum);
}

// ---- The split kernel (small batches) ---------------------------------------------------------
//
// The same arithmetic again, with kS threads per column group: thread t plays column group
// p = t / kS of norm_quant_vec_kernel and holds its chunks j = t % kS + kS * m (m < kM), so a row
// has 128 * kS threads, each with kM <= 2 chunks (one for Llama's 4096 at kS = 4). What this buys
// at small batches: kS times the warps per row, a kS times shorter serial chain per thread, and
// every global load (residual, delta and gamma) issued before any arithmetic; the vec kernel
// loads gamma only after two reductions, one more memory round trip per row.
//
// The reference's per-logical-thread partials are sequential over the chunks, which now lie in kS
// lanes of one warp (t % kS is the low lane bits): every lane of the group walks the chunks in
// order, taking each chunk's values from its owner by shuffles (the adds are the reference's
// adds in the reference's order; the kS lanes compute the same partials). The logical warp of 4
// column groups spans 4 kS lanes (logical_warp_sum8<kS>), the rest is the vec kernel's.
template <typename TX, typename TG, Residual kRes, int kS, int kM>
__global__ void __launch_bounds__(detail::kVecRowThreads* kS)
    norm_quant_split_kernel(const TX* __restrict__ x, float* __restrict__ residual,
                            const void* __restrict__ delta, const TG* __restrict__ gamma, float eps,
                            int cols, bool subtract_mean, float amax_floor, NormQuantOut out) {
  static_assert(kS == 2 || kS == 4 || kS == 8, "kS lanes per column group, 4 groups per warp");
  constexpr int kV = detail::kVecPerThread;
  constexpr int kC = detail::kVecChunk;
  constexpr int kWarps = detail::kVecRowWarps * kS;
  __shared__ float ex_mean[detail::kWarp], ex_var[detail::kWarp], ex_sum[detail::kWarp];
  __shared__ float ex_max[kWarps];
  pdl_wait();  // as norm_quant_vec_kernel
  pdl_trigger();
  const int t = threadIdx.x, phase = t % kS, p = t / kS;
  const int lane = t % detail::kWarp, lane0 = lane - phase;  // the group's first lane
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols + p * kV;
  const float n = static_cast<float>(cols);
  // Chunk j of this column group exists iff its first column is inside the row (cols % 8 == 0);
  // the same for every lane of the group.
  auto exists = [&](int j) { return j * kC + p * kV < cols; };
  auto mine = [&](int m) { return exists(phase + kS * m); };
  auto off = [&](int m) { return (phase + kS * m) * kC; };

  // Every load first: x (or residual and delta) and gamma, up to kM x 80 bytes per thread.
  float xv[kM][kV] = {}, gv[kM][kV] = {};
  [[maybe_unused]] float dv[kM][kV];
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    if (!mine(m)) continue;
    if constexpr (kRes == Residual::kNone) {
      detail::load8(x + base + off(m), xv[m]);
    } else {
      detail::load8(residual + base + off(m), xv[m]);
      if constexpr (kRes == Residual::kF32Delta) {
        detail::load8(static_cast<const float*>(delta) + base + off(m), dv[m]);
      } else {
        detail::load8(static_cast<const uint16_t*>(delta) + base + off(m), dv[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    if (gamma != nullptr && mine(m)) detail::load8(gamma + p * kV + off(m), gv[m]);
  }
  if constexpr (kRes != Residual::kNone) {
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      if (mine(m)) {
#pragma unroll
        for (int k = 0; k < kV; ++k) xv[m][k] = __fadd_rn(xv[m][k], dv[m][k]);
        detail::store8(residual + base + off(m), xv[m]);
      }
    }
  }
  if (gamma == nullptr) {
#pragma unroll
    for (int m = 0; m < kM; ++m) {
#pragma unroll
      for (int k = 0; k < kV; ++k) gv[m][k] = 1.0f;
    }
  }

  // Chunk j = q + kS * m of the group, element k, as seen by every lane of the group.
  auto from = [&](float v, int q) { return __shfl_sync(detail::kFullMask, v, lane0 + q); };

  float mu = 0.0f;
  if (subtract_mean) {
    float acc[kV] = {};
#pragma unroll
    for (int m = 0; m < kM; ++m) {
#pragma unroll
      for (int q = 0; q < kS; ++q) {
        const bool e = exists(q + kS * m);
#pragma unroll
        for (int k = 0; k < kV; ++k) {
          const float v = from(xv[m][k], q);
          if (e) acc[k] = __fadd_rn(acc[k], v);
        }
      }
    }
    const float total = detail::logical_warp_sum8<kS>(acc);
    if (phase == 0 && p % 4 == 0) ex_mean[p / 4] = total;
    __syncthreads();
    mu = __fdiv_rn(detail::logical_block_total(ex_mean), n);
  }
  {
    float acc[kV] = {};
#pragma unroll
    for (int m = 0; m < kM; ++m) {
#pragma unroll
      for (int q = 0; q < kS; ++q) {
        const bool e = exists(q + kS * m);
#pragma unroll
        for (int k = 0; k < kV; ++k) {
          const float d = __fsub_rn(from(xv[m][k], q), mu);
          if (e) acc[k] = __fmaf_rn(d, d, acc[k]);
        }
      }
    }
    const float total = detail::logical_warp_sum8<kS>(acc);
    if (phase == 0 && p % 4 == 0) ex_var[p / 4] = total;
  }
  __syncthreads();
  const float s2 = detail::logical_block_total(ex_var);
  const float rho = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(s2, n), eps)));

  // u (fp32, kept for the codes), v = fp16(u) packed, amax over |v|.
  float amax = amax_floor;
  uint32_t vh[kM][kV / 2];
#pragma unroll
  for (int m = 0; m < kM; ++m) {
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      xv[m][k] = __fmul_rn(__fmul_rn(__fsub_rn(xv[m][k], mu), rho), gv[m][k]);
    }
#pragma unroll
    for (int k = 0; k < kV / 2; ++k) vh[m][k] = detail::f2h2(xv[m][2 * k], xv[m][2 * k + 1]);
    if (mine(m)) {
#pragma unroll
      for (int k = 0; k < kV / 2; ++k) {
        amax = fmaxf(amax, fmaxf(fabsf(detail::h2f_lo(vh[m][k])), fabsf(detail::h2f_hi(vh[m][k]))));
      }
      if (out.normed != nullptr) {
        *reinterpret_cast<uint4*>(out.normed + base + off(m)) =
            make_uint4(vh[m][0], vh[m][1], vh[m][2], vh[m][3]);
      }
    }
  }
  {
    const float mx = detail::warp_max(amax);
    if (lane == 0) ex_max[t / detail::kWarp] = mx;
    if (out.sum != nullptr) {
      // The fp16 running sums of v per logical thread (QServe's fuse_sum), in chunk order, two
      // logical threads per __hadd2_rn.
      __half2 hs[kV / 2];
#pragma unroll
      for (int k = 0; k < kV / 2; ++k) hs[k] = __half2half2(__ushort_as_half(0));
#pragma unroll
      for (int m = 0; m < kM; ++m) {
#pragma unroll
        for (int q = 0; q < kS; ++q) {
          const bool e = exists(q + kS * m);
#pragma unroll
          for (int k = 0; k < kV / 2; ++k) {
            const uint32_t w = __shfl_sync(detail::kFullMask, vh[m][k], lane0 + q);
            if (e) hs[k] = __hadd2_rn(hs[k], *reinterpret_cast<const __half2*>(&w));
          }
        }
      }
      float ps[kV];
#pragma unroll
      for (int k = 0; k < kV / 2; ++k) {
        ps[2 * k] = __low2float(hs[k]);
        ps[2 * k + 1] = __high2float(hs[k]);
      }
      const float total = detail::logical_warp_sum8<kS>(ps);
      if (phase == 0 && p % 4 == 0) ex_sum[p / 4] = total;
    }
  }
  __syncthreads();
  amax = ex_max[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) amax = fmaxf(amax, ex_max[w]);
  const float r = __fmul_rn(127.0f, __fdiv_rn(1.0f, amax));
#pragma unroll
  for (int m = 0; m < kM; ++m) {
    if (mine(m)) detail::store_codes8(out.q + base + off(m), xv[m], r);
  }
  if (t < detail::kWarp) {
    constexpr float kInv127 = 1.0f / 127.0f;
    const float total = out.sum != nullptr ? detail::logical_block_total(ex_sum) : 0.0f;
    if (t == 0) {
      out.scale[blockIdx.x] = f2h(__fmul_rn(amax, kInv127));
      if (out.sum != nullptr) out.sum[blockIdx.x] = f2h(total);
    }
  }
}

template <typename TX, typename TG, Residual kRes, int kChunks>
void launch_vec(const TX* x, float* residual, const void* delta, const TG* gamma, float eps,
                int64_t rows, int64_t cols, bool subtract_mean, float amax_floor,
                const NormQuantOut& out, cudaStream_t stream) {
  cuda_check(
      launch_pdl(norm_quant_vec_kernel<TX, TG, kRes, kChunks>, dim3(static_cast<unsigned>(rows)),
                 dim3(detail::kVecRowThreads), 0, stream, x, residual, delta, gamma, eps,
                 static_cast<int>(cols), subtract_mean, amax_floor, out),
      "norm_quant (vec)", shape("", rows, cols));
}

// Whether the vectorized kernel applies: the logical block is exactly 1024 threads, rows split
// into whole 8-column groups, at most 8 chunks per thread in registers, and every pointer the
// kernel touches with 8- or 16-byte accesses aligned for them (rows are then aligned too).
bool vec_applies(const void* x, const void* delta, const void* gamma, int64_t cols,
                 const NormQuantOut& out) {
  using detail::aligned_to;
  return cols >= detail::kVecChunk && cols % detail::kVecPerThread == 0 &&
         cols <= 8 * detail::kVecChunk && aligned_to(x, 16) && aligned_to(delta, 16) &&
         aligned_to(gamma, 16) && aligned_to(out.q, 8) && aligned_to(out.normed, 16);
}

template <typename TX, typename TG, Residual kRes, int kS, int kM>
void launch_split(const TX* x, float* residual, const void* delta, const TG* gamma, float eps,
                  int64_t rows, int64_t cols, bool subtract_mean, float amax_floor,
                  const NormQuantOut& out, cudaStream_t stream) {
  cuda_check(
      launch_pdl(norm_quant_split_kernel<TX, TG, kRes, kS, kM>, dim3(static_cast<unsigned>(rows)),
                 dim3(detail::kVecRowThreads * kS), 0, stream, x, residual, delta, gamma, eps,
                 static_cast<int>(cols), subtract_mean, amax_floor, out),
      "norm_quant (split)", shape("", rows, cols));
}

// Which kernel runs: the dispatch (kAuto), or one forced (bench_fused and the parity tests; a
// forced kernel that does not apply to the shape falls back to the dispatch's choice among the
// older ones, so the bits are the same either way).
enum class NormPath { kAuto, kPrev, kBaseline, kSplit2, kSplit4 };

// Split kernels by rows per SM: up to 12 rows per SM 2 threads per column group (256-thread
// blocks), beyond that the vec kernel, whose 128-thread rows pack more rows per SM. Measured on
// the H200 (bench_fused, 2026-11-30, hidden 4096): 256 tokens 7.2 us (split 2) / 8.4 (split 4) /
// 8.4 (vec); 1024: 15.4 / 20.8 / 17.5; 4096: 57.8 / 71.7 / 54.8. Four threads per group never
// won, so the dispatch takes it only where a row has more than 4 chunks (two per thread).
inline constexpr int64_t kNormSplit2RowsPerSm = 12;

template <typename TX, typename TG, Residual kRes>
void launch_norm_quant(const char* op, const TX* x, float* residual, const void* delta,
                       const TG* gamma, float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                       const NormQuantOut& out, cudaStream_t stream,
                       NormPath path = NormPath::kAuto) {
  check_args(op, rows, cols, out);
  if (rows == 0) return;
  const float amax_floor = fp16_to_float(float_to_fp16(1e-6f));
  const bool subtract_mean = kind == quant::NormKind::kQServeLayerNorm;
  const void* in = kRes == Residual::kNone ? static_cast<const void*>(x) : residual;
  const bool vec = path != NormPath::kBaseline && vec_applies(in, delta, gamma, cols, out);
  const int64_t chunks = (cols + detail::kVecChunk - 1) / detail::kVecChunk;
  int split = 1;
  if (vec && chunks >= 2) {
    if (path == NormPath::kAuto) {
      const int64_t sms = current_device_sm_count();
      split = rows <= kNormSplit2RowsPerSm * sms ? 2 : 1;
    } else if (path == NormPath::kSplit2) {
      split = 2;
    } else if (path == NormPath::kSplit4) {
      split = 4;
    }
  }
  // The split kernels hold at most 2 chunks per thread.
  if (split == 2 && chunks > 4) split = 4;
  if (split == 4) {
    if (chunks <= 4) {
      launch_split<TX, TG, kRes, 4, 1>(x, residual, delta, gamma, eps, rows, cols, subtract_mean,
                                       amax_floor, out, stream);
    } else {
      launch_split<TX, TG, kRes, 4, 2>(x, residual, delta, gamma, eps, rows, cols, subtract_mean,
                                       amax_floor, out, stream);
    }
  } else if (split == 2) {
    if (chunks <= 2) {
      launch_split<TX, TG, kRes, 2, 1>(x, residual, delta, gamma, eps, rows, cols, subtract_mean,
                                       amax_floor, out, stream);
    } else {
      launch_split<TX, TG, kRes, 2, 2>(x, residual, delta, gamma, eps, rows, cols, subtract_mean,
                                       amax_floor, out, stream);
    }
  } else if (vec) {
    if (cols <= 4 * detail::kVecChunk) {
      launch_vec<TX, TG, kRes, 4>(x, residual, delta, gamma, eps, rows, cols, subtract_mean,
                                  amax_floor, out, stream);
    } else {
      launch_vec<TX, TG, kRes, 8>(x, residual, delta, gamma, eps, rows, cols, subtract_mean,
                                  amax_floor, out, stream);
    }
  } else {
    const int64_t stride = quant::norm_quant_block_dim(cols);
    norm_quant_kernel<TX, TG, kRes>
        <<<static_cast<unsigned>(rows), detail::threads_for(stride), 0, stream>>>(
            x, residual, delta, gamma, eps, cols, static_cast<int>(stride), subtract_mean,
            amax_floor, out);
  }
  check_launch(op, shape("", rows, cols));
}

// ---- fp32 RMSNorm (HF order: x * (1/sqrt(mean(x^2) + eps)), then * w) ----

template <bool kResidual>
__global__ void rms_norm_kernel(const float* __restrict__ x, float* __restrict__ residual,
                                const float* __restrict__ delta, const float* __restrict__ w,
                                float eps, int64_t dim, float* out) {
  __shared__ float scratch[detail::kWarp + 1];
  const int64_t row = blockIdx.x;
  const float* xr;
  if constexpr (kResidual) {
    float* rr = residual + row * dim;
    const float* dr = delta + row * dim;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) rr[i] = __fadd_rn(rr[i], dr[i]);
    xr = rr;
  } else {
    xr = x + row * dim;
  }
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) acc = __fmaf_rn(xr[i], xr[i], acc);
  const float ss = block_sum_exact(acc, scratch);
  const float inv =
      __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(dim)), eps)));
  // `out` may alias x (not residual mode): each element is read by the thread that writes it,
  // and every read of the sum-of-squares pass happened before the block reduction's barrier.
  float* yr = out + row * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = __fmul_rn(__fmul_rn(xr[i], inv), w[i]);
  }
}

template <bool kResidual>
void launch_rms_norm(const char* op, const float* x, float* residual, const float* delta,
                     const float* w, float eps, int64_t rows, int64_t dim, float* out,
                     cudaStream_t stream) {
  check(rows >= 0 && dim > 0 && rows <= 0x7fffffff,
        std::string(op) + ": bad shape " + shape("", rows, dim));
  check(w != nullptr && out != nullptr, std::string(op) + ": w and out are required");
  if (rows == 0) return;
  const int threads = detail::threads_for(std::min<int64_t>(dim, 1024));
  rms_norm_kernel<kResidual>
      <<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, residual, delta, w, eps, dim, out);
  check_launch(op, shape("", rows, dim));
}

}  // namespace

void norm_quant_f32(const float* x, const float* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream) {
  launch_norm_quant<float, float, Residual::kNone>("norm_quant_f32", x, nullptr, nullptr, gamma,
                                                   eps, rows, cols, kind, out, stream);
}

void norm_quant_f16(const uint16_t* x, const uint16_t* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream) {
  launch_norm_quant<uint16_t, uint16_t, Residual::kNone>("norm_quant_f16", x, nullptr, nullptr,
                                                         gamma, eps, rows, cols, kind, out, stream);
}

void add_residual_norm_quant_f32(float* residual, const float* delta, const float* gamma, float eps,
                                 int64_t rows, int64_t cols, quant::NormKind kind,
                                 const NormQuantOut& out, cudaStream_t stream) {
  launch_norm_quant<float, float, Residual::kF32Delta>("add_residual_norm_quant_f32", nullptr,
                                                       residual, delta, gamma, eps, rows, cols,
                                                       kind, out, stream);
}

void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream) {
  launch_norm_quant<float, float, Residual::kF16Delta>("add_residual_norm_quant_f16delta", nullptr,
                                                       residual, delta, gamma, eps, rows, cols,
                                                       kind, out, stream);
}

namespace baseline {

void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream) {
  launch_norm_quant<float, float, Residual::kF16Delta>(
      "baseline::add_residual_norm_quant_f16delta", nullptr, residual, delta, gamma, eps, rows,
      cols, kind, out, stream, NormPath::kBaseline);
}

}  // namespace baseline

namespace prev {

void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream) {
  launch_norm_quant<float, float, Residual::kF16Delta>("prev::add_residual_norm_quant_f16delta",
                                                       nullptr, residual, delta, gamma, eps, rows,
                                                       cols, kind, out, stream, NormPath::kPrev);
}

}  // namespace prev

namespace forced {

void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream, int split) {
  check(split == 2 || split == 4,
        "forced::add_residual_norm_quant_f16delta: split must be 2 or 4, got " +
            std::to_string(split));
  launch_norm_quant<float, float, Residual::kF16Delta>(
      "forced::add_residual_norm_quant_f16delta", nullptr, residual, delta, gamma, eps, rows, cols,
      kind, out, stream, split == 2 ? NormPath::kSplit2 : NormPath::kSplit4);
}

void norm_quant_f32(const float* x, const float* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream, int split) {
  check(split == 2 || split == 4,
        "forced::norm_quant_f32: split must be 2 or 4, got " + std::to_string(split));
  launch_norm_quant<float, float, Residual::kNone>(
      "forced::norm_quant_f32", x, nullptr, nullptr, gamma, eps, rows, cols, kind, out, stream,
      split == 2 ? NormPath::kSplit2 : NormPath::kSplit4);
}

void norm_quant_f16(const uint16_t* x, const uint16_t* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream, int split) {
  check(split == 2 || split == 4,
        "forced::norm_quant_f16: split must be 2 or 4, got " + std::to_string(split));
  launch_norm_quant<uint16_t, uint16_t, Residual::kNone>(
      "forced::norm_quant_f16", x, nullptr, nullptr, gamma, eps, rows, cols, kind, out, stream,
      split == 2 ? NormPath::kSplit2 : NormPath::kSplit4);
}

}  // namespace forced

void rms_norm_f32(const float* x, const float* w, float eps, int64_t rows, int64_t dim, float* out,
                  cudaStream_t stream) {
  launch_rms_norm<false>("rms_norm_f32", x, nullptr, nullptr, w, eps, rows, dim, out, stream);
}

void add_residual_rms_norm_f32(float* residual, const float* delta, const float* w, float eps,
                               int64_t rows, int64_t dim, float* out, cudaStream_t stream) {
  check(out != residual, "add_residual_rms_norm_f32: out must not alias residual");
  launch_rms_norm<true>("add_residual_rms_norm_f32", nullptr, residual, delta, w, eps, rows, dim,
                        out, stream);
}

}  // namespace qserve::cuda
