// Parity of the GEMMs against their CPU references: the W4A8 (per-channel, g128) and W8A8
// integer GEMMs are bit-exact by specification, so both their int32 accumulators and their fp16
// outputs are compared exactly; the cuBLASLt float GEMM is compared with a double reference
// within the fp32-accumulation tolerance stated in ops_cuda.h. Also the caching allocator.
//
// Shapes: small ones (N and K not multiples of the 64-wide tiles, K not a multiple of 4 for the
// byte path), and Llama-3-8B's linears (qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down
// 4096x14336) at M in {1, 7, 64, 133}. The CPU reference costs M*N*K; above a budget only a
// set of rows is checked on the CPU (all columns of every tile-boundary row and of the last,
// partial tile), while the GPU still computes all M rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda.h"
#include "core/thread_pool.h"
#include "parity/parity_main_util.h"
#include "quant/fp16_math.h"
#include "quant/gemm_w4a8.h"
#include "quant/gemm_w8a8.h"
#include "quant/weights.h"

namespace qserve::parity {
namespace {

using cuda::DeviceBuffer;
using cuda::to_device;
using cuda::to_host;

struct GemmShape {
  int64_t m, n, k;
};

std::string mnk(const GemmShape& s) {
  return shape_str({{"M", s.m}, {"N", s.n}, {"K", s.k}});
}

// CPU budget per case in multiply-adds (the int8 reference runs at a few GMAC/s per core).
constexpr int64_t kFullCheckMacs = int64_t{1} << 31;

// Rows whose outputs the CPU recomputes: all rows when cheap, else the first rows, every row
// next to a 64-row tile boundary, and the whole last tile.
std::vector<int64_t> rows_to_check(const GemmShape& s) {
  std::vector<int64_t> rows;
  if (s.m * s.n * s.k <= kFullCheckMacs) {
    for (int64_t r = 0; r < s.m; ++r) rows.push_back(r);
    return rows;
  }
  std::set<int64_t> set = {0, 1, s.m - 1};
  for (int64_t b = 64; b < s.m; b += 64) {
    set.insert(b - 1);
    set.insert(b);
  }
  for (int64_t r = std::max<int64_t>(0, s.m - s.m % 64); r < s.m && s.m % 64 != 0; ++r) {
    set.insert(r);
  }
  for (int64_t r : set) {
    if (r >= 0 && r < s.m) rows.push_back(r);
  }
  return rows;
}

// The GPU's rows `rows` of a [m, n] result.
template <typename T>
std::vector<T> select_rows(const std::vector<T>& full, int64_t n,
                           const std::vector<int64_t>& rows) {
  std::vector<T> out;
  out.reserve(rows.size() * static_cast<size_t>(n));
  for (int64_t r : rows) out.insert(out.end(), full.begin() + r * n, full.begin() + (r + 1) * n);
  return out;
}

// Quantized activations of m rows: random int8 in the full range [-128, 127], fp16 scales in
// QServe's typical range, fp16 sums of plausible magnitude.
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

quant::W8PerChannel random_w8(ParityRng& rng, int64_t n, int64_t k) {
  quant::W8PerChannel w;
  w.n = n;
  w.k = k;
  w.w = rng.fast_ints<int8_t>(static_cast<size_t>(n * k), -128, 127);
  w.dequant_scale = rng.fp16_uniform(static_cast<size_t>(n), 1e-4f, 1e-2f);
  quant::validate(w);
  return w;
}

// Device copies of activations and poisoned outputs.
struct GemmIO {
  DeviceBuffer<int8_t> aq;
  DeviceBuffer<uint16_t> scale, sum, bias, y;
  DeviceBuffer<int32_t> acc;
  GemmIO(const Acts& a, const std::vector<uint16_t>& b, int64_t m, int64_t n)
      : aq(to_device(a.q)),
        scale(to_device(a.scale)),
        sum(to_device(a.sum)),
        bias(to_device(b)),
        y(static_cast<size_t>(m * n)),
        acc(static_cast<size_t>(m * n)) {
    poison(y.data(), y.bytes());
    poison(acc.data(), acc.bytes());
  }
};

enum class Kind { kW4PerChannel, kW4G128, kW8A8 };
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kW4PerChannel:
      return "gemm_w4a8_per_channel";
    case Kind::kW4G128:
      return "gemm_w4a8_g128";
    case Kind::kW8A8:
      return "gemm_w8a8";
  }
  return "?";
}

