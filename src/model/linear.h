// A decoder linear layer at any weight precision: the fp32 reference (cpu::LinearF32) or one of
// QServe's quantized GEMMs over the weight structs of src/quant (W4A8 per-channel, W4A8 g128,
// W8A8). docs/precision.md describes the data flow.
//
// A quantized linear computes, for fp32 input rows x:
//   per-token int8 quantization of x (quant::quantize_per_token; with the fp16 activation sums
//   when the weights are per-channel W4A8) -> exact int32 GEMM -> QServe's fp16 epilogue
//   (+ fp16 bias, e.g. Qwen2's QKV) -> fp32 output (the fp16 values, converted exactly).
// Where QServe fuses the quantization into the op before (norm + quant, SiLU·mul + quant), the
// forward quantizes itself and calls apply(QuantizedActivations).
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "model/precision.h"
#include "quant/weights.h"

namespace qserve {

// Per-token int8 activations [rows, cols] with their fp16 scales (and sums, for per-channel
// W4A8): the output of the quant ops, the input of the quantized GEMMs.
struct QuantizedActivations {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<int8_t> q;        // [rows, cols]
  std::vector<uint16_t> scale;  // fp16 [rows]
  std::vector<uint16_t> sum;    // fp16 [rows], or empty when no consumer needs it

  void resize(int64_t rows_, int64_t cols_, bool with_sum);
  uint16_t* sum_or_null() { return sum.empty() ? nullptr : sum.data(); }
};

// Quantized weights of one linear layer and its optional bias.
struct QuantLinear {
  std::variant<quant::W4PerChannel, quant::W4G128, quant::W8PerChannel> w;
  std::vector<uint16_t> bias;  // fp16 [n], or empty
};

class Linear {
 public:
  Linear() = default;
  explicit Linear(cpu::LinearF32 f32) : impl_(std::move(f32)) {}
  explicit Linear(QuantLinear q) : impl_(std::move(q)) {}

  // RTN-quantizes an fp32 linear to `p` (W16A16 keeps it as is): W4 per-channel asymmetric,
  // W4 g128 progressive, W8 symmetric per-channel (quant/rtn_quantizers.h, DeepCompressor's
  // post-scale zero points). `what` names the layer in errors (g128 needs K % 128 == 0).
  static Linear quantize(cpu::LinearF32 f32, WeightPrecision p, const std::string& what);

  int64_t n() const;  // out_features
  int64_t k() const;  // in_features
  bool quantized() const { return std::holds_alternative<QuantLinear>(impl_); }
  // Per-channel W4A8's epilogue subtracts s1_szeros * (sum of the unquantized activations).
  bool needs_act_sum() const;
  WeightPrecision precision() const;
  int64_t parameter_count() const;  // weights + bias elements
  const cpu::LinearF32* f32() const { return std::get_if<cpu::LinearF32>(&impl_); }
  const QuantLinear* quant() const { return std::get_if<QuantLinear>(&impl_); }

  // y[m, n] = x[m, k] W^T (+ b). fp32: cpu::linear. Quantized: quantize_per_token, then the GEMM.
  void apply(const float* x, int64_t m, float* y) const;
  // Quantized linears only: the GEMM on activations quantized by a fused op. y [a.rows, n].
  void apply(const QuantizedActivations& a, float* y) const;

 private:
  std::variant<cpu::LinearF32, QuantLinear> impl_;
};

}  // namespace qserve
