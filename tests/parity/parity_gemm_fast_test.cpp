// Parity of the Hopper W8A8 GEMM (gemm_w8a8_sm90.cu: CUTLASS wgmma + TMA, fused EVT epilogue)
// against the CPU reference quant/gemm_w8a8.h. Its fp16 output is specified bit-exact (exact
// int32 accumulators; the EVT epilogue performs the reference's two fp32 RN multiplications and
// the fp16 RN conversion, nothing else), so y is compared exactly:
//  - on every element against the simple dp4a kernel (gemm_w8a8 with acc_out forces that path;
//    ParityGemmW8A8 in parity_gemm_test.cpp proves it bit-exact against the CPU), and
//  - on a set of rows (all when cheap; else the first rows, rows at 64/128-row tile boundaries
//    and the last rows) against the CPU reference itself.
// Both kernel variants are run explicitly at every shape (the swapped small-M stream-K kernel
// and the 128x128 large-M kernel), and gemm_w8a8's dispatch once more. Shapes: Llama-3-8B's
// linears (incl. K = 14336) at M not a multiple of the tiles, small odd N/K (K a multiple of 16
// but not of the 128-byte K tile), and extreme magnitudes.
//
// Skips without a GPU, on a device other than compute capability 9.0, or when the build has no
// CUTLASS (the message says which).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gemm_w8a8_sm90.h"
#include "backend/cuda/ops_cuda.h"
#include "parity/parity_main_util.h"
#include "parity/parity_sm90.h"
#include "quant/gemm_w8a8.h"
#include "quant/weights.h"

