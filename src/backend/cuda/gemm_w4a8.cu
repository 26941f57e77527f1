// W4A8 GEMMs, per-channel and g128, bit-exact with quant/gemm_w4a8.h: the exact int32
// accumulators of a dp4a tiled GEMM (gemm_int8_common.cuh) followed by QServe's fp16 epilogue
// written with correctly rounded fp32 intrinsics in the reference's order.
//
// Dispatch (acc_out == null only; acc_out keeps the simple kernels, which are the parity
// reference): small M -> the packed mma kernel, large M -> the CUTLASS sm90 kernels
// (gemm_w4a8_fast.h); whatever does not apply falls back to the simple kernels below.
//
// The simple kernels read the natural layout of quant/weights.h (one code per byte). The g128
// weight bytes are produced on the fly as the reference's g128_int8_row does:
//   w8 = int8((Q * s2 + uint8(s2_zero)) mod 256), per byte (carries dropped, like __vadd4).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemm_int8_common.cuh"
#include "backend/cuda/gemm_w4a8_epilogue.cuh"
#include "backend/cuda/gemm_w4a8_fast.h"
#include "backend/cuda/gemm_w8a8_sm90.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/quant_device.cuh"
#include "quant/weights.h"

namespace qserve::cuda {

namespace {

// ---- weight sources ----

struct W4CodesSrc {  // per-channel: the raw codes 0..15 are the integer weights
  const uint8_t* q;
  int64_t k;
  __device__ int byte(int64_t n, int64_t kk) const { return q[n * k + kk]; }
  __device__ uint32_t word(int64_t n, int64_t kk) const {
    return *reinterpret_cast<const uint32_t*>(q + n * k + kk);
  }
};

struct W4G128Src {
  const uint8_t* q;
  const int8_t* s2;
  const int8_t* zeros;
  int64_t k;
  int64_t groups;
  __device__ int byte(int64_t n, int64_t kk) const {
    const int64_t g = n * groups + kk / quant::kGroupSize;
    const int v = static_cast<int>(q[n * k + kk]) * static_cast<int>(s2[g]) +
                  static_cast<int>(static_cast<uint8_t>(zeros[g]));
    return static_cast<int>(static_cast<int8_t>(static_cast<uint8_t>(v & 0xff)));
  }
  __device__ uint32_t word(int64_t n, int64_t kk) const {
    // kk % 4 == 0 and 128 % 4 == 0: the four bytes share one group.
    const int64_t g = n * groups + kk / quant::kGroupSize;
    const uint32_t s = static_cast<uint32_t>(static_cast<int>(s2[g]));
    const uint32_t z = static_cast<uint8_t>(zeros[g]);
    const uint32_t codes = *reinterpret_cast<const uint32_t*>(q + n * k + kk);
    uint32_t out = 0;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t c = (codes >> (8 * b)) & 0xffu;
      out |= ((c * s + z) & 0xffu) << (8 * b);
    }
    return out;
  }
};

using PerChannelEpi = detail::W4PerChannelEpi;
using G128Epi = detail::W4G128Epi;

std::string shape(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
}

// Same limits as the CPU reference (quant/int_dot.h): k products of magnitude <= max_product
// must fit an int32, or the accumulators would wrap.
void check_gemm(const char* op, int64_t m, int64_t n, int64_t k, int64_t max_product) {
  check(m >= 0 && n > 0 && k > 0, std::string(op) + ": bad shape " + shape(m, n, k));
  check(k <= (int64_t{1} << 31) / max_product - 1,
        std::string(op) + ": k too large for an exact int32 accumulator, " + shape(m, n, k));
  check((m + detail::kTileM - 1) / detail::kTileM <= 65535 &&
            (n + detail::kTileN - 1) / detail::kTileN <= 0x7fffffff,
        std::string(op) + ": shape exceeds the grid limits, " + shape(m, n, k));
}

bool aligned4(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 4 == 0;
}

// Grow-only per-device workspace for g128 weights expanded per call (views without w8).
// Growing synchronizes the device first, so no in-flight kernel still uses the old block; warm
// the shapes up before capturing a CUDA graph.
int8_t* expand_workspace(size_t bytes, int device) {
  static std::mutex mu;
  static auto* buffers = new std::unordered_map<int, DeviceBuffer<int8_t>>();  // never freed
  std::lock_guard<std::mutex> lock(mu);
  DeviceBuffer<int8_t>& b = (*buffers)[device];
  if (b.size() < bytes) {
    cuda_check(cudaDeviceSynchronize(), "gemm_w4a8_g128 expand workspace",
               "bytes=" + std::to_string(bytes));
    b = DeviceBuffer<int8_t>(bytes);
  }
  return b.data();
}

// Large-M g128: the W8A8 sm90 kernel on w8 with s1 as the per-channel scale. Its epilogue,
// fp16(float(acc) * (s1 * a_scale)), is the g128 epilogue exactly (one fp32 product of the two
// scales, commutative, then one product with float(acc)). False when the sm90 kernel does not
// apply (nothing launched, except possibly the per-call expansion).
// With a caller workspace (user_ws non-null) the per-call expansion goes to its first
// expand_bytes() and the W8A8 kernel gets the rest.
size_t expand_bytes(const W4G128View& w) {
  return w.w8 != nullptr ? 0 : (static_cast<size_t>(w.n * w.k) + 255) / 256 * 256;
}

bool g128_large_m(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128View& w,
                  uint16_t* y, cudaStream_t stream, const GemmWorkspace* user_ws) {
  const int8_t* w8 = w.w8;
  W8PerChannelView v{w.n, w.k, w8, w.s1_scales};
  GemmWorkspace rest;
  if (user_ws != nullptr) rest = *user_ws;
  if (w8 == nullptr) {
    // Check with a stand-in 16-byte-aligned pointer before allocating and expanding.
    v.w = reinterpret_cast<const int8_t*>(uintptr_t{256});
    if (!w8a8_sm90_applicable(aq, a_scale, m, v, y)) return false;
    int8_t* ws = nullptr;
    if (user_ws != nullptr) {
      const size_t need = expand_bytes(w);
      check(user_ws->data != nullptr && user_ws->bytes >= need,
            "gemm_w4a8_g128: caller workspace of " + std::to_string(user_ws->bytes) +
                " bytes, the per-call expansion needs " + std::to_string(need) + " (" +
                shape(m, w.n, w.k) + ")");
      ws = static_cast<int8_t*>(user_ws->data);
      rest = {static_cast<uint8_t*>(user_ws->data) + need, user_ws->bytes - need};
    } else {
      int device = 0;
      cuda_check(cudaGetDevice(&device), "gemm_w4a8_g128");
      ws = expand_workspace(static_cast<size_t>(w.n * w.k), device);
    }
    w4a8_g128_expand(w, ws, stream);
    v.w = ws;
  }
  return gemm_w8a8_sm90(aq, a_scale, m, v, y, stream, W8A8Sm90Variant::kAuto,
                        user_ws != nullptr ? &rest : nullptr);
}

}  // namespace

