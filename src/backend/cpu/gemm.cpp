// gemm_nt: picks the AVX2 or portable block kernels, blocks the problem for the caches and
// spreads output tiles over ThreadPool::global().
//
// Blocking (tuned on Zen 3: 32 KiB L1d and 512 KiB L2 per core; bench/cpu_gemm.cpp):
//  - K is cut into equal blocks of at most kKcMax (1024) floats, so a 4-row A panel plus the
//    three B rows the microkernel streams stay in L1. Splitting K=1024 in two measured 15%
//    slower; K blocks accumulate into C.
//  - N is cut into blocks of B rows that take about kBBlockBytes, so a B block stays in L2
//    while every 4-row A panel of the tile sweeps it (96 rows for K=512, 48 for K=1024).
//  - M is cut into blocks of kMb rows. Tiles are numbered M-fastest, so a thread's consecutive
//    tiles share their B block.
// Small M (decode) is bandwidth-bound on B: there is a single M tile and N is split finely
// enough that every thread streams its share of the weights.
#include <algorithm>
#include <atomic>
#include <cstdint>

#include "backend/cpu/gemm_kernels.h"
#include "backend/cpu/ops_cpu.h"
#include "core/thread_pool.h"

namespace qserve::cpu {

namespace detail {

namespace {

constexpr int64_t kKcMax = 1024;
constexpr int64_t kBBlockBytes = 192 * 1024;
constexpr int64_t kMb = 128;  // a multiple of the AVX2 microkernel's 4 rows
// Below this many multiply-adds a GEMM runs on the calling thread: waking the pool costs more.
constexpr int64_t kSerialMacs = 64 * 1024;

std::atomic<bool> g_force_portable{false};

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

GemmNtBlockFn nt_block() {
  return use_avx2() ? gemm_nt_block_avx2 : gemm_nt_block_portable;
}
GemmNnBlockFn nn_block() {
  return use_avx2() ? gemm_nn_block_avx2 : gemm_nn_block_portable;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
int64_t round_up(int64_t a, int64_t b) {
  return ceil_div(a, b) * b;
}

// Splits [0, k) into equal blocks (a multiple of 8, at most kKcMax), so K=1100 becomes 552 +
// 548 rather than 1024 + 76. Depends on k only, which keeps results independent of M and N.
int64_t k_block(int64_t k) {
  return round_up(ceil_div(k, ceil_div(k, kKcMax)), 8);
}

// Rows of B per N block for a given K block: a multiple of the microkernel's 3.
int64_t n_block(int64_t kc) {
  return std::max<int64_t>(3, kBBlockBytes / (kc * static_cast<int64_t>(sizeof(float))) / 3 * 3);
}

// One M x N tile over all of K: the first K block writes C (unless accumulating), the rest add.
void nt_tile(GemmNtBlockFn fn, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
  const int64_t kc = k_block(k);
  for (int64_t k0 = 0; k0 < k; k0 += kc) {
    fn(a + k0, lda, b + k0, ldb, c, ldc, m, n, std::min(kc, k - k0), accumulate || k0 > 0);
  }
}

void zero_rows(float* c, int64_t ldc, int64_t m, int64_t n) {
  for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
}

}  // namespace

bool use_avx2() {
  return cpu_has_avx2_fma() && !g_force_portable.load(std::memory_order_relaxed);
}
void force_portable_kernels(bool on) {
  g_force_portable.store(on, std::memory_order_relaxed);
}

void gemm_nt_serial(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate) zero_rows(c, ldc, m, n);
    return;
  }
  const GemmNtBlockFn fn = nt_block();
  const int64_t nb = n_block(k_block(k));
  for (int64_t j = 0; j < n; j += nb) {
    nt_tile(fn, a, lda, b + j * ldb, ldb, c + j, ldc, m, std::min(nb, n - j), k, accumulate);
  }
}

void gemm_nn_serial(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    int64_t m, int64_t n, int64_t k, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate) zero_rows(c, ldc, m, n);
    return;
  }
  // Here K indexes B's rows: a K block of B (kc x n) is what stays in L2.
  const GemmNnBlockFn fn = nn_block();
  const int64_t kc = k_block(k);
  for (int64_t k0 = 0; k0 < k; k0 += kc) {
    fn(a + k0, lda, b + k0 * ldb, ldb, c, ldc, m, n, std::min(kc, k - k0), accumulate || k0 > 0);
  }
}

}  // namespace detail

void gemm_nt(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k) {
  using detail::ceil_div;
  if (m <= 0 || n <= 0) return;
  if (k <= 0 || m * n * k <= detail::kSerialMacs) {
    detail::gemm_nt_serial(a, k, b, k, c, n, m, n, k, false);
    return;
  }

  ThreadPool& pool = ThreadPool::global();
  const int64_t threads = pool.size();
  const int64_t mb = std::min(m, detail::kMb);
  const int64_t m_tiles = ceil_div(m, mb);
  // At least a few tiles per thread so dynamic scheduling evens out the tail; small-M problems
  // get there by splitting N more finely than the L2 block needs.
  int64_t nb = detail::n_block(detail::k_block(k));
  const int64_t min_tiles = 4 * threads;
  if (m_tiles * ceil_div(n, nb) < min_tiles) {
    nb = std::max<int64_t>(3, detail::round_up(ceil_div(n, ceil_div(min_tiles, m_tiles)), 3));
  }
  nb = std::min(nb, n);
  const int64_t n_tiles = ceil_div(n, nb);

  const detail::GemmNtBlockFn fn = detail::nt_block();
  pool.parallel_for(m_tiles * n_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i0 = (t % m_tiles) * mb;
      const int64_t j0 = (t / m_tiles) * nb;
      detail::nt_tile(fn, a + i0 * k, k, b + j0 * k, k, c + i0 * n + j0, n, std::min(mb, m - i0),
                      std::min(nb, n - j0), k, false);
    }
  });
}

}  // namespace qserve::cpu
