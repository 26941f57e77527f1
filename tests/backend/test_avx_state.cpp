// Every AVX2 entry point must return with the upper halves of the YMM registers clean
// (vzeroupper). Dirty upper state makes the SSE code that runs next (libm's sinf/expf, the
// perplexity loop) many times slower on Intel cores: rope took 7 ms instead of 0.4 ms after
// attention when a microkernel with a __m256i argument skipped its vzeroupper.
//
// Checked with XGETBV(1), whose bit 2 says whether the upper YMM state is in use. The probe
// validates itself first and the test skips where the CPU or hypervisor cannot show it.
#include <gtest/gtest.h>

#if defined(__x86_64__)

#include <cpuid.h>
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "backend/cpu/gemm_kernels.h"
#include "backend/cpu/vec_math.h"

namespace qserve {
namespace {

bool cpu_has_xgetbv1() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(0xD, 1, &a, &b, &c, &d)) return false;
  return (a & (1u << 2)) != 0;
}

__attribute__((target("xsave"))) bool upper_ymm_dirty() {
  return (_xgetbv(1) & 4) != 0;
}

// Dirties the upper halves, reads XINUSE and cleans up again, all in one asm block so the
// compiler cannot slip a vzeroupper in between.
bool probe_sees_dirty_state() {
  uint32_t lo = 0, hi = 0;
  asm volatile(
      "vpcmpeqd %%ymm0, %%ymm0, %%ymm0\n\t"
      "movl $1, %%ecx\n\t"
      "xgetbv\n\t"
      "vzeroupper"
      : "=a"(lo), "=d"(hi)
      :
      : "rcx", "xmm0");
  (void)hi;
  return (lo & 4) != 0;
}

TEST(AvxState, KernelsReturnWithCleanUpperYmm) {
  if (!cpu::detail::use_avx2()) GTEST_SKIP() << "this CPU has no AVX2/FMA";
  if (!cpu_has_xgetbv1()) GTEST_SKIP() << "no XGETBV(1) to observe the YMM state";
  const bool probe_sees_dirty = probe_sees_dirty_state();
  const bool probe_sees_clean = !upper_ymm_dirty();
  if (!probe_sees_dirty || !probe_sees_clean) {
    GTEST_SKIP() << "XINUSE does not track the YMM state here (e.g. AMD Zen)";
  }

  std::vector<float> a(64 * 40, 0.5f), b(64 * 40, 0.25f), c(64 * 40);
  bool dirty = false;
  // Full and masked NN tails (n = 13: one 8-wide vector plus a 5-lane mask).
  cpu::detail::gemm_nn_block_avx2(a.data(), 40, b.data(), 40, c.data(), 40, 7, 13, 9, false);
  dirty = upper_ymm_dirty();
  EXPECT_FALSE(dirty) << "gemm_nn_block_avx2";
  cpu::detail::gemm_nn_block_avx2(a.data(), 40, b.data(), 40, c.data(), 40, 6, 16, 9, false);
  dirty = upper_ymm_dirty();
  EXPECT_FALSE(dirty) << "gemm_nn_block_avx2 (full)";
  cpu::detail::gemm_nt_block_avx2(a.data(), 40, b.data(), 40, c.data(), 40, 5, 7, 37, false);
  dirty = upper_ymm_dirty();
  EXPECT_FALSE(dirty) << "gemm_nt_block_avx2";
  cpu::detail::exp_avx2(a.data(), 11, c.data());
  dirty = upper_ymm_dirty();
  EXPECT_FALSE(dirty) << "exp_avx2";
  cpu::detail::softmax_row_avx2(c.data(), 30, 3, 20, 0.1f);
  dirty = upper_ymm_dirty();
  EXPECT_FALSE(dirty) << "softmax_row_avx2";
  cpu::detail::silu_mul_row_avx2(a.data(), b.data(), 19, c.data());
  dirty = upper_ymm_dirty();
  EXPECT_FALSE(dirty) << "silu_mul_row_avx2";
}

}  // namespace
}  // namespace qserve

#endif  // __x86_64__