const char* gemm_w4a8_per_channel_path(const int8_t* aq, const uint16_t* a_scale,
                                       const uint16_t* a_sum, int64_t m, const W4PerChannelView& w,
                                       const uint16_t* y) {
  if (m >= 1 && m <= kW4A8SmallMMax && w.q_packed != nullptr &&
      w4a8_small_m_applies(false, m, w.n, w.k) && reinterpret_cast<uintptr_t>(aq) % 16 == 0)
    return "small_m_mma_packed";
  if (m > kW4A8SmallMMax && w4a8_per_channel_sm90_applicable(aq, a_scale, a_sum, m, w, y))
    return "sm90_wgmma_evt";
  return "simple_dp4a";
}

const char* gemm_w4a8_g128_path(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                                const W4G128View& w, const uint16_t* y) {
  if (m >= 1 && m <= kW4A8SmallMMax && w.q_packed != nullptr &&
      w4a8_small_m_applies(true, m, w.n, w.k) && reinterpret_cast<uintptr_t>(aq) % 16 == 0)
    return "small_m_mma_packed";
  if (m > kW4A8SmallMMax) {
    const W8PerChannelView v{
        w.n, w.k, w.w8 != nullptr ? w.w8 : reinterpret_cast<const int8_t*>(uintptr_t{256}),
        w.s1_scales};
    if (w8a8_sm90_applicable(aq, a_scale, m, v, y))
      return w.w8 != nullptr ? "expand+sm90_w8a8" : "expand_per_call+sm90_w8a8";
  }
  return "simple_dp4a";
}

