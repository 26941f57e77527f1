// Per-token symmetric int8 quantization of fp32/fp16 activations, bit-exact with
// quant::quantize_per_token (quant/act_quant.h).
//
// One block per row; the logical block is QServe's B = min(cols, 1024) (quant_block_dim), the
// launch rounds it up to whole warps and the extra threads own nothing (they contribute the 0
// the CPU emulation pads with). The device function quantize_row_block is shared with the fused
// SiLU·mul + quant kernel (silu_mul_quant.cu) through act_quant_device.cuh.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/act_quant_device.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.h"
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

template <typename T>
void launch(const char* op, const T* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
            uint16_t* sum, cudaStream_t stream) {
  const std::string shape = "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
  check(rows >= 0 && cols > 0 && rows <= 0x7fffffff, std::string(op) + ": bad shape " + shape);
  check(q != nullptr && scale != nullptr, std::string(op) + ": q and scale are required");
  if (rows == 0) return;
  const int64_t stride = quant::quant_block_dim(cols);
  quantize_per_token_kernel<T>
      <<<static_cast<unsigned>(rows), detail::threads_for(stride), 0, stream>>>(
          x, cols, static_cast<int>(stride), q, scale, sum);
  check_launch(op, shape);
}

}  // namespace

void quantize_per_token_f32(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                            uint16_t* sum, cudaStream_t stream) {
  launch("quantize_per_token_f32", x, rows, cols, q, scale, sum, stream);
}

void quantize_per_token_f16(const uint16_t* x, int64_t rows, int64_t cols, int8_t* q,
                            uint16_t* scale, uint16_t* sum, cudaStream_t stream) {
  launch("quantize_per_token_f16", x, rows, cols, q, scale, sum, stream);
}

}  // namespace qserve::cuda
