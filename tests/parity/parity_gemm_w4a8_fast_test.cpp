// Parity of the fast W4A8 paths (gemm_w4a8_fast.h) against the CPU reference quant/gemm_w4a8.h:
//  - small M (1..64): the packed-weight mma.sync kernel with cluster split-K,
//  - large M per-channel: the CUTLASS sm90 kernel with the per-channel EVT epilogue,
//  - large M g128: expanded int8 weights (from upload(), and expanded per call) + the W8A8 sm90
//    kernel with s1 as the per-channel scale, then the fp16 bias add.
// All are specified bit-exact (exact int32 accumulators, the reference's fp32 RN operation
// sequence), so y is compared exactly:
//  - on every element against the simple dp4a kernel (passing acc_out forces that path;
//    ParityGemmW4A8* in parity_gemm_test.cpp proves it bit-exact against the CPU), and
//  - on a set of rows (all when cheap; else the first/last rows and rows at 64-row boundaries)
//    against the CPU reference itself.
// Each case also asserts which path the dispatch took, so a fast path that silently stopped
// applying (and fell back to the simple kernel) fails here instead of passing vacuously.
//
// Skips without a GPU, on a device other than compute capability 9.0, or without CUTLASS.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gemm_sm90_tile_order.h"
#include "backend/cuda/gemm_w4a8_fast.h"
#include "backend/cuda/gemm_w8a8_sm90.h"
#include "backend/cuda/ops_cuda.h"
#include "core/error.h"
#include "parity/parity_main_util.h"
#include "parity/parity_sm90.h"
#include "quant/gemm_w4a8.h"
#include "quant/weights.h"

