// Parity of the per-token quantization ops and norms (norm_quant.cu, act_quant.cu,
// silu_mul_quant.cu) against their CPU references. The quantization kernels are specified to be
// bit-exact (ops_cuda.h), so their int8 codes and fp16 scales/sums/normed values are compared
// exactly; the fp32 norms and the fp32 SwiGLU, whose CPU versions sum or exponentiate
// differently, use the tolerances stated in ops_cuda.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/fused_baseline.h"
#include "backend/cuda/ops_cuda.h"
#include "parity/parity_main_util.h"
#include "quant/act_quant.h"
#include "quant/norm_quant.h"
#include "quant/silu_mul_quant.h"

namespace qserve::parity {
namespace {

using cuda::DeviceBuffer;
using cuda::to_device;
using cuda::to_host;

struct RowShape {
  int64_t rows;
  int64_t cols;
};

// Shapes: decode/prefill row counts that are not multiples of anything, Llama-3-8B's hidden
// size 4096 and intermediate 14336, columns that are not a multiple of 32 (threads past the
// logical block) or exceed 1024 with a tail (the strided ownership), and a single element.
// Multiples of 8 from 1024 to 8192 take the one-pass vectorized kernel (norm_quant.cu), the
// rest the baseline kernel: 1032 and 5120 end in a partial 1024-column chunk.
const std::vector<RowShape> kNormShapes = {{1, 4096}, {7, 4096}, {133, 4096}, {5, 100},  {3, 2049},
                                           {2, 8192}, {4, 1},    {64, 1024},  {3, 1032}, {5, 5120}};
// 4096 / 8192 / 1032 / 3000 take the vectorized kernel (act_quant.cu; 1032 and 3000 with a
// ragged last chunk), 14336 (14 chunks) and the rest the scalar one.
const std::vector<RowShape> kQuantShapes = {{1, 4096}, {7, 14336}, {133, 4096}, {3, 100},
                                            {2, 1500}, {4, 1},     {64, 33},    {9, 8192},
                                            {5, 1032}, {6, 3000},  {512, 4096}};

std::string rc(const RowShape& s) {
  return shape_str({{"rows", s.rows}, {"cols", s.cols}});
}

// Activation rows with the hard cases mixed in: row 0 random normal, row 1 (if any) with a
// huge outlier, row 2 all zeros (the amax floor / amax = 0 path), row 3 tiny values (fp16
// subnormals after normalization is impossible, but for plain quant they exercise tiny
// scales), the rest uniform with a per-row magnitude spanning 1e-3 .. 1e3.
std::vector<float> activation_rows(ParityRng& rng, const RowShape& s, float max_abs) {
  std::vector<float> x(static_cast<size_t>(s.rows * s.cols));
  for (int64_t r = 0; r < s.rows; ++r) {
    float* row = x.data() + r * s.cols;
    const float mag = std::min(max_abs, std::pow(10.0f, static_cast<float>(r % 7) - 3.0f));
    const std::vector<float> v = rng.normal(static_cast<size_t>(s.cols), 0.0f, mag);
    for (int64_t i = 0; i < s.cols; ++i) row[i] = std::clamp(v[i], -max_abs, max_abs);
    if (r == 1) row[s.cols / 2] = max_abs;  // one outlier dominates amax
    if (r == 2) std::fill(row, row + s.cols, 0.0f);
    if (r == 3) {
      for (int64_t i = 0; i < s.cols; ++i) row[i] = v[i] * 1e-6f;
    }
  }
  return x;
}

std::vector<uint16_t> to_fp16(const std::vector<float>& f) {
  std::vector<uint16_t> h(f.size());
  for (size_t i = 0; i < f.size(); ++i) h[i] = float_to_fp16(f[i]);
  return h;
}

// ---------------------------------------------------------------------------------------------
// Fused norm + quant
// ---------------------------------------------------------------------------------------------

struct NormQuantHost {
  std::vector<int8_t> q;
  std::vector<uint16_t> scale, sum, normed;
};

NormQuantHost alloc_host(const RowShape& s) {
  NormQuantHost h;
  h.q.resize(static_cast<size_t>(s.rows * s.cols));
  h.scale.resize(static_cast<size_t>(s.rows));
  h.sum.resize(static_cast<size_t>(s.rows));
  h.normed.resize(static_cast<size_t>(s.rows * s.cols));
  return h;
}

struct NormQuantDev {
  DeviceBuffer<int8_t> q;
  DeviceBuffer<uint16_t> scale, sum, normed;
  explicit NormQuantDev(const RowShape& s)
      : q(static_cast<size_t>(s.rows * s.cols)),
        scale(static_cast<size_t>(s.rows)),
        sum(static_cast<size_t>(s.rows)),
        normed(static_cast<size_t>(s.rows * s.cols)) {
    poison(q.data(), q.bytes());
    poison(scale.data(), scale.bytes());
    poison(sum.data(), sum.bytes());
    poison(normed.data(), normed.bytes());
  }
  cuda::NormQuantOut out(bool with_sum, bool with_normed) {
    return {q.data(), scale.data(), with_sum ? sum.data() : nullptr,
            with_normed ? normed.data() : nullptr};
  }
};

// Compares every output exactly; returns false on any mismatch.
void expect_norm_quant_equal(const std::string& op, const std::string& shape, NormQuantDev& d,
                             const NormQuantHost& want, bool with_sum, bool with_normed) {
  const auto r1 = compare_exact<int8_t>(op + ".q", shape, to_host(d.q), want.q);
  EXPECT_PARITY(r1, op + ".q", shape);
  const auto r2 = compare_exact<uint16_t>(op + ".scale", shape, to_host(d.scale), want.scale);
  EXPECT_PARITY(r2, op + ".scale", shape);
  if (with_sum) {
    const auto r3 = compare_exact<uint16_t>(op + ".sum", shape, to_host(d.sum), want.sum);
    EXPECT_PARITY(r3, op + ".sum", shape);
  }
  if (with_normed) {
    const auto r4 = compare_exact<uint16_t>(op + ".normed", shape, to_host(d.normed), want.normed);
    EXPECT_PARITY(r4, op + ".normed", shape);
  }
}

const char* kind_name(quant::NormKind k) {
  return k == quant::NormKind::kRmsNorm ? "rms" : "qserve_ln";
}

TEST(ParityNormQuant, F32MatchesCpuBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(101);
  for (const quant::NormKind kind :
       {quant::NormKind::kRmsNorm, quant::NormKind::kQServeLayerNorm}) {
    for (const RowShape& s : kNormShapes) {
      // Residual-stream magnitudes of real models reach the thousands; gamma has outliers too.
      const std::vector<float> x = activation_rows(rng, s, 3000.0f);
      std::vector<float> gamma = rng.uniform(static_cast<size_t>(s.cols), 0.05f, 2.0f);
      gamma[0] = 40.0f;
      const bool with_gamma = s.cols % 2 == 1 || s.rows % 2 == 1;  // exercise gamma == null too
      const float eps = 1e-5f;
      NormQuantHost want = alloc_host(s);
      quant::norm_quantize_per_token(
          x.data(), with_gamma ? gamma.data() : nullptr, eps, s.rows, s.cols, kind,
          {want.q.data(), want.scale.data(), want.sum.data(), want.normed.data()});
      auto dx = to_device(x);
      auto dg = to_device(gamma);
      NormQuantDev d(s);
      cuda::norm_quant_f32(dx.data(), with_gamma ? dg.data() : nullptr, eps, s.rows, s.cols, kind,
                           d.out(true, true), nullptr);
      const std::string op =
          std::string("norm_quant_f32/") + kind_name(kind) + (with_gamma ? "" : "/no_gamma");
      expect_norm_quant_equal(op, rc(s), d, want, true, true);
    }
  }
}

TEST(ParityNormQuant, F16MatchesCpuBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(102);
  for (const quant::NormKind kind :
       {quant::NormKind::kRmsNorm, quant::NormKind::kQServeLayerNorm}) {
    for (const RowShape& s : kNormShapes) {
      // fp16's largest finite value in the outlier row.
      const std::vector<uint16_t> x = to_fp16(activation_rows(rng, s, 65504.0f));
      const std::vector<uint16_t> gamma =
          rng.fp16_uniform(static_cast<size_t>(s.cols), 0.05f, 2.0f);
      const float eps = 1e-6f;
      NormQuantHost want = alloc_host(s);
      quant::norm_quantize_per_token(
          x.data(), gamma.data(), eps, s.rows, s.cols, kind,
          {want.q.data(), want.scale.data(), want.sum.data(), want.normed.data()});
      auto dx = to_device(x);
      auto dg = to_device(gamma);
      NormQuantDev d(s);
      // Without the optional outputs first (the kernel must not need them) ...
      cuda::norm_quant_f16(dx.data(), dg.data(), eps, s.rows, s.cols, kind, d.out(false, false),
                           nullptr);
      const std::string op = std::string("norm_quant_f16/") + kind_name(kind);
      expect_norm_quant_equal(op + "/q_only", rc(s), d, want, false, false);
      // ... then with them.
      cuda::norm_quant_f16(dx.data(), dg.data(), eps, s.rows, s.cols, kind, d.out(true, true),
                           nullptr);
      expect_norm_quant_equal(op, rc(s), d, want, true, true);
    }
  }
}

TEST(ParityNormQuant, AddResidualMatchesCpuBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(103);
  for (const bool f16_delta : {false, true}) {
    for (const RowShape& s :
         {RowShape{1, 4096}, RowShape{7, 4096}, RowShape{133, 4096}, RowShape{3, 2049},
          RowShape{5, 100}, RowShape{3, 1032}, RowShape{2, 8192}}) {
      const std::vector<float> residual = activation_rows(rng, s, 3000.0f);
      std::vector<float> delta = rng.normal(static_cast<size_t>(s.rows * s.cols), 0.0f, 4.0f);
      std::vector<uint16_t> delta16 = to_fp16(delta);
      if (f16_delta) {
        for (size_t i = 0; i < delta.size(); ++i) delta[i] = fp16_to_float(delta16[i]);
      }
      const std::vector<float> gamma = rng.uniform(static_cast<size_t>(s.cols), 0.05f, 2.0f);
      const float eps = 1e-5f;
      // CPU forward: x[i] += proj[i] in fp32, then the fused norm + quant.
      std::vector<float> updated = residual;
      for (size_t i = 0; i < updated.size(); ++i) updated[i] += delta[i];
      NormQuantHost want = alloc_host(s);
      const quant::NormKind kind = quant::NormKind::kRmsNorm;
      quant::norm_quantize_per_token(
          updated.data(), gamma.data(), eps, s.rows, s.cols, kind,
          {want.q.data(), want.scale.data(), want.sum.data(), want.normed.data()});
      auto dres = to_device(residual);
      auto dd32 = to_device(delta);
      auto dd16 = to_device(delta16);
      auto dg = to_device(gamma);
      NormQuantDev d(s);
      const std::string op =
          f16_delta ? "add_residual_norm_quant_f16delta" : "add_residual_norm_quant_f32";
      if (f16_delta) {
        cuda::add_residual_norm_quant_f16delta(dres.data(), dd16.data(), dg.data(), eps, s.rows,
                                               s.cols, kind, d.out(true, true), nullptr);
      } else {
        cuda::add_residual_norm_quant_f32(dres.data(), dd32.data(), dg.data(), eps, s.rows, s.cols,
                                          kind, d.out(true, true), nullptr);
      }
      // The written-back residual is one fp32 add per element: exact.
      const std::vector<float> got_res = to_host(dres);
      const auto rr = compare_close(op + ".residual", rc(s), got_res, updated, 0.0, 0.0);
      EXPECT_PARITY(rr, op + ".residual", rc(s));
      expect_norm_quant_equal(op, rc(s), d, want, true, true);
    }
  }
}

// The vectorized kernel against the baseline kernel (cuda::baseline), bit for bit, on every
// output at the shapes it takes, with residual magnitudes up to 3000 and both norm kinds.
TEST(ParityNormQuant, AddResidualMatchesBaselineBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(109);
  for (const quant::NormKind kind :
       {quant::NormKind::kRmsNorm, quant::NormKind::kQServeLayerNorm}) {
    for (const RowShape& s : {RowShape{257, 4096}, RowShape{3, 1032}, RowShape{9, 5120},
                              RowShape{4, 8192}, RowShape{6, 1024}}) {
      const std::vector<float> residual = activation_rows(rng, s, 3000.0f);
      const std::vector<uint16_t> delta16 =
          to_fp16(rng.normal(static_cast<size_t>(s.rows * s.cols), 0.0f, 4.0f));
      const std::vector<float> gamma = rng.uniform(static_cast<size_t>(s.cols), 0.05f, 2.0f);
      auto dd16 = to_device(delta16);
      auto dg = to_device(gamma);
      auto dres = to_device(residual);
      auto dres_base = to_device(residual);
      NormQuantDev d(s), base(s);
      cuda::add_residual_norm_quant_f16delta(dres.data(), dd16.data(), dg.data(), 1e-5f, s.rows,
                                             s.cols, kind, d.out(true, true), nullptr);
      cuda::baseline::add_residual_norm_quant_f16delta(dres_base.data(), dd16.data(), dg.data(),
                                                       1e-5f, s.rows, s.cols, kind,
                                                       base.out(true, true), nullptr);
      NormQuantHost want;
      want.q = to_host(base.q);
      want.scale = to_host(base.scale);
      want.sum = to_host(base.sum);
      want.normed = to_host(base.normed);
      const std::string op =
          std::string("add_residual_norm_quant_f16delta/vs_baseline/") + kind_name(kind);
      expect_norm_quant_equal(op, rc(s), d, want, true, true);
      const auto rr =
          compare_close(op + ".residual", rc(s), to_host(dres), to_host(dres_base), 0.0, 0.0);
      EXPECT_PARITY(rr, op + ".residual", rc(s));
    }
  }
}

// Every small-batch kernel against the baseline, bit for bit, on every output: the dispatch (the
// split-4 kernel up to 4 rows per SM, split-2 up to 12, then the vec kernel) at 256, 1024 and
// 4096 rows and at odd counts, the previous kernel (cuda::prev), and both split variants forced
// (cuda::forced) at shapes with one or two chunks per thread, partial last chunks (1032, 5120),
// both norm kinds, with and without the sum / normed outputs; fp32 and fp16 inputs (norm_quant_*)
// as well as the residual form.
TEST(ParityNormQuant, SmallBatchKernelsMatchBaselineBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(111);
  const std::vector<RowShape> shapes = {{256, 4096},  {1024, 4096}, {4096, 4096}, {255, 4096},
                                        {1031, 4096}, {3, 4096},    {5, 2048},    {3, 1032},
                                        {7, 5120},    {2, 8192},    {9, 3072},    {4, 1024}};
  for (const quant::NormKind kind :
       {quant::NormKind::kRmsNorm, quant::NormKind::kQServeLayerNorm}) {
    for (const RowShape& s : shapes) {
      const std::vector<float> residual = activation_rows(rng, s, 3000.0f);
      const std::vector<uint16_t> delta16 =
          to_fp16(rng.normal(static_cast<size_t>(s.rows * s.cols), 0.0f, 4.0f));
      const std::vector<float> gamma = rng.uniform(static_cast<size_t>(s.cols), 0.05f, 2.0f);
      auto dd16 = to_device(delta16);
      auto dg = to_device(gamma);
      const bool extras = s.rows % 2 == 1;  // normed on odd row counts only
      // The sum also at 256 and 1024 rows without normed: the engine's case before a
      // per-channel W4A8 projection, at bench_fused's sizes.
      const bool with_sum = extras || s.rows == 256 || s.rows == 1024;
      auto dres_base = to_device(residual);
      NormQuantDev base(s);
      cuda::baseline::add_residual_norm_quant_f16delta(dres_base.data(), dd16.data(), dg.data(),
                                                       1e-5f, s.rows, s.cols, kind,
                                                       base.out(with_sum, extras), nullptr);
      NormQuantHost want;
      want.q = to_host(base.q);
      want.scale = to_host(base.scale);
      want.sum = to_host(base.sum);
      want.normed = to_host(base.normed);
      const std::vector<float> want_res = to_host(dres_base);
      for (int v = 0; v < 4; ++v) {
        auto dres = to_device(residual);
        NormQuantDev d(s);
        const cuda::NormQuantOut o = d.out(with_sum, extras);
        if (v == 0) {
          cuda::add_residual_norm_quant_f16delta(dres.data(), dd16.data(), dg.data(), 1e-5f, s.rows,
                                                 s.cols, kind, o, nullptr);
        } else if (v == 1) {
          cuda::prev::add_residual_norm_quant_f16delta(dres.data(), dd16.data(), dg.data(), 1e-5f,
                                                       s.rows, s.cols, kind, o, nullptr);
        } else {
          cuda::forced::add_residual_norm_quant_f16delta(dres.data(), dd16.data(), dg.data(), 1e-5f,
                                                         s.rows, s.cols, kind, o, nullptr,
                                                         v == 2 ? 2 : 4);
        }
        const char* vname[] = {"current", "prev", "split2", "split4"};
        const std::string op = std::string("add_residual_norm_quant_f16delta/") + vname[v] +
                               "_vs_baseline/" + kind_name(kind);
        expect_norm_quant_equal(op, rc(s), d, want, with_sum, extras);
        const auto rr = compare_close(op + ".residual", rc(s), to_host(dres), want_res, 0.0, 0.0);
        EXPECT_PARITY(rr, op + ".residual", rc(s));
      }
    }
  }
  // Plain inputs (no residual), fp32 and fp16, the forced split variants against the CPU
  // reference (bit-exact by contract), gamma null on the 1032-column rows.
  for (const RowShape& s : {RowShape{256, 4096}, RowShape{3, 1032}, RowShape{5, 8192}}) {
    const std::vector<float> x = activation_rows(rng, s, 100.0f);
    const std::vector<uint16_t> x16 = to_fp16(x);
    const std::vector<float> gamma = rng.uniform(static_cast<size_t>(s.cols), 0.05f, 2.0f);
    const std::vector<uint16_t> gamma16 = to_fp16(gamma);
    const bool with_gamma = s.cols != 1032;
    for (const quant::NormKind kind :
         {quant::NormKind::kRmsNorm, quant::NormKind::kQServeLayerNorm}) {
      for (const bool f16 : {false, true}) {
        NormQuantHost want = alloc_host(s);
        const quant::NormQuantOutputs wo{want.q.data(), want.scale.data(), want.sum.data(),
                                         want.normed.data()};
        if (f16) {
          quant::norm_quantize_per_token(x16.data(), with_gamma ? gamma16.data() : nullptr, 1e-5f,
                                         s.rows, s.cols, kind, wo);
        } else {
          quant::norm_quantize_per_token(x.data(), with_gamma ? gamma.data() : nullptr, 1e-5f,
                                         s.rows, s.cols, kind, wo);
        }
        auto dx = to_device(x);
        auto dx16 = to_device(x16);
        auto dg = to_device(gamma);
        auto dg16 = to_device(gamma16);
        for (const int split : {2, 4}) {
          NormQuantDev d(s);
          if (f16) {
            cuda::forced::norm_quant_f16(dx16.data(), with_gamma ? dg16.data() : nullptr, 1e-5f,
                                         s.rows, s.cols, kind, d.out(true, true), nullptr, split);
          } else {
            cuda::forced::norm_quant_f32(dx.data(), with_gamma ? dg.data() : nullptr, 1e-5f, s.rows,
                                         s.cols, kind, d.out(true, true), nullptr, split);
          }
          const std::string op = std::string(f16 ? "norm_quant_f16" : "norm_quant_f32") + "/split" +
                                 std::to_string(split) + "/" + kind_name(kind) +
                                 (with_gamma ? "" : "/no_gamma");
          expect_norm_quant_equal(op, rc(s), d, want, true, true);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// fp32 RMSNorm (W16A16 path)
// ---------------------------------------------------------------------------------------------

TEST(ParityRmsNorm, F32MatchesCpuWithinRounding) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(104);
  for (const RowShape& s : kNormShapes) {
    const std::vector<float> x = activation_rows(rng, s, 3000.0f);
    const std::vector<float> delta = rng.normal(static_cast<size_t>(s.rows * s.cols), 0.0f, 2.0f);
    const std::vector<float> w = rng.uniform(static_cast<size_t>(s.cols), -2.0f, 2.0f);
    const float eps = 1e-5f;
    // The outputs are x / rms(x) * w: |y| <= sqrt(cols) * |w|. Different summation orders of
    // the sum of squares change rho by a few fp32 ulp: rel 1e-5, plus an absolute floor for
    // elements near zero relative to the row (2e-6 of the row's output scale max|w|).
    const double abs_tol = 2e-6 * 2.0;
    const double rel_tol = 1e-5;
    {
      std::vector<float> want(x.size());
      cpu::rms_norm(x.data(), w.data(), eps, s.rows, s.cols, want.data());
      auto dx = to_device(x);
      auto dw = to_device(w);
      DeviceBuffer<float> dy(x.size());
      poison(dy.data(), dy.bytes());
      cuda::rms_norm_f32(dx.data(), dw.data(), eps, s.rows, s.cols, dy.data(), nullptr);
      const auto r = compare_close("rms_norm_f32", rc(s), to_host(dy), want, abs_tol, rel_tol);
      EXPECT_PARITY(r, "rms_norm_f32", rc(s));
      // In place (out aliases x), as cpu::rms_norm allows.
      cuda::rms_norm_f32(dx.data(), dw.data(), eps, s.rows, s.cols, dx.data(), nullptr);
      const auto r2 =
          compare_close("rms_norm_f32/inplace", rc(s), to_host(dx), want, abs_tol, rel_tol);
      EXPECT_PARITY(r2, "rms_norm_f32/inplace", rc(s));
    }
    {
      std::vector<float> updated = x;
      for (size_t i = 0; i < updated.size(); ++i) updated[i] += delta[i];
      std::vector<float> want(x.size());
      cpu::rms_norm(updated.data(), w.data(), eps, s.rows, s.cols, want.data());
      auto dres = to_device(x);
      auto dd = to_device(delta);
      auto dw = to_device(w);
      DeviceBuffer<float> dy(x.size());
      poison(dy.data(), dy.bytes());
      cuda::add_residual_rms_norm_f32(dres.data(), dd.data(), dw.data(), eps, s.rows, s.cols,
                                      dy.data(), nullptr);
      const auto r0 = compare_close("add_residual_rms_norm_f32.residual", rc(s), to_host(dres),
                                    updated, 0.0, 0.0);
      EXPECT_PARITY(r0, "add_residual_rms_norm_f32.residual", rc(s));
      const auto r =
          compare_close("add_residual_rms_norm_f32", rc(s), to_host(dy), want, abs_tol, rel_tol);
      EXPECT_PARITY(r, "add_residual_rms_norm_f32", rc(s));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Per-token activation quantization
// ---------------------------------------------------------------------------------------------

struct QuantDev {
  DeviceBuffer<int8_t> q;
  DeviceBuffer<uint16_t> scale, sum;
  explicit QuantDev(const RowShape& s)
      : q(static_cast<size_t>(s.rows * s.cols)),
        scale(static_cast<size_t>(s.rows)),
        sum(static_cast<size_t>(s.rows)) {
    poison(q.data(), q.bytes());
    poison(scale.data(), scale.bytes());
    poison(sum.data(), sum.bytes());
  }
};

void expect_quant_equal(const std::string& op, const std::string& shape, QuantDev& d,
                        const std::vector<int8_t>& q, const std::vector<uint16_t>& scale,
                        const std::vector<uint16_t>* sum) {
  const auto r1 = compare_exact<int8_t>(op + ".q", shape, to_host(d.q), q);
  EXPECT_PARITY(r1, op + ".q", shape);
  const auto r2 = compare_exact<uint16_t>(op + ".scale", shape, to_host(d.scale), scale);
  EXPECT_PARITY(r2, op + ".scale", shape);
  if (sum != nullptr) {
    const auto r3 = compare_exact<uint16_t>(op + ".sum", shape, to_host(d.sum), *sum);
    EXPECT_PARITY(r3, op + ".sum", shape);
  }
}

TEST(ParityActQuant, F32AndF16MatchCpuBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(105);
  for (const RowShape& s : kQuantShapes) {
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    for (const bool f16 : {false, true}) {
      const std::vector<float> xf = activation_rows(rng, s, f16 ? 65504.0f : 1e6f);
      const std::vector<uint16_t> xh = to_fp16(xf);
      std::vector<int8_t> q(n);
      std::vector<uint16_t> scale(static_cast<size_t>(s.rows)), sum(static_cast<size_t>(s.rows));
      QuantDev d(s);
      std::string op;
      if (f16) {
        op = "quantize_per_token_f16";
        quant::quantize_per_token(xh.data(), s.rows, s.cols, q.data(), scale.data(), sum.data());
        auto dx = to_device(xh);
        cuda::quantize_per_token_f16(dx.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                     d.sum.data(), nullptr);
      } else {
        op = "quantize_per_token_f32";
        quant::quantize_per_token(xf.data(), s.rows, s.cols, q.data(), scale.data(), sum.data());
        auto dx = to_device(xf);
        cuda::quantize_per_token_f32(dx.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                     d.sum.data(), nullptr);
      }
      expect_quant_equal(op, rc(s), d, q, scale, &sum);
      // The scalar kernel (cuda::baseline::) at every shape gives the same bits.
      QuantDev db(s);
      if (f16) {
        auto dx = to_device(xh);
        cuda::baseline::quantize_per_token_f16(dx.data(), s.rows, s.cols, db.q.data(),
                                               db.scale.data(), db.sum.data(), nullptr);
      } else {
        auto dx = to_device(xf);
        cuda::baseline::quantize_per_token_f32(dx.data(), s.rows, s.cols, db.q.data(),
                                               db.scale.data(), db.sum.data(), nullptr);
      }
      expect_quant_equal("baseline::" + op, rc(s), db, q, scale, &sum);
      // sum == nullptr must leave the rest unchanged and not touch the sum buffer.
      QuantDev d2(s);
      if (f16) {
        auto dx = to_device(xh);
        cuda::quantize_per_token_f16(dx.data(), s.rows, s.cols, d2.q.data(), d2.scale.data(),
                                     nullptr, nullptr);
      } else {
        auto dx = to_device(xf);
        cuda::quantize_per_token_f32(dx.data(), s.rows, s.cols, d2.q.data(), d2.scale.data(),
                                     nullptr, nullptr);
      }
      expect_quant_equal(op + "/no_sum", rc(s), d2, q, scale, nullptr);
      const std::vector<uint16_t> untouched = to_host(d2.sum);
      EXPECT_TRUE(
          std::all_of(untouched.begin(), untouched.end(), [](uint16_t v) { return v == 0xFFFF; }))
          << op << ": wrote the sum output although it was null";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SiLU·mul (+ quant)
// ---------------------------------------------------------------------------------------------

// fp16 bit patterns within `ulps` of each other (same sign; both finite).
ParityResult compare_fp16_ulps(const std::string& op, const std::string& shape,
                               const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                               int ulps) {
  ParityResult r;
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = fp16_to_float(got[i]);
    const float w = fp16_to_float(want[i]);
    const double d = std::abs(static_cast<double>(g) - w);
    // Distance in representable steps: order the bit patterns as signed magnitudes.
    auto ordered = [](uint16_t h) {
      return (h & 0x8000) ? -static_cast<int32_t>(h & 0x7fff) : static_cast<int32_t>(h);
    };
    const int32_t steps = std::abs(ordered(got[i]) - ordered(want[i]));
    const bool bad = std::isnan(g) || std::isnan(w) || steps > ulps;
    if (std::isfinite(d)) {
      r.max_abs_err = std::max(r.max_abs_err, d);
      r.max_rel_err = std::max(r.max_rel_err, d / std::max<double>(std::abs(w), 1e-30));
    }
    if (bad) {
      if (r.first_bad < 0) {
        r.first_bad = static_cast<int64_t>(i);
        r.first_bad_desc = "got=" + std::to_string(g) + " want=" + std::to_string(w);
      }
      ++r.mismatches;
      r.pass = false;
    }
  }
  print_report(op, shape, r, std::to_string(ulps) + "ulp16");
  return r;
}

TEST(ParitySiluMulQuant, MatchesCpu) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(106);
  // Up to 16 elements per thread the fused kernel keeps the SiLU values in registers (one pass);
  // 20000 (20 per thread) takes the multi-pass kernel.
  for (const RowShape& s :
       {RowShape{1, 14336}, RowShape{7, 14336}, RowShape{133, 1024}, RowShape{3, 100},
        RowShape{2, 1500}, RowShape{4, 1}, RowShape{2, 20000}}) {
    const int64_t inter = s.cols;
    const size_t n = static_cast<size_t>(s.rows * inter);
    // gate in [-20, 20] (saturated SiLU on both sides) with some extreme entries; up moderate.
    std::vector<float> gu = rng.uniform(2 * n, -20.0f, 20.0f);
    gu[0] = -100.0f;  // exp(100) overflows fp32: silu = -0
    if (gu.size() > 3) gu[1] = 100.0f;
    for (int64_t r = 0; r < s.rows; ++r) {  // up half
      for (int64_t i = 0; i < inter; ++i)
        gu[static_cast<size_t>(r * 2 * inter + inter + i)] *= 0.5f;
    }
    const std::vector<uint16_t> gu16 = to_fp16(gu);
    for (const bool f16 : {false, true}) {
      const std::string op = f16 ? "silu_mul_quant_f16" : "silu_mul_quant_f32";
      std::vector<uint16_t> out(n);
      if (f16) {
        quant::silu_mul(gu16.data(), s.rows, inter, out.data());
      } else {
        quant::silu_mul(gu.data(), s.rows, inter, out.data());
      }
      auto dgu = to_device(gu);
      auto dgu16 = to_device(gu16);
      QuantDev d(s);
      DeviceBuffer<uint16_t> dout(n);
      poison(dout.data(), dout.bytes());
      if (f16) {
        cuda::silu_mul_quant_f16(dgu16.data(), s.rows, inter, d.q.data(), d.scale.data(),
                                 d.sum.data(), dout.data(), nullptr);
      } else {
        cuda::silu_mul_quant_f32(dgu.data(), s.rows, inter, d.q.data(), d.scale.data(),
                                 d.sum.data(), dout.data(), nullptr);
      }
      // (1) The fp16 SiLU·mul values: within 1 fp16 ulp of the CPU's (exp is the only
      //     non-correctly-rounded step; see ops_cuda.h).
      const std::vector<uint16_t> got_out = to_host(dout);
      const auto r0 = compare_fp16_ulps(op + ".out", rc(s), got_out, out, 1);
      EXPECT_PARITY(r0, op + ".out", rc(s));
      // (2) Given those values, the quantization is bit-exact: compare with the CPU quantizer
      //     applied to the GPU's fp16 output.
      std::vector<int8_t> q(n);
      std::vector<uint16_t> scale(static_cast<size_t>(s.rows)), sum(static_cast<size_t>(s.rows));
      quant::quantize_per_token(got_out.data(), s.rows, inter, q.data(), scale.data(), sum.data());
      expect_quant_equal(op, rc(s), d, q, scale, &sum);
      // (3) The q-only launch (out = null, sum = null) gives the same codes.
      QuantDev d2(s);
      if (f16) {
        cuda::silu_mul_quant_f16(dgu16.data(), s.rows, inter, d2.q.data(), d2.scale.data(), nullptr,
                                 nullptr, nullptr);
      } else {
        cuda::silu_mul_quant_f32(dgu.data(), s.rows, inter, d2.q.data(), d2.scale.data(), nullptr,
                                 nullptr, nullptr);
      }
      expect_quant_equal(op + "/q_only", rc(s), d2, q, scale, nullptr);
      // (4) The standalone fp16 SiLU·mul kernel agrees with the fused one bit for bit.
      DeviceBuffer<uint16_t> dout2(n);
      poison(dout2.data(), dout2.bytes());
      if (f16) {
        cuda::silu_mul_f16(dgu16.data(), s.rows, inter, dout2.data(), nullptr);
      } else {
        cuda::silu_mul_f32_to_f16(dgu.data(), s.rows, inter, dout2.data(), nullptr);
      }
      const auto r4 = compare_exact<uint16_t>(f16 ? "silu_mul_f16" : "silu_mul_f32_to_f16", rc(s),
                                              to_host(dout2), got_out);
      EXPECT_PARITY(r4, "silu_mul", rc(s));
    }
  }
}

// The SiLU·mul kernels (an fp32 SiLU certified against the fp16 rounding, falling back to the
// double-precision definition when uncertain) against the baseline kernels (the double exp for
// every element), bit for bit on every output:
//  - every fp16 bit pattern as a gate value, up = 1: exhaustive over the fp16 inputs of the
//    SiLU, fused and standalone kernels;
//  - rows at the vectorized kernel's edge shapes (a partial last chunk, 16 chunks, one chunk)
//    and at the baseline-only shapes, fp16 and fp32 inputs, gates up to |g| = 80 (the |g| > 64
//    fallback) and one row of zero gates (amax = 0).
TEST(ParitySiluMulQuant, MatchesBaselineBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  // With the sum (one thread per column group) and without it (two threads per group).
  auto run_both = [](const std::string& tag, const RowShape& s, const auto& gu_host) {
    using T = typename std::decay_t<decltype(gu_host)>::value_type;
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    auto dgu = to_device(gu_host);
    for (const bool with_sum : {true, false}) {
      QuantDev d(s), base(s);
      DeviceBuffer<uint16_t> dout(n), bout(n);
      poison(dout.data(), dout.bytes());
      poison(bout.data(), bout.bytes());
      uint16_t* dsum = with_sum ? d.sum.data() : nullptr;
      uint16_t* bsum = with_sum ? base.sum.data() : nullptr;
      if constexpr (std::is_same_v<T, float>) {
        cuda::silu_mul_quant_f32(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(), dsum,
                                 dout.data(), nullptr);
        cuda::baseline::silu_mul_quant_f32(dgu.data(), s.rows, s.cols, base.q.data(),
                                           base.scale.data(), bsum, bout.data(), nullptr);
      } else {
        cuda::silu_mul_quant_f16(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(), dsum,
                                 dout.data(), nullptr);
        cuda::baseline::silu_mul_quant_f16(dgu.data(), s.rows, s.cols, base.q.data(),
                                           base.scale.data(), bsum, bout.data(), nullptr);
      }
      const std::string op = "silu_mul_quant/vs_baseline/" + tag + (with_sum ? "" : "/no_sum");
      const auto r0 = compare_exact<uint16_t>(op + ".out", rc(s), to_host(dout), to_host(bout));
      EXPECT_PARITY(r0, op + ".out", rc(s));
      const std::vector<uint16_t> want_sum = to_host(base.sum);
      expect_quant_equal(op, rc(s), d, to_host(base.q), to_host(base.scale),
                         with_sum ? &want_sum : nullptr);
    }
  };
  {
    const RowShape s{4, 16384};
    std::vector<uint16_t> gu(static_cast<size_t>(2 * s.rows * s.cols), 0x3c00);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t i = 0; i < s.cols; ++i) {
        gu[static_cast<size_t>(r * 2 * s.cols + i)] = static_cast<uint16_t>(r * s.cols + i);
      }
    }
    run_both("all_fp16_gates", s, gu);
    auto dgu = to_device(gu);
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    DeviceBuffer<uint16_t> a(n), b(n);
    poison(a.data(), a.bytes());
    poison(b.data(), b.bytes());
    cuda::silu_mul_f16(dgu.data(), s.rows, s.cols, a.data(), nullptr);
    cuda::baseline::silu_mul_f16(dgu.data(), s.rows, s.cols, b.data(), nullptr);
    const auto r = compare_exact<uint16_t>("silu_mul_f16/vs_baseline/all_fp16_gates", rc(s),
                                           to_host(a), to_host(b));
    EXPECT_PARITY(r, "silu_mul_f16/vs_baseline", rc(s));
  }
  ParityRng rng(110);
  // 600 rows: more than 4 per SM on the H200, so the with-sum dispatch runs the cols4 kernel.
  for (const RowShape& s :
       {RowShape{5, 14336}, RowShape{600, 14336}, RowShape{3, 1032}, RowShape{2, 11008},
        RowShape{2, 16384}, RowShape{9, 1024}, RowShape{2, 20000}, RowShape{3, 1500}}) {
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    std::vector<float> gu = rng.uniform(2 * n, -8.0f, 8.0f);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t i = 0; i < s.cols; ++i) {
        float& g = gu[static_cast<size_t>(r * 2 * s.cols + i)];
        if (r == 1) g *= 10.0f;  // |g| up to 80
        if (r == 2) g = 0.0f;
      }
    }
    run_both("f32", s, gu);
    run_both("f16", s, to_fp16(gu));
  }
}

// The v2 SiLU·mul + quant kernel (pair certificate, fp16 product by __hmul2_rn, codes by the
// magic-number conversion) in every form against the baseline, bit for bit on every output: the
// dispatch at 256 / 1024 / 4096 rows and odd counts on both sides of its split-4 / split-2
// threshold, the previous kernel (cuda::prev), the v2 kernel forced to 1, 2 and 4 threads per
// column group (cuda::forced; split 1 is the with-sum dispatch above 4 rows per SM until
// 2026-11-30, sixth session), and the register-resident cols4 kernel forced at every size
// (cuda::forced::SiluForm::kCols4; the with-sum dispatch above 4 rows per SM since then, which
// 1024 x 2048 and 4096 x 1032 reach on the H200 with fp16 and fp32 inputs), with and without the
// sum and `out`, fp16 and fp32 inputs. Rows
// mix in every fp16 bit pattern as an up value (NaN payloads, infinities: the conversion-
// instruction codes and the fp32 route for non-finite products), zero gates (amax = 0), gates up
// to |g| = 80, and products that overflow fp16.
TEST(ParitySiluMulQuant, V2KernelsMatchBaselineBitExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  auto run_all = [](const std::string& tag, const RowShape& s, const auto& gu_host) {
    using T = typename std::decay_t<decltype(gu_host)>::value_type;
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    auto dgu = to_device(gu_host);
    for (const bool with_sum : {true, false}) {
      const bool with_out = s.rows % 2 == 1 || with_sum;
      QuantDev base(s);
      DeviceBuffer<uint16_t> bout(n);
      poison(bout.data(), bout.bytes());
      uint16_t* bo = with_out ? bout.data() : nullptr;
      if constexpr (std::is_same_v<T, float>) {
        cuda::baseline::silu_mul_quant_f32(dgu.data(), s.rows, s.cols, base.q.data(),
                                           base.scale.data(), with_sum ? base.sum.data() : nullptr,
                                           bo, nullptr);
      } else {
        cuda::baseline::silu_mul_quant_f16(dgu.data(), s.rows, s.cols, base.q.data(),
                                           base.scale.data(), with_sum ? base.sum.data() : nullptr,
                                           bo, nullptr);
      }
      const std::vector<int8_t> want_q = to_host(base.q);
      const std::vector<uint16_t> want_scale = to_host(base.scale), want_sum = to_host(base.sum),
                                  want_out = to_host(bout);
      // split1: one thread per column group (with a sum, the dispatch's kernel above 4 rows per
      // SM until 2026-11-30, sixth session; without one the dispatch's choice); split2/split4 with
      // a sum form it from the staged values; cols4: the register-resident kernel
      // (cuda::forced::SiluForm::kCols4; with a sum, the dispatch's kernel above 4 rows per SM
      // since then).
      const char* vname[] = {"current", "prev", "split2", "split4", "split1", "cols4"};
      using cuda::forced::SiluForm;
      for (int v = 0; v < 6; ++v) {
        QuantDev d(s);
        DeviceBuffer<uint16_t> dout(n);
        poison(dout.data(), dout.bytes());
        uint16_t* ds = with_sum ? d.sum.data() : nullptr;
        uint16_t* dov = with_out ? dout.data() : nullptr;
        if constexpr (std::is_same_v<T, float>) {
          if (v == 0) {
            cuda::silu_mul_quant_f32(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(), ds,
                                     dov, nullptr);
          } else if (v == 1) {
            cuda::prev::silu_mul_quant_f32(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                           ds, dov, nullptr);
          } else if (v <= 4) {
            cuda::forced::silu_mul_quant_f32(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                             ds, dov, nullptr,
                                             v == 2   ? 2
                                             : v == 3 ? 4
                                                      : 1);
          } else {
            cuda::forced::silu_mul_quant_f32(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                             ds, dov, nullptr, SiluForm::kCols4);
          }
        } else {
          if (v == 0) {
            cuda::silu_mul_quant_f16(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(), ds,
                                     dov, nullptr);
          } else if (v == 1) {
            cuda::prev::silu_mul_quant_f16(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                           ds, dov, nullptr);
          } else if (v <= 4) {
            cuda::forced::silu_mul_quant_f16(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                             ds, dov, nullptr,
                                             v == 2   ? 2
                                             : v == 3 ? 4
                                                      : 1);
          } else {
            cuda::forced::silu_mul_quant_f16(dgu.data(), s.rows, s.cols, d.q.data(), d.scale.data(),
                                             ds, dov, nullptr, SiluForm::kCols4);
          }
        }
        const std::string op = "silu_mul_quant/" + std::string(vname[v]) + "_vs_baseline/" + tag +
                               (with_sum ? "" : "/no_sum");
        if (with_out) {
          const auto r0 = compare_exact<uint16_t>(op + ".out", rc(s), to_host(dout), want_out);
          EXPECT_PARITY(r0, op + ".out", rc(s));
        }
        expect_quant_equal(op, rc(s), d, want_q, want_scale, with_sum ? &want_sum : nullptr);
      }
    }
  };
  ParityRng rng(112);
  const std::vector<RowShape> shapes = {{256, 14336}, {255, 14336}, {265, 14336}, {1024, 2048},
                                        {4096, 1032}, {1, 14336},   {3, 16384},   {5, 11008},
                                        {7, 1024},    {2, 1500}};
  for (const RowShape& s : shapes) {
    const size_t n = static_cast<size_t>(s.rows * s.cols);
    std::vector<float> gu = rng.uniform(2 * n, -8.0f, 8.0f);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t i = 0; i < s.cols; ++i) {
        float& g = gu[static_cast<size_t>(r * 2 * s.cols + i)];
        float& u = gu[static_cast<size_t>(r * 2 * s.cols + s.cols + i)];
        if (r % 11 == 1) g *= 10.0f;  // |g| up to 80
        if (r % 11 == 2) g = 0.0f;
        if (r % 11 == 3) u *= 20000.0f;  // products beyond fp16's range
      }
    }
    std::vector<uint16_t> gu16 = to_fp16(gu);
    // Row 4 (if any): every fp16 bit pattern as an up value, cyclically.
    if (s.rows > 4) {
      for (int64_t i = 0; i < s.cols; ++i) {
        gu16[static_cast<size_t>(4 * 2 * s.cols + s.cols + i)] =
            static_cast<uint16_t>((i * 37) & 0xffff);
      }
    }
    run_all("f16", s, gu16);
    // fp32 inputs at the small shapes and at the two above 4 rows per SM (the with-sum dispatch's
    // cols4 kernel with fp32 inputs).
    if (s.rows <= 256 || s.cols <= 2048) run_all("f32", s, gu);
  }
  {
    // Every fp16 bit pattern as an up value, 4 rows of 16384, gates U(-8, 8).
    const RowShape s{4, 16384};
    std::vector<uint16_t> gu(static_cast<size_t>(2 * s.rows * s.cols));
    const std::vector<float> g = rng.uniform(static_cast<size_t>(s.rows * s.cols), -8.0f, 8.0f);
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t i = 0; i < s.cols; ++i) {
        gu[static_cast<size_t>(r * 2 * s.cols + i)] =
            float_to_fp16(g[static_cast<size_t>(r * s.cols + i)]);
        gu[static_cast<size_t>(r * 2 * s.cols + s.cols + i)] =
            static_cast<uint16_t>(r * s.cols + i);
      }
    }
    run_all("all_fp16_ups", s, gu);
  }
}

TEST(ParitySiluMul, F32MatchesCpuWithinRounding) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(107);
  for (const RowShape& s :
       {RowShape{1, 14336}, RowShape{7, 14336}, RowShape{133, 1000}, RowShape{3, 1}}) {
    const int64_t inter = s.cols;
    const size_t n = static_cast<size_t>(s.rows * inter);
    std::vector<float> gu = rng.uniform(2 * n, -30.0f, 30.0f);
    std::vector<float> want(n);
    cpu::silu_mul(gu.data(), s.rows, inter, want.data());
    auto dgu = to_device(gu);
    DeviceBuffer<float> dy(n);
    poison(dy.data(), dy.bytes());
    cuda::silu_mul_f32(dgu.data(), s.rows, inter, dy.data(), nullptr);
    // The CPU's AVX2 exp is Cephes' (~1-2 ulp) and ours is correctly rounded; division and the
    // product add an ulp each: rel 4e-6 leaves a wide margin over those ~4 ulp (2.4e-7 each).
    // The absolute floor covers silu(g) for very negative g, where the results are ~1e-12.
    const auto r = compare_close("silu_mul_f32", rc(s), to_host(dy), want, 1e-12, 4e-6);
    EXPECT_PARITY(r, "silu_mul_f32", rc(s));
  }
}

// The embedding gathers are copies: exact, including the first and last vocabulary rows.
TEST(ParityEmbedding, F32AndF16GatherExact) {
  QSERVE_PARITY_REQUIRE_GPU();
  ParityRng rng(108);
  const int64_t vocab = 1000, hidden = 4096;
  const std::vector<int32_t> ids = {0, 999, 17, 17, 500, 1, 998};
  const int64_t t = static_cast<int64_t>(ids.size());
  const std::vector<float> table = rng.uniform(static_cast<size_t>(vocab * hidden), -1.0f, 1.0f);
  const std::vector<uint16_t> table16 = to_fp16(table);
  std::vector<float> want(static_cast<size_t>(t * hidden)), want16(want.size());
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t i = 0; i < hidden; ++i) {
      want[static_cast<size_t>(r * hidden + i)] = table[static_cast<size_t>(ids[r] * hidden + i)];
      want16[static_cast<size_t>(r * hidden + i)] =
          fp16_to_float(table16[static_cast<size_t>(ids[r] * hidden + i)]);
    }
  }
  auto dt = to_device(table);
  auto dt16 = to_device(table16);
  auto did = to_device(ids);
  DeviceBuffer<float> dy(want.size());
  const std::string shape = shape_str({{"tokens", t}, {"hidden", hidden}});
  poison(dy.data(), dy.bytes());
  cuda::embedding_f32(dt.data(), did.data(), t, hidden, dy.data(), nullptr);
  const auto r1 = compare_close("embedding_f32", shape, to_host(dy), want, 0.0, 0.0);
  EXPECT_PARITY(r1, "embedding_f32", shape);
  poison(dy.data(), dy.bytes());
  cuda::embedding_f16(dt16.data(), did.data(), t, hidden, dy.data(), nullptr);
  const auto r2 = compare_close("embedding_f16", shape, to_host(dy), want16, 0.0, 0.0);
  EXPECT_PARITY(r2, "embedding_f16", shape);
}

}  // namespace
}  // namespace qserve::parity
