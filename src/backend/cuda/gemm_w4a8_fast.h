// The fast W4A8 paths (issue 7) behind gemm_w4a8_per_channel / gemm_w4a8_g128 (ops_cuda.h).
// Numerics are those of quant/gemm_w4a8.h, bit for bit: every path computes the exact int32
// accumulators (any summation order gives the same integer) and then the reference's fp16
// epilogue with correctly rounded fp32 operations in the reference's order.
//
// Paths (docs/kernels.md, "W4A8"):
//  - small M (1..kW4A8SmallMMax tokens): memory-bound kernels that stream the weights PACKED
//    (two codes per byte, in the mma fragment order: the layout below) and convert them to int8
//    in registers (g128: (Q * s2 + z) mod 256 byte-wise, integer ops only): mma.sync or wgmma
//    kernels that split K over the CTAs of a thread-block cluster and reduce the int32 partials
//    exactly through distributed shared memory, and a row-tile kernel whose warps split K inside
//    the CTA and reduce in shared memory; a tuned table picks one per shape and token bucket.
//    Needs view.q_packed.
//  - large M, per-channel: the CUTLASS sm90 wgmma kernel (as W8A8's kLargeM) run directly on the
//    1-byte codes (0..15 are valid int8 values) with the per-channel epilogue as an EVT
//    (gemm_w4a8_sm90.cu).
//  - large M, g128: the W8A8 sm90 kernel on the expanded int8 weights w8 (view.w8, made once by
//    upload(); without it they are expanded per call into a grow-only workspace) with s1 as the
//    per-channel dequant scale; the W8A8 epilogue fp16(float(acc) * (s1 * a_scale)) is exactly
//    the g128 epilogue. Bias, if any, is a separate fp16 add kernel (y = fp16_RN(y + bias)).
//
// Packed layout (w4a8_pack_codes). Requires n % 16 == 0 and k % 64 == 0. For row tile T (rows
// 16T..16T+15), K block b (k in 64b..64b+63) and lane l = 4*g + t (g = l / 4, t = l % 4), 16
// bytes at byte offset ((T * (k/64) + b) * 32 + l) * 16; in them, byte j (0..3) of 32-bit word w
// (0..3) holds, with s = w / 2 and r = w % 2, kk = 64b + 16t + 8s + 4r + j:
//   low nibble  = Q[16T + g][kk],   high nibble = Q[16T + g + 8][kk].
// So the low/high nibbles of word 2s+r are exactly the A registers a(2r) / a(2r+1) of
// mma.m16n8k32 K-step s for that lane, under a K permutation in which lane t's B registers are
// the 16 contiguous activation bytes 64b + 16t .. +15 (one 16-byte load per token). Any K
// permutation shared by A and B leaves the exact integer dot product unchanged.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/cuda/gemm_sm90_tile_order.h"
#include "backend/cuda/ops_cuda.h"