namespace qserve::parity {
namespace {

using cuda::DeviceBuffer;
using cuda::to_device;
using cuda::to_host;

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

struct Acts {
  std::vector<int8_t> q;
  std::vector<uint16_t> scale, sum;
};

Acts random_acts(ParityRng& rng, int64_t m, int64_t k) {
  Acts a;
  a.q = rng.fast_ints<int8_t>(static_cast<size_t>(m * k), -128, 127);
  a.scale = rng.fp16_uniform(static_cast<size_t>(m), 1e-3f, 0.5f);
  a.sum = rng.fp16_uniform(static_cast<size_t>(m), -200.0f, 200.0f);
  return a;
}

quant::W4PerChannel random_w4pc(ParityRng& rng, int64_t n, int64_t k) {
  quant::W4PerChannel w;
  w.n = n;
  w.k = k;
  w.q = rng.fast_ints<uint8_t>(static_cast<size_t>(n * k), 0, 15);
  w.s1_scales = rng.fp16_uniform(static_cast<size_t>(n), 1e-3f, 3e-2f);
  w.s1_szeros.resize(static_cast<size_t>(n));
  const std::vector<float> z = rng.uniform(static_cast<size_t>(n), 0.0f, 15.0f);
  for (int64_t i = 0; i < n; ++i) {
    w.s1_szeros[static_cast<size_t>(i)] = float_to_fp16(
        z[static_cast<size_t>(i)] * fp16_to_float(w.s1_scales[static_cast<size_t>(i)]));
  }
  quant::validate(w);
  return w;
}

quant::W4G128 random_w4g128(ParityRng& rng, int64_t n, int64_t k) {
  quant::W4G128 w;
  w.n = n;
  w.k = k;
  const int64_t groups = k / quant::kGroupSize;
  w.q = rng.fast_ints<uint8_t>(static_cast<size_t>(n * k), 0, 15);
  w.s1_scales = rng.fp16_uniform(static_cast<size_t>(n), 1e-4f, 1e-2f);
  // s2 up to 17 keeps 15 * s2 <= 255 (validate's domain); zeros over the whole int8 range so
  // the byte-wise wrap of Q * s2 + zero is exercised.
  w.s2_scales = rng.fast_ints<int8_t>(static_cast<size_t>(n * groups), 0, 17);
  w.s2_zeros = rng.fast_ints<int8_t>(static_cast<size_t>(n * groups), -128, 127);
  quant::validate(w);
  return w;
}

// The path the public call must take for m tokens on a cc 9.0 device with CUTLASS, when the
// weights come from upload() (q_packed present when packable, w8 present for g128).
std::string expected_path(bool g128, int64_t m, int64_t n, int64_t k) {
  if (m <= cuda::kW4A8SmallMMax) {
    return cuda::w4a8_packable(n, k) ? "small_m_mma_packed" : "simple_dp4a";
  }
  const bool sm90_ok = n % 8 == 0 && k % 16 == 0;
  if (!sm90_ok) return "simple_dp4a";
  return g128 ? "expand+sm90_w8a8" : "sm90_wgmma_evt";
}

// One case: the fast dispatch (and, for g128 large M, the per-call expansion) vs the simple
// kernel on all elements and vs the CPU on cpu_rows(). bias (fp16 [n]) when with_bias.
void run_case(const Shape& s, const quant::W4PerChannel* wpc, const cuda::W4PerChannelOnDevice* dpc,
              const quant::W4G128* wg, const cuda::W4G128OnDevice* dg, const Acts& a,
              bool with_bias, const std::string& tag) {
  const bool g128 = wg != nullptr;
  ParityRng brng(static_cast<uint64_t>(s.n * 31 + s.m));
  const std::vector<uint16_t> bias = brng.fp16_uniform(static_cast<size_t>(s.n), -2.0f, 2.0f);
  const auto dbias = to_device(bias);
  const uint16_t* bptr = with_bias ? dbias.data() : nullptr;
  const auto da = to_device(a.q);
  const auto dscale = to_device(a.scale);
  const auto dsum = to_device(a.sum);
  const size_t yn = static_cast<size_t>(s.m * s.n);
  DeviceBuffer<uint16_t> y_ref(yn), y(yn);
  DeviceBuffer<int32_t> acc(yn);

  auto run = [&](uint16_t* out, int32_t* acc_out, bool drop_w8) {
    if (g128) {
      cuda::W4G128View v = dg->view();
      if (drop_w8) v.w8 = nullptr;
      cuda::gemm_w4a8_g128(da.data(), dscale.data(), s.m, v, bptr, out, acc_out, nullptr);
    } else {
      cuda::gemm_w4a8_per_channel(da.data(), dscale.data(), dsum.data(), s.m, dpc->view(), bptr,
                                  out, acc_out, nullptr);
    }
  };

  // Reference path on the GPU: asking for the accumulators forces the simple kernel.
  poison(y_ref.data(), y_ref.bytes());
  run(y_ref.data(), acc.data(), false);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> want_all = to_host(y_ref);

  const std::vector<int64_t> rows = cpu_rows(s);
  std::vector<uint16_t> want_rows(rows.size() * static_cast<size_t>(s.n));
  std::vector<int32_t> racc(static_cast<size_t>(s.n));
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    const size_t ri = static_cast<size_t>(r);
    uint16_t* out = want_rows.data() + i * static_cast<size_t>(s.n);
    if (g128) {
      quant::w4a8_g128_accumulate(a.q.data() + r * s.k, 1, *wg, racc.data());
      quant::w4a8_g128_epilogue(racc.data(), 1, &a.scale[ri], *wg,
                                with_bias ? bias.data() : nullptr, out);
    } else {
      quant::w4a8_per_channel_accumulate(a.q.data() + r * s.k, 1, *wpc, racc.data());
      quant::w4a8_per_channel_epilogue(racc.data(), 1, &a.scale[ri], &a.sum[ri], *wpc,
                                       with_bias ? bias.data() : nullptr, out);
    }
  }
  const char* kind = g128 ? "gemm_w4a8_g128" : "gemm_w4a8_per_channel";
  std::string base = mnk(s) + tag + (with_bias ? ",bias" : "");
  if (rows.size() != static_cast<size_t>(s.m)) base += ",cpu_rows=" + std::to_string(rows.size());
  auto pick_rows = [&](const std::vector<uint16_t>& all) {
    std::vector<uint16_t> out;
    for (int64_t r : rows)
      out.insert(out.end(), all.begin() + r * s.n, all.begin() + (r + 1) * s.n);
    return out;
  };
  {  // the simple kernel must itself agree with the CPU on those rows (guards the full compare)
    const std::string op = std::string(kind) + ".simple.y_vs_cpu";
    EXPECT_PARITY(compare_exact<uint16_t>(op, base, pick_rows(want_all), want_rows), op, base);
  }

  const std::string path =
      g128 ? cuda::gemm_w4a8_g128_path(da.data(), dscale.data(), s.m, dg->view(), y.data())
           : cuda::gemm_w4a8_per_channel_path(da.data(), dscale.data(), dsum.data(), s.m,
                                              dpc->view(), y.data());
  EXPECT_EQ(path, expected_path(g128, s.m, s.n, s.k)) << kind << " " << base;