// Runs one quantized GEMM on the GPU and the CPU reference on the checked rows, and compares
// the accumulators and the fp16 outputs exactly.
void run_quant_gemm_case(Kind kind, const GemmShape& s, const Acts& a, bool with_bias,
                         const quant::W4PerChannel* w4pc, const quant::W4G128* w4g,
                         const quant::W8PerChannel* w8, const std::string& tag = "") {
  ParityRng rng(static_cast<uint64_t>(s.m * 1000003 + s.n * 101 + s.k));
  const std::vector<uint16_t> bias =
      with_bias ? rng.fp16_uniform(static_cast<size_t>(s.n), -4.0f, 4.0f) : std::vector<uint16_t>{};
  GemmIO io(a, bias, s.m, s.n);
  const uint16_t* dbias = with_bias ? io.bias.data() : nullptr;
  switch (kind) {
    case Kind::kW4PerChannel: {
      const auto dw = cuda::upload(*w4pc);
      cuda::gemm_w4a8_per_channel(io.aq.data(), io.scale.data(), io.sum.data(), s.m, dw.view(),
                                  dbias, io.y.data(), io.acc.data(), nullptr);
      break;
    }
    case Kind::kW4G128: {
      const auto dw = cuda::upload(*w4g);
      cuda::gemm_w4a8_g128(io.aq.data(), io.scale.data(), s.m, dw.view(), dbias, io.y.data(),
                           io.acc.data(), nullptr);
      break;
    }
    case Kind::kW8A8: {
      const auto dw = cuda::upload(*w8);
      cuda::gemm_w8a8(io.aq.data(), io.scale.data(), s.m, dw.view(), io.y.data(), io.acc.data(),
                      nullptr);
      break;
    }
  }
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << kind_name(kind) << " " << mnk(s);
  const std::vector<int32_t> got_acc = to_host(io.acc);
  const std::vector<uint16_t> got_y = to_host(io.y);

  // CPU reference, one row at a time for the checked rows (a row depends only on its inputs).
  const std::vector<int64_t> rows = rows_to_check(s);
  std::vector<int32_t> want_acc(rows.size() * static_cast<size_t>(s.n));
  std::vector<uint16_t> want_y(rows.size() * static_cast<size_t>(s.n));
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    const int8_t* arow = a.q.data() + r * s.k;
    int32_t* acc = want_acc.data() + i * static_cast<size_t>(s.n);
    uint16_t* y = want_y.data() + i * static_cast<size_t>(s.n);
    const uint16_t* b = with_bias ? bias.data() : nullptr;
    switch (kind) {
      case Kind::kW4PerChannel:
        quant::w4a8_per_channel_accumulate(arow, 1, *w4pc, acc);
        quant::w4a8_per_channel_epilogue(acc, 1, &a.scale[r], &a.sum[r], *w4pc, b, y);
        break;
      case Kind::kW4G128:
        quant::w4a8_g128_accumulate(arow, 1, *w4g, acc);
        quant::w4a8_g128_epilogue(acc, 1, &a.scale[r], *w4g, b, y);
        break;
      case Kind::kW8A8:
        quant::w8a8_accumulate(arow, 1, *w8, acc);
        quant::w8a8_epilogue(acc, 1, &a.scale[r], *w8, y);
        break;
    }
  }
  std::string shape = mnk(s) + (with_bias ? ",bias" : "") + tag;
  if (rows.size() != static_cast<size_t>(s.m))
    shape += ",rows_checked=" + std::to_string(rows.size());
  const std::string op = kind_name(kind);
  const auto ra =
      compare_exact<int32_t>(op + ".acc", shape, select_rows(got_acc, s.n, rows), want_acc);
  EXPECT_PARITY(ra, op + ".acc", shape);
  const auto ry = compare_exact<uint16_t>(op + ".y", shape, select_rows(got_y, s.n, rows), want_y);
  EXPECT_PARITY(ry, op + ".y", shape);
}

const std::vector<GemmShape> kSmallShapes = {{1, 1, 128},     {7, 100, 256},   {64, 64, 128},
                                             {133, 300, 384}, {65, 129, 1024}, {3, 5, 128}};
// Shapes whose K is not a multiple of 4 (or 128): the byte path of the tiled kernel.
const std::vector<GemmShape> kOddKShapes = {{7, 100, 37}, {133, 65, 101}, {1, 3, 1}};

