#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>
#include "backend/cpu/ops_cpu.h"
#include "core/thread_pool.h"
using namespace qserve;
static double rope_ms(std::vector<float>& q, std::vector<int64_t>& pos, const std::vector<float>& inv) {
  double best = 1e9;
  for (int r = 0; r < 5; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    cpu::rope(q.data(), pos.data(), 512, 4, 128, inv);
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
int main() {
  ModelConfig cfg; cfg.head_dim = 128; cfg.rope_theta = 10000;
  auto inv = cpu::rope_inv_freq(cfg);
  std::vector<float> q(512 * 4 * 128, 0.5f);
  std::vector<int64_t> pos(512); for (int i = 0; i < 512; ++i) pos[i] = i;
  printf("rope before any AVX: %.3f ms\n", rope_ms(q, pos, inv));
  volatile float s = 0; auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000000; ++i) s = s + std::sin(float(i % 512) * 0.37f);
  printf("scalar sinf loop: %.1f ns/call\n", std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / 1e6);
  std::vector<float> a(64 * 512, 1.0f), b(512 * 512, 1.0f), c(64 * 512);
  cpu::gemm_nt(a.data(), b.data(), c.data(), 64, 512, 512);
  printf("rope after gemm: %.3f ms\n", rope_ms(q, pos, inv));
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000000; ++i) s = s + std::sin(float(i % 512) * 0.37f);
  printf("scalar sinf loop: %.1f ns/call\n", std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / 1e6);
}
