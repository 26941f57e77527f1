// The Hopper (sm_90a) W8A8 GEMM: wgmma s8 x s8 -> s32 fed by TMA in a warp-specialized pipeline,
// built from CUTLASS 3.x / CuTe (the pip package nvidia-cutlass, docs/dependencies.md), with the
// W8A8 epilogue fused as a CUTLASS epilogue visitor tree (EVT):
//
//   scale[m,n] = float(dequant_scale[n]) * float(a_scale[m])          (fp32, RN)
//   y[m,n]     = fp16_RN( float_RN(acc[m,n]) * scale[m,n] )           (fp32 RN, then fp16 RN)
//
// which is exactly quant::w8a8_output's operation sequence (fp32 multiplication is commutative, and
// the tree has no additions, so nothing can be contracted into an FMA). The int32 accumulators are
// exact, whatever the summation order (tile shape, stream-K split), so y is expected to be
// bit-identical to the CPU reference; tests/parity/parity_gemm_fast_test.cpp checks it exactly.
//
// gemm_w8a8 (gemm_w8a8.cu) dispatches here when w8a8_sm90_applicable() holds and no int32
// accumulator output is requested; otherwise the simple dp4a kernel (the reference path) runs.
// Without CUTLASS at configure time this file's kernels are not built: w8a8_sm90_compiled()
// returns false and everything falls back.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/gemm_sm90_tile_order.h"
#include "backend/cuda/ops_cuda.h"

namespace qserve::cuda {

// The kernel configurations (each one CUTLASS instantiation).
enum class W8A8Sm90Variant : uint8_t {
  kAuto,          // pick by M (see w8a8_sm90_choose)
  kLargeM,        // y = aq * W^T, 128x128x128 tiles, 2x1 cluster, ping-pong, persistent
  kSmallMSwapAB,  // y^T = W * aq^T (weights on wgmma's 64/128-row side, tokens on the narrow
                  // side), 128x64x128 tiles, cooperative, stream-K over K to fill the SMs
  kCoop128x256,   // y = aq * W^T, 128x256x128 tiles, 2x1, cooperative, persistent, 8-wide
                  // swizzle along N: prefill-sized M (>= 32k rows)
  kCoop128x192,   // y = aq * W^T, 128x192x128 tiles, 2x1, cooperative, persistent: one wave
                  // where 128x128 tiles need more (sm90_one_wave_128x192)
};
const char* w8a8_sm90_variant_name(W8A8Sm90Variant v);

// True when this build contains the CUTLASS kernels (CUTLASS headers were found by CMake).
bool w8a8_sm90_compiled();

// True when the fast kernel can run these operands on the current device: compiled, the device
// is compute capability 9.0, K % 16 == 0 and N % 8 == 0 (TMA needs 16-byte row strides for the
// int8 operands and the fp16 output), k within the exact-int32 range, aq, w and y 16-byte
// aligned (TMA bases; the scale vectors may have any alignment), and m >= 1.
bool w8a8_sm90_applicable(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                          const W8PerChannelView& w, const uint16_t* y);

// The variant kAuto picks for m tokens and n output channels on a device of `sms` SMs (n = 0:
// not known, no 128x192 rule).
W8A8Sm90Variant w8a8_sm90_choose(int64_t m, int64_t n = 0, int64_t sms = 132);
// The tile order a variant runs with when the caller names none (before the
// QSERVE_SM90_TILE_ORDER override).
Sm90TileOrder w8a8_sm90_tile_order(W8A8Sm90Variant v);

// Runs the fast kernel. Returns false (launching nothing) when w8a8_sm90_applicable() is false
// or CUTLASS's can_implement rejects the problem, so the caller can fall back; throws
// qserve::Error when a launch that was accepted fails. The stream-K variant uses a grow-only
// device workspace owned by this file; growing it synchronizes the device, so warm the shapes
// up before capturing a CUDA graph.
// With `ws` (ops_cuda.h GemmWorkspace) the stream-K workspace is ws->data instead, and a
// ws->bytes below gemm_w8a8_sm90_workspace_bytes() throws. `order` (null: CUTLASS's, or the
// QSERVE_SM90_TILE_ORDER override) is the tile walk of the large-M kernel
// (gemm_sm90_tile_order.h; no order measured faster end to end for this kernel).
bool gemm_w8a8_sm90(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
                    uint16_t* y, cudaStream_t stream,
                    W8A8Sm90Variant variant = W8A8Sm90Variant::kAuto,
                    const GemmWorkspace* ws = nullptr, const Sm90TileOrder* order = nullptr);
// Workspace bytes of the variant (kAuto: the one picked for m) for an m x n x k problem on the
// current device; 0 when the kernels are not compiled or the device is not sm_90.
size_t gemm_w8a8_sm90_workspace_bytes(int64_t m, int64_t n, int64_t k,
                                      W8A8Sm90Variant variant = W8A8Sm90Variant::kAuto);

}  // namespace qserve::cuda
