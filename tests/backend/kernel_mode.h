// Runs a test body under each GEMM kernel family: the AVX2/FMA kernels (skipped on CPUs without
// them) and the portable fallback. Restores CPU detection afterwards.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "backend/cpu/gemm_kernels.h"

namespace qserve::test {

enum class KernelMode { Avx2, Portable };

inline std::string kernel_mode_name(const testing::TestParamInfo<KernelMode>& info) {
  return info.param == KernelMode::Avx2 ? "Avx2" : "Portable";
}

class KernelModeTest : public testing::TestWithParam<KernelMode> {
 protected:
  void SetUp() override {
    cpu::detail::force_portable_kernels(GetParam() == KernelMode::Portable);
    if (GetParam() == KernelMode::Avx2 && !cpu::detail::use_avx2()) {
      GTEST_SKIP() << "this CPU has no AVX2/FMA";
    }
  }
  void TearDown() override { cpu::detail::force_portable_kernels(false); }
};

}  // namespace qserve::test
