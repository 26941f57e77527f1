// The tile-order policy of the persistent CUTLASS GEMMs (gemm_sm90_tile_order.h).
#include "backend/cuda/gemm_sm90_tile_order.h"

#include <cstdlib>
#include <optional>
#include <string>

#include "core/error.h"

namespace qserve::cuda {

namespace {

// QSERVE_SM90_TILE_ORDER=<swizzle>,<m|n|h> (e.g. "8,n") replaces the choice for every
// persistent GEMM of the process: for end-to-end A/B runs of a tile order (bench_gemm
// --tune-tile-order times single GEMMs, whose figures move with the GPU's power state). Read
// once; a malformed value is an error, not a silent default.
std::optional<Sm90TileOrder> env_override() {
  static const std::optional<Sm90TileOrder> cached = []() -> std::optional<Sm90TileOrder> {
    const char* v = std::getenv("QSERVE_SM90_TILE_ORDER");
    if (v == nullptr || *v == '\0') return std::nullopt;
    const std::string s(v);
    const size_t comma = s.find(',');
    Sm90TileOrder o;
    int sw = 0;
    try {
      sw = std::stoi(s.substr(0, comma));
    } catch (const std::exception&) {
      sw = 0;
    }
    const std::string r = comma == std::string::npos ? "h" : s.substr(comma + 1);
    if ((sw != 1 && sw != 2 && sw != 4 && sw != 8) || (r != "m" && r != "n" && r != "h"))
      throw Error("QSERVE_SM90_TILE_ORDER='" + s +
                  "': expected <swizzle 1|2|4|8>,<m|n|h> (raster along M, along N, heuristic)");
    o.swizzle = sw;
    o.raster = r == "m"   ? Sm90TileOrder::Raster::kAlongM
               : r == "n" ? Sm90TileOrder::Raster::kAlongN
                          : Sm90TileOrder::Raster::kHeuristic;
    return o;
  }();
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
