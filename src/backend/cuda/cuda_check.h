// Error checks for CUDA runtime and cuBLASLt calls: every failure becomes a qserve::Error that
// names the op, the shapes (the caller's `detail`) and the CUDA/cuBLAS error string, so a failed
// launch in the engine reports which kernel at which shape broke instead of a bare error code.
//
// Usage:
//   cuda_check(cudaMemcpyAsync(...), "to_device", "bytes=4096");
//   kernel<<<grid, block, 0, stream>>>(...);
//   check_launch("gemm_w4a8", shape_string);        // cudaGetLastError after the launch
//   cublas_check(cublasLtMatmul(...), "gemm_cublaslt", "M=7 N=4096 K=4096");
//   QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "sync");
//
// Header-only; this API is shared by every CUDA source file, keep it stable.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "core/error.h"

namespace qserve::cuda {

namespace detail {
inline std::string format_failure(const char* op, const std::string& detail, const char* what,
                                  const char* err_name, const char* err_string) {
  std::string msg = "CUDA op '";
  msg += op ? op : "?";
  msg += "'";
  if (!detail.empty()) {
    msg += " (";
    msg += detail;
    msg += ")";
  }
  msg += " failed: ";
  msg += what;
  msg += " ";
  msg += err_name;
  msg += ": ";
  msg += err_string;
  return msg;
}
}  // namespace detail

// Throws qserve::Error when e != cudaSuccess. Also clears the runtime's last error, so a later
// check_launch does not report this failure a second time.
inline void cuda_check(cudaError_t e, const char* op, const std::string& detail = {}) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  throw Error(detail::format_failure(op, detail, "CUDA runtime error", cudaGetErrorName(e),
                                     cudaGetErrorString(e)));
}

// Throws qserve::Error when s != CUBLAS_STATUS_SUCCESS (cuBLASLt's own status strings).
inline void cublas_check(cublasStatus_t s, const char* op, const std::string& detail = {}) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw Error(detail::format_failure(op, detail, "cuBLASLt error", "cublasStatus",
                                     cublasLtGetStatusString(s)));
}

// Call right after a <<<...>>> launch: reports launch-configuration errors (bad grid, too much
// shared memory) and sticky errors from earlier asynchronous work. It does not synchronize, so
// faults inside the kernel surface at the next synchronizing call's check.
inline void check_launch(const char* op, const std::string& detail = {}) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return;
  throw Error(detail::format_failure(op, detail, "kernel launch error", cudaGetErrorName(e),
                                     cudaGetErrorString(e)));
}

}  // namespace qserve::cuda

// Statement form of cuda_check: QSERVE_CUDA_CHECK(cudaMemsetAsync(p, 0, n, s), "memset");
// `what` names the op; the failing expression's text is added to the message.
#define QSERVE_CUDA_CHECK(expr, what) ::qserve::cuda::cuda_check((expr), (what), #expr)
#define QSERVE_CUBLAS_CHECK(expr, what) ::qserve::cuda::cublas_check((expr), (what), #expr)
