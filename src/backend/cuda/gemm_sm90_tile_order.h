// The order in which the persistent CUTLASS GEMMs (gemm_w4a8_sm90.cu, gemm_w8a8_sm90.cu) walk
// their output tiles: CUTLASS's scheduler arguments (max_swizzle_size, raster order).
//
// Why it matters: at prefill sizes (M = 64k rows) a wave of 132 tiles walking along N covers one
// 2-tile cluster row and 66 column tiles, so every cluster row re-reads the whole weight matrix
// from HBM (gate_up: 117 MB of codes x 256 cluster rows = 30 GB per call, as much as the HBM
// moves in the GEMM's compute time). A swizzle of s walks s cluster rows together, so each
// weight tile read from HBM serves s of them out of L2. Only the order changes: every tile is
// computed by the same code, so the output bits do not depend on it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/error.h"

namespace qserve::cuda {

struct Sm90TileOrder {
  enum class Raster : uint8_t { kHeuristic, kAlongM, kAlongN };
  int swizzle = 1;                     // CUTLASS max_swizzle_size: 1, 2, 4 or 8
  Raster raster = Raster::kHeuristic;  // kHeuristic: CUTLASS's (along M when N has more tiles)
};

// The prefill-sized GEMMs' tiles (W4A8 per-channel and W8A8 kCoop128x256): from this many rows
// the 128x256 cooperative kernels run, with kSm90WideTileOrder (measured end to end:
// gemm_w4a8_sm90.cu, w4a8_sm90_choose).
constexpr int64_t kSm90WideTileMinRows = 32768;
constexpr Sm90TileOrder kSm90WideTileOrder{8, Sm90TileOrder::Raster::kAlongN};

// The decode-sized rule for the 128x192 cooperative kernels (W4A8 per-channel kCoop128x192,
// W8A8 kCoop128x192): 257..1023 tokens where 128x128 tiles need more than one wave on `sms` SMs
// and 128x192 tiles fit in one (Llama-3-8B qkv at 384 / 512 tokens, o / down at 768; measured
// in gemm_w4a8_sm90.cu, w4a8_sm90_choose).
constexpr bool sm90_one_wave_128x192(int64_t m, int64_t n, int64_t sms) {
  if (m <= 256 || m >= 1024) return false;
  const int64_t row_tiles = (m + 127) / 128;
  return row_tiles * ((n + 127) / 128) > sms && row_tiles * ((n + 191) / 192) <= sms;
}

// "<swizzle 1|2|4|8>,<m|n|h>" (raster along M, along N, CUTLASS's heuristic; ",h" may be left
// out) as an order; throws qserve::Error naming the expected form on anything else.
Sm90TileOrder parse_sm90_tile_order(const std::string& text);

// The order a kernel runs with when its caller names none: QSERVE_SM90_TILE_ORDER
// (<swizzle 1|2|4|8>,<m|n|h>, for end-to-end A/B runs) when set, else `choice` (the kernel's own
// pick: gemm_w4a8_sm90.cu, gemm_w8a8_sm90.cu).
Sm90TileOrder sm90_tile_order_or_env(const Sm90TileOrder& choice);

// "along_n" etc., for bench output and error messages.
const char* sm90_raster_name(Sm90TileOrder::Raster r);

// CUTLASS's scheduler arguments from a tile order; the persistent
// and the stream-K schedulers both have these two fields.
template <typename SchedulerArgs>
void set_tile_order(SchedulerArgs& a, const Sm90TileOrder& order) {
  using Options = decltype(a.raster_order);
  a.max_swizzle_size = order.swizzle;
  switch (order.raster) {
    case Sm90TileOrder::Raster::kAlongM:
      a.raster_order = Options::AlongM;
      break;
    case Sm90TileOrder::Raster::kAlongN:
      a.raster_order = Options::AlongN;
      break;
    default:
      a.raster_order = Options::Heuristic;
  }
}

}  // namespace qserve::cuda
