// Quantized linear weights in their natural (unpacked) layout: what the CPU reference GEMMs
// read and what the quantizers produce. packing.h / qserve_format.h convert to and from the
// layouts of QServe checkpoints (and of the CUDA kernels).
//
// All matrices are HF layout [N, K] (out_features x in_features), row-major. fp16 values are
// IEEE binary16 bit patterns.
#pragma once

#include <cstdint>
#include <vector>

namespace qserve::quant {

// QServe's g128 kernel has the group size hard-coded (qserve-compat.md §4.2).
inline constexpr int64_t kGroupSize = 128;

// Per-channel W4A8 (qserve-compat.md §4.1): W[n,k] ~= s1[n] * Q[n,k] - s1_szeros[n].
struct W4PerChannel {
  int64_t n = 0;
  int64_t k = 0;
  std::vector<uint8_t> q;           // [n, k] unsigned 4-bit codes 0..15
  std::vector<uint16_t> s1_scales;  // fp16 [n]
  std::vector<uint16_t> s1_szeros;  // fp16 [n], the scaled zero z * s1 (z need not be integer)
};

// Progressive g128 W4A8 (qserve-compat.md §4.2): W[n,k] ~= s1[n] * w8[n,k] with
// w8 = int8((Q * s2 + s2_zeros) mod 256), s2 and s2_zeros per (n, group k / 128).
struct W4G128 {
  int64_t n = 0;
  int64_t k = 0;                    // multiple of 128
  std::vector<uint8_t> q;           // [n, k] codes 0..15
  std::vector<uint16_t> s1_scales;  // fp16 [n]
  std::vector<int8_t> s2_scales;    // [n, k/128] (natural layout, not QServe's permuted one)
  std::vector<int8_t> s2_zeros;     // [n, k/128], -z * s2 wrapped to int8
};

// W8A8 (qserve-compat.md §8.1): W[n,k] ~= dequant_scale[n] * w[n,k].
struct W8PerChannel {
  int64_t n = 0;
  int64_t k = 0;
  std::vector<int8_t> w;                // [n, k]
  std::vector<uint16_t> dequant_scale;  // fp16 [n] (QServe casts the model to fp16 at load)
};

// Throw qserve::Error when sizes disagree with n/k, a code is above 15, or (g128) k % 128 != 0,
// an s2 is negative, or Q * s2 > 255 somewhere: QServe's kernel multiplies four codes packed in
// one 32-bit register by s2 at once, so a product above 255 would carry into the next byte
// (qserve-compat.md §4.2). Inside that domain the byte-wise formula below is what the kernel
// computes. Call these at the edges (load, quantize), not per GEMM.
void validate(const W4PerChannel& w);
void validate(const W4G128& w);
void validate(const W8PerChannel& w);

// The int8 weights of output channel `row` of a g128 weight, as the kernel's register
// dequantization produces them: w8 = int8((Q * s2 + uint8(s2_zeros)) mod 256). out: [k].
void g128_int8_row(const W4G128& w, int64_t row, int8_t* out);

// Dequantized fp32 weights [n, k] (fp32 math; for loaders, accuracy tests and the fp path):
//   per-channel  s1 * Q - s1_szeros;   g128  s1 * w8;   W8A8  dequant_scale * w.
std::vector<float> dequantize(const W4PerChannel& w);
std::vector<float> dequantize(const W4G128& w);
std::vector<float> dequantize(const W8PerChannel& w);

}  // namespace qserve::quant
