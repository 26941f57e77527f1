// How many sequences of a model fit on the GPU, decided before any engine exists: the weights'
// device bytes at a precision (the layouts of cuda_weights.h), the KV pools of `batch` sequences
// (kv_page_bytes per layer, K and V apart, as the executor allocates them), the activations of
// a prefill step and of the decode buffers, each rounded to the caching allocator's buckets
// (up to 25% above the request: they count), plus fixed headroom. For `qserve bench --batch
// auto|max` (docs/performance.md, "Batch sweeps").
#pragma once

#include <cstddef>
#include <cstdint>

#include "formats/hf_config.h"
#include "model/precision.h"

namespace qserve::cuda {

struct WeightFootprint {
  size_t bytes = 0;      // sum of the buffers (== LlamaOnDevice::bytes of upload/synthesize)
  size_t allocated = 0;  // the same buffers rounded to the allocator's buckets
};
// The weights upload_llama / synthesize_llama allocate for this config at precision `wp`.
WeightFootprint weight_footprint(const ModelConfig& cfg, WeightPrecision wp);

// Device bytes of one token row of a step's activations (StepBuffers: residual, q, attention,
// K/V rows, the int8 or fp32 linears' buffers) and of one output row (final norm, fp16 copy,
// logits, id).
size_t step_row_bytes(const ModelConfig& cfg, bool quantized);
size_t step_out_row_bytes(const ModelConfig& cfg);

// cudaMemGetInfo after returning the allocator's cached blocks to the driver.
struct DeviceMemory {
  int64_t free = 0, total = 0;
};
DeviceMemory device_memory();

struct BatchPlan {
  int64_t free = 0, total = 0;  // device memory before the engine (DeviceMemory)
  int64_t weights = 0;          // allocated bytes of the weights
  int64_t kv_per_seq = 0;       // KV bytes of one sequence of seq_len tokens (all layers)
  int64_t prefill_tokens = 0;   // token rows per prefill step the plan assumes
  int64_t reserve = 0;          // fixed headroom: CUDA graphs, cuBLASLt/CUTLASS, fragmentation
  int64_t max_batch = 0;        // the most sequences that fit (0: not even one)
  // Bytes the plan charges for `batch` sequences: weights, KV pools, the prefill step's and
  // the decode buffers' activations, the reserve.
  int64_t need(int64_t batch) const;
  ModelConfig cfg;
  Precision precision;
  int64_t seq_len = 0;
};

// The plan for sequences of seq_len tokens, prefill steps of at most prefill_tokens rows, on
// the current device with `mem` free.
BatchPlan plan_batch(const ModelConfig& cfg, const Precision& precision, int64_t seq_len,
                     int64_t prefill_tokens, const DeviceMemory& mem);

// The prefill budget (token rows per step) the benchmark uses when none is given: whole prompts
// of input_len tokens, about 64k rows (the quantized GEMMs are at full speed well below that),
// fewer when a step's activations would take more than a tenth of what the weights leave free;
// never below seq_len (a whole sequence must fit one step without chunked prefill).
int64_t default_prefill_tokens(const ModelConfig& cfg, const Precision& precision,
                               int64_t input_len, int64_t seq_len, const DeviceMemory& mem);

}  // namespace qserve::cuda
