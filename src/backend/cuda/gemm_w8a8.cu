// W8A8 GEMM, bit-exact with quant/gemm_w8a8.h: exact int32 accumulators from the dp4a tiled
// GEMM (gemm_int8_common.cuh), then y = fp16(float(acc) * (dequant_scale * a_scale)).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemm_int8_common.cuh"
#include "backend/cuda/gemm_w8a8_sm90.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/quant_device.cuh"

namespace qserve::cuda {

namespace {

using detail::f2h;
using detail::h2f;

struct W8Src {
  const int8_t* w;
  int64_t k;
  __device__ int byte(int64_t n, int64_t kk) const { return w[n * k + kk]; }
  __device__ uint32_t word(int64_t n, int64_t kk) const {
    return *reinterpret_cast<const uint32_t*>(w + n * k + kk);
  }
};

struct W8Epi {
  const uint16_t* a_scale;
  const uint16_t* dequant;
  uint16_t* y;
  int32_t* acc_out;
  int64_t n_total;
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const {
    const int64_t o = m * n_total + n;
    if (acc_out != nullptr) acc_out[o] = acc;
    const float scale = __fmul_rn(h2f(dequant[n]), h2f(a_scale[m]));
    y[o] = f2h(__fmul_rn(__int2float_rn(acc), scale));
  }
};

std::string shape(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
}

}  // namespace

W8PerChannelView W8PerChannelOnDevice::view() const {
  return {n, k, w.data(), dequant_scale.data()};
}

W8PerChannelOnDevice upload(const quant::W8PerChannel& w, cudaStream_t stream) {
  W8PerChannelOnDevice d;
  d.n = w.n;
  d.k = w.k;
  d.w = to_device(w.w, stream);
  d.dequant_scale = to_device(w.dequant_scale, stream);
  return d;
}

namespace {

void w8a8_impl(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
               uint16_t* y, int32_t* acc_out, cudaStream_t stream, const GemmWorkspace* ws) {
  const char* op = "gemm_w8a8";
  check(m >= 0 && w.n > 0 && w.k > 0, std::string(op) + ": bad shape " + shape(m, w.n, w.k));
  check(w.k <= (int64_t{1} << 31) / (128 * 128) - 1,
        std::string(op) + ": k too large for an exact int32 accumulator, " + shape(m, w.n, w.k));
  check((m + detail::kTileM - 1) / detail::kTileM <= 65535,
        std::string(op) + ": m exceeds the grid limit, " + shape(m, w.n, w.k));
  check(w.w != nullptr && w.dequant_scale != nullptr && y != nullptr,
        std::string(op) + ": null weight or output pointer");
  if (m == 0) return;
  // Hopper: the CUTLASS wgmma kernel (same y bits; it cannot export the accumulators, so a
  // request for acc_out takes the reference path). It declines unsupported shapes/devices.
  if (acc_out == nullptr &&
      gemm_w8a8_sm90(aq, a_scale, m, w, y, stream, W8A8Sm90Variant::kAuto, ws))
    return;
  const W8Src src{w.w, w.k};
  const W8Epi epi{a_scale, w.dequant_scale, y, acc_out, w.n};
  detail::launch_int8_gemm(aq, m, w.n, w.k, src, reinterpret_cast<uintptr_t>(w.w) % 4 == 0, epi,
                           stream);
  check_launch(op, shape(m, w.n, w.k));
}

}  // namespace

void gemm_w8a8(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
               uint16_t* y, int32_t* acc_out, cudaStream_t stream) {
  w8a8_impl(aq, a_scale, m, w, y, acc_out, stream, nullptr);
}

void gemm_w8a8(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
               uint16_t* y, int32_t* acc_out, cudaStream_t stream, const GemmWorkspace& ws) {
  w8a8_impl(aq, a_scale, m, w, y, acc_out, stream, &ws);
}

size_t gemm_w8a8_workspace_bytes(int64_t m, const W8PerChannelView& w) {
  return gemm_w8a8_sm90_workspace_bytes(m, w.n, w.k);
}

}  // namespace qserve::cuda
