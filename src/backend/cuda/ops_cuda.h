// Host API of the CUDA kernels for norms, activation quantization and the GEMMs (the attention,
// RoPE, KV and sampling kernels are in ops_cuda_attention.h). First, correct implementations:
// each op reproduces its CPU reference (src/quant/*, src/backend/cpu) and the parity harness
// (tests/parity) checks that; speed comes later.
//
// Conventions (as in backend/ops.h and src/quant):
//  - All pointers are device pointers; shapes are int64_t; every call is asynchronous on
//    `stream` (nullptr = the legacy default stream) and throws qserve::Error naming the op and
//    shape when the launch fails or an argument is invalid. rows == 0 / m == 0 is a no-op.
//  - Activations are row-major [rows, cols]; linear weights are HF layout [N, K] row-major.
//  - fp16 and bf16 values travel as uint16_t bit patterns (IEEE binary16 / bfloat16).
//  - "Bit-exact" below means: identical bits to the CPU reference on the same inputs. Those
//    kernels use only correctly rounded operations (__fadd_rn/__fmul_rn/__fmaf_rn, IEEE
//    division and sqrt, __float2half_rn) in the reference's order, and reproduce its block
//    reductions (quant/block_reduce.h) lane for lane, so nothing is left to tolerance.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/device_buffer.h"
#include "quant/norm_quant.h"
#include "quant/weights.h"

