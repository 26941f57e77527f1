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

// act_quant.cu: one block of min(cols, 1024) threads per row, two passes, scalar accesses.
void quantize_per_token_f32(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                            uint16_t* sum, cudaStream_t stream);
void quantize_per_token_f16(const uint16_t* x, int64_t rows, int64_t cols, int8_t* q,
                            uint16_t* scale, uint16_t* sum, cudaStream_t stream);

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

// The kernels that were current before the small-batch variants (2026-11-30): the one-pass
// vectorized norm + quant with one 128-thread block per row and the SiLU·mul + quant vec kernel.
// bench_fused times them as "<kernel>_prev" beside
// the current dispatch; the parity tests compare both with the baselines.
namespace qserve::cuda::prev {

void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream);
void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream);
void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream);
// RoPE + KV append: the vectorized kernel before 2026-11-30 (fifth session) (rope_kv_vec_kernel
// with its dispatch).
void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream);
void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream);
}  // namespace qserve::cuda::prev

// The small-batch variants forced at any batch size, for bench_fused (which times each at every
// size, so one run shows where the dispatch thresholds belong) and the parity tests (which check
// each bit for bit at shapes the dispatch would not give it). Same contracts as ops_cuda.h; a
// shape the variant does not take runs the dispatch's choice among the older kernels.
namespace qserve::cuda::forced {

// split: threads per column group of norm_quant_split_kernel, 2 or 4.
void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream, int split);
void norm_quant_f32(const float* x, const float* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream, int split);
void norm_quant_f16(const uint16_t* x, const uint16_t* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream, int split);
// split: threads per column group of silu_mul_quant_v2_kernel, 1, 2 or 4. 1 only with a sum (one
// thread per column group; without a sum split 1 runs the dispatch's choice). The dispatch takes
// 4 without the sum; with it, 4 up to 2 rows per SM (4 until the seventh session) and
// SiluForm::kCols4 above (split 1 there until 2026-11-30, sixth session: forced split 1 is that
// previous with-sum kernel).
void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        int split);
void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        int split);
// kCols4 = silu_mul_quant_cols4_kernel (2026-11-30, sixth session), with and without the sum, at
// every size: each thread owns 4 columns of every 1024-column chunk (256 threads per row, the
// values and the sum in registers, no shared-memory staging), fp16 and fp32 inputs. The
// dispatch's with-sum kernel above 2 rows per SM; without the sum the dispatch keeps split 4.
enum class SiluForm { kCols4 };
void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        SiluForm form);
void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream,
                        SiluForm form);
// task_blocks: the launch form of rope_kv_v2_kernel, at every batch size: 1 = a token's task
// blocks (128 tasks of 8 rotation pairs) spread over blocks, 3 = up to 3 task blocks per block
// (one block per Llama token), 0 = the dispatch's choice by batch size. table: as
// rope_kv_append's (the step's RoPE table, or nullptr); it serves the spread form only.
void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream, int task_blocks,
                        const RopeTableDevice* table = nullptr);
void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream, int task_blocks, const RopeTableDevice* table = nullptr);

}  // namespace qserve::cuda::forced
