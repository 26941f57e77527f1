#include "quant/qserve_format.h"

#include <string>

#include "core/error.h"
#include "quant/packing.h"

namespace qserve::quant {

QServeW4Tensors to_qserve(const W4PerChannel& w) {
  validate(w);
  QServeW4Tensors t;
  t.qweight = pack_w4(w.q, w.n, w.k);
  t.s1_scales = w.s1_scales;
  t.s1_szeros = w.s1_szeros;
  return t;
}

QServeW4Tensors to_qserve(const W4G128& w) {
  validate(w);
  const int64_t groups = w.k / kGroupSize;
  QServeW4Tensors t;
  t.qweight = pack_w4(w.q, w.n, w.k);
  t.s1_scales = w.s1_scales;
  t.s2_scales = pack_g128_params(w.s2_scales, w.n, groups);
  t.s2_zeros = pack_g128_params(w.s2_zeros, w.n, groups);
  return t;
}

W4PerChannel w4_per_channel_from_qserve(std::span<const uint8_t> qweight,
                                        std::span<const uint16_t> s1_scales,
                                        std::span<const uint16_t> s1_szeros, int64_t n, int64_t k) {
  W4PerChannel w;
  w.n = n;
  w.k = k;
  w.q = unpack_w4(qweight, n, k);
  w.s1_scales.assign(s1_scales.begin(), s1_scales.end());
  w.s1_szeros.assign(s1_szeros.begin(), s1_szeros.end());
  validate(w);
  return w;
}

W4G128 w4_g128_from_qserve(std::span<const uint8_t> qweight, std::span<const uint16_t> s1_scales,
                           std::span<const int8_t> s2_scales, std::span<const int8_t> s2_zeros,
                           int64_t n, int64_t k) {
  check(k % kGroupSize == 0,
        "w4_g128_from_qserve: k = " + std::to_string(k) + " is not a multiple of 128");
  W4G128 w;
  w.n = n;
  w.k = k;
  w.q = unpack_w4(qweight, n, k);
  w.s1_scales.assign(s1_scales.begin(), s1_scales.end());
  w.s2_scales = unpack_g128_params(s2_scales, n, k / kGroupSize);
  w.s2_zeros = unpack_g128_params(s2_zeros, n, k / kGroupSize);
  validate(w);
  return w;
}

}  // namespace qserve::quant