namespace qserve::parity {
namespace {

using cuda::DeviceBuffer;
using cuda::to_device;
using cuda::to_host;
using cuda::W8A8Sm90Variant;

struct Shape {
  int64_t m, n, k;
};

std::string mnk(const Shape& s) {
  return shape_str({{"M", s.m}, {"N", s.n}, {"K", s.k}});
}

constexpr int64_t kFullCheckMacs = int64_t{1} << 31;

std::vector<int64_t> cpu_rows(const Shape& s) {
  std::vector<int64_t> rows;
  if (s.m * s.n * s.k <= kFullCheckMacs) {
    for (int64_t r = 0; r < s.m; ++r) rows.push_back(r);
    return rows;
  }
  std::set<int64_t> set = {0, 1, s.m - 2, s.m - 1};
  for (int64_t b = 64; b < s.m; b += 64) {
    set.insert(b - 1);
    set.insert(b);
  }
  for (int64_t r : set) {
    if (r >= 0 && r < s.m) rows.push_back(r);
  }
  return rows;
}

quant::W8PerChannel random_w8(ParityRng& rng, int64_t n, int64_t k) {
  quant::W8PerChannel w;
  w.n = n;
  w.k = k;
  w.w = rng.fast_ints<int8_t>(static_cast<size_t>(n * k), -128, 127);
  w.dequant_scale = rng.fp16_uniform(static_cast<size_t>(n), 1e-4f, 1e-2f);
  quant::validate(w);
  return w;
}

struct Acts {
  std::vector<int8_t> q;
  std::vector<uint16_t> scale;
};

Acts random_acts(ParityRng& rng, int64_t m, int64_t k) {
  Acts a;
  a.q = rng.fast_ints<int8_t>(static_cast<size_t>(m * k), -128, 127);
  a.scale = rng.fp16_uniform(static_cast<size_t>(m), 1e-3f, 0.5f);
  return a;
}

// Runs the sm90 kernel (`variant`, or the public gemm_w8a8 when `via_dispatch`) and compares
// with the simple kernel on all elements and with the CPU on cpu_rows().
void run_case(const Shape& s, const quant::W8PerChannel& w, const cuda::W8PerChannelOnDevice& dw,
              const Acts& a, const std::string& tag) {
  const auto da = to_device(a.q);
  const auto ds = to_device(a.scale);
  const size_t yn = static_cast<size_t>(s.m * s.n);
  DeviceBuffer<uint16_t> y_ref(yn), y(yn);
  DeviceBuffer<int32_t> acc(yn);

  // Reference path on the GPU: asking for the accumulators forces the simple kernel.
  poison(y_ref.data(), y_ref.bytes());
  cuda::gemm_w8a8(da.data(), ds.data(), s.m, dw.view(), y_ref.data(), acc.data(), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> want_all = to_host(y_ref);

  // CPU reference on the selected rows.
  const std::vector<int64_t> rows = cpu_rows(s);
  std::vector<uint16_t> want_rows(rows.size() * static_cast<size_t>(s.n));
  std::vector<int32_t> racc(static_cast<size_t>(s.n));
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    quant::w8a8_accumulate(a.q.data() + r * s.k, 1, w, racc.data());
    quant::w8a8_epilogue(racc.data(), 1, &a.scale[static_cast<size_t>(r)], w,
                         want_rows.data() + i * static_cast<size_t>(s.n));
  }
  std::string base = mnk(s) + tag;
  if (rows.size() != static_cast<size_t>(s.m)) {
    base += ",cpu_rows=" + std::to_string(rows.size());
  }
  // The simple kernel must itself agree with the CPU on those rows (guards the full comparison).
  {
    std::vector<uint16_t> got_rows;
    for (int64_t r : rows) {
      got_rows.insert(got_rows.end(), want_all.begin() + r * s.n, want_all.begin() + (r + 1) * s.n);
    }
    const auto res =
        compare_exact<uint16_t>("gemm_w8a8.simple.y_vs_cpu", base, got_rows, want_rows);
    EXPECT_PARITY(res, "gemm_w8a8.simple.y_vs_cpu", base);
  }

  struct Run {
    const char* name;
    bool dispatch;
    W8A8Sm90Variant variant;
  };
  const Run runs[] = {{"swapab_streamk", false, W8A8Sm90Variant::kSmallMSwapAB},
                      {"large_m", false, W8A8Sm90Variant::kLargeM},
                      {"coop_128x256", false, W8A8Sm90Variant::kCoop128x256},
                      {"coop_128x192", false, W8A8Sm90Variant::kCoop128x192},
                      {"dispatch", true, W8A8Sm90Variant::kAuto}};
  for (const Run& run : runs) {
    poison(y.data(), y.bytes());
    if (run.dispatch) {
      cuda::gemm_w8a8(da.data(), ds.data(), s.m, dw.view(), y.data(), nullptr, nullptr);
    } else {
      const bool launched = cuda::gemm_w8a8_sm90(da.data(), ds.data(), s.m, dw.view(), y.data(),
                                                 nullptr, run.variant);
      // Every shape here satisfies w8a8_sm90_applicable, so declining would be a bug (e.g. a
      // CUTLASS can_implement rejection we did not foresee).
      ASSERT_TRUE(launched) << "sm90 W8A8 kernel declined " << base << " variant=" << run.name;
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << base << " " << run.name;
    const std::vector<uint16_t> got = to_host(y);
    const std::string op = std::string("gemm_w8a8_sm90.") + run.name;
    const auto all = compare_exact<uint16_t>(op + ".y_vs_simple", base, got, want_all);
    EXPECT_PARITY(all, op + ".y_vs_simple", base);
    std::vector<uint16_t> got_rows;
    for (int64_t r : rows)
      got_rows.insert(got_rows.end(), got.begin() + r * s.n, got.begin() + (r + 1) * s.n);
    const auto cpu = compare_exact<uint16_t>(op + ".y_vs_cpu", base, got_rows, want_rows);
    EXPECT_PARITY(cpu, op + ".y_vs_cpu", base);
  }
}

TEST(ParityGemmFastW8A8, ApplicabilityRules) {
  QSERVE_PARITY_REQUIRE_SM90();
  DeviceBuffer<int8_t> a(4096), wq(4096);
  DeviceBuffer<uint16_t> sc(64), dq(64), y(4096);
  const cuda::W8PerChannelView ok{64, 64, wq.data(), dq.data()};
  EXPECT_TRUE(cuda::w8a8_sm90_applicable(a.data(), sc.data(), 7, ok, y.data()));
  // K % 16 != 0, N % 8 != 0, misaligned operand: the TMA constraints; these must fall back.
  const cuda::W8PerChannelView odd_k{64, 40, wq.data(), dq.data()};
  const cuda::W8PerChannelView odd_n{60, 64, wq.data(), dq.data()};
  EXPECT_FALSE(cuda::w8a8_sm90_applicable(a.data(), sc.data(), 7, odd_k, y.data()));
  EXPECT_FALSE(cuda::w8a8_sm90_applicable(a.data(), sc.data(), 7, odd_n, y.data()));
  EXPECT_FALSE(cuda::w8a8_sm90_applicable(a.data() + 4, sc.data(), 7, ok, y.data()));
  EXPECT_FALSE(cuda::w8a8_sm90_applicable(a.data(), sc.data(), 0, ok, y.data()));
  // The runner declines (launching nothing) instead of throwing, so gemm_w8a8 can fall back.
  EXPECT_FALSE(cuda::gemm_w8a8_sm90(a.data(), sc.data(), 7, odd_k, y.data(), nullptr));
}

TEST(ParityGemmFastW8A8, SmallShapesBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(401);
  // N from 8 (one 16-byte output row) to non-multiples of 64/128; K multiples of 16 that are not
  // multiples of the 128-byte K tile (TMA zero-fills the tail); M = 1 up to several tiles.
  const std::vector<Shape> shapes = {{1, 8, 16},      {3, 24, 48},     {7, 264, 272},
                                     {65, 136, 144},  {130, 520, 400}, {200, 72, 1040},
                                     {257, 1032, 528}};
  for (const Shape& s : shapes) {
    const auto w = random_w8(rng, s.n, s.k);
    const auto dw = cuda::upload(w);
    run_case(s, w, dw, random_acts(rng, s.m, s.k), "");
  }
}

// Llama-3-8B linears: qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336, at M that
// are not multiples of the 64/128-row tiles (plus 1 and 64 for decode).
TEST(ParityGemmFastW8A8, Llama3_8BShapesBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(402);
  const Shape layers[] = {{0, 6144, 4096}, {0, 4096, 4096}, {0, 28672, 4096}, {0, 4096, 14336}};
  for (const Shape& l : layers) {
    const auto w = random_w8(rng, l.n, l.k);
    const auto dw = cuda::upload(w);
    for (const int64_t m : {1, 13, 64, 133, 300}) {
      const Shape s{m, l.n, l.k};
      run_case(s, w, dw, random_acts(rng, m, l.k), "");
    }
  }
}

// Every product at its extreme: |acc| up to 14336 * 128 * 128 = 2.3e8 (exact in int32), both
// signs, with stream-K partial sums combined across CTAs.
TEST(ParityGemmFastW8A8, ExtremeMagnitudesBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  const Shape s{5, 136, 14336};
  Acts a;
  a.q.resize(static_cast<size_t>(s.m * s.k));
  for (int64_t r = 0; r < s.m; ++r) {
    for (int64_t i = 0; i < s.k; ++i) {
      const int8_t v = r % 3 == 0 ? -128 : r % 3 == 1 ? 127 : (i % 2 == 0 ? -128 : 127);
      a.q[static_cast<size_t>(r * s.k + i)] = v;
    }
  }
  a.scale = {float_to_fp16(0.5f), float_to_fp16(1e-3f), float_to_fp16(0.065504f),
             float_to_fp16(6e-5f), float_to_fp16(1.0f)};
  quant::W8PerChannel w;
  w.n = s.n;
  w.k = s.k;
  w.w.resize(static_cast<size_t>(s.n * s.k));
  for (int64_t n = 0; n < s.n; ++n) {
    std::fill(w.w.begin() + n * s.k, w.w.begin() + (n + 1) * s.k,
              static_cast<int8_t>(n % 2 == 0 ? -128 : 127));
  }
  w.dequant_scale.assign(static_cast<size_t>(s.n), float_to_fp16(1e-6f));
  w.dequant_scale[1] = float_to_fp16(2e-3f);  // large outputs: overflow to fp16 inf must match
  quant::validate(w);
  const auto dw = cuda::upload(w);
  run_case(s, w, dw, a, ",extreme");
}

}  // namespace
}  // namespace qserve::parity
