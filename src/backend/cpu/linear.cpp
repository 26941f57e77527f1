// Linear layers: weight conversion to fp32 at load, fusion along N, and y = x W^T + b.
#include <cstring>
#include <string>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"

namespace qserve::cpu {

namespace {

// Copies a float tensor's elements (any float dtype) into dst as fp32; the conversions are exact.
void copy_as_f32(const Tensor& t, float* dst) {
  if (t.dtype() == DType::F32) {
    std::memcpy(dst, t.raw(), t.nbytes());
    return;
  }
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) dst[i] = float_at(t, i);
}

}  // namespace

LinearF32 make_linear(const Tensor& weight, const Tensor& bias) {
  check(!weight.empty(), "make_linear: the weight tensor is empty");
  check(dtype_is_float(weight.dtype()), "make_linear: weight of dtype " +
                                            std::string(dtype_name(weight.dtype())) +
                                            " is not a float tensor (F32, F16 or BF16)");
  check(weight.ndim() == 2 && weight.dim(0) > 0 && weight.dim(1) > 0,
        "make_linear: weight must have shape [N, K] with N, K > 0, got " + weight.shape_str());
  LinearF32 l;
  l.n = weight.dim(0);
  l.k = weight.dim(1);
  l.w.resize(static_cast<size_t>(l.n * l.k));
  copy_as_f32(weight, l.w.data());
  if (!bias.empty()) {
    check(dtype_is_float(bias.dtype()), "make_linear: bias of dtype " +
                                            std::string(dtype_name(bias.dtype())) +
                                            " is not a float tensor (F32, F16 or BF16)");
    check(bias.ndim() == 1 && bias.dim(0) == l.n,
          "make_linear: bias must have shape [" + std::to_string(l.n) + "] to match weight " +
              weight.shape_str() + ", got " + bias.shape_str());
    l.bias.resize(static_cast<size_t>(l.n));
    copy_as_f32(bias, l.bias.data());
  }
  return l;
}

LinearF32 concat_linear(std::vector<LinearF32> parts) {
  check(!parts.empty(), "concat_linear: no parts to concatenate");
  LinearF32 out;
  out.k = parts.front().k;
  bool any_bias = false;
  for (size_t p = 0; p < parts.size(); ++p) {
    const LinearF32& l = parts[p];
    check(l.k == out.k, "concat_linear: part " + std::to_string(p) + " has shape [" +
                            std::to_string(l.n) + ", " + std::to_string(l.k) +
                            "] but part 0 has K = " + std::to_string(out.k));
    check(static_cast<int64_t>(l.w.size()) == l.n * l.k,
          "concat_linear: part " + std::to_string(p) + " holds " + std::to_string(l.w.size()) +
              " weights, not [" + std::to_string(l.n) + ", " + std::to_string(l.k) + "]");
    check(l.bias.empty() || static_cast<int64_t>(l.bias.size()) == l.n,
          "concat_linear: part " + std::to_string(p) + " has " + std::to_string(l.bias.size()) +
              " biases for N = " + std::to_string(l.n));
    out.n += l.n;
    any_bias = any_bias || !l.bias.empty();
  }
  out.w.reserve(static_cast<size_t>(out.n * out.k));
  if (any_bias) out.bias.reserve(static_cast<size_t>(out.n));
  for (LinearF32& l : parts) {
    out.w.insert(out.w.end(), l.w.begin(), l.w.end());
    // A part without bias (e.g. Qwen2 has q/k/v bias but a caller may fuse mixed parts) adds 0.
    if (any_bias) {
      if (l.bias.empty()) {
        out.bias.insert(out.bias.end(), static_cast<size_t>(l.n), 0.0f);
      } else {
        out.bias.insert(out.bias.end(), l.bias.begin(), l.bias.end());
      }
    }
    l.w = {};  // release each part as soon as it is copied
  }
  return out;
}

void linear(const float* x, int64_t m, const LinearF32& w, float* y) {
  check(static_cast<int64_t>(w.w.size()) == w.n * w.k,
        "linear: weight holds " + std::to_string(w.w.size()) + " values, not [" +
            std::to_string(w.n) + ", " + std::to_string(w.k) + "]");
  check(w.bias.empty() || static_cast<int64_t>(w.bias.size()) == w.n,
        "linear: bias holds " + std::to_string(w.bias.size()) +
            " values for N = " + std::to_string(w.n));
  gemm_nt(x, w.w.data(), y, m, w.n, w.k);
  if (w.bias.empty() || m <= 0) return;
  const float* b = w.bias.data();
  const int64_t n = w.n;
  for (int64_t i = 0; i < m; ++i) {
    float* yi = y + i * n;
    for (int64_t j = 0; j < n; ++j) yi[j] += b[j];
  }
}

}  // namespace qserve::cpu