namespace qserve::cuda {

// Largest M the small-M kernel takes (8 mma token tiles of 8).
inline constexpr int64_t kW4A8SmallMMax = 64;

// True when (n, k) admits the packed layout (n % 16 == 0, k % 64 == 0, both > 0).
bool w4a8_packable(int64_t n, int64_t k);
// Packs natural codes q [n, k] (device, one code per byte, only the low 4 bits are kept) into
// `packed` (device, n * k / 2 bytes) in the layout above. Asynchronous on `stream`.
void w4a8_pack_codes(const uint8_t* q, int64_t n, int64_t k, uint8_t* packed, cudaStream_t stream);
// Expands g128 weights to int8: w8[n, k] = int8((q * s2 + uint8(s2_zero)) mod 256), exactly
// quant::g128_int8_row for any byte values. Asynchronous; w8 is a device array of n * k bytes.
void w4a8_g128_expand(const W4G128View& w, int8_t* w8, cudaStream_t stream);

// y[i] = fp16_RN(y[i] + bias[i % n]) over [m, n] (__hadd_rn, as the CPU's f16_add).
void w4a8_add_bias(uint16_t* y, const uint16_t* bias, int64_t m, int64_t n, cudaStream_t stream);

// The small-M kernel's launch configuration. A CTA is 128 output channels x all M tokens x one
// K slice; `splits` CTAs along K form a thread-block cluster and reduce their int32 partials
// exactly through distributed shared memory. row_tiles_per_warp (1: 8 warps of 16 channels;
// 2: 4 warps of 32 channels, each activation fragment used twice) and k_blocks_in_flight (the
// per-row-tile ring of 64-wide K blocks of weights each lane keeps loading ahead with cp.async
// into shared memory: 4|8|16 with 1 row tile, 2|4 with 2) trade memory parallelism against
// registers and activation loads. wgmma = true selects the warpgroup-MMA variant
// (gemm_w4a8_small_m_wgmma.cuh: 2 warpgroups x 64 channels, activations staged in shared memory,
// one m64nNk32 per 32 of K instead of N/8 mma.sync per warp); it takes row_tiles_per_warp 1 and
// k_blocks_in_flight 8.
// ktile = true selects the row-tile variant (gemm_w4a8_small_m_ktile.cuh: a CTA is 1 or 2
// 16-row tiles (row_tiles_per_warp) whose `splits` = 8 warps split K and reduce in shared
// memory; no cluster): 1 tile takes k_blocks_in_flight 4|8, 2 tiles take 4; the warps'
// activation slices <= 160 KB.
struct W4A8SmallMConfig {
  int row_tiles_per_warp = 1;
  int k_blocks_in_flight = 8;
  int splits = 1;
  bool wgmma = false;
  bool ktile = false;
};
// True when `c` is a configuration the kernel has (see above) for m tokens (1..64) and this k:
// splits <= k / 64, and for the mma.sync kernel the CTA's activation slice (staged once in
// shared memory with cp.async) fits 160 KB.
bool w4a8_small_m_config_valid(const W4A8SmallMConfig& c, int64_t m, int64_t k);
// The configuration the dispatch uses: the tuned table's entry for (g128, token tiles of m,
// n, k) (gemm_w4a8_small_m_tuned.inc, written by `bench_gemm --tune-small-m`), else a
// heuristic (mma.sync up to 32 tokens, wgmma above; splits for about one wave).
W4A8SmallMConfig w4a8_small_m_config(bool g128, int64_t m, int64_t n, int64_t k);

// True when the small-M path takes m tokens of an n x k weight: packable and 1 <= m <= 64 (the
// dispatch's configuration is always valid: its last resort, the wgmma kernel, fits any K).
bool w4a8_small_m_applies(bool g128, int64_t m, int64_t n, int64_t k);

// The small-M kernel. Returns false (launching nothing) when it does not apply: no q_packed,
// shape not packable, m outside 1..kW4A8SmallMMax, aq not 16-byte aligned, the device is not
// compute capability 9.x (thread-block clusters), or !w4a8_small_m_applies(). `config` forces a
// configuration for one launch (tuning, tests; an invalid one throws); null takes
// w4a8_small_m_config().
bool gemm_w4a8_per_channel_small_m(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                                   int64_t m, const W4PerChannelView& w, const uint16_t* bias,
                                   uint16_t* y, cudaStream_t stream,
                                   const W4A8SmallMConfig* config = nullptr);
bool gemm_w4a8_g128_small_m(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                            const W4G128View& w, const uint16_t* bias, uint16_t* y,
                            cudaStream_t stream, const W4A8SmallMConfig* config = nullptr);

// The large-M per-channel CUTLASS kernel (gemm_w4a8_sm90.cu). Same contract as gemm_w8a8_sm90:
// false when not compiled / not applicable (n % 8, k % 16, 16-byte aligned aq, q, y, s1 and
// s1_szeros, sm 9.0) or CUTLASS declines. Bias is not applied here.
bool w4a8_per_channel_sm90_applicable(const int8_t* aq, const uint16_t* a_scale,
                                      const uint16_t* a_sum, int64_t m, const W4PerChannelView& w,
                                      const uint16_t* y);
// Its CUTLASS configurations (one instantiation each; the int32 accumulators are exact and the
// epilogue is the same tree, so every variant gives the same bits). kAuto picks by shape
// (w4a8_sm90_choose), from bench_gemm --tune-large-m measurements.
enum class W4A8Sm90Variant : uint8_t {
  kAuto,
  kLargeM,       // 128x128x128 tiles, 2x1 cluster, ping-pong, persistent
  kPingpong64,   // 64x128x128, 2x1, ping-pong: twice the tiles for mid-sized M
  kSwapStreamK,  // y^T = W aq^T, 128 (channels) x 64 (tokens) x 128, cooperative, stream-K
  kCoop256x128,  // 256x128x128, 2x1, cooperative, persistent: prefill-sized M (fewer operand
                 // bytes from shared memory per MMA than 128x128)
  kCoop128x256,  // 128x256x128, 2x1, cooperative, persistent (n256 wgmmas)
  kCoop128x192,  // 128x192x128, 2x1, cooperative, persistent: M = 512 qkv (N = 6144) in one
                 // wave of 128 tiles instead of 1.45 waves of 128x128 ones
  kCoopStreamK,  // 128x128x128, 1x1, cooperative, stream-K: the tiles' K loops spread evenly
};
// Every concrete variant (all but kAuto): name lookups, the tuning benchmark, the parity tests.
inline constexpr W4A8Sm90Variant kW4A8Sm90Variants[] = {
    W4A8Sm90Variant::kLargeM,      W4A8Sm90Variant::kPingpong64,  W4A8Sm90Variant::kSwapStreamK,
    W4A8Sm90Variant::kCoop256x128, W4A8Sm90Variant::kCoop128x256, W4A8Sm90Variant::kCoop128x192,
    W4A8Sm90Variant::kCoopStreamK};
const char* w4a8_sm90_variant_name(W4A8Sm90Variant v);
// The variant of a w4a8_sm90_variant_name (not "auto"); throws qserve::Error listing the names.
W4A8Sm90Variant w4a8_sm90_variant_from_name(const std::string& name);
// sms: the device's SM count (the 128x192 rule counts waves; 132 on the H100 SXM and H200).
W4A8Sm90Variant w4a8_sm90_choose(int64_t m, int64_t n, int64_t k, int64_t sms = 132);
// The tile order a variant runs with when the caller names none (before the
// QSERVE_SM90_TILE_ORDER override).
Sm90TileOrder w4a8_sm90_tile_order(W4A8Sm90Variant v);
// With `ws` (ops_cuda.h GemmWorkspace) CUTLASS's workspace is ws->data instead of the file's
// grow-only block; a ws->bytes below w4a8_per_channel_sm90_workspace_bytes() throws. `order`
// (null: the variant's own, see w4a8_sm90_tile_order) is the tile walk of the persistent
// variants.
bool gemm_w4a8_per_channel_sm90(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                                int64_t m, const W4PerChannelView& w, uint16_t* y,
                                cudaStream_t stream, const GemmWorkspace* ws = nullptr,
                                W4A8Sm90Variant variant = W4A8Sm90Variant::kAuto,
                                const Sm90TileOrder* order = nullptr);
// Its workspace bytes for an m x n x k problem on the current device (0 when not compiled or
// not sm_90; the persistent scheduler needs none, stream-K its partial-sum buffers).
size_t w4a8_per_channel_sm90_workspace_bytes(int64_t m, int64_t n, int64_t k,
                                             W4A8Sm90Variant variant = W4A8Sm90Variant::kAuto);

// The name of the path gemm_w4a8_per_channel / gemm_w4a8_g128 take for these operands when
// acc_out is null (for bench reports): "small_m_mma_packed", "sm90_wgmma_evt",
// "expand+sm90_w8a8" (w8 from upload), "expand_per_call+sm90_w8a8", or "simple_dp4a".
const char* gemm_w4a8_per_channel_path(const int8_t* aq, const uint16_t* a_scale,
                                       const uint16_t* a_sum, int64_t m, const W4PerChannelView& w,
                                       const uint16_t* y);
const char* gemm_w4a8_g128_path(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                                const W4G128View& w, const uint16_t* y);

}  // namespace qserve::cuda