std::vector<GemmShape> llama3_8b_shapes() {
  std::vector<GemmShape> v;
  const GemmShape layers[] = {{0, 6144, 4096}, {0, 4096, 4096}, {0, 28672, 4096}, {0, 4096, 14336}};
  for (const int64_t m : {1, 7, 64, 133}) {
    for (GemmShape s : layers) {
      s.m = m;
      v.push_back(s);
    }
  }
  return v;
}

TEST(ParityGemmW4A8, PerChannelBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(201);
  std::vector<GemmShape> shapes = kSmallShapes;
  shapes.insert(shapes.end(), kOddKShapes.begin(), kOddKShapes.end());
  for (const GemmShape& s : shapes) {
    const auto w = random_w4pc(rng, s.n, s.k);
    const Acts a = random_acts(rng, s.m, s.k);
    run_quant_gemm_case(Kind::kW4PerChannel, s, a, s.m % 2 == 1, &w, nullptr, nullptr);
  }
}

TEST(ParityGemmW4A8, G128BitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(202);
  for (const GemmShape& s : kSmallShapes) {
    const auto w = random_w4g128(rng, s.n, s.k);
    const Acts a = random_acts(rng, s.m, s.k);
    run_quant_gemm_case(Kind::kW4G128, s, a, s.m % 2 == 1, nullptr, &w, nullptr);
  }
}

TEST(ParityGemmW8A8, BitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(203);
  std::vector<GemmShape> shapes = kSmallShapes;
  shapes.insert(shapes.end(), kOddKShapes.begin(), kOddKShapes.end());
  for (const GemmShape& s : shapes) {
    const auto w = random_w8(rng, s.n, s.k);
    const Acts a = random_acts(rng, s.m, s.k);
    run_quant_gemm_case(Kind::kW8A8, s, a, false, nullptr, nullptr, &w);
  }
}

// Llama-3-8B linear shapes. One weight per shape, reused across M (weight generation is the
// slow part on the host).
TEST(ParityGemmLlama3_8B, AllKindsBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(204);
  const std::vector<GemmShape> shapes = llama3_8b_shapes();
  const GemmShape layers[] = {{0, 6144, 4096}, {0, 4096, 4096}, {0, 28672, 4096}, {0, 4096, 14336}};
  for (const GemmShape& l : layers) {
    const auto w4pc = random_w4pc(rng, l.n, l.k);
    const auto w4g = random_w4g128(rng, l.n, l.k);
    const auto w8 = random_w8(rng, l.n, l.k);
    for (const int64_t m : {1, 7, 64, 133}) {
      const GemmShape s{m, l.n, l.k};
      const Acts a = random_acts(rng, s.m, s.k);
      run_quant_gemm_case(Kind::kW4PerChannel, s, a, m == 7, &w4pc, nullptr, nullptr);
      run_quant_gemm_case(Kind::kW4G128, s, a, m == 7, nullptr, &w4g, nullptr);
      run_quant_gemm_case(Kind::kW8A8, s, a, false, nullptr, nullptr, &w8);
    }
  }
}

