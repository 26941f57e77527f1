// scale.pt key names of LMQuant and DeepCompressor dumps (model/convert_dump.h).
#include <cstring>

#include "core/error.h"
#include "core/tensor.h"
#include "model/convert_dump.h"

namespace qserve::convert_detail {

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<int64_t> squeezed(const std::vector<int64_t>& shape) {
  std::vector<int64_t> out;
  for (int64_t d : shape) {
    if (d != 1) out.push_back(d);
  }
  return out;
}

const char* kScaleLevel = ".scale.";

}  // namespace

std::vector<float> tensor_floats(const Tensor& t, const std::string& what) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  if (out.empty()) return out;
  if (dtype_is_float(t.dtype())) {
    const Tensor f = to_f32(t);
    std::memcpy(out.data(), f.raw(), out.size() * sizeof(float));
    return out;
  }
  auto copy = [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(t.raw());
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(p[i]);
  };
  switch (t.dtype()) {
    case DType::I8:
      copy(int8_t{});
      break;
    case DType::U8:
      copy(uint8_t{});
      break;
    case DType::I16:
      copy(int16_t{});
      break;
    case DType::I32:
      copy(int32_t{});
      break;
    case DType::I64:
      copy(int64_t{});
      break;
    default:
      throw Error(what + " has dtype " + std::string(dtype_name(t.dtype())) +
                  ", expected a float or integer tensor");
  }
  return out;
}

DumpScales::DumpScales(const TorchCheckpoint& scale, DumpFormat format, bool g128)
    : scale_(scale), format_(format), g128_(g128) {
  const std::string& src = scale.source();
  for (const auto& [name, dtype] : scale.unsupported()) {
    throw Error(src + ": '" + name + "' has dtype torch." + dtype + ", which qserve cannot read");
  }
  for (const auto& [name, value] : scale.scalars()) {
    // DeepCompressor stores a zero point that is not a tensor as is (None, a number); neither its
    // converter nor QServe's can use one.
    throw Error(src + ": '" + name + "' is a plain value (" +
                (std::holds_alternative<std::monostate>(value) ? "None" : "not a tensor") +
                "); every entry of scale.pt must be a tensor");
  }
  for (const std::string& name : scale.names()) {
    if (ends_with(name, ".scaled_zero")) {
      const std::string p = name.substr(0, name.size() - std::strlen(".scaled_zero"));
      if (format == DumpFormat::kLmquant) {
        throw Error(src + ": '" + name +
                    "' is a DeepCompressor post-scale zero point, which LMQuant dumps (and "
                    "QServe's converter) do not have; convert this dump with --from "
                    "deepcompressor");
      }
      by_weight_[p].scaled_zero = name;
    } else if (ends_with(name, ".zero")) {
      by_weight_[name.substr(0, name.size() - std::strlen(".zero"))].zero = name;
    } else if (const size_t at = name.rfind(kScaleLevel); at != std::string::npos) {
      const std::string level = name.substr(at + std::strlen(kScaleLevel));
      const std::string p = name.substr(0, at);
      if (level == "0") {
        by_weight_[p].s1 = name;
      } else if (level == "1") {
        by_weight_[p].s2 = name;
      } else {
        throw Error(src + ": '" + name +
                    "': only scale levels 0 (per channel) and 1 (per 128-group) exist in W4A8 "
                    "dumps");
      }
    } else {
      throw Error(src + ": unexpected key '" + name +
                  "' (expected <weight>.scale.0, <weight>.scale.1, <weight>.zero or "
                  "<weight>.scaled_zero)");
    }
  }
  for (const auto& [p, k] : by_weight_) {
    if (!k.zero.empty() && !k.scaled_zero.empty()) {
      throw Error(src + ": both '" + k.zero + "' and '" + k.scaled_zero +
                  "': a weight has one zero point");
    }
  }
}

std::vector<std::string> DumpScales::weights() const {
  std::vector<std::string> out;
  for (const auto& [p, k] : by_weight_) out.push_back(p);
  return out;
}

std::vector<float> DumpScales::values(const std::string& key, const std::vector<int64_t>& dims,
                                      bool broadcast, const std::string& what) const {
  const std::string src = scale_.source() + ": '" + key + "'";
  const Tensor t = scale_.get(key);
  std::vector<float> v = tensor_floats(t, src);
  int64_t want = 1;
  for (int64_t d : dims) want *= d;
  if (broadcast && v.size() == 1) return std::vector<float>(static_cast<size_t>(want), v[0]);
  if (squeezed(t.shape()) != squeezed(dims)) {
    throw Error(src + " (" + what + ") has shape " + t.shape_str() + ", expected " +
                shape_to_string(dims) + (broadcast ? " or a single element" : "") +
                " (size-1 dimensions are ignored)");
  }
  return v;
}

void DumpScales::read(const std::string& p, DumpLinear& d) const {
  const std::string& src = scale_.source();
  const Keys& k = by_weight_.at(p);
  if (k.s1.empty()) {
    throw Error(src + ": no '" + p + ".scale.0' (the per-channel scale s1) for " + d.weight_src);
  }
  if (k.zero.empty() && k.scaled_zero.empty()) {
    const std::string keys = format_ == DumpFormat::kLmquant
                                 ? "no '" + p + ".zero'"
                                 : "neither '" + p + ".zero' nor '" + p + ".scaled_zero'";
    throw Error(src + ": " + keys + " (the zero point) for " + d.weight_src +
                "; W4 dumps have one (W8 dumps, which have none, are not converted)");
  }
  if (g128_ && k.s2.empty()) {
    throw Error(src + ": no '" + p + ".scale.1' (the per-group scale s2 of a g128 dump) for " +
                d.weight_src + "; a per-channel dump converts with --group-size -1");
  }
  if (!g128_ && !k.s2.empty()) {
    throw Error(src + ": '" + k.s2 + "' is a per-group scale: this is a g128 dump; convert it " +
                "with --group-size 128");
  }
  check(!g128_ || d.k % quant::kGroupSize == 0,
        d.weight_src + ": in_features " + std::to_string(d.k) + " is not a multiple of 128");
  const std::vector<int64_t> groups = {d.n, d.k / quant::kGroupSize};
  const std::vector<int64_t> channels = {d.n};
  d.s1_src = src + ": '" + k.s1 + "'";
  d.s1 = values(k.s1, channels, true, "s1");
  if (g128_) {
    d.s2_src = src + ": '" + k.s2 + "'";
    d.s2 = values(k.s2, groups, false, "s2");
  }
  const std::string& zk = k.zero.empty() ? k.scaled_zero : k.zero;
  d.domain = k.zero.empty() ? ZeroDomain::kScaled : ZeroDomain::kCode;
  d.zero_src = src + ": '" + zk + "'";
  d.zero = values(zk, g128_ ? groups : channels, true, "zero point");
}

}  // namespace qserve::convert_detail
