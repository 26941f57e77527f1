// The A/B switches of the CUDA backend's choices, read from the environment: QSERVE_SM90_TILE_ORDER
// (gemm_sm90_tile_order.cpp), QSERVE_W4A8_SM90_LARGE (gemm_w4a8_sm90.cu), QSERVE_PREFILL_WGMMA
// (attention_prefill_wgmma.cu), QSERVE_DECODE_MMA_WARPS (attention_decode_mma.cu) and the 0/1
// switches of pdl.h's env_switch (QSERVE_PDL, QSERVE_DECODE_PREWAIT_KV).
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

#include "core/error.h"

namespace qserve::cuda {

// Environment variable `name` parsed by `parse`; nullopt when unset or empty; a value `parse`
// rejects throws qserve::Error naming the variable. Callers keep the result in a function-local
// static (read once per process).
template <typename T>
std::optional<T> env_override(const char* name, T (*parse)(const std::string&)) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  try {
    return parse(v);
  } catch (const Error& e) {
    throw Error(std::string(name) + ": " + e.what());
  }
}

}  // namespace qserve::cuda
