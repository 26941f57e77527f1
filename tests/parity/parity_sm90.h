// Skip guard for the tests of the sm90 (CUTLASS wgmma) GEMM paths: they run only where those
// kernels can run at all — a GPU, a build that found CUTLASS, and a compute capability 9.0
// device (sm_90a code runs nowhere else).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "backend/cuda/gemm_w8a8_sm90.h"
#include "parity/parity_main_util.h"

#define QSERVE_PARITY_REQUIRE_SM90()                                                       \
  do {                                                                                     \
    QSERVE_PARITY_REQUIRE_GPU();                                                           \
    if (!::qserve::cuda::w8a8_sm90_compiled())                                             \
      GTEST_SKIP() << "built without CUTLASS (sm90 GEMMs off)";                            \
    int dev = 0, major = 0, minor = 0;                                                     \
    ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);                                           \
    ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),      \
              cudaSuccess);                                                                \
    ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),      \
              cudaSuccess);                                                                \
    if (major != 9 || minor != 0) GTEST_SKIP() << "needs compute capability 9.0 (sm_90a)"; \
  } while (0)
