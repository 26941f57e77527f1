// How many 64-token KV pages fit: the bytes of one page (all layers, K and V, payload plus the
// fp16 scale and zero of every (token, KV head) for KV4/KV8), and the page count from free
// memory. QServe divides by a literal 4 "bits" for KV4 and forgets scales and zeros
// (qserve-runtime.md §2.3), sizing KV4 8x too small; here the bytes are counted.
#pragma once

#include <cstdint>
#include <optional>

#include "formats/hf_config.h"
#include "model/precision.h"

namespace qserve {

// Bytes of one page across all layers for K and V. KV16 counts fp16 (the GPU cache; the CPU
// reference keeps fp32, see model_executor.h).
int64_t kv_page_bytes(const ModelConfig& cfg, KvPrecision kv);

// Pages that fit in `free_bytes` (device memory free after weights) while leaving
// total_bytes * (1 - utilization) unused for activations, at `page_bytes` each. >= 0.
int64_t pages_from_memory(int64_t free_bytes, int64_t total_bytes, double utilization,
                          int64_t page_bytes);

// The page count to use: the explicit flag if given, else the environment variable
// NUM_GPU_PAGE_BLOCKS (QServe's name) if set, else `fallback`. Throws qserve::Error on a value
// that is not a positive integer.
int64_t resolve_num_pages(std::optional<int64_t> flag, int64_t fallback);

// Memory the host has available (MemAvailable of /proc/meminfo), or 0 when unknown.
int64_t host_available_bytes();

}  // namespace qserve
