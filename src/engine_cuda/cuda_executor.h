// The CUDA backend's model executor: LlamaModel's weights on the GPU (at their precision) and
// the forward of model/llama_forward.cpp expressed in the backend/cuda ops, over a paged KV
// cache (KV4/KV8 in QServe's page layout, KV16 in fp16 pages) whose pages the engine's
// BlockManager hands out. Logits come back to the host, where the engine samples.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/engine.h"
#include "engine/model_executor.h"
#include "model/llama_model.h"

namespace qserve {

// Uploads the weights now (the LlamaModel may be freed afterwards). num_pages pages per layer
// for K and V each; num_slots concurrent sequences of up to max_model_len tokens.
std::unique_ptr<ModelExecutor> make_cuda_executor(const LlamaModel& model, int64_t num_pages,
                                                  int64_t num_slots, int64_t max_model_len);

// An Engine on the GPU: the weights are uploaded first, then the KV cache takes what the
// device has free times cfg.memory_utilization (QServe's rule, with KV4/KV8 scale and zero bytes
// counted), unless cfg.num_pages / NUM_GPU_PAGE_BLOCKS say otherwise.
std::unique_ptr<Engine> create_cuda_engine(const LlamaModel& model, const Tokenizer* tokenizer,
                                           const EngineConfig& cfg);

}  // namespace qserve