// The largest magnitudes: every product at its extreme so the accumulator reaches
// K * 128 * max|w| (up to ~2.3e8 for K = 14336, still exact in int32), with both signs.
TEST(ParityGemmExtremes, LargestMagnitudesBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  const GemmShape s{3, 70, 14336};
  Acts a;
  a.q.resize(static_cast<size_t>(s.m * s.k));
  for (int64_t r = 0; r < s.m; ++r) {
    for (int64_t i = 0; i < s.k; ++i) {
      // row 0: all -128; row 1: all +127; row 2: alternating -128 / 127
      int8_t v = r == 0 ? -128 : r == 1 ? 127 : (i % 2 == 0 ? -128 : 127);
      a.q[static_cast<size_t>(r * s.k + i)] = v;
    }
  }
  a.scale = {float_to_fp16(0.5f), float_to_fp16(1e-3f), float_to_fp16(65504.0f / 1e6f)};
  a.sum = {float_to_fp16(-60000.0f), float_to_fp16(60000.0f), float_to_fp16(0.0f)};

  quant::W4PerChannel w4pc;
  w4pc.n = s.n;
  w4pc.k = s.k;
  w4pc.q.assign(static_cast<size_t>(s.n * s.k), 15);
  for (int64_t n = 1; n < s.n; n += 2) {  // odd rows code 0 (product 0) for a mix
    std::fill(w4pc.q.begin() + n * s.k, w4pc.q.begin() + (n + 1) * s.k, n % 4 == 1 ? 0 : 7);
  }
  w4pc.s1_scales.assign(static_cast<size_t>(s.n), float_to_fp16(1e-4f));
  w4pc.s1_szeros.assign(static_cast<size_t>(s.n), float_to_fp16(7.5e-4f));
  quant::validate(w4pc);

  quant::W4G128 w4g;
  w4g.n = s.n;
  w4g.k = s.k;
  const int64_t groups = s.k / quant::kGroupSize;
  w4g.q.assign(static_cast<size_t>(s.n * s.k), 15);
  w4g.s1_scales.assign(static_cast<size_t>(s.n), float_to_fp16(1e-5f));
  w4g.s2_scales.resize(static_cast<size_t>(s.n * groups));
  w4g.s2_zeros.resize(static_cast<size_t>(s.n * groups));
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      // Even rows: 15 * 17 + 0 = 255 -> int8 -1 ... and zero 0x81: (255 + 129) mod 256 = 128 ->
      // -128 (the most negative weight). Odd rows: s2 = 0, zero 127 -> +127.
      const size_t i = static_cast<size_t>(n * groups + g);
      w4g.s2_scales[i] = n % 2 == 0 ? 17 : 0;
      w4g.s2_zeros[i] = n % 2 == 0 ? static_cast<int8_t>(-127) : static_cast<int8_t>(127);
    }
  }
  quant::validate(w4g);
  std::vector<int8_t> row(static_cast<size_t>(s.k));
  quant::g128_int8_row(w4g, 0, row.data());
  ASSERT_EQ(row[0], -128) << "the extreme g128 weight construction is wrong";

  quant::W8PerChannel w8;
  w8.n = s.n;
  w8.k = s.k;
  w8.w.resize(static_cast<size_t>(s.n * s.k));
  for (int64_t n = 0; n < s.n; ++n) {
    std::fill(w8.w.begin() + n * s.k, w8.w.begin() + (n + 1) * s.k,
              static_cast<int8_t>(n % 2 == 0 ? -128 : 127));
  }
  w8.dequant_scale.assign(static_cast<size_t>(s.n), float_to_fp16(1e-6f));
  quant::validate(w8);

  run_quant_gemm_case(Kind::kW4PerChannel, s, a, true, &w4pc, nullptr, nullptr, ",extreme");
  run_quant_gemm_case(Kind::kW4G128, s, a, false, nullptr, &w4g, nullptr, ",extreme");
  run_quant_gemm_case(Kind::kW8A8, s, a, false, nullptr, nullptr, &w8, ",extreme");
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt float GEMM
// ---------------------------------------------------------------------------------------------

uint16_t to_half_bits(float f, cuda::DType t) {
  return t == cuda::DType::kBF16 ? float_to_bf16(f) : float_to_fp16(f);
}
float from_half_bits(uint16_t h, cuda::DType t) {
  return t == cuda::DType::kBF16 ? bf16_to_float(h) : fp16_to_float(h);
}

