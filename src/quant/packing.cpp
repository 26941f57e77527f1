#include "quant/packing.h"

#include <string>

#include "core/error.h"

namespace qserve::quant {

namespace {

void check_w4_shape(int64_t n, int64_t k, const char* op) {
  check(n > 0 && k > 0 && n % 32 == 0 && k % 32 == 0,
        std::string(op) + ": shape [" + std::to_string(n) + ", " + std::to_string(k) +
            "] is not a positive multiple of 32 in both dimensions (QServe's 4-bit layout)");
}

void check_span(size_t got, int64_t want, const char* op, const char* what) {
  check(static_cast<int64_t>(got) == want, std::string(op) + ": " + what + " has " +
                                               std::to_string(got) + " elements, expected " +
                                               std::to_string(want));
}

void check_g128_shape(int64_t n, int64_t groups, const char* op) {
  check(n > 0 && n % 32 == 0 && groups > 0,
        std::string(op) + ": n = " + std::to_string(n) + ", groups = " + std::to_string(groups) +
            "; need n a positive multiple of 32 (the permutation works on blocks of 32 channels)");
}

}  // namespace

W4Location w4_location(int64_t n, int64_t k, int64_t cols) {
  const int64_t a = n / 32, b = (n / 16) % 2, c = (n / 8) % 2, d = n % 8;
  const int64_t e = k / 32, f = (k / 16) % 2, g = (k / 4) % 4, h = k % 4;
  return {16 * cols * a + 512 * e + 64 * d + 16 * g + 8 * f + 4 * c + h, b == 1};
}

std::vector<uint8_t> pack_w4(std::span<const uint8_t> codes, int64_t n, int64_t k) {
  check_w4_shape(n, k, "pack_w4");
  check_span(codes.size(), n * k, "pack_w4", "codes");
  std::vector<uint8_t> packed(static_cast<size_t>(n * k / 2), 0);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const uint8_t q = codes[static_cast<size_t>(r * k + c)];
      if (q > 15) {
        throw Error("pack_w4: code " + std::to_string(q) + " at [" + std::to_string(r) + ", " +
                    std::to_string(c) + "] is above 15");
      }
      const W4Location loc = w4_location(r, c, k);
      packed[static_cast<size_t>(loc.byte)] |= static_cast<uint8_t>(loc.high ? q << 4 : q);
    }
  }
  return packed;
}

std::vector<uint8_t> unpack_w4(std::span<const uint8_t> packed, int64_t n, int64_t k) {
  check_w4_shape(n, k, "unpack_w4");
  check_span(packed.size(), n * k / 2, "unpack_w4", "packed");
  std::vector<uint8_t> codes(static_cast<size_t>(n * k));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const W4Location loc = w4_location(r, c, k);
      const uint8_t byte = packed[static_cast<size_t>(loc.byte)];
      codes[static_cast<size_t>(r * k + c)] = loc.high ? byte >> 4 : byte & 0x0f;
    }
  }
  return codes;
}

int64_t g128_param_column(int64_t n) {
  const int64_t a = n / 32, j = (n % 32) / 8, d = n % 8;
  return 32 * a + 4 * d + j;
}

std::vector<int8_t> pack_g128_params(std::span<const int8_t> natural, int64_t n, int64_t groups) {
  check_g128_shape(n, groups, "pack_g128_params");
  check_span(natural.size(), n * groups, "pack_g128_params", "natural");
  std::vector<int8_t> packed(static_cast<size_t>(n * groups));
  for (int64_t r = 0; r < n; ++r) {
    const int64_t col = g128_param_column(r);
    for (int64_t g = 0; g < groups; ++g) {
      packed[static_cast<size_t>(g * n + col)] = natural[static_cast<size_t>(r * groups + g)];
    }
  }
  return packed;
}

std::vector<int8_t> unpack_g128_params(std::span<const int8_t> packed, int64_t n, int64_t groups) {
  check_g128_shape(n, groups, "unpack_g128_params");
  check_span(packed.size(), n * groups, "unpack_g128_params", "packed");
  std::vector<int8_t> natural(static_cast<size_t>(n * groups));
  for (int64_t r = 0; r < n; ++r) {
    const int64_t col = g128_param_column(r);
    for (int64_t g = 0; g < groups; ++g) {
      natural[static_cast<size_t>(r * groups + g)] = packed[static_cast<size_t>(g * n + col)];
    }
  }
  return natural;
}

}  // namespace qserve::quant
