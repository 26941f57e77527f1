// The CUDA backend's model executor: LlamaModel's weights on the GPU (at their precision) and
// the forward of model/llama_forward.cpp expressed in the backend/cuda ops, over a paged KV
// cache (KV4/KV8 in QServe's page layout, KV16 in fp16 pages) whose pages the engine's
// BlockManager hands out. Tokens are sampled on the GPU; logits rows come back only on request.
// Pure-decode steps run at bucketed shapes and replay captured CUDA graphs (docs/cuda.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/engine.h"
#include "engine/model_executor.h"
#include "model/llama_model.h"

namespace qserve {

struct CudaExecutorOptions {
  // Capture each pure-decode step shape once as a CUDA graph and replay it (EngineConfig::
  // cuda_graphs). Off: the same bucketed steps are launched kernel by kernel, which gives
  // bit-identical results.
  bool cuda_graphs = true;
  // Per-op-class timing (EngineConfig::profile); forces eager steps (events per op).
  bool profile = false;
  // Tests only: false runs pure-decode steps unpadded at their exact shape, as before CUDA
  // graphs (never captured), as a reference that padding rows cannot have touched.
  bool bucket_decode = true;
  // Graphs kept (least recently used evicted; 0 = no graphs); ~0.6 MiB each for Llama-3-8B.
  size_t max_graphs = 64;
};

// Uploads the weights now (the LlamaModel may be freed afterwards). num_pages pages per layer
// for K and V each (plus one scratch page the executor keeps for padding rows); num_slots
// concurrent sequences of up to max_model_len tokens.
std::unique_ptr<ModelExecutor> make_cuda_executor(const LlamaModel& model, int64_t num_pages,
                                                  int64_t num_slots, int64_t max_model_len,
                                                  const CudaExecutorOptions& options = {});

// An Engine on the GPU: the weights are uploaded first, then the KV cache takes what the
// device has free times cfg.memory_utilization (QServe's rule, with KV4/KV8 scale and zero bytes
// counted), unless cfg.num_pages / NUM_GPU_PAGE_BLOCKS say otherwise. cfg.cuda_graphs and
// cfg.profile set the options above.
std::unique_ptr<Engine> create_cuda_engine(const LlamaModel& model, const Tokenizer* tokenizer,
                                           const EngineConfig& cfg);

// What the executor's decode path has done so far (for tests, benchmarks and reports).
struct CudaGraphStats {
  bool graphs_enabled = false;     // cuda_graphs on, not profiling, no capture has failed
  int64_t decode_steps = 0;        // pure-decode steps run at bucketed shapes
  int64_t replays = 0;             // ... of them replayed from a captured graph
  int64_t captures = 0;            // graphs captured (each after running its step eagerly once)
  int64_t capture_failures = 0;    // a failure turns graphs off for the executor (with a warning)
  int64_t evictions = 0;           // graphs dropped by the LRU bound
  int64_t invalidations = 0;       // all graphs dropped because the decode buffers grew
  int64_t graphs = 0;              // graphs kept now
  int64_t padded_rows = 0;         // padding rows run, summed over decode steps
  double launch_us = 0.0;          // host time enqueueing decode steps (graph launch or op by op)
  size_t decode_buffer_bytes = 0;  // the shared decode activations, workspaces and inputs
};
// Throws qserve::Error when `executor` is not a CUDA executor.
CudaGraphStats cuda_graph_stats(const ModelExecutor& executor);

}  // namespace qserve
