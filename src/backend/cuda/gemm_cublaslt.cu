// Floating-point GEMM y = x W^T (+ bias) through cuBLASLt, for W16A16 linears and lm_head.
//
// Row-major y[M, N] = x[M, K] W[N, K]^T is, in cuBLAS's column-major terms,
// y^T (N x M, ld N) = op_T(W: K x N, ld K) * x^T (K x M, ld K). Compute type is
// CUBLAS_COMPUTE_32F with fp32 scales, so fp32 inputs are multiplied in true fp32 (no TF32:
// that needs CUBLAS_COMPUTE_32F_FAST_TF32, which we never request) and half inputs accumulate
// in fp32. The algorithm comes from cuBLASLt's heuristic per call (correctness pass; caching the
// choice per shape is a later optimization). The bias is added by a small kernel of ours in
// fp32 after the product, which for fp32 output is exactly the CPU's x W^T + b.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/ops_cuda.h"

namespace qserve::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
  }
  throw Error("gemm_cublaslt: unknown dtype");
}

// Largest power of two (<= 256) dividing the address: what the heuristic may assume.
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// RAII owners of the cuBLASLt descriptors of one call (released on every path, incl. throws).
struct MatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~MatmulDesc() {
    if (d != nullptr) cublasLtMatmulDescDestroy(d);
  }
};
struct Layout {
  cublasLtMatrixLayout_t d = nullptr;
  ~Layout() {
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
  }
};
struct Preference {
  cublasLtMatmulPreference_t d = nullptr;
  ~Preference() {
    if (d != nullptr) cublasLtMatmulPreferenceDestroy(d);
  }
};

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_f(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_f(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f(float v) {
  return __float2bfloat16_rn(v);
}

// y[m, n] = round(float(y[m, n]) + float(bias[n])).
template <typename T>
__global__ void add_bias_kernel(T* y, const T* bias, int64_t total, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  y[i] = from_f<T>(__fadd_rn(to_f(y[i]), to_f(bias[i % n])));
}

template <typename T>
void launch_add_bias(void* y, const void* bias, int64_t m, int64_t n, cudaStream_t stream) {
  const int64_t total = m * n;
  const int64_t blocks = (total + 255) / 256;
  check(blocks <= 0x7fffffff, "gemm_cublaslt: bias add grid too large");
  add_bias_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      static_cast<T*>(y), static_cast<const T*>(bias), total, n);
}

}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
  }
  return "?";
}

CublasLt::CublasLt() : workspace_(kWorkspaceBytes) {
  cublas_check(cublasLtCreate(&handle_), "CublasLt::CublasLt");
}

CublasLt::~CublasLt() {
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

void gemm_cublaslt(CublasLt& lt, const void* x, const void* w, DType in_type, const void* bias,
                   void* y, DType out_type, int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  const char* op = "gemm_cublaslt";
  const std::string detail = "M=" + std::to_string(m) + " N=" + std::to_string(n) +
                             " K=" + std::to_string(k) + " in=" + dtype_name(in_type) +
                             " out=" + dtype_name(out_type);
  check(m >= 0 && n > 0 && k > 0, std::string(op) + ": bad shape " + detail);
  check(out_type == in_type || out_type == DType::kF32,
        std::string(op) + ": unsupported type combination " + detail +
            " (output must be fp32 or the input type)");
  check(x != nullptr && w != nullptr && y != nullptr, std::string(op) + ": null pointer " + detail);
  if (m == 0) return;

  MatmulDesc desc;
  cublas_check(cublasLtMatmulDescCreate(&desc.d, CUBLAS_COMPUTE_32F, CUDA_R_32F), op, detail);
  const cublasOperation_t trans_a = CUBLAS_OP_T;
  const cublasOperation_t trans_b = CUBLAS_OP_N;
  cublas_check(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a,
                                              sizeof(trans_a)),
               op, detail);
  cublas_check(cublasLtMatmulDescSetAttribute(desc.d, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b,
                                              sizeof(trans_b)),
               op, detail);

  const cudaDataType_t in_t = cuda_type(in_type);
  const cudaDataType_t out_t = cuda_type(out_type);
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  Layout a_layout, b_layout, c_layout;
  cublas_check(cublasLtMatrixLayoutCreate(&a_layout.d, in_t, u(k), u(n), k), op, detail);   // W
  cublas_check(cublasLtMatrixLayoutCreate(&b_layout.d, in_t, u(k), u(m), k), op, detail);   // x
  cublas_check(cublasLtMatrixLayoutCreate(&c_layout.d, out_t, u(n), u(m), n), op, detail);  // y

  Preference pref;
  cublas_check(cublasLtMatmulPreferenceCreate(&pref.d), op, detail);
  const uint64_t ws = lt.workspace_bytes();
  cublas_check(cublasLtMatmulPreferenceSetAttribute(
                   pref.d, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
               op, detail);
  // The heuristic assumes 256-byte aligned operands unless told otherwise.
  const uint32_t align_a = alignment_of(w), align_b = alignment_of(x), align_c = alignment_of(y);
  cublas_check(cublasLtMatmulPreferenceSetAttribute(
                   pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)),
               op, detail);
  cublas_check(cublasLtMatmulPreferenceSetAttribute(
                   pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)),
               op, detail);
  cublas_check(cublasLtMatmulPreferenceSetAttribute(
                   pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)),
               op, detail);
  cublas_check(cublasLtMatmulPreferenceSetAttribute(
                   pref.d, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)),
               op, detail);

  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  cublas_check(
      cublasLtMatmulAlgoGetHeuristic(lt.handle(), desc.d, a_layout.d, b_layout.d, c_layout.d,
                                     c_layout.d, pref.d, 1, &result, &returned),
      op, detail);
  check(returned > 0, std::string(op) + ": cuBLASLt has no algorithm for " + detail);

  const float alpha = 1.0f, beta = 0.0f;
  cublas_check(cublasLtMatmul(lt.handle(), desc.d, &alpha, w, a_layout.d, x, b_layout.d, &beta, y,
                              c_layout.d, y, c_layout.d, &result.algo, lt.workspace(), ws, stream),
               op, detail);

  if (bias != nullptr) {
    switch (out_type) {
      case DType::kF32:
        launch_add_bias<float>(y, bias, m, n, stream);
        break;
      case DType::kF16:
        launch_add_bias<__half>(y, bias, m, n, stream);
        break;
      case DType::kBF16:
        launch_add_bias<__nv_bfloat16>(y, bias, m, n, stream);
        break;
    }
    check_launch("gemm_cublaslt bias", detail);
  }
}

}  // namespace qserve::cuda
