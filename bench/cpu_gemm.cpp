// GFLOP/s of cpu::gemm_nt on the 22M test model's shapes (and GB/s of weight traffic for the
// memory-bound decode shapes). Not part of the CMake build; from the repository root:
//
//   g++ -O3 -std=c++20 -Isrc bench/cpu_gemm.cpp build-ops/libqserve_backend_cpu.a
//       build-ops/libqserve_core.a -lpthread -o build-ops/bench_cpu_gemm
//   ./build-ops/bench_cpu_gemm [--portable] [--cold] [--ops] [M ...]
//
// Threads: QSERVE_THREADS (default: all cores). Each shape runs for ~0.4 s after a warm-up;
// the best and median of the timed runs are printed. --cold rotates through enough copies of B
// (>= 256 MiB) that the weights come from DRAM, as they do in a real forward pass. --ops also
// times the other ops of one layer of the test model on a 512-token window.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/gemm_kernels.h"
#include "backend/cpu/ops_cpu.h"
#include "core/thread_pool.h"

namespace {

struct Shape {
  int64_t n, k;
  const char* name;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best-of time of fn over ~0.3 s, in milliseconds.
template <typename Fn>
double time_ms(Fn fn) {
  fn();
  double best = 1e30;
  const double t_end = now_s() + 0.3;
  for (int reps = 0; now_s() < t_end || reps < 3; ++reps) {
    const double t0 = now_s();
    fn();
    best = std::min(best, now_s() - t0);
  }
  return best * 1e3;
}

// The non-GEMM ops of one layer of the 22M model (hidden 512, 4 x 128 heads, 2 KV heads,
// intermediate 1024) on a 512-token prefill, plus one decode step at context 511.
void bench_ops() {
  namespace cpu = qserve::cpu;
  const int64_t T = 512, H = 512, heads = 4, kvh = 2, hd = 128, inter = 1024;
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto rnd = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    return v;
  };
  const auto x = rnd(T * H), w = rnd(H), gu = rnd(T * 2 * inter), q = rnd(T * heads * hd),
             kv = rnd(T * kvh * hd);
  std::vector<float> y(static_cast<size_t>(T * H)), act(static_cast<size_t>(T * inter)),
      qr = q, out(q.size());
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = t;
  qserve::ModelConfig cfg;
  cfg.head_dim = hd;
  cfg.rope_theta = 10000.0;
  const auto inv = cpu::rope_inv_freq(cfg);
  cpu::KVCacheF32 cache;
  cache.allocate(1, 1, T, kvh, hd);
  const qserve::SeqSpan prefill{0, T, 0, 0};
  cpu::kv_append(cache, 0, {&prefill, 1}, kv.data(), kv.data());
  const qserve::SeqSpan decode{0, 1, T - 1, 0};

  const double attn_flop = 4.0 * heads * hd * (T * (T + 1) / 2);
  const double t_attn = time_ms([&] {
    cpu::attention(q.data(), cache, 0, {&prefill, 1}, heads, 0, out.data());
  });
  std::printf("attention prefill T=512     %8.3f ms  %6.1f GFLOP/s\n", t_attn,
              attn_flop / t_attn * 1e-6);
  std::printf("attention decode ctx=511    %8.3f ms\n", time_ms([&] {
                cpu::attention(q.data(), cache, 0, {&decode, 1}, heads, 0, out.data());
              }));
  std::printf("rope q+k T=512              %8.3f ms\n", time_ms([&] {
                cpu::rope(qr.data(), pos.data(), T, heads, hd, inv);
                cpu::rope(qr.data(), pos.data(), T, kvh, hd, inv);
              }));
  std::printf("silu_mul T=512 x 1024       %8.3f ms\n",
              time_ms([&] { cpu::silu_mul(gu.data(), T, inter, act.data()); }));
  std::printf("rms_norm T=512 x 512        %8.3f ms\n",
              time_ms([&] { cpu::rms_norm(x.data(), w.data(), 1e-6f, T, H, y.data()); }));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> ms;
  bool cold = false, ops = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--portable") == 0) {
      qserve::cpu::detail::force_portable_kernels(true);
    } else if (std::strcmp(argv[i], "--cold") == 0) {
      cold = true;
    } else if (std::strcmp(argv[i], "--ops") == 0) {
      ops = true;
    } else {
      ms.push_back(std::atoll(argv[i]));
    }
  }
  if (ms.empty() && !ops) ms = {1, 4, 64, 512, 2048};
  const Shape shapes[] = {{1024, 512, "qkv"},
                          {512, 512, "o_proj"},
                          {2048, 512, "gate_up"},
                          {512, 1024, "down"},
                          {8192, 512, "lm_head"}};
  std::printf("threads=%d kernels=%s\n", qserve::ThreadPool::global().size(),
              qserve::cpu::detail::use_avx2() ? "avx2" : "portable");
  std::printf("%6s %6s %6s %-8s %10s %10s %10s\n", "M", "N", "K", "shape", "best GF/s", "med GF/s",
              "B GB/s");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t m : ms) {
    for (const Shape& s : shapes) {
      const size_t b_size = static_cast<size_t>(s.n * s.k);
      const size_t copies = cold ? (size_t{256} << 20) / (b_size * sizeof(float)) + 1 : 1;
      std::vector<float> a(static_cast<size_t>(m * s.k)), b(b_size * copies),
          c(static_cast<size_t>(m * s.n));
      for (float& x : a) x = dist(rng);
      for (float& x : b) x = dist(rng);
      qserve::cpu::gemm_nt(a.data(), b.data(), c.data(), m, s.n, s.k);  // warm-up
      std::vector<double> times;
      const double t_end = now_s() + 0.4;
      for (size_t rep = 0; now_s() < t_end || times.size() < 3; ++rep) {
        const float* bw = b.data() + (rep % copies) * b_size;
        const double t0 = now_s();
        qserve::cpu::gemm_nt(a.data(), bw, c.data(), m, s.n, s.k);
        times.push_back(now_s() - t0);
      }
      std::sort(times.begin(), times.end());
      const double flop = 2.0 * static_cast<double>(m * s.n * s.k);
      const double bytes = 4.0 * static_cast<double>(s.n * s.k);
      std::printf("%6lld %6lld %6lld %-8s %10.1f %10.1f %10.1f\n", static_cast<long long>(m),
                  static_cast<long long>(s.n), static_cast<long long>(s.k), s.name,
                  flop / times.front() * 1e-9, flop / times[times.size() / 2] * 1e-9,
                  bytes / times.front() * 1e-9);
    }
  }
  if (ops) bench_ops();
  return 0;
}