  const bool per_call = g128 && s.m > cuda::kW4A8SmallMMax;
  for (const bool drop_w8 : {false, true}) {
    if (drop_w8 && !per_call) continue;
    poison(y.data(), y.bytes());
    run(y.data(), nullptr, drop_w8);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << kind << " " << base;
    const std::vector<uint16_t> got = to_host(y);
    const std::string op = std::string(kind) + "." + path + (drop_w8 ? ".expand_per_call" : "");
    EXPECT_PARITY(compare_exact<uint16_t>(op + ".y_vs_simple", base, got, want_all),
                  op + ".y_vs_simple", base);
    EXPECT_PARITY(compare_exact<uint16_t>(op + ".y_vs_cpu", base, pick_rows(got), want_rows),
                  op + ".y_vs_cpu", base);
  }
}

void run_both(const Shape& s, const quant::W4PerChannel& wpc, const cuda::W4PerChannelOnDevice& dpc,
              const quant::W4G128& wg, const cuda::W4G128OnDevice& dg, const Acts& a,
              bool with_bias, const std::string& tag) {
  run_case(s, &wpc, &dpc, nullptr, nullptr, a, with_bias, tag);
  run_case(s, nullptr, nullptr, &wg, &dg, a, with_bias, tag);
}

// The packed layout exists exactly for n % 16 == 0 and k % 64 == 0, and upload() makes it (and
// the g128 int8 weights) for such shapes.
TEST(ParityGemmFastW4A8, UploadLayouts) {
  QSERVE_PARITY_REQUIRE_SM90();
  EXPECT_TRUE(cuda::w4a8_packable(16, 64));
  EXPECT_FALSE(cuda::w4a8_packable(24, 64));
  EXPECT_FALSE(cuda::w4a8_packable(16, 96));
  ParityRng rng(700);
  const auto wpc = random_w4pc(rng, 48, 256);
  const auto dpc = cuda::upload(wpc);
  EXPECT_NE(dpc.view().q_packed, nullptr);
  const auto wg = random_w4g128(rng, 48, 256);
  const auto dg = cuda::upload(wg);
  EXPECT_NE(dg.view().q_packed, nullptr);
  ASSERT_NE(dg.view().w8, nullptr);
  // The uploaded int8 weights are quant::g128_int8_row's bytes.
  const std::vector<int8_t> got = to_host(dg.w8);
  std::vector<int8_t> want(static_cast<size_t>(wg.n * wg.k));
  for (int64_t r = 0; r < wg.n; ++r) quant::g128_int8_row(wg, r, want.data() + r * wg.k);
  EXPECT_PARITY(compare_exact<int8_t>("w4a8_g128_expand", "N=48,K=256", got, want),
                "w4a8_g128_expand", "N=48,K=256");
}

// Small shapes: N not a multiple of the 128-channel CTA, K with 1..7 64-wide blocks (split-K
// factors where blocks do not divide evenly), M from 1 over the 8-token tiles to past 64.
TEST(ParityGemmFastW4A8, SmallShapesBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(701);
  const std::vector<Shape> layers = {{0, 16, 128}, {0, 48, 384}, {0, 272, 896}, {0, 1040, 256}};
  for (const Shape& l : layers) {
    const auto wpc = random_w4pc(rng, l.n, l.k);
    const auto dpc = cuda::upload(wpc);
    const auto wg = random_w4g128(rng, l.n, l.k);
    const auto dg = cuda::upload(wg);
    for (const int64_t m : {1, 2, 7, 9, 16, 31, 33, 64, 65, 130}) {
      const Shape s{m, l.n, l.k};
      run_both(s, wpc, dpc, wg, dg, random_acts(rng, m, l.k), m % 2 == 1, "");
    }
  }
}

// Llama-3-8B linears: qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336.
TEST(ParityGemmFastW4A8, Llama3_8BShapesBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(702);
  const Shape layers[] = {{0, 6144, 4096}, {0, 4096, 4096}, {0, 28672, 4096}, {0, 4096, 14336}};
  for (const Shape& l : layers) {
    const auto wpc = random_w4pc(rng, l.n, l.k);
    const auto dpc = cuda::upload(wpc);
    const auto wg = random_w4g128(rng, l.n, l.k);
    const auto dg = cuda::upload(wg);
    for (const int64_t m : {1, 7, 16, 64, 133, 1024}) {
      const Shape s{m, l.n, l.k};
      run_both(s, wpc, dpc, wg, dg, random_acts(rng, m, l.k), m == 7 || m == 133, "");
    }
  }
}

// Extremes: codes 0 / 7 / 15, g128 weights at -128 and +127 (s2 = 17 with zero 0x81 and s2 = 0
// with zero 127), activations -128 / 127 over K = 14336 (|acc| up to 14336 * 128 * 128 for
// g128), fp16 scales and sums at the edges of what the reference sees (overflow to inf included).
TEST(ParityGemmFastW4A8, ExtremesBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  const int64_t n = 144, k = 14336;
  quant::W4PerChannel wpc;
  wpc.n = n;
  wpc.k = k;
  wpc.q.assign(static_cast<size_t>(n * k), 15);
  for (int64_t r = 1; r < n; r += 2) {
    std::fill(wpc.q.begin() + r * k, wpc.q.begin() + (r + 1) * k, r % 4 == 1 ? 0 : 7);
  }
  wpc.s1_scales.assign(static_cast<size_t>(n), float_to_fp16(1e-4f));
  wpc.s1_szeros.assign(static_cast<size_t>(n), float_to_fp16(7.5e-4f));
  wpc.s1_scales[2] = float_to_fp16(3e-2f);  // large outputs
  quant::validate(wpc);
  const auto dpc = cuda::upload(wpc);

  quant::W4G128 wg;
  wg.n = n;
  wg.k = k;
  const int64_t groups = k / quant::kGroupSize;
  wg.q.assign(static_cast<size_t>(n * k), 15);
  wg.s1_scales.assign(static_cast<size_t>(n), float_to_fp16(1e-5f));
  wg.s1_scales[3] = float_to_fp16(1.0f);  // |y| past 65504 -> inf, must match
  wg.s2_scales.resize(static_cast<size_t>(n * groups));
  wg.s2_zeros.resize(static_cast<size_t>(n * groups));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const size_t i = static_cast<size_t>(r * groups + g);
      wg.s2_scales[i] = r % 2 == 0 ? 17 : 0;  // 15 * 17 = 255 (validate's limit)
      wg.s2_zeros[i] = r % 2 == 0 ? static_cast<int8_t>(-127) : static_cast<int8_t>(127);
    }
  }
  quant::validate(wg);
  std::vector<int8_t> row(static_cast<size_t>(k));
  quant::g128_int8_row(wg, 0, row.data());
  ASSERT_EQ(row[0], -128) << "the extreme g128 weight construction is wrong";
  const auto dg = cuda::upload(wg);

  for (const int64_t m : {5, 64, 133}) {
    Acts a;
    a.q.resize(static_cast<size_t>(m * k));
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t i = 0; i < k; ++i) {
        a.q[static_cast<size_t>(r * k + i)] = r % 3 == 0   ? -128
                                              : r % 3 == 1 ? 127
                                                           : (i % 2 == 0 ? -128 : 127);
      }
    }
    for (int64_t r = 0; r < m; ++r) {
      const float scales[] = {0.5f, 1e-3f, 0.065504f, 6e-5f, 1.0f};
      const float sums[] = {-60000.0f, 60000.0f, 0.0f, 1.0f, -3.0f};
      a.scale.push_back(float_to_fp16(scales[r % 5]));
      a.sum.push_back(float_to_fp16(sums[r % 5]));
    }
    const Shape s{m, n, k};
    run_both(s, wpc, dpc, wg, dg, a, m == 133, ",extreme");
  }
}

