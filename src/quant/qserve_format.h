// Conversion between the natural weights of weights.h and the tensors a QServe W4A8 checkpoint
// stores for one linear layer (qserve-compat.md §2.2): what the loader and the checkpoint
// writer call. Layout details are in packing.h.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "quant/weights.h"

namespace qserve::quant {

// One linear layer as QServe stores it (names are the checkpoint suffixes).
struct QServeW4Tensors {
  std::vector<uint8_t> qweight;     // [n, k/2] raw bytes (the checkpoint's dtype is int8)
  std::vector<uint16_t> s1_scales;  // fp16 [n]
  std::vector<uint16_t> s1_szeros;  // fp16 [n]; per-channel only (empty for g128)
  std::vector<int8_t> s2_scales;    // [k/128, n], 32-column permuted; g128 only
  std::vector<int8_t> s2_zeros;     // [k/128, n], 32-column permuted; g128 only
};

// Pack for a checkpoint. Throws qserve::Error if the weight is invalid (validate()) or its
// shape does not fit the layout (n, k multiples of 32).
QServeW4Tensors to_qserve(const W4PerChannel& w);
QServeW4Tensors to_qserve(const W4G128& w);

// Unpack checkpoint tensors (spans over the loaded data) and validate the result.
W4PerChannel w4_per_channel_from_qserve(std::span<const uint8_t> qweight,
                                        std::span<const uint16_t> s1_scales,
                                        std::span<const uint16_t> s1_szeros, int64_t n, int64_t k);
W4G128 w4_g128_from_qserve(std::span<const uint8_t> qweight, std::span<const uint16_t> s1_scales,
                           std::span<const int8_t> s2_scales, std::span<const int8_t> s2_zeros,
                           int64_t n, int64_t k);

}  // namespace qserve::quant
