// Fused (residual add +) norm + per-token int8 quantization, bit-exact with
// quant::norm_quantize_per_token (quant/norm_quant.h), and the plain fp32 RMSNorm of the W16A16
// path (cpu::rms_norm, within rounding).
//
// One block per row. The block's logical size is QServe's B = norm_quant_block_dim(cols); thread
// t owns elements t, t+B, t+2B, ... exactly like the CPU emulation, so every per-thread partial
// and every tree reduction matches it. Intermediate values (u_i) are recomputed in each pass
// from x instead of being kept in shared memory: it is the same deterministic expression, and
// it keeps any hidden size launchable. Speed is a later issue.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.h"
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

template <typename TX, typename TG, Residual kRes>
void launch_norm_quant(const char* op, const TX* x, float* residual, const void* delta,
                       const TG* gamma, float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                       const NormQuantOut& out, cudaStream_t stream) {
  check_args(op, rows, cols, out);
  if (rows == 0) return;
  const int64_t stride = quant::norm_quant_block_dim(cols);
  const float amax_floor = fp16_to_float(float_to_fp16(1e-6f));
  norm_quant_kernel<TX, TG, kRes>
      <<<static_cast<unsigned>(rows), detail::threads_for(stride), 0, stream>>>(
          x, residual, delta, gamma, eps, cols, static_cast<int>(stride),
          kind == quant::NormKind::kQServeLayerNorm, amax_floor, out);
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