// Every launch configuration of the small-M kernel (the tuning space of `bench_gemm
// --tune-small-m`; the dispatch may pick any of them from the tuned table) against the simple
// kernel, bit for bit: N with a partial 128-channel CTA and an odd count of 16-row tiles (so a
// 2-tile warp has its second tile past N), K blocks not divisible by the split, M in every token
// bucket including partial tiles. Invalid configurations are refused with an error.
TEST(ParityGemmFastW4A8, SmallMEveryConfigBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(704);
  const int64_t n = 272, k = 448;  // 17 row tiles; 7 K blocks
  const auto wpc = random_w4pc(rng, n, k);
  const auto dpc = cuda::upload(wpc);
  const auto wg = random_w4g128(rng, n, 384);  // g128 needs k % 128 == 0: 6 K blocks
  const auto dg = cuda::upload(wg);
  std::vector<cuda::W4A8SmallMConfig> configs;
  for (const auto& [rt, u] :
       {std::pair{1, 4}, std::pair{1, 8}, std::pair{1, 16}, std::pair{2, 2}, std::pair{2, 4}}) {
    for (const int sp : {1, 2, 3, 4, 5, 6, 7}) configs.push_back({rt, u, sp, false});
  }
  for (const int sp : {1, 2, 3, 4, 5, 6, 7}) configs.push_back({1, 8, sp, true});
  // The row-tile kernel (splits = its warps; 17 tiles: the last CTA of 2 has 1).
  for (const auto& [rt, u, w] : {std::tuple{1, 4, 8}, std::tuple{1, 8, 8}, std::tuple{2, 4, 8}})
    configs.push_back({rt, u, w, false, true});
  for (const int64_t m : {1, 5, 8, 9, 16, 17, 32, 33, 64}) {
    for (const bool g128 : {false, true}) {
      const int64_t kk = g128 ? 384 : k;
      const Acts a = random_acts(rng, m, kk);
      const auto da = to_device(a.q);
      const auto dscale = to_device(a.scale);
      const auto dsum = to_device(a.sum);
      const size_t yn = static_cast<size_t>(m * n);
      DeviceBuffer<uint16_t> y_ref(yn), y(yn);
      DeviceBuffer<int32_t> acc(yn);
      if (g128)
        cuda::gemm_w4a8_g128(da.data(), dscale.data(), m, dg.view(), nullptr, y_ref.data(),
                             acc.data(), nullptr);
      else
        cuda::gemm_w4a8_per_channel(da.data(), dscale.data(), dsum.data(), m, dpc.view(), nullptr,
                                    y_ref.data(), acc.data(), nullptr);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<uint16_t> want = to_host(y_ref);
      for (const cuda::W4A8SmallMConfig& c : configs) {
        if (!c.ktile && c.splits > kk / 64) continue;  // g128's K has 6 blocks
        const std::string base =
            mnk({m, n, kk}) + (c.wgmma ? ",wgmma" : (c.ktile ? ",ktile" : ",mma")) +
            ",rt=" + std::to_string(c.row_tiles_per_warp) +
            ",u=" + std::to_string(c.k_blocks_in_flight) + ",splits=" + std::to_string(c.splits);
        ASSERT_TRUE(cuda::w4a8_small_m_config_valid(c, m, kk)) << base;
        poison(y.data(), y.bytes());
        const bool ran =
            g128 ? cuda::gemm_w4a8_g128_small_m(da.data(), dscale.data(), m, dg.view(), nullptr,
                                                y.data(), nullptr, &c)
                 : cuda::gemm_w4a8_per_channel_small_m(da.data(), dscale.data(), dsum.data(), m,
                                                       dpc.view(), nullptr, y.data(), nullptr, &c);
        ASSERT_TRUE(ran) << base;
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << base;
        const std::string op = g128 ? "gemm_w4a8_g128_small_m" : "gemm_w4a8_per_channel_small_m";
        EXPECT_PARITY(compare_exact<uint16_t>(op, base, to_host(y), want), op, base);
      }
    }
  }
  // Refused: a ring depth the kernel does not have, more splits than K blocks or than a
  // portable cluster.
  const Acts a = random_acts(rng, 4, k);
  const auto da = to_device(a.q);
  const auto dscale = to_device(a.scale);
  const auto dsum = to_device(a.sum);
  DeviceBuffer<uint16_t> y(static_cast<size_t>(4 * n));
  for (const cuda::W4A8SmallMConfig bad :
       {cuda::W4A8SmallMConfig{1, 2, 1}, cuda::W4A8SmallMConfig{3, 4, 1},
        cuda::W4A8SmallMConfig{1, 8, 9}, cuda::W4A8SmallMConfig{2, 4, 0},
        cuda::W4A8SmallMConfig{2, 4, 1, true}, cuda::W4A8SmallMConfig{1, 4, 1, true},
        cuda::W4A8SmallMConfig{1, 8, 2, false, true}, cuda::W4A8SmallMConfig{1, 16, 8, false, true},
        cuda::W4A8SmallMConfig{2, 8, 8, false, true}, cuda::W4A8SmallMConfig{1, 4, 16, false, true},
        cuda::W4A8SmallMConfig{3, 4, 8, false, true},
        cuda::W4A8SmallMConfig{1, 8, 8, true, true}}) {
    EXPECT_FALSE(cuda::w4a8_small_m_config_valid(bad, 4, k));
    EXPECT_THROW(cuda::gemm_w4a8_per_channel_small_m(da.data(), dscale.data(), dsum.data(), 4,
                                                     dpc.view(), nullptr, y.data(), nullptr, &bad),
                 std::exception);
  }
  EXPECT_FALSE(cuda::w4a8_small_m_config_valid({1, 8, 2}, 4, 64));  // 2 splits of 1 K block
  // The mma.sync kernel stages the CTA's activation slice: 64 tokens x 14336 of K in one
  // split would need 900 KB of shared memory.
  EXPECT_FALSE(cuda::w4a8_small_m_config_valid({1, 8, 1}, 64, 14336));
  EXPECT_TRUE(cuda::w4a8_small_m_config_valid({1, 8, 1, true}, 64, 14336));  // streams them
  // The row-tile kernel stages each warp's K part of the activations: 64 tokens x 14336 of K
  // would need 960 KB; 8 tokens fit.
  EXPECT_FALSE(cuda::w4a8_small_m_config_valid({1, 8, 8, false, true}, 64, 14336));
  EXPECT_TRUE(cuda::w4a8_small_m_config_valid({1, 8, 8, false, true}, 8, 14336));
  EXPECT_FALSE(cuda::w4a8_small_m_config_valid({2, 4, 16, false, true}, 16, 448));  // 8 warps
  EXPECT_FALSE(cuda::w4a8_small_m_config_valid({2, 4, 8, false, true}, 64, 14336));
  EXPECT_TRUE(cuda::w4a8_small_m_config_valid({2, 4, 8, false, true}, 64, 448));
}