namespace qserve::cuda {

// ---------------------------------------------------------------------------------------------
// Fused norm + per-token int8 quantization (norm_quant.cu), quant/norm_quant.h
// ---------------------------------------------------------------------------------------------

// Outputs of the fused norm + quant ops: q int8 [rows, cols] and scale fp16 [rows] required;
// sum fp16 [rows] (per-channel W4A8 only) and normed fp16 [rows, cols] (the v_i) optional.
struct NormQuantOut {
  int8_t* q = nullptr;
  uint16_t* scale = nullptr;
  uint16_t* sum = nullptr;
  uint16_t* normed = nullptr;
};

// quant::norm_quantize_per_token on the GPU, kind = kRmsNorm (true RMSNorm) or
// kQServeLayerNorm (QServe's mean-subtracting norm). x: [rows, cols]; gamma: [cols] or null
// (all ones). Bit-exact vs the CPU reference (q, scale, sum, normed).
void norm_quant_f32(const float* x, const float* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream);
void norm_quant_f16(const uint16_t* x, const uint16_t* gamma, float eps, int64_t rows, int64_t cols,
                    quant::NormKind kind, const NormQuantOut& out, cudaStream_t stream);

// The residual step of the forward fused with the next norm + quant:
//   residual[r, i] = residual[r, i] + delta[r, i]      (one fp32 add, written back in place)
//   then norm_quant_f32 of the updated residual.
// delta is fp32 (_f32) or fp16 (_f16delta: a quantized GEMM's output, converted exactly), as the
// CPU forward does `x[i] += proj[i]` then quant::norm_quantize_per_token. Bit-exact.
void add_residual_norm_quant_f32(float* residual, const float* delta, const float* gamma, float eps,
                                 int64_t rows, int64_t cols, quant::NormKind kind,
                                 const NormQuantOut& out, cudaStream_t stream);
void add_residual_norm_quant_f16delta(float* residual, const uint16_t* delta, const float* gamma,
                                      float eps, int64_t rows, int64_t cols, quant::NormKind kind,
                                      const NormQuantOut& out, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// fp32 RMSNorm (norm_quant.cu), cpu::rms_norm: the W16A16 path and the final norm.
// ---------------------------------------------------------------------------------------------

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w, fp32; out may alias x. The sum of
// squares is a block tree reduction, not the CPU's 8-way interleaved sum, so results differ by
// rounding only: tolerance |d| <= 1e-5 * |ref| + 1e-6 * rms-normalised magnitude (in the test:
// abs 2e-6 * max|w|, rel 1e-5).
void rms_norm_f32(const float* x, const float* w, float eps, int64_t rows, int64_t dim, float* out,
                  cudaStream_t stream);
// residual += delta (fp32, in place, exact), then out = rms_norm(residual). out must not alias
// residual.
void add_residual_rms_norm_f32(float* residual, const float* delta, const float* w, float eps,
                               int64_t rows, int64_t dim, float* out, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Per-token int8 activation quantization (act_quant.cu), quant/act_quant.h
// ---------------------------------------------------------------------------------------------

// x: [rows, cols] fp32 (used as given) or fp16. q: int8 [rows, cols]; scale: fp16 [rows];
// sum: fp16 [rows] or null. Bit-exact vs quant::quantize_per_token.
void quantize_per_token_f32(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scale,
                            uint16_t* sum, cudaStream_t stream);
void quantize_per_token_f16(const uint16_t* x, int64_t rows, int64_t cols, int8_t* q,
                            uint16_t* scale, uint16_t* sum, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// SiLU(gate) * up [+ quant] (silu_mul_quant.cu), quant/silu_mul_quant.h and cpu::silu_mul
// ---------------------------------------------------------------------------------------------

// gate_up: [rows, 2*inter] = [gate | up]. out: fp16 [rows, inter],
//   silu = fp16_RN(g / (1 + exp(-g))), out = fp16_RN(float(silu) * up).
// exp is evaluated in double and rounded once to fp32 (the CPU uses glibc's expf, < 0.502 ulp);
// the two can differ by an fp32 ulp in rare cases, which then survives the fp16 rounding with
// probability ~2^-13. Tolerance: out within 1 fp16 ulp of the CPU's (almost always identical).
void silu_mul_f32_to_f16(const float* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                         cudaStream_t stream);
void silu_mul_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, uint16_t* out,
                  cudaStream_t stream);
// silu_mul then quantize_per_token of the fp16 result, fused in one kernel. q: int8
// [rows, inter]; scale, sum: fp16 [rows] (sum may be null); out: the fp16 SiLU·mul result
// [rows, inter], may be null. Given the same fp16 SiLU·mul values, q/scale/sum are bit-exact.
void silu_mul_quant_f32(const float* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream);
void silu_mul_quant_f16(const uint16_t* gate_up, int64_t rows, int64_t inter, int8_t* q,
                        uint16_t* scale, uint16_t* sum, uint16_t* out, cudaStream_t stream);
// fp32 SwiGLU for the W16A16 path, cpu::silu_mul: out = g / (1 + exp(-g)) * up in fp32
// ([rows, inter]). Tolerance vs the CPU (vectorised exp): rel 4e-6 + abs 1e-30.
void silu_mul_f32(const float* gate_up, int64_t rows, int64_t inter, float* out,
                  cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Quantized GEMMs (gemm_w4a8.cu, gemm_w8a8.cu), quant/gemm_w4a8.h and quant/gemm_w8a8.h
// ---------------------------------------------------------------------------------------------
// Weights are in the natural layout of quant/weights.h (one 4-bit code per byte, [N, K]); the
// W4 views may also carry the fast kernels' layouts (q_packed, w8; gemm_w4a8_fast.h), which
// upload() makes. The W4A8 calls dispatch to the fast kernels when those are present and
// applicable and acc_out is null; otherwise the simple dp4a kernels (the reference path) run. aq is
// int8 [m, k] row-major with fp16 per-token scales (and sums). y: fp16 [m, n]. acc_out: optional
// int32 [m, n], the exact integer accumulators (for tests and debugging; pass null normally).
// Accumulators: bit-exact (exact int32 sums, the CPU's range check applies). y: bit-exact
// (QServe's epilogue with correctly rounded ops in the reference order).

// Non-owning device views of quantized weights (see the *OnDevice owners below).
struct W4PerChannelView {
  int64_t n = 0, k = 0;
  const uint8_t* q = nullptr;           // [n, k] codes 0..15
  const uint16_t* s1_scales = nullptr;  // fp16 [n]
  const uint16_t* s1_szeros = nullptr;  // fp16 [n]
  // Optional fast-path layouts (gemm_w4a8_fast.h), made by upload(); null = not available, and
  // the dispatch then uses the paths that read q only.
  const uint8_t* q_packed = nullptr;  // 2 codes per byte, mma-fragment order (small M)
};
struct W4G128View {
  int64_t n = 0, k = 0;                 // k % 128 == 0
  const uint8_t* q = nullptr;           // [n, k] codes 0..15
  const uint16_t* s1_scales = nullptr;  // fp16 [n]
  const int8_t* s2_scales = nullptr;    // [n, k/128]
  const int8_t* s2_zeros = nullptr;     // [n, k/128]
  // Optional fast-path layouts (gemm_w4a8_fast.h), made by upload(); null = not available.
  const uint8_t* q_packed = nullptr;  // 2 codes per byte, mma-fragment order (small M)
  const int8_t* w8 = nullptr;         // [n, k] the expanded int8 weights (large M); when null
                                      // the large-M path expands them per call
};
struct W8PerChannelView {
  int64_t n = 0, k = 0;
  const int8_t* w = nullptr;                // [n, k]
  const uint16_t* dequant_scale = nullptr;  // fp16 [n]
};

// Device copies of the quant/weights.h structs (uploaded synchronously; validate() first).
struct W4PerChannelOnDevice {
  int64_t n = 0, k = 0;
  DeviceBuffer<uint8_t> q;
  DeviceBuffer<uint16_t> s1_scales, s1_szeros;
  DeviceBuffer<uint8_t> q_packed;  // fast small-M layout (empty when the shape does not qualify)
  W4PerChannelView view() const;
};
struct W4G128OnDevice {
  int64_t n = 0, k = 0;
  DeviceBuffer<uint8_t> q;
  DeviceBuffer<uint16_t> s1_scales;
  DeviceBuffer<int8_t> s2_scales, s2_zeros;
  DeviceBuffer<uint8_t> q_packed;  // fast small-M layout (empty when the shape does not qualify)
  DeviceBuffer<int8_t> w8;         // expanded int8 weights for the large-M path (n*k bytes)
  W4G128View view() const;
};
struct W8PerChannelOnDevice {
  int64_t n = 0, k = 0;
  DeviceBuffer<int8_t> w;
  DeviceBuffer<uint16_t> dequant_scale;
  W8PerChannelView view() const;
};
W4PerChannelOnDevice upload(const quant::W4PerChannel& w, cudaStream_t stream = nullptr);
// The fast paths' layouts derived from d.q (gemm_w4a8_fast.h): q_packed when (n, k) is packable
// and, for g128, the expanded int8 w8 when k % 128 == 0. Runs on `stream` and synchronizes it
// before returning: the small-M kernels load q_packed before their griddepcontrol.wait, which
// pdl.h allows only for data written before the previous kernel. upload() and the
// GPU-synthesized weights both call these, so every W4 weight carries the same buffers.
void make_fast_layouts(W4PerChannelOnDevice& d, cudaStream_t stream);
void make_fast_layouts(W4G128OnDevice& d, cudaStream_t stream);
W4G128OnDevice upload(const quant::W4G128& w, cudaStream_t stream = nullptr);
W8PerChannelOnDevice upload(const quant::W8PerChannel& w, cudaStream_t stream = nullptr);

// Per-channel W4A8: acc = sum_k aq * Q; y = fp16(fma(a_scale, float(acc) * s1, -(s1_szero *
// a_sum))) [+ bias, fp16 add]. a_sum (fp16 [m]) is required; bias fp16 [n] or null.
void gemm_w4a8_per_channel(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                           int64_t m, const W4PerChannelView& w, const uint16_t* bias, uint16_t* y,
                           int32_t* acc_out, cudaStream_t stream);
// g128 W4A8: w8 = int8((Q * s2 + uint8(s2_zero)) mod 256); acc = sum_k aq * w8;
// y = fp16(float(acc) * (s1 * a_scale)) [+ bias].
void gemm_w4a8_g128(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128View& w,
                    const uint16_t* bias, uint16_t* y, int32_t* acc_out, cudaStream_t stream);
// W8A8: acc = sum_k aq * w; y = fp16(float(acc) * (dequant_scale * a_scale)).
void gemm_w8a8(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
               uint16_t* y, int32_t* acc_out, cudaStream_t stream);

// The same three GEMMs with a caller-owned workspace. The calls above give their CUTLASS paths
// (stream-K partials and barriers; g128 weights expanded per call when the view has no w8) a
// grow-only workspace owned by the kernel file, whose block is replaced when a larger problem
// arrives: a CUDA graph that captured the old pointer would then write freed memory. These
// overloads use only ws.data (nothing is allocated, nothing synchronizes) and throw when
// ws.bytes is below what the chosen path needs; gemm_*_workspace_bytes(m, w) bounds that for m
// rows of these weights on the current device (0 when only the small-M or dp4a kernels apply).
// ws.data must be 256-byte aligned (any DeviceBuffer is).
struct GemmWorkspace {
  void* data = nullptr;
  size_t bytes = 0;
};
size_t gemm_w4a8_per_channel_workspace_bytes(int64_t m, const W4PerChannelView& w);
size_t gemm_w4a8_g128_workspace_bytes(int64_t m, const W4G128View& w);
size_t gemm_w8a8_workspace_bytes(int64_t m, const W8PerChannelView& w);
void gemm_w4a8_per_channel(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                           int64_t m, const W4PerChannelView& w, const uint16_t* bias, uint16_t* y,
                           int32_t* acc_out, cudaStream_t stream, const GemmWorkspace& ws);
void gemm_w4a8_g128(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128View& w,
                    const uint16_t* bias, uint16_t* y, int32_t* acc_out, cudaStream_t stream,
                    const GemmWorkspace& ws);
void gemm_w8a8(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
               uint16_t* y, int32_t* acc_out, cudaStream_t stream, const GemmWorkspace& ws);

// ---------------------------------------------------------------------------------------------
// Floating-point GEMM through cuBLASLt (gemm_cublaslt.cu): W16A16 linears and lm_head.
// ---------------------------------------------------------------------------------------------
// y[m, n] = x[m, k] W[n, k]^T (+ bias[n]), fp32 accumulation (CUBLAS_COMPUTE_32F, never TF32).
// Supported: x, W both fp32 -> y fp32 (the CPU reference keeps W16A16 and lm_head weights in
// fp32, model/linear.h, so this is the parity path); both fp16 -> y fp16 or fp32; both bf16 ->
// y bf16 or fp32 (for serving from half-precision weights). bias (y's type, [n], or null) is
// added by a separate kernel after the product: y = round_out(float(y) + float(bias)). For fp32
// output that is exactly the CPU's order; for half outputs y is rounded twice (once by
// cuBLASLt, once after the add).
// Tolerance vs a double reference: |d| <= 2^-14 * max_elem(sum_k |x||w|) (fp32 accumulation,
// with a wide margin) plus half an ulp of y's type relative to |y|.
enum class DType : uint8_t { kF32, kF16, kBF16 };
const char* dtype_name(DType t);

// A cuBLASLt handle plus a 32 MiB workspace. One per stream that runs GEMMs (not thread-safe).
class CublasLt {
 public:
  CublasLt();
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  cublasLtHandle_t handle() const { return handle_; }
  void* workspace() { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.bytes(); }

 private:
  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer<uint8_t> workspace_;
};

void gemm_cublaslt(CublasLt& lt, const void* x, const void* w, DType in_type, const void* bias,
                   void* y, DType out_type, int64_t m, int64_t n, int64_t k, cudaStream_t stream);

}  // namespace qserve::cuda
