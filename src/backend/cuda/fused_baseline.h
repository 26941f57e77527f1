// The previous kernels of the fused memory-bound ops, still callable: bench_fused times them
// beside the current ones in the same run (so one GPU run shows old and new side by side), and
// the parity tests check the current kernels against them bit for bit. Same arguments and
// contracts as the functions of the same name in ops_cuda.h / ops_cuda_attention.h; they always
// take the old code path, whatever the shape. Not for the engine.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/ops_cuda_attention.h"

namespace qserve::cuda::baseline {

// norm_quant.cu: one block of min(cols, 1024) threads per row, every pass re-reading the row.
void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream);

// silu_mul_quant.cu: one block of min(inter, 1024) threads per row, scalar loads, the exp of
// every element in double precision.
void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream);
void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream);
// The standalone fp16 SiLU·mul with the double-precision exp of every element.
void silu_mul_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                  cudaStream_t stream);

// rope_kv.cu: one 128-thread block per token, scalar loads and stores.
void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream);
void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream);

}  // namespace qserve::cuda::baseline