// K = 28672 (Llama-2-70B's down projection) at 33..64 tokens: the mma.sync kernel's activation
// slice does not fit shared memory in one split, so the dispatch must take the wgmma kernel.
TEST(ParityGemmFastW4A8, SmallMLongK) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(705);
  const int64_t n = 144, k = 28672;
  EXPECT_TRUE(cuda::w4a8_small_m_applies(false, 64, n, k));
  EXPECT_FALSE(cuda::w4a8_small_m_config_valid({1, 8, 1, false}, 64, k));
  const auto wpc = random_w4pc(rng, n, k);
  const auto dpc = cuda::upload(wpc);
  const auto wg = random_w4g128(rng, n, k);
  const auto dg = cuda::upload(wg);
  for (const int64_t m : {33, 64}) {
    const Shape s{m, n, k};
    run_both(s, wpc, dpc, wg, dg, random_acts(rng, m, k), m == 33, ",long_k");
  }
}

// Random activations for m tokens on the device, and the simple (reference) kernel's output for
// them on `w` (gemm_w4a8_per_channel with the int32 accumulators requested): what every sm90
// variant and tile order must reproduce bit for bit. `sync` is the device's status after that
// run (the caller asserts it).
struct LargeMProblem {
  DeviceBuffer<int8_t> q;
  DeviceBuffer<uint16_t> scale, sum;
  std::vector<uint16_t> want;
  cudaError_t sync = cudaSuccess;
};

