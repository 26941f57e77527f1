// Internal to `qserve convert` (model/qserve_convert.h): the two halves of turning one quantized
// linear of a fake-quant dump back into integer codes.
//
// DumpScales reads scale.pt. Both LMQuant and DeepCompressor key every quantized linear's
// parameters by its weight's model.pt name P = "{module}.weight" (qoq-algorithm.md §4; DC
// app/llm/quant/weight.py, backend/qserve/convert.py):
//   P.scale.0       level-1 scale s1, one per output channel (LMQuant shape (N,1,1,1))
//   P.scale.1       level-2 scale s2 per (channel, 128-group), g128 only ((N,1,K/128,1))
//   P.zero          zero point in the 4-bit code domain ("zint4", DC ZeroPointDomain.PreScale):
//                   W = s * (Q - z), z an integer (signed int4 when any is negative)
//   P.scaled_zero   DeepCompressor only (ZeroPointDomain.PostScale): the zero in the scaled
//                   domain, W = s * Q - z~ (z~ fp16 per channel, an integer per g128 group)
// recover_per_channel / recover_g128 then do what QServe's and DeepCompressor's converters do,
// but check every value instead of rounding it away: codes must come out integral and in range,
// or the error names the tensor and the element.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formats/torch_checkpoint.h"
#include "quant/weights.h"

namespace qserve::convert_detail {

enum class DumpFormat { kLmquant, kDeepCompressor };

enum class ZeroDomain {
  kCode,    // P.zero
  kScaled,  // P.scaled_zero
};

// One quantized linear: its fake-quantized weight and its scale.pt entries, in natural layout
// (fp32 as stored; a one-element s1 or zero broadcast to every channel / group, as DC does).
struct DumpLinear {
  std::string weight_src;  // "<model.pt>: '<P>'", for error messages
  int64_t n = 0;
  int64_t k = 0;
  std::vector<float> w;     // [n, k]
  std::vector<float> s1;    // [n]
  std::vector<float> s2;    // [n, k/128]; g128 only
  std::vector<float> zero;  // [n] or [n, k/128]
  ZeroDomain domain = ZeroDomain::kCode;
  std::string s1_src, s2_src, zero_src;  // "<scale.pt>: '<key>'"
};

// A tensor of any float or integer dtype as fp32 values; a bool tensor is refused, naming `what`.
std::vector<float> tensor_floats(const Tensor& t, const std::string& what);

// The scale.pt of a dump, grouped by weight name. The constructor checks every key: it must be
// one of the four forms above (P.scale.N with N of 0 or 1) and hold a tensor of a dtype we read,
// a weight cannot have both zero forms, and --from lmquant refuses P.scaled_zero (QServe's
// converter does not know it) naming --from deepcompressor.
class DumpScales {
 public:
  DumpScales(const TorchCheckpoint& scale, DumpFormat format, bool g128);

  // True when scale.pt has any entry for weight `p`.
  bool mentions(const std::string& p) const { return by_weight_.count(p) != 0; }
  // Every weight name scale.pt has entries for.
  std::vector<std::string> weights() const;
  // Fills d's scales for weight `p` ([n, k] already set): checks that s1 and a zero are present,
  // that s2 is present exactly when g128, and every shape (size-1 dimensions ignored), naming
  // the missing or misshapen key.
  void read(const std::string& p, DumpLinear& d) const;

 private:
  struct Keys {
    std::string s1, s2, zero, scaled_zero;
  };
  std::vector<float> values(const std::string& key, const std::vector<int64_t>& dims,
                            bool broadcast, const std::string& what) const;
  const TorchCheckpoint& scale_;
  DumpFormat format_;
  bool g128_;
  std::map<std::string, Keys> by_weight_;
};

// The exact integer codes of d (QServe's converter for P.zero, DeepCompressor's for
// P.scaled_zero), validated, with s1_szeros = fp16(z * s1) (P.zero) or fp16(z~) (P.scaled_zero).
quant::W4PerChannel recover_per_channel(const DumpLinear& d);
// The same for g128: w8 = round(W / s1) in [-128, 127], then Q = w8 / s2 + z (P.zero) or
// (w8 + z~) / s2 (P.scaled_zero); s2_zeros = int8(-z * s2) or int8(-z~).
quant::W4G128 recover_g128(const DumpLinear& d);

}  // namespace qserve::convert_detail