void run_cublaslt_case(cuda::CublasLt& lt, const GemmShape& s, cuda::DType in, cuda::DType out,
                       bool with_bias, ParityRng& rng) {
  const size_t xn = static_cast<size_t>(s.m * s.k), wn = static_cast<size_t>(s.n * s.k);
  // Values first rounded to the input type, so the reference sees exactly what the GPU does.
  std::vector<float> x = rng.fast_uniform(xn, -2.0f, 2.0f);
  std::vector<float> w = rng.fast_uniform(wn, -0.1f, 0.1f);
  std::vector<float> b = rng.uniform(static_cast<size_t>(s.n), -1.0f, 1.0f);
  std::vector<uint16_t> xh, wh, bh;
  if (in != cuda::DType::kF32) {
    xh.resize(xn);
    wh.resize(wn);
    for (size_t i = 0; i < xn; ++i) x[i] = from_half_bits(xh[i] = to_half_bits(x[i], in), in);
    for (size_t i = 0; i < wn; ++i) w[i] = from_half_bits(wh[i] = to_half_bits(w[i], in), in);
  }
  if (out != cuda::DType::kF32) {
    bh.resize(b.size());
    for (size_t i = 0; i < b.size(); ++i)
      b[i] = from_half_bits(bh[i] = to_half_bits(b[i], out), out);
  }

  const std::vector<int64_t> rows = rows_to_check(s);
  std::vector<float> want(rows.size() * static_cast<size_t>(s.n));
  double max_abs_sum = 0.0, max_pre_bias = 0.0;
  std::vector<double> abs_sums(want.size()), pre_bias(want.size());
  ThreadPool::global().parallel_for(
      static_cast<int64_t>(rows.size()) * s.n, 64, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t r = rows[static_cast<size_t>(e / s.n)], n = e % s.n;
          double acc = 0.0, sa = 0.0;
          for (int64_t k = 0; k < s.k; ++k) {
            const double p = static_cast<double>(x[r * s.k + k]) * w[n * s.k + k];
            acc += p;
            sa += std::abs(p);
          }
          pre_bias[static_cast<size_t>(e)] = std::abs(acc);
          if (with_bias) acc += b[static_cast<size_t>(n)];
          want[static_cast<size_t>(e)] = static_cast<float>(acc);
          abs_sums[static_cast<size_t>(e)] = sa;
        }
      });
  for (double v : abs_sums) max_abs_sum = std::max(max_abs_sum, v);
  for (double v : pre_bias) max_pre_bias = std::max(max_pre_bias, v);

  DeviceBuffer<float> dx32, dw32, db32, dy32;
  DeviceBuffer<uint16_t> dx16, dw16, db16, dy16;
  const void* dx;
  const void* dw;
  const void* db = nullptr;
  void* dy;
  if (in == cuda::DType::kF32) {
    dx32 = to_device(x);
    dw32 = to_device(w);
    dx = dx32.data();
    dw = dw32.data();
  } else {
    dx16 = to_device(xh);
    dw16 = to_device(wh);
    dx = dx16.data();
    dw = dw16.data();
  }
  const size_t yn = static_cast<size_t>(s.m * s.n);
  if (out == cuda::DType::kF32) {
    db32 = to_device(b);
    dy32 = DeviceBuffer<float>(yn);
    poison(dy32.data(), dy32.bytes());
    db = with_bias ? db32.data() : nullptr;
    dy = dy32.data();
  } else {
    db16 = to_device(bh);
    dy16 = DeviceBuffer<uint16_t>(yn);
    poison(dy16.data(), dy16.bytes());
    db = with_bias ? db16.data() : nullptr;
    dy = dy16.data();
  }
  cuda::gemm_cublaslt(lt, dx, dw, in, db, dy, out, s.m, s.n, s.k, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> got;
  if (out == cuda::DType::kF32) {
    got = to_host(dy32);
  } else {
    const std::vector<uint16_t> h = to_host(dy16);
    got.resize(h.size());
    for (size_t i = 0; i < h.size(); ++i) got[i] = from_half_bits(h[i], out);
  }
  // fp32 accumulation error (see ops_cuda.h) plus the output rounding: a half-precision output
  // is rounded once by cuBLASLt (half an ulp of the pre-bias value, which can exceed |y| when
  // the bias cancels it: the absolute term) and once more after the bias add (relative term).
  const double unit = out == cuda::DType::kF32   ? 0.0
                      : out == cuda::DType::kF16 ? std::ldexp(1.0, -11)
                                                 : std::ldexp(1.0, -8);
  const double abs_tol = std::ldexp(max_abs_sum, -14) + unit * max_pre_bias;
  const double rel_tol = 2.0 * unit;
  std::string shape = mnk(s) + ",in=" + cuda::dtype_name(in) + ",out=" + cuda::dtype_name(out) +
                      (with_bias ? ",bias" : "");
  if (rows.size() != static_cast<size_t>(s.m))
    shape += ",rows_checked=" + std::to_string(rows.size());
  const auto r =
      compare_close("gemm_cublaslt", shape, select_rows(got, s.n, rows), want, abs_tol, rel_tol);
  EXPECT_PARITY(r, "gemm_cublaslt", shape);
}

TEST(ParityGemmCublasLt, MatchesDoubleReference) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(301);
  cuda::CublasLt lt;
  using cuda::DType;
  const std::vector<GemmShape> shapes = {{1, 4096, 4096},  {7, 6144, 4096}, {64, 300, 256},
                                         {133, 1000, 512}, {5, 33, 100},    {3, 7, 1}};
  for (const GemmShape& s : shapes) {
    run_cublaslt_case(lt, s, DType::kF32, DType::kF32, s.m % 2 == 1, rng);
    run_cublaslt_case(lt, s, DType::kF16, DType::kF16, s.m % 2 == 1, rng);
    run_cublaslt_case(lt, s, DType::kF16, DType::kF32, false, rng);
    run_cublaslt_case(lt, s, DType::kBF16, DType::kBF16, s.m % 2 == 1, rng);
    run_cublaslt_case(lt, s, DType::kBF16, DType::kF32, false, rng);
  }
  // lm_head: Llama-3's vocabulary, fp32 like the CPU reference (rows sampled on the CPU).
  run_cublaslt_case(lt, {133, 128256, 4096}, DType::kF32, DType::kF32, false, rng);
  run_cublaslt_case(lt, {7, 128256, 4096}, DType::kF16, DType::kF32, false, rng);
}