W4PerChannelView W4PerChannelOnDevice::view() const {
  return {n, k, q.data(), s1_scales.data(), s1_szeros.data(), q_packed.data()};
}
W4G128View W4G128OnDevice::view() const {
  return {
      n,        k, q.data(), s1_scales.data(), s2_scales.data(), s2_zeros.data(), q_packed.data(),
      w8.data()};
}

void make_fast_layouts(W4PerChannelOnDevice& d, cudaStream_t stream) {
  if (w4a8_packable(d.n, d.k)) {  // the small-M kernels' layout
    d.q_packed = DeviceBuffer<uint8_t>(static_cast<size_t>(d.n * d.k / 2));
    w4a8_pack_codes(d.q.data(), d.n, d.k, d.q_packed.data(), stream);
  }
  cuda_check(cudaStreamSynchronize(stream), "make_fast_layouts(W4PerChannel)");
}

void make_fast_layouts(W4G128OnDevice& d, cudaStream_t stream) {
  if (w4a8_packable(d.n, d.k)) {
    d.q_packed = DeviceBuffer<uint8_t>(static_cast<size_t>(d.n * d.k / 2));
    w4a8_pack_codes(d.q.data(), d.n, d.k, d.q_packed.data(), stream);
  }
  if (d.k % quant::kGroupSize == 0) {  // the large-M path's int8 weights, expanded once
    d.w8 = DeviceBuffer<int8_t>(static_cast<size_t>(d.n * d.k));
    w4a8_g128_expand(d.view(), d.w8.data(), stream);
  }
  cuda_check(cudaStreamSynchronize(stream), "make_fast_layouts(W4G128)");
}

W4PerChannelOnDevice upload(const quant::W4PerChannel& w, cudaStream_t stream) {
  W4PerChannelOnDevice d;
  d.n = w.n;
  d.k = w.k;
  d.q = to_device(w.q, stream);
  d.s1_scales = to_device(w.s1_scales, stream);
  d.s1_szeros = to_device(w.s1_szeros, stream);
  make_fast_layouts(d, stream);
  cuda_check(cudaStreamSynchronize(stream), "upload(W4PerChannel)");
  return d;
}

W4G128OnDevice upload(const quant::W4G128& w, cudaStream_t stream) {
  W4G128OnDevice d;
  d.n = w.n;
  d.k = w.k;
  d.q = to_device(w.q, stream);
  d.s1_scales = to_device(w.s1_scales, stream);
  d.s2_scales = to_device(w.s2_scales, stream);
  d.s2_zeros = to_device(w.s2_zeros, stream);
  make_fast_layouts(d, stream);
  cuda_check(cudaStreamSynchronize(stream), "upload(W4G128)");
  return d;
}

