// SiLU(gate) * up, alone (fp16 or fp32 output) or fused with per-token int8 quantization
// (quant/silu_mul_quant.h; cpu::silu_mul for the fp32 W16A16 path).
//
// The fp16 variants follow the reference step by step with correctly rounded operations:
//   silu = fp16_RN(g / (1 + exp(-g))),  out = fp16_RN(float(silu) * up).
// exp(-g) is computed in double and rounded once to fp32, i.e. (almost always) the correctly
// rounded expf, which is what glibc's expf returns except within 0.002 ulp of a midpoint; see
// ops_cuda.h for the resulting tolerance. Slow (fp64), but this is the correctness pass.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "backend/cuda/act_quant_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/quant_device.cuh"
#include "quant/block_reduce.h"

namespace qserve::cuda {

namespace {

using detail::f2h;
using detail::h2f;
using detail::load_f;

__device__ __forceinline__ float exp_f32_rn(float x) {
  return __double2float_rn(exp(static_cast<double>(x)));
}

// fp16 SiLU·mul of one element (the reference's two fp16 roundings).
__device__ __forceinline__ uint16_t silu_mul_f16_elem(float g, float up) {
  const float silu = h2f(f2h(__fdiv_rn(g, __fadd_rn(1.0f, exp_f32_rn(-g)))));
  return f2h(__fmul_rn(silu, up));
}

template <typename T>
__global__ void silu_mul_f16_kernel(const T* __restrict__ gate_up, int64_t inter,
                                    uint16_t* __restrict__ out) {
  const int64_t row = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inter) return;
  const T* g = gate_up + row * 2 * inter;
  out[row * inter + i] = silu_mul_f16_elem(load_f(g[i]), load_f(g[inter + i]));
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
template <typename T>
__global__ void silu_mul_quant_kernel(const T* __restrict__ gate_up, int64_t inter, int stride,
                                      int8_t* __restrict__ q, uint16_t* __restrict__ scale,
                                      uint16_t* __restrict__ sum, uint16_t* __restrict__ out) {
  __shared__ float scratch[detail::kWarp + 1];
  const int64_t row = blockIdx.x;
  const T* g = gate_up + row * 2 * inter;
  if (out != nullptr && threadIdx.x < static_cast<unsigned>(stride)) {
    for (int64_t i = threadIdx.x; i < inter; i += stride) {
      out[row * inter + i] = silu_mul_f16_elem(load_f(g[i]), load_f(g[inter + i]));
    }
  }
  detail::quantize_row_block(
      [g, inter](int64_t i) { return h2f(silu_mul_f16_elem(load_f(g[i]), load_f(g[inter + i]))); },
      inter, stride, q + row * inter, scale + row, sum != nullptr ? sum + row : nullptr, scratch);
}

// The same result in one pass over memory: each thread computes the fp16 SiLU·mul of its
// elements once (i = t + j * stride, quantize_row_block's mapping and order) and keeps them in
// registers for the max, the codes and the sequential per-thread sums, so q/scale/sum are
// bit-identical to silu_mul_quant_kernel's; the slow part there is recomputing the double exp in
// every pass. Rows of up to kMaxPerThread * stride elements (Llama-3-8B: 14336 = 14 x 1024).
constexpr int kMaxPerThread = 16;

template <typename T>
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
      const uint16_t h = silu_mul_f16_elem(load_f(g[i]), load_f(g[inter + i]));
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

template <typename T>
void silu_mul_f16_impl(const char* op, const T* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                       cudaStream_t stream) {
  check_shape(op, rows, inter);
  launch_elementwise(op, rows, inter, [&](int64_t r0, dim3 grid) {
    silu_mul_f16_kernel<T>
        <<<grid, 256, 0, stream>>>(gate_up + r0 * 2 * inter, inter, out + r0 * inter);
  });
}

template <typename T>
void silu_mul_quant_impl(const char* op, const T* gate_up, int64_t rows, int64_t inter, int8_t* q,
                         uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream) {
  check_shape(op, rows, inter);
  check(rows <= 0x7fffffff, std::string(op) + ": too many rows");
  check(q != nullptr && scale != nullptr, std::string(op) + ": q and scale are required");
  if (rows == 0) return;
  const int64_t stride = quant::quant_block_dim(inter);
  if (inter <= kMaxPerThread * stride) {
    silu_mul_quant_reg_kernel<T>
        <<<static_cast<unsigned>(rows), detail::threads_for(stride), 0, stream>>>(
            gate_up, inter, static_cast<int>(stride), q, scale, sum, out);
  } else {
    silu_mul_quant_kernel<T>
        <<<static_cast<unsigned>(rows), detail::threads_for(stride), 0, stream>>>(
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