TEST(ParityGemmCublasLt, RejectsUnsupportedTypes) {
  QSERVE_PARITY_REQUIRE_GPU();
  cuda::CublasLt lt;
  DeviceBuffer<float> x(16), w(16), y(16);
  EXPECT_THROW(cuda::gemm_cublaslt(lt, x.data(), w.data(), cuda::DType::kF32, nullptr, y.data(),
                                   cuda::DType::kF16, 4, 4, 4, nullptr),
               Error);
}

// ---------------------------------------------------------------------------------------------
// Caching allocator
// ---------------------------------------------------------------------------------------------

TEST(DeviceAllocator, BucketSizes) {
  // Pure host arithmetic: runs without a GPU too.
  using A = cuda::DeviceAllocator;
  EXPECT_EQ(A::bucket_size(1), 512u);
  EXPECT_EQ(A::bucket_size(512), 512u);
  EXPECT_EQ(A::bucket_size(513), 1024u);
  EXPECT_EQ(A::bucket_size(size_t{1} << 20), size_t{1} << 20);
  EXPECT_EQ(A::bucket_size((size_t{1} << 20) + 1), (size_t{1} << 20) + (size_t{1} << 18));
  // Over 64 MiB: whole 2 MiB units (at most 2 MiB - 1 B, i.e. < 3.2%, of padding).
  EXPECT_EQ(A::bucket_size(size_t{64} << 20), size_t{64} << 20);
  EXPECT_EQ(A::bucket_size((size_t{64} << 20) + 1), size_t{66} << 20);
  EXPECT_EQ(A::bucket_size(size_t{402653184}), size_t{402653184});  // 384 MiB
  EXPECT_EQ(A::bucket_size(size_t{470} * 1000 * 1000), size_t{225} * (size_t{2} << 20));
  for (size_t b = 1; b < (size_t{1} << 34); b = b * 3 + 7) {
    const size_t s = A::bucket_size(b);
    EXPECT_GE(s, b);
    EXPECT_LE(static_cast<double>(s), std::max(1.25 * static_cast<double>(b), b + 512.0)) << b;
    if (b > (size_t{64} << 20)) {
      EXPECT_LT(s - b, size_t{2} << 20) << b;
    }
    EXPECT_EQ(s % 256, 0u) << b;
  }
}

TEST(DeviceAllocator, ReusesFreedBlocksAndTrims) {
  QSERVE_PARITY_REQUIRE_GPU();
  auto& alloc = cuda::DeviceAllocator::global();
  alloc.trim();
  const auto s0 = alloc.stats();
  void* p = nullptr;
  {
    DeviceBuffer<float> a(1000);  // 4000 B -> 4096 B bucket
    p = a.data();
    const auto s1 = alloc.stats();
    EXPECT_EQ(s1.bytes_in_use, s0.bytes_in_use + 4096);
    EXPECT_GE(s1.peak_in_use, s1.bytes_in_use);
  }
  const auto s2 = alloc.stats();
  EXPECT_EQ(s2.bytes_in_use, s0.bytes_in_use);
  EXPECT_EQ(s2.bytes_cached, s0.bytes_cached + 4096);
  {
    DeviceBuffer<int32_t> b(1024);  // same bucket: must reuse the cached block
    EXPECT_EQ(static_cast<void*>(b.data()), p);
    EXPECT_EQ(alloc.stats().cache_hits, s2.cache_hits + 1);
    EXPECT_EQ(alloc.stats().driver_allocs, s2.driver_allocs);
    // The memory works: round trip through the device.
    std::vector<int32_t> h(1024);
    for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<int32_t>(i * 7 - 3);
    b.copy_from_host(h, nullptr);
    EXPECT_EQ(to_host(b), h);
  }
  alloc.trim();
  EXPECT_EQ(alloc.stats().bytes_cached, 0u);
  EXPECT_THROW(alloc.deallocate(reinterpret_cast<void*>(0x1234)), Error);
}

}  // namespace
}  // namespace qserve::parity
