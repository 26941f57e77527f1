// Per-token symmetric int8 quantization of fp32/fp16 activations, bit-exact with
// quant::quantize_per_token (quant/act_quant.h).
//
// Two kernels compute the same bits:
//  - quantize_per_token_vec_kernel (1024 <= cols <= 8192, cols % 8 == 0, aligned rows: the
//    attention output before the o projection at every Llama width): one 128-thread block per
//    row, one pass over memory. Physical thread p plays the reference's logical threads
//    8p .. 8p+7 (quant_device.cuh, "Vectorized rows"): its 8 consecutive columns of each
//    1024-column chunk with 16-byte loads, the row in registers, codes stored 8 bytes at a time,
//    amax and the sum exchanged once. Why: the engine quantizes the fp32 attention output of
//    every layer with it, and the scalar kernel below reached 1.2 TB/s at 512 decode tokens
//    (9.0 us for 10.5 MB, the replayed step's kernel table, bench_graph_idle --kernels).
//  - quantize_per_token_kernel (any shape; baseline:: for bench_fused and the parity tests): one
//    block per row; the logical block is QServe's B = min(cols, 1024) (quant_block_dim), the
//    launch rounds it up to whole warps and the extra threads own nothing (they contribute the 0
//    the CPU emulation pads with); two passes over the row, 4-byte loads, 1-byte stores. Its
//    device function quantize_row_block is shared with the fused SiLU·mul + quant kernel
//    (silu_mul_quant.cu) through act_quant_device.cuh.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/act_quant_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/fused_baseline.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/pdl.h"
#include "backend/cuda/pdl_device.cuh"
#include "backend/cuda/quant_device.cuh"
#include "quant/block_reduce.h"

namespace qserve::cuda {

namespace {

template <typename T>
__global__ void quantize_per_token_kernel(const T* __restrict__ x, int64_t cols, int stride,
                                          int8_t* __restrict__ q, uint16_t* __restrict__ scale,
                                          uint16_t* __restrict__ sum) {
  __shared__ float scratch[detail::kWarp + 1];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  detail::quantize_row_block([xr](int64_t i) { return detail::load_f(xr[i]); }, cols, stride,
                             q + row * cols, scale + row, sum != nullptr ? sum + row : nullptr,
                             scratch);
}

// The same arithmetic as quantize_row_block, element for element and tree for tree: thread t
// holds columns j * 1024 + 8t + k (chunk j < kChunks, k < 8); its 8 logical per-thread sums p[k]
// are the reference's sequential sums over j; amax is a max (order-free, NaN dropped by fmaxf
// as there).
template <typename T, int kChunks>
__global__ void __launch_bounds__(detail::kVecRowThreads)
    quantize_per_token_vec_kernel(const T* __restrict__ x, int cols, int8_t* __restrict__ q,
                                  uint16_t* __restrict__ scale, uint16_t* __restrict__ sum) {
  constexpr int kV = detail::kVecPerThread;
  __shared__ float ex_max[detail::kVecRowWarps], ex_sum[detail::kWarp];
  pdl_wait();  // x is the previous kernel's output (pdl.h)
  pdl_trigger();
  const int t = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * cols + t * kV;
  auto valid = [&](int j) { return j * detail::kVecChunk + t * kV < cols; };

  float xv[kChunks][kV];
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (valid(j)) detail::load8(x + base + j * detail::kVecChunk, xv[j]);
  }
  float amax = 0.0f;
  float p[kV] = {};
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (valid(j)) {
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        amax = fmaxf(amax, fabsf(xv[j][k]));
        p[k] = __fadd_rn(p[k], xv[j][k]);
      }
    }
  }
  const float m = detail::warp_max(amax);
  if (t % detail::kWarp == 0) ex_max[t / detail::kWarp] = m;
  if (sum != nullptr) detail::publish_logical_warp_sum(detail::logical_warp_sum8(p), ex_sum);
  __syncthreads();
  detail::vec_row_codes_scale_sum(xv, valid, ex_max, ex_sum, q, base, scale, sum);
}

// The vec kernel's shapes: the logical block is exactly 1024 threads (cols >= 1024), whole
// 8-column groups, at most 8 chunks in registers, 16-byte rows of x and 8-byte rows of q.
template <typename T>
bool vec_applies(const T* x, int64_t cols, const int8_t* q) {
  return cols >= detail::kVecChunk && cols % detail::kVecPerThread == 0 &&
         cols <= 8 * detail::kVecChunk && detail::aligned_to(x, 16) && detail::aligned_to(q, 8);
}

template <typename T, int kChunks>
void launch_vec(const T* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale, uint16_t* sum,
                cudaStream_t stream) {
  cuda_check(
      launch_pdl(quantize_per_token_vec_kernel<T, kChunks>, dim3(static_cast<unsigned>(rows)),
                 dim3(detail::kVecRowThreads), 0, stream, x, static_cast<int>(cols), q, scale, sum),
      "quantize_per_token (vec)");
}

template <typename T>
void launch(const char* op, const T* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
            uint16_t* sum, cudaStream_t stream, bool allow_vec) {
  const std::string shape = "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
  check(rows >= 0 && cols > 0 && rows <= 0x7fffffff, std::string(op) + ": bad shape " + shape);
  check(q != nullptr && scale != nullptr, std::string(op) + ": q and scale are required");
  if (rows == 0) return;
  if (allow_vec && vec_applies(x, cols, q)) {
    using Launch =
        void (*)(const T*, int64_t, int64_t, int8_t*, uint16_t*, uint16_t*, cudaStream_t);
    static constexpr Launch kByChunks[8] = {&launch_vec<T, 1>, &launch_vec<T, 2>, &launch_vec<T, 3>,
                                            &launch_vec<T, 4>, &launch_vec<T, 5>, &launch_vec<T, 6>,
                                            &launch_vec<T, 7>, &launch_vec<T, 8>};
    kByChunks[(cols + detail::kVecChunk - 1) / detail::kVecChunk - 1](x, rows, cols, q, scale, sum,
                                                                      stream);
  } else {
    const int64_t stride = quant::quant_block_dim(cols);
    quantize_per_token_kernel<T>
        <<<static_cast<unsigned>(rows), detail::threads_for(stride), 0, stream>>>(
            x, cols, static_cast<int>(stride), q, scale, sum);
  }
  check_launch(op, shape);
}

}  // namespace

void quantize_per_token_f32(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                            uint16_t* sum, cudaStream_t stream) {
  launch("quantize_per_token_f32", x, rows, cols, q, scale, sum, stream, true);
}

void quantize_per_token_f16(const uint16_t* x, int64_t rows, int64_t cols, int8_t* q,
                            uint16_t* scale, uint16_t* sum, cudaStream_t stream) {
  launch("quantize_per_token_f16", x, rows, cols, q, scale, sum, stream, true);
}

namespace baseline {

void quantize_per_token_f32(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                            uint16_t* sum, cudaStream_t stream) {
  launch("baseline::quantize_per_token_f32", x, rows, cols, q, scale, sum, stream, false);
}

void quantize_per_token_f16(const uint16_t* x, int64_t rows, int64_t cols, int8_t* q,
                            uint16_t* scale, uint16_t* sum, cudaStream_t stream) {
  launch("baseline::quantize_per_token_f16", x, rows, cols, q, scale, sum, stream, false);
}

}  // namespace baseline

}  // namespace qserve::cuda