LargeMProblem large_m_problem(ParityRng& rng, const cuda::W4PerChannelOnDevice& w, int64_t m,
                              int64_t n, int64_t k) {
  const Acts a = random_acts(rng, m, k);
  LargeMProblem p{to_device(a.q), to_device(a.scale), to_device(a.sum), {}, cudaSuccess};
  const size_t yn = static_cast<size_t>(m * n);
  DeviceBuffer<uint16_t> y_ref(yn);
  DeviceBuffer<int32_t> acc(yn);
  cuda::gemm_w4a8_per_channel(p.q.data(), p.scale.data(), p.sum.data(), m, w.view(), nullptr,
                              y_ref.data(), acc.data(), nullptr);
  p.sync = cudaDeviceSynchronize();
  if (p.sync == cudaSuccess) p.want = to_host(y_ref);
  return p;
}

// Every CUTLASS variant of the large-M per-channel kernel (W4A8Sm90Variant; the dispatch picks
// among them by shape) against the simple kernel, bit for bit: M with partial 64- and 128-row
// tiles and odd tile counts, N with a partial 128-channel tile, a K/N ratio that selects the
// swapped stream-K kernel (K >= 2N) and one that does not.
TEST(ParityGemmFastW4A8, LargeMEveryVariantBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(706);
  for (const auto& [n, k] : {std::pair<int64_t, int64_t>{272, 512}, {136, 1024}}) {
    const auto wpc = random_w4pc(rng, n, k);
    const auto dpc = cuda::upload(wpc);
    for (const int64_t m : {65, 127, 192, 200, 384, 520}) {
      const LargeMProblem p = large_m_problem(rng, dpc, m, n, k);
      ASSERT_EQ(p.sync, cudaSuccess);
      const std::vector<uint16_t>& want = p.want;
      DeviceBuffer<uint16_t> y(static_cast<size_t>(m * n));
      std::vector<cuda::W4A8Sm90Variant> variants = {cuda::W4A8Sm90Variant::kAuto};
      variants.insert(variants.end(), std::begin(cuda::kW4A8Sm90Variants),
                      std::end(cuda::kW4A8Sm90Variants));
      for (const auto v : variants) {
        const std::string base = mnk({m, n, k}) + ",variant=" + cuda::w4a8_sm90_variant_name(v);
        poison(y.data(), y.bytes());
        ASSERT_TRUE(cuda::gemm_w4a8_per_channel_sm90(p.q.data(), p.scale.data(), p.sum.data(), m,
                                                     dpc.view(), y.data(), nullptr, nullptr, v))
            << base;
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << base;
        const std::string op = "gemm_w4a8_per_channel_sm90";
        EXPECT_PARITY(compare_exact<uint16_t>(op, base, to_host(y), want), op, base);
      }
    }
  }
}

}  // namespace
// The A/B overrides' parsers (QSERVE_SM90_TILE_ORDER, QSERVE_W4A8_SM90_LARGE): host code, so this
// runs without a GPU too.
TEST(ParityGemmFastW4A8, TileOrderAndVariantNamesParse) {
  const cuda::Sm90TileOrder a = cuda::parse_sm90_tile_order("8,n");
  EXPECT_EQ(a.swizzle, 8);
  EXPECT_EQ(a.raster, cuda::Sm90TileOrder::Raster::kAlongN);
  const cuda::Sm90TileOrder b = cuda::parse_sm90_tile_order("2");
  EXPECT_EQ(b.swizzle, 2);
  EXPECT_EQ(b.raster, cuda::Sm90TileOrder::Raster::kHeuristic);
  EXPECT_EQ(cuda::parse_sm90_tile_order("1,m").raster, cuda::Sm90TileOrder::Raster::kAlongM);
  for (const char* bad : {"", "3,n", "8,x", "16,n", "8,", "n", "8,nn", " 8,n"})
    EXPECT_THROW(cuda::parse_sm90_tile_order(bad), Error) << "'" << bad << "'";
  for (const auto v : cuda::kW4A8Sm90Variants)
    EXPECT_EQ(cuda::w4a8_sm90_variant_from_name(cuda::w4a8_sm90_variant_name(v)), v);
  EXPECT_THROW(cuda::w4a8_sm90_variant_from_name("auto"), Error);
  EXPECT_THROW(cuda::w4a8_sm90_variant_from_name("sm90_128x128"), Error);
}

