// One linear to codes and scales: static grids, then GPTQ or RTN over them
// (qoq/weight_quantization.h).
#include "qoq/weight_quantization.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/error.h"
#include "core/half.h"
#include "core/thread_pool.h"
#include "quant/rtn_quantizers.h"

namespace qserve::qoq {

namespace {

constexpr float kP = quant::kProtectiveRange;

// Runs GPTQ (with the site's Hessian) or RTN over the working matrix.
GptqInfo run(std::vector<float>& work, int64_t n, int64_t k, const InputSite& site,
             const WeightQuantOptions& o, const ColumnQuantizer& q) {
  if (!o.gptq) {
    rtn_quantize(work.data(), n, k, q);
    return {};
  }
  check(static_cast<int64_t>(site.hessian.size()) == k * k,
        "quantize_linear: GPTQ needs the inputs' Hessian");
  return gptq_quantize(work.data(), n, k, site.hessian, q, o.gptq_opts);
}

quant::W4G128 quantize_g128(const cpu::LinearF32& lin, const InputSite& site,
                            const WeightQuantOptions& o, GptqInfo& info) {
  const int64_t n = lin.n, k = lin.k, G = k / quant::kGroupSize;
  check(k % quant::kGroupSize == 0,
        "g128: in_features " + std::to_string(k) + " is not a multiple of 128");
  quant::W4G128 w;
  w.n = n;
  w.k = k;
  w.q.assign(static_cast<size_t>(n * k), 0);
  w.s1_scales.resize(static_cast<size_t>(n));
  w.s2_scales.resize(static_cast<size_t>(n * G));
  w.s2_zeros.resize(static_cast<size_t>(n * G));
  std::vector<float> x(static_cast<size_t>(n * k));
  std::vector<quant::GroupGrid4> grids(static_cast<size_t>(n * G));
  ThreadPool::global().parallel_for(n, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const std::span<const float> row(&lin.w[static_cast<size_t>(r * k)], static_cast<size_t>(k));
      const uint16_t s1 = quant::g128_level1_scale(row);
      w.s1_scales[r] = s1;
      for (int64_t c = 0; c < k; ++c) x[r * k + c] = quant::g128_level1_value(row[c], s1);
      for (int64_t g = 0; g < G; ++g) {
        quant::GroupGrid4 gg = quant::group_grid4(
            {&x[r * k + g * quant::kGroupSize], static_cast<size_t>(quant::kGroupSize)},
            quant::ZeroPointMode::kPostScale);
        grids[r * G + g] = gg;
        w.s2_scales[r * G + g] = static_cast<int8_t>(gg.s2);
        w.s2_zeros[r * G + g] = gg.stored_zero();
      }
    }
  });
  info = run(x, n, k, site, o, [&](int64_t r, int64_t c, float v) {
    const quant::GroupGrid4& g = grids[r * G + c / quant::kGroupSize];
    const uint8_t code = g.code(std::clamp(v, -kP, kP));
    w.q[r * k + c] = code;
    return static_cast<float>(g.w8(code));
  });
  quant::validate(w);
  return w;
}

quant::W4PerChannel quantize_per_channel(const cpu::LinearF32& lin, const InputSite& site,
                                         const WeightQuantOptions& o, GptqInfo& info,
                                         double& mean_ratio) {
  const int64_t n = lin.n, k = lin.k;
  std::vector<float> ratio(static_cast<size_t>(n), 1.0f);
  if (o.clip_search && site.sample_rows > 0) {
    ratio = search_clip_ratios(lin, site.sample.data(), site.sample_rows);
  }
  mean_ratio = 0.0;
  for (float r : ratio) mean_ratio += r;
  mean_ratio /= static_cast<double>(n);
  quant::W4PerChannel w;
  w.n = n;
  w.k = k;
  w.q.assign(static_cast<size_t>(n * k), 0);
  w.s1_scales.resize(static_cast<size_t>(n));
  w.s1_szeros.resize(static_cast<size_t>(n));
  std::vector<quant::ChannelGrid4> grids(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const float* row = &lin.w[static_cast<size_t>(r * k)];
    const std::array<float, 2> range{ratio[r] * *std::min_element(row, row + k),
                                     ratio[r] * *std::max_element(row, row + k)};
    grids[r] = quant::channel_grid4(range, quant::ZeroPointMode::kPostScale);
    w.s1_scales[r] = grids[r].scale;
    w.s1_szeros[r] = grids[r].szero;
  }
  std::vector<float> work = lin.w;
  info = run(work, n, k, site, o, [&](int64_t r, int64_t c, float v) {
    const uint8_t code = grids[r].code(v);
    w.q[r * k + c] = code;
    return grids[r].dequant(code);
  });
  quant::validate(w);
  return w;
}

