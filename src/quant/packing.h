// QServe's model-zoo layouts of 4-bit weights and g128 group parameters (qserve-compat.md §3),
// packed and unpacked in both directions. Pure index permutations: no arithmetic.
//
// 4-bit weights (§3.1, "compute-aware reordering"). Codes Q[n][k] (0..15), N % 32 == 0,
// K % 32 == 0, decomposed as n = 32a + 16b + 8c + d (b, c in {0,1}, d < 8) and
// k = 32e + 16f + 4g + h (f in {0,1}, g, h < 4). Q[n][k] lives in byte
//     L(n,k) = 16*K*a + 512*e + 64*d + 16*g + 8*f + 4*c + h
// of the flat [N, K/2] qweight, in the low nibble if b = 0 and the high nibble if b = 1: a
// byte pairs output channels n and n + 16. Rows 32a..32a+31 of qweight hold exactly output
// channels 32a..32a+31, so concatenating packed matrices along N is safe.
//
// g128 scales / zeros (§3.3). Natural S[n][G] ([N, K/128]) is stored transposed to
// [K/128, N] with the columns of every 32-channel block permuted:
//     stored[G][32a + 4d + j] = S[32a + 8j + d][G]        (d < 8, j < 4)
// i.e. the stored channel order inside a block is 0, 8, 16, 24, 1, 9, 17, 25, ..., 7, 15, 23, 31.
// (deepcompressor's packer uses a different order that does not match QServe's kernel, §3.4;
// QServe's own converter and kernel are the reference here.)
//
// Every function throws qserve::Error when a shape is not a positive multiple of 32 (or the
// span sizes disagree with it), and pack_w4 when a code is above 15.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace qserve::quant {

// Where code Q[n][k] of an [N, K] matrix lives in the packed bytes.
struct W4Location {
  int64_t byte;  // flat offset into the [N, K/2] qweight
  bool high;     // high nibble (bits 4-7) rather than low (bits 0-3)
};
W4Location w4_location(int64_t n, int64_t k, int64_t cols);

// codes: [n, k] values 0..15 -> qweight bytes [n, k/2] (QServe stores them as int8).
std::vector<uint8_t> pack_w4(std::span<const uint8_t> codes, int64_t n, int64_t k);
// qweight bytes [n, k/2] -> codes [n, k].
std::vector<uint8_t> unpack_w4(std::span<const uint8_t> packed, int64_t n, int64_t k);

// Column of the stored [K/128, N] tensor that holds output channel n.
int64_t g128_param_column(int64_t n);
// natural [n, groups] -> stored [groups, n] (permuted).
std::vector<int8_t> pack_g128_params(std::span<const int8_t> natural, int64_t n, int64_t groups);
// stored [groups, n] -> natural [n, groups].
std::vector<int8_t> unpack_g128_params(std::span<const int8_t> packed, int64_t n, int64_t groups);

}  // namespace qserve::quant