// The shape rules (host code: runs without a GPU too).
TEST(ParityGemmFastW4A8, LargeMChoiceRules) {
  // The choice: swapped stream-K for a long K below 512 tokens, 64-row ping-pong for an even
  // count of 64-row tiles, the 128x128 kernel from 512 tokens on.
  EXPECT_EQ(cuda::w4a8_sm90_choose(256, 4096, 14336), cuda::W4A8Sm90Variant::kSwapStreamK);
  EXPECT_EQ(cuda::w4a8_sm90_choose(256, 4096, 4096), cuda::W4A8Sm90Variant::kPingpong64);
  EXPECT_EQ(cuda::w4a8_sm90_choose(192, 4096, 4096), cuda::W4A8Sm90Variant::kSwapStreamK);
  EXPECT_EQ(cuda::w4a8_sm90_choose(512, 4096, 14336), cuda::W4A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w4a8_sm90_choose(640, 4096, 4096, 200), cuda::W4A8Sm90Variant::kPingpong64);
  EXPECT_EQ(cuda::w4a8_sm90_choose(640, 4096, 4096), cuda::W4A8Sm90Variant::kCoop128x192);
  EXPECT_EQ(cuda::w4a8_sm90_choose(4096, 4096, 4096), cuda::W4A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w4a8_sm90_choose(65536, 28672, 4096), cuda::W4A8Sm90Variant::kCoop128x256);
  // 70B-class linears at 129..256 tokens: one cluster of 128-row tiles (weights read once).
  EXPECT_EQ(cuda::w4a8_sm90_choose(240, 57344, 8192), cuda::W4A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w4a8_sm90_choose(240, 8192, 28672), cuda::W4A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w4a8_sm90_choose(263, 57344, 8192), cuda::W4A8Sm90Variant::kSwapStreamK);
  EXPECT_EQ(cuda::w4a8_sm90_choose(240, 28672, 4096), cuda::W4A8Sm90Variant::kPingpong64);
  // 128x192 tiles where 128x128 ones need more than one wave and they fit in one (132 SMs):
  // qkv at 384 and 512 tokens, o / down at 768; not o at 512 (128 tiles of 128x128: one wave),
  // not gate_up (many waves either way), not on a device with more SMs.
  EXPECT_EQ(cuda::w4a8_sm90_choose(512, 6144, 4096), cuda::W4A8Sm90Variant::kCoop128x192);
  EXPECT_EQ(cuda::w4a8_sm90_choose(384, 6144, 4096), cuda::W4A8Sm90Variant::kCoop128x192);
  EXPECT_EQ(cuda::w4a8_sm90_choose(768, 4096, 4096), cuda::W4A8Sm90Variant::kCoop128x192);
  EXPECT_EQ(cuda::w4a8_sm90_choose(768, 4096, 14336), cuda::W4A8Sm90Variant::kCoop128x192);
  EXPECT_EQ(cuda::w4a8_sm90_choose(512, 4096, 4096), cuda::W4A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w4a8_sm90_choose(512, 28672, 4096), cuda::W4A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w4a8_sm90_choose(512, 6144, 4096, 200), cuda::W4A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w4a8_sm90_tile_order(cuda::W4A8Sm90Variant::kCoop128x256).swizzle, 8);
  EXPECT_EQ(cuda::w4a8_sm90_tile_order(cuda::W4A8Sm90Variant::kLargeM).swizzle, 1);
  // W8A8 (and g128 on its expanded weights): the same 128x256 kernel for prefill-sized steps.
  EXPECT_EQ(cuda::w8a8_sm90_choose(64), cuda::W8A8Sm90Variant::kSmallMSwapAB);
  EXPECT_EQ(cuda::w8a8_sm90_choose(1024), cuda::W8A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w8a8_sm90_choose(65536), cuda::W8A8Sm90Variant::kCoop128x256);
  EXPECT_EQ(cuda::w8a8_sm90_choose(512, 6144), cuda::W8A8Sm90Variant::kCoop128x192);
  EXPECT_EQ(cuda::w8a8_sm90_choose(512), cuda::W8A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w8a8_sm90_choose(512, 4096), cuda::W8A8Sm90Variant::kLargeM);
  EXPECT_EQ(cuda::w8a8_sm90_tile_order(cuda::W8A8Sm90Variant::kCoop128x256).swizzle, 8);
  EXPECT_EQ(cuda::w8a8_sm90_tile_order(cuda::W8A8Sm90Variant::kLargeM).swizzle, 1);
}

