// W4A8 GEMMs, per-channel and g128, bit-exact with quant/gemm_w4a8.h: the exact int32
// accumulators of a dp4a tiled GEMM (gemm_int8_common.cuh) followed by QServe's fp16 epilogue
// written with correctly rounded fp32 intrinsics in the reference's order.
//
// Weights are read in the natural layout of quant/weights.h (one code per byte). The g128
// weight bytes are produced on the fly as the reference's g128_int8_row does:
//   w8 = int8((Q * s2 + uint8(s2_zero)) mod 256), per byte (carries dropped, like __vadd4).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemm_int8_common.cuh"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/quant_device.cuh"
#include "quant/weights.h"

namespace qserve::cuda {

namespace {

using detail::f2h;
using detail::h2f;

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

// ---- epilogues ----

struct PerChannelEpi {
  const uint16_t* a_scale;
  const uint16_t* a_sum;
  const uint16_t* s1;
  const uint16_t* s1_szeros;
  const uint16_t* bias;
  uint16_t* y;
  int32_t* acc_out;
  int64_t n_total;
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const {
    const int64_t o = m * n_total + n;
    if (acc_out != nullptr) acc_out[o] = acc;
    // fma(a_scale, float(acc) * s1, -(s1_szero * a_sum)), both products rounded first.
    const float scaled_acc = __fmul_rn(__int2float_rn(acc), h2f(s1[n]));
    const float zero_term = __fmul_rn(h2f(s1_szeros[n]), h2f(a_sum[m]));
    __half v = __float2half_rn(__fmaf_rn(h2f(a_scale[m]), scaled_acc, -zero_term));
    if (bias != nullptr) v = __hadd_rn(v, __ushort_as_half(bias[n]));
    y[o] = __half_as_ushort(v);
  }
};

struct G128Epi {
  const uint16_t* a_scale;
  const uint16_t* s1;
  const uint16_t* bias;
  uint16_t* y;
  int32_t* acc_out;
  int64_t n_total;
  __device__ void operator()(int64_t m, int64_t n, int32_t acc) const {
    const int64_t o = m * n_total + n;
    if (acc_out != nullptr) acc_out[o] = acc;
    const float scale = __fmul_rn(h2f(s1[n]), h2f(a_scale[m]));
    __half v = __float2half_rn(__fmul_rn(__int2float_rn(acc), scale));
    if (bias != nullptr) v = __hadd_rn(v, __ushort_as_half(bias[n]));
    y[o] = __half_as_ushort(v);
  }
};

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

}  // namespace

W4PerChannelView W4PerChannelOnDevice::view() const {
  return {n, k, q.data(), s1_scales.data(), s1_szeros.data()};
}
W4G128View W4G128OnDevice::view() const {
  return {n, k, q.data(), s1_scales.data(), s2_scales.data(), s2_zeros.data()};
}

W4PerChannelOnDevice upload(const quant::W4PerChannel& w, cudaStream_t stream) {
  W4PerChannelOnDevice d;
  d.n = w.n;
  d.k = w.k;
  d.q = to_device(w.q, stream);
  d.s1_scales = to_device(w.s1_scales, stream);
  d.s1_szeros = to_device(w.s1_szeros, stream);
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
  return d;
}

void gemm_w4a8_per_channel(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                           int64_t m, const W4PerChannelView& w, const uint16_t* bias, uint16_t* y,
                           int32_t* acc_out, cudaStream_t stream) {
  const char* op = "gemm_w4a8_per_channel";
  check_gemm(op, m, w.n, w.k, 128 * 15);
  check(a_sum != nullptr, std::string(op) + ": the activation sums are required");
  check(w.q != nullptr && w.s1_scales != nullptr && w.s1_szeros != nullptr && y != nullptr,
        std::string(op) + ": null weight or output pointer");
  if (m == 0) return;
  const W4CodesSrc src{w.q, w.k};
  const PerChannelEpi epi{a_scale, a_sum, w.s1_scales, w.s1_szeros, bias, y, acc_out, w.n};
  detail::launch_int8_gemm(aq, m, w.n, w.k, src, aligned4(w.q), epi, stream);
  check_launch(op, shape(m, w.n, w.k));
}

void gemm_w4a8_g128(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W4G128View& w,
                    const uint16_t* bias, uint16_t* y, int32_t* acc_out, cudaStream_t stream) {
  const char* op = "gemm_w4a8_g128";
  check_gemm(op, m, w.n, w.k, 128 * 128);
  check(w.k % quant::kGroupSize == 0,
        std::string(op) + ": k must be a multiple of 128, " + shape(m, w.n, w.k));
  check(w.q != nullptr && w.s1_scales != nullptr && w.s2_scales != nullptr &&
            w.s2_zeros != nullptr && y != nullptr,
        std::string(op) + ": null weight or output pointer");
  if (m == 0) return;
  const W4G128Src src{w.q, w.s2_scales, w.s2_zeros, w.k, w.k / quant::kGroupSize};
  const G128Epi epi{a_scale, w.s1_scales, bias, y, acc_out, w.n};
  detail::launch_int8_gemm(aq, m, w.n, w.k, src, aligned4(w.q), epi, stream);
  check_launch(op, shape(m, w.n, w.k));
}

}  // namespace qserve::cuda