quant::W8PerChannel quantize_w8(const cpu::LinearF32& lin, const InputSite& site,
                                const WeightQuantOptions& o, GptqInfo& info) {
  const int64_t n = lin.n, k = lin.k;
  quant::W8PerChannel w;
  w.n = n;
  w.k = k;
  w.w.assign(static_cast<size_t>(n * k), 0);
  w.dequant_scale.resize(static_cast<size_t>(n));
  std::vector<float> scale(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const float* row = &lin.w[static_cast<size_t>(r * k)];
    float amax = 0.0f;
    for (int64_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(row[c]));
    uint16_t s = float_to_fp16(amax / 127.0f);
    if (fp16_to_float(s) == 0.0f) s = float_to_fp16(1.0f);
    w.dequant_scale[r] = s;
    scale[r] = fp16_to_float(s);
  }
  std::vector<float> work = lin.w;
  info = run(work, n, k, site, o, [&](int64_t r, int64_t c, float v) {
    const float q = std::clamp(std::nearbyint(v / scale[r]), -127.0f, 127.0f);
    w.w[r * k + c] = static_cast<int8_t>(q);
    return q * scale[r];
  });
  quant::validate(w);
  return w;
}

}  // namespace

std::vector<float> dequantized(const QuantizedLinear& q) {
  return std::visit([](const auto& w) { return quant::dequantize(w); }, q.w);
}

QuantizedLinear quantize_linear(const cpu::LinearF32& lin, const InputSite& site,
                                const WeightQuantOptions& o) {
  check(site.k == lin.k, "quantize_linear: calibration inputs do not match the weight's columns");
  QuantizedLinear out;
  switch (o.scheme) {
    case WeightScheme::kW4G128:
      out.w = quantize_g128(lin, site, o, out.gptq);
      break;
    case WeightScheme::kW4PerChannel:
      out.w = quantize_per_channel(lin, site, o, out.gptq, out.mean_clip_ratio);
      break;
    case WeightScheme::kW8:
      out.w = quantize_w8(lin, site, o, out.gptq);
      break;
  }
  // Error statistics against the fp32 weight (and, with a Hessian, on the calibration outputs).
  const std::vector<float> wq = dequantized(out);
  const int64_t n = lin.n, k = lin.k;
  double dw = 0.0, ww = 0.0;
  for (size_t i = 0; i < wq.size(); ++i) {
    const double d = static_cast<double>(wq[i]) - lin.w[i];
    dw += d * d;
    ww += static_cast<double>(lin.w[i]) * lin.w[i];
  }
  out.weight_rel_error = ww > 0 ? std::sqrt(dw / ww) : 0.0;
  if (static_cast<int64_t>(site.hessian.size()) == k * k) {
    // sum_rows d^T H d via two fp32 GEMMs (H is symmetric, so gemm_nt's B^T is H itself).
    std::vector<float> hf(site.hessian.begin(), site.hessian.end());
    std::vector<float> d(static_cast<size_t>(n * k)), dh(static_cast<size_t>(n * k)),
        wh(static_cast<size_t>(n * k));
    for (size_t i = 0; i < d.size(); ++i) d[i] = wq[i] - lin.w[i];
    cpu::gemm_nt(d.data(), hf.data(), dh.data(), n, k, k);
    cpu::gemm_nt(lin.w.data(), hf.data(), wh.data(), n, k, k);
    double a = 0.0, z = 0.0;
    for (size_t i = 0; i < d.size(); ++i) {
      a += static_cast<double>(d[i]) * dh[i];
      z += static_cast<double>(lin.w[i]) * wh[i];
    }
    out.output_rel_error = z > 0 ? std::sqrt(std::max(0.0, a) / z) : 0.0;
  }
  return out;
}

}  // namespace qserve::qoq