// The tile order (gemm_sm90_tile_order.h) only changes which CTA computes which output tile, so
// every order of every persistent variant gives the default's bits. M and N span several tiles
// and clusters (odd counts included) so a swizzled walk that skipped or repeated a tile would
// show. The W8A8 kernel (g128 and W8A8 at large M) takes the same orders.
TEST(ParityGemmFastW4A8, LargeMTileOrdersBitExact) {
  QSERVE_PARITY_REQUIRE_SM90();
  ParityRng rng(707);
  const int64_t n = 1160, k = 384, m = 1300;  // 11 x 10 tiles of 128 (odd cluster count)
  const auto wpc = random_w4pc(rng, n, k);
  const auto dpc = cuda::upload(wpc);
  const LargeMProblem p = large_m_problem(rng, dpc, m, n, k);
  ASSERT_EQ(p.sync, cudaSuccess);
  const std::vector<uint16_t>& want = p.want;
  const auto& da = p.q;
  const auto& dscale = p.scale;
  const auto& dsum = p.sum;
  const size_t yn = static_cast<size_t>(m * n);
  DeviceBuffer<uint16_t> y(yn);
  // W8A8 on random int8 weights: its reference is its own default order.
  const std::vector<int8_t> w8 = rng.fast_ints<int8_t>(static_cast<size_t>(n * k), -127, 127);
  const std::vector<uint16_t> dq = rng.fp16_uniform(static_cast<size_t>(n), 1e-4f, 1e-2f);
  const auto dw8 = to_device(w8);
  const auto ddq = to_device(dq);
  const cuda::W8PerChannelView w8v{n, k, dw8.data(), ddq.data()};
  DeviceBuffer<uint16_t> y8_ref(yn);
  ASSERT_TRUE(cuda::gemm_w8a8_sm90(da.data(), dscale.data(), m, w8v, y8_ref.data(), nullptr,
                                   cuda::W8A8Sm90Variant::kLargeM, nullptr, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint16_t> want8 = to_host(y8_ref);
  using Raster = cuda::Sm90TileOrder::Raster;
  for (const Raster r : {Raster::kHeuristic, Raster::kAlongM, Raster::kAlongN}) {
    for (const int sw : {1, 2, 4, 8}) {
      const cuda::Sm90TileOrder order{sw, r};
      const std::string ord =
          ",swizzle=" + std::to_string(sw) + ",raster=" + cuda::sm90_raster_name(r);
      for (const auto v :
           {cuda::W4A8Sm90Variant::kLargeM, cuda::W4A8Sm90Variant::kPingpong64,
            cuda::W4A8Sm90Variant::kCoop256x128, cuda::W4A8Sm90Variant::kCoop128x256}) {
        const std::string base =
            mnk({m, n, k}) + ",variant=" + cuda::w4a8_sm90_variant_name(v) + ord;
        poison(y.data(), y.bytes());
        ASSERT_TRUE(cuda::gemm_w4a8_per_channel_sm90(da.data(), dscale.data(), dsum.data(), m,
                                                     dpc.view(), y.data(), nullptr, nullptr, v,
                                                     &order))
            << base;
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << base;
        const std::string op = "gemm_w4a8_per_channel_sm90";
        EXPECT_PARITY(compare_exact<uint16_t>(op, base, to_host(y), want), op, base);
      }
      for (const auto v8 : {cuda::W8A8Sm90Variant::kLargeM, cuda::W8A8Sm90Variant::kCoop128x256}) {
        const std::string base8 =
            mnk({m, n, k}) + ",w8a8 " + cuda::w8a8_sm90_variant_name(v8) + ord;
        poison(y.data(), y.bytes());
        ASSERT_TRUE(cuda::gemm_w8a8_sm90(da.data(), dscale.data(), m, w8v, y.data(), nullptr, v8,
                                         nullptr, &order))
            << base8;
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << base8;
        EXPECT_PARITY(compare_exact<uint16_t>("gemm_w8a8_sm90", base8, to_host(y), want8),
                      "gemm_w8a8_sm90", base8);
      }
    }
  }
}

}  // namespace qserve::parity