namespace {

void per_channel_impl(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum, int64_t m,
                      const W4PerChannelView& w, const uint16_t* bias, uint16_t* y,
                      int32_t* acc_out, cudaStream_t stream, const GemmWorkspace* ws) {
  const char* op = "gemm_w4a8_per_channel";
  check_gemm(op, m, w.n, w.k, 128 * 15);
  check(a_sum != nullptr, std::string(op) + ": the activation sums are required");
  check(w.q != nullptr && w.s1_scales != nullptr && w.s1_szeros != nullptr && y != nullptr,
        std::string(op) + ": null weight or output pointer");
  if (m == 0) return;
  if (acc_out == nullptr) {
    if (m <= kW4A8SmallMMax &&
        gemm_w4a8_per_channel_small_m(aq, a_scale, a_sum, m, w, bias, y, stream))
      return;
    if (m > kW4A8SmallMMax && gemm_w4a8_per_channel_sm90(aq, a_scale, a_sum, m, w, y, stream, ws)) {
      w4a8_add_bias(y, bias, m, w.n, stream);
      return;
    }
  }
  const W4CodesSrc src{w.q, w.k};
  const PerChannelEpi epi{a_scale, a_sum, w.s1_scales, w.s1_szeros, bias, y, acc_out, w.n};
  detail::launch_int8_gemm(aq, m, w.n, w.k, src, aligned4(w.q), epi, stream);
  check_launch(op, shape(m, w.n, w.k));
}

void g128_impl(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128View& w,
               const uint16_t* bias, uint16_t* y, int32_t* acc_out, cudaStream_t stream,
               const GemmWorkspace* ws) {
  const char* op = "gemm_w4a8_g128";
  check_gemm(op, m, w.n, w.k, 128 * 128);
  check(w.k % quant::kGroupSize == 0,
        std::string(op) + ": k must be a multiple of 128, " + shape(m, w.n, w.k));
  check(w.q != nullptr && w.s1_scales != nullptr && w.s2_scales != nullptr &&
            w.s2_zeros != nullptr && y != nullptr,
        std::string(op) + ": null weight or output pointer");
  if (m == 0) return;
  if (acc_out == nullptr) {
    if (m <= kW4A8SmallMMax && gemm_w4a8_g128_small_m(aq, a_scale, m, w, bias, y, stream)) return;
    if (m > kW4A8SmallMMax && g128_large_m(aq, a_scale, m, w, y, stream, ws)) {
      w4a8_add_bias(y, bias, m, w.n, stream);
      return;
    }
  }
  const W4G128Src src{w.q, w.s2_scales, w.s2_zeros, w.k, w.k / quant::kGroupSize};
  const G128Epi epi{a_scale, w.s1_scales, bias, y, acc_out, w.n};
  detail::launch_int8_gemm(aq, m, w.n, w.k, src, aligned4(w.q), epi, stream);
  check_launch(op, shape(m, w.n, w.k));
}

}  // namespace

void gemm_w4a8_per_channel(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                           int64_t m, const W4PerChannelView& w, const uint16_t* bias, uint16_t* y,
                           int32_t* acc_out, cudaStream_t stream) {
  per_channel_impl(aq, a_scale, a_sum, m, w, bias, y, acc_out, stream, nullptr);
}

void gemm_w4a8_per_channel(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                           int64_t m, const W4PerChannelView& w, const uint16_t* bias, uint16_t* y,
                           int32_t* acc_out, cudaStream_t stream, const GemmWorkspace& ws) {
  per_channel_impl(aq, a_scale, a_sum, m, w, bias, y, acc_out, stream, &ws);
}

void gemm_w4a8_g128(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128View& w,
                    const uint16_t* bias, uint16_t* y, int32_t* acc_out, cudaStream_t stream) {
  g128_impl(aq, a_scale, m, w, bias, y, acc_out, stream, nullptr);
}

void gemm_w4a8_g128(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128View& w,
                    const uint16_t* bias, uint16_t* y, int32_t* acc_out, cudaStream_t stream,
                    const GemmWorkspace& ws) {
  g128_impl(aq, a_scale, m, w, bias, y, acc_out, stream, &ws);
}

// Only the large-M paths take workspace; small M and the dp4a kernels need none.
size_t gemm_w4a8_per_channel_workspace_bytes(int64_t m, const W4PerChannelView& w) {
  if (m <= kW4A8SmallMMax) return 0;
  return w4a8_per_channel_sm90_workspace_bytes(m, w.n, w.k);
}

size_t gemm_w4a8_g128_workspace_bytes(int64_t m, const W4G128View& w) {
  if (m <= kW4A8SmallMMax) return 0;
  return expand_bytes(w) + gemm_w8a8_sm90_workspace_bytes(m, w.n, w.k);
}

}  // namespace qserve::cuda
