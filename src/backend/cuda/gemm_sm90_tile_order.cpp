// The tile-order policy of the persistent CUTLASS GEMMs (gemm_sm90_tile_order.h).
#include "backend/cuda/gemm_sm90_tile_order.h"

#include <optional>
#include <string>

#include "backend/cuda/env_override.h"
#include "core/error.h"

namespace qserve::cuda {

Sm90TileOrder parse_sm90_tile_order(const std::string& s) {
  const size_t comma = s.find(',');
  const std::string sw_text = s.substr(0, comma);
  const std::string r = comma == std::string::npos ? "h" : s.substr(comma + 1);
  const bool sw_ok = sw_text == "1" || sw_text == "2" || sw_text == "4" || sw_text == "8";
  if (!sw_ok || (r != "m" && r != "n" && r != "h"))
    throw Error("sm90 tile order '" + s +
                "': expected <swizzle 1|2|4|8>,<m|n|h> (raster along M, along N, heuristic)");
  Sm90TileOrder o;
  o.swizzle = sw_text[0] - '0';
  o.raster = r == "m"   ? Sm90TileOrder::Raster::kAlongM
             : r == "n" ? Sm90TileOrder::Raster::kAlongN
                        : Sm90TileOrder::Raster::kHeuristic;
  return o;
}

namespace {

// QSERVE_SM90_TILE_ORDER=<swizzle>,<m|n|h> (e.g. "8,n") replaces the choice for every
// persistent GEMM of the process: for end-to-end A/B runs of a tile order (bench_gemm
// --tune-tile-order times single GEMMs, whose figures move with the GPU's power state). Read
// once; a malformed value is an error, not a silent default.
std::optional<Sm90TileOrder> env_override() {
  static const std::optional<Sm90TileOrder> cached =
      env_override("QSERVE_SM90_TILE_ORDER", parse_sm90_tile_order);
  return cached;
}

}  // namespace

Sm90TileOrder sm90_tile_order_or_env(const Sm90TileOrder& choice) {
  if (const std::optional<Sm90TileOrder> o = env_override()) return *o;
  return choice;
}

const char* sm90_raster_name(Sm90TileOrder::Raster r) {
  switch (r) {
    case Sm90TileOrder::Raster::kHeuristic:
      return "heuristic";
    case Sm90TileOrder::Raster::kAlongM:
      return "along_m";
    case Sm90TileOrder::Raster::kAlongN:
      return "along_n";
  }
  return "?";
}

}  // namespace qserve::cuda
