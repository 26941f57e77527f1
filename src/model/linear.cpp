// Quantized and fp32 linears behind one interface; the quantized path runs the integer GEMMs and
// fp16 epilogues of src/quant exactly as QServe's kernels define them.
#include "model/linear.h"

#include "core/error.h"
#include "core/half.h"
#include "quant/act_quant.h"
#include "quant/fp16_math.h"
#include "quant/gemm_w4a8.h"
#include "quant/gemm_w8a8.h"
#include "quant/rtn_quantizers.h"

namespace qserve {

namespace {

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
// Clang 14 lacks C++20 aggregate CTAD, so spell the deduction guide out.
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

std::vector<uint16_t> bias_to_fp16(const std::vector<float>& b) {
  std::vector<uint16_t> out(b.size());
  for (size_t i = 0; i < b.size(); ++i) out[i] = float_to_fp16(b[i]);
  return out;
}

int64_t quant_n(const QuantLinear& q) {
  return std::visit([](const auto& w) { return w.n; }, q.w);
}
int64_t quant_k(const QuantLinear& q) {
  return std::visit([](const auto& w) { return w.k; }, q.w);
}

}  // namespace

void QuantizedActivations::resize(int64_t rows_, int64_t cols_, bool with_sum) {
  rows = rows_;
  cols = cols_;
  q.resize(static_cast<size_t>(rows * cols));
  scale.resize(static_cast<size_t>(rows));
  sum.resize(with_sum ? static_cast<size_t>(rows) : 0);
}

Linear Linear::quantize(cpu::LinearF32 f32, WeightPrecision p, const std::string& what) {
  if (p == WeightPrecision::kW16A16) return Linear(std::move(f32));
  QuantLinear q;
  q.bias = bias_to_fp16(f32.bias);
  switch (p) {
    case WeightPrecision::kW8A8: {
      quant::W8PerChannel w = quant::quantize_w8_per_channel(f32.w.data(), f32.n, f32.k);
      quant::validate(w);
      q.w = std::move(w);
      break;
    }
    case WeightPrecision::kW4A8PerChannel: {
      quant::W4PerChannel w = quant::quantize_w4_per_channel(f32.w.data(), f32.n, f32.k);
      quant::validate(w);
      q.w = std::move(w);
      break;
    }
    case WeightPrecision::kW4A8G128: {
      check(f32.k % quant::kGroupSize == 0, what + ": W4A8 g128 needs in_features divisible by " +
                                                std::to_string(quant::kGroupSize) + ", got " +
                                                std::to_string(f32.k) +
                                                " (use per-channel W4A8, e.g. w4a8kv4)");
      quant::W4G128 w = quant::quantize_w4_g128(f32.w.data(), f32.n, f32.k);
      quant::validate(w);
      q.w = std::move(w);
      break;
    }
    case WeightPrecision::kW16A16:
      break;
  }
  return Linear(std::move(q));
}

int64_t Linear::n() const {
  return std::visit(Overloaded{[](const cpu::LinearF32& l) { return l.n; },
                               [](const QuantLinear& q) { return quant_n(q); }},
                    impl_);
}

int64_t Linear::k() const {
  return std::visit(Overloaded{[](const cpu::LinearF32& l) { return l.k; },
                               [](const QuantLinear& q) { return quant_k(q); }},
                    impl_);
}

bool Linear::needs_act_sum() const {
  const QuantLinear* q = quant();
  return q != nullptr && std::holds_alternative<quant::W4PerChannel>(q->w);
}

WeightPrecision Linear::precision() const {
  const QuantLinear* q = quant();
  if (q == nullptr) return WeightPrecision::kW16A16;
  return std::visit(
      Overloaded{[](const quant::W4PerChannel&) { return WeightPrecision::kW4A8PerChannel; },
                 [](const quant::W4G128&) { return WeightPrecision::kW4A8G128; },
                 [](const quant::W8PerChannel&) { return WeightPrecision::kW8A8; }},
      q->w);
}

int64_t Linear::parameter_count() const {
  return std::visit(
      Overloaded{
          [](const cpu::LinearF32& l) { return static_cast<int64_t>(l.w.size() + l.bias.size()); },
          [](const QuantLinear& q) {
            return quant_n(q) * quant_k(q) + static_cast<int64_t>(q.bias.size());
          }},
      impl_);
}

void Linear::apply(const float* x, int64_t m, float* y) const {
  if (const cpu::LinearF32* l = f32()) {
    cpu::linear(x, m, *l, y);
    return;
  }
  QuantizedActivations a;
  a.resize(m, k(), needs_act_sum());
  quant::quantize_per_token(x, m, k(), a.q.data(), a.scale.data(), a.sum_or_null());
  apply(a, y);
}

void Linear::apply(const QuantizedActivations& a, float* y) const {
  const QuantLinear* ql = quant();
  check(ql != nullptr, "Linear::apply: int8 activations given to an fp32 linear");
  check(a.cols == k(), "Linear::apply: activations have " + std::to_string(a.cols) +
                           " columns, the linear expects " + std::to_string(k()));
  const int64_t m = a.rows, n_out = n();
  const uint16_t* bias = ql->bias.empty() ? nullptr : ql->bias.data();
  std::vector<uint16_t> y16(static_cast<size_t>(m * n_out));
  std::visit(Overloaded{[&](const quant::W4PerChannel& w) {
                          check(a.sum.size() == static_cast<size_t>(m),
                                "Linear::apply: per-channel W4A8 needs the activation sums");
                          quant::w4a8_per_channel_gemm(a.q.data(), a.scale.data(), a.sum.data(), m,
                                                       w, bias, y16.data());
                        },
                        [&](const quant::W4G128& w) {
                          quant::w4a8_g128_gemm(a.q.data(), a.scale.data(), m, w, bias, y16.data());
                        },
                        [&](const quant::W8PerChannel& w) {
                          // QServe's W8A8 linears have no bias; ours (Qwen2 QKV) add it as the
                          // W4A8 epilogue does: one fp16 rounding of the fp16 sum.
                          quant::w8a8_gemm(a.q.data(), a.scale.data(), m, w, y16.data());
                          if (bias != nullptr) {
                            for (int64_t r = 0; r < m; ++r) {
                              for (int64_t c = 0; c < n_out; ++c) {
                                uint16_t& v = y16[static_cast<size_t>(r * n_out + c)];
                                v = quant::f16_add(v, bias[c]);
                              }
                            }
                          }
                        }},
             ql->w);
  for (size_t i = 0; i < y16.size(); ++i) y[i] = fp16_to_float(y16[i]);
}

}  // namespace qserve
