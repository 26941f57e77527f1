// pdl.h: the QSERVE_PDL setting and the per-device capability check.
#include "backend/cuda/pdl.h"

#include <atomic>

#include "backend/cuda/env_override.h"
#include "core/error.h"

namespace qserve::cuda {

namespace {
std::atomic<int> g_override{-1};

bool env_setting() {
  static const bool on = env_switch("QSERVE_PDL", true);
  return on;
}

bool device_supports_pdl() {
  thread_local int cached_dev = -1;
  thread_local bool cached = false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (dev == cached_dev) return cached;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    major = 0;
  }
  cached_dev = dev;
  cached = major >= 9;
  return cached;
}
}  // namespace

bool parse_pdl_setting(const std::string& text) {
  if (text == "0") return false;
  if (text == "1") return true;
  throw Error("expected 0 (off) or 1 (on), got '" + text + "'");
}

bool env_switch(const char* name, bool unset_value) {
  return env_override(name, &parse_pdl_setting).value_or(unset_value);
}

bool pdl_enabled() {
  const int o = g_override.load(std::memory_order_relaxed);
  const bool want = o < 0 ? env_setting() : o == 1;
  return want && device_supports_pdl();
}

void set_pdl_override(int mode) {
  check(mode >= -1 && mode <= 1,
        "set_pdl_override: mode must be -1 (environment), 0 or 1, got " + std::to_string(mode));
  g_override.store(mode, std::memory_order_relaxed);
}

}  // namespace qserve::cuda
