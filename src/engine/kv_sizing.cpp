#include "engine/kv_sizing.h"

#include <cstdlib>
#include <fstream>
#include <string>

#include "core/error.h"
#include "engine/block_manager.h"

namespace qserve {

int64_t kv_page_bytes(const ModelConfig& cfg, KvPrecision kv) {
  const int64_t values = kPageTokens * cfg.num_kv_heads * cfg.head_dim;  // per layer, K or V
  int64_t bytes = 0;
  switch (kv) {
    case KvPrecision::kKv16: bytes = values * 2; break;
    case KvPrecision::kKv8: bytes = values + kPageTokens * cfg.num_kv_heads * 4; break;
    case KvPrecision::kKv4: bytes = values / 2 + kPageTokens * cfg.num_kv_heads * 4; break;
  }
  return bytes * 2 * cfg.num_layers;
}

int64_t pages_from_memory(int64_t free_bytes, int64_t total_bytes, double utilization,
                          int64_t page_bytes) {
  check(page_bytes > 0, "KV sizing: page size must be positive");
  check(utilization > 0.0 && utilization <= 1.0, "KV sizing: utilization must be in (0, 1]");
  const double reserve = static_cast<double>(total_bytes) * (1.0 - utilization);
  const double usable = static_cast<double>(free_bytes) - reserve;
  if (usable <= 0.0) return 0;
  return static_cast<int64_t>(usable / static_cast<double>(page_bytes));
}

int64_t resolve_num_pages(std::optional<int64_t> flag, int64_t fallback) {
  if (flag) {
    check(*flag > 0, "--num-gpu-page-blocks must be a positive integer");
    return *flag;
  }
  if (const char* env = std::getenv("NUM_GPU_PAGE_BLOCKS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    check(end != nullptr && *end == '\0' && v > 0,
          std::string("NUM_GPU_PAGE_BLOCKS must be a positive integer, got '") + env + "'");
    return v;
  }
  return fallback;
}

int64_t host_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

}  // namespace qserve
