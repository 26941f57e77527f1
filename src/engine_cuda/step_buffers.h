// The device memory of one forward step, carved from one allocation: the packed inputs, the
// activations of `rows` token rows, the lm_head's logits and the sampled ids of `out_rows`
// rows, and the attention and GEMM workspaces. Every buffer starts on a 256-byte boundary, like
// the allocator's own blocks, so kernel paths and cuBLASLt heuristics that look at alignment
// choose as they would for separate buffers.
//
// Eager steps make one per step (from the caching allocator); pure-decode steps share one
// sized for the largest batch bucket, whose pointers CUDA graphs capture, so nothing is
// allocated while a graph is captured or replayed.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda.h"
#include "formats/hf_config.h"

namespace qserve::cuda {

struct StepDims {
  int64_t rows = 0;          // token rows of the step
  int64_t out_rows = 0;      // rows that go through the lm_head (and may be sampled)
  size_t input_bytes = 0;    // the packed host inputs (host_staging.h)
  size_t attn_ws_bytes = 0;  // decode attention's split-KV workspace
  size_t gemm_ws_bytes = 0;  // the quantized GEMMs' caller workspace (ops_cuda.h GemmWorkspace)
};

struct StepBuffers {
  StepBuffers() = default;
  // quantized: the int8-activation buffers of the W4A8/W8A8 layers, else the fp32 ones.
  StepBuffers(const ModelConfig& cfg, bool quantized, const StepDims& dims);

  StepDims dims;
  uint8_t* inputs = nullptr;
  // The residual stream and attention.
  float* x = nullptr;       // [rows, H]
  float* q = nullptr;       // [rows, q_dim] post-RoPE queries
  float* attn = nullptr;    // [rows, q_dim]
  uint16_t* k16 = nullptr;  // [rows, kv_dim]
  uint16_t* v16 = nullptr;
  float* rope_cs = nullptr;      // the step's RoPE table (rope_cos_sin_table): [rows, head_dim]
  uint8_t* rope_info = nullptr;  // cos/sin and [rows] row infos
  // Quantized layers.
  int8_t* aq = nullptr;  // [rows, max(H, q_dim, I)]
  uint16_t* ascale = nullptr;
  uint16_t* asum = nullptr;
  uint16_t* qkv16 = nullptr;  // [rows, q_dim + 2 kv_dim]
  uint16_t* o16 = nullptr;    // [rows, H]
  uint16_t* gu16 = nullptr;   // [rows, 2 I]
  uint16_t* d16 = nullptr;    // [rows, H]
  // fp32 layers (W16A16).
  float* h = nullptr;
  float* qkv = nullptr;
  float* proj = nullptr;
  float* gu = nullptr;
  float* act = nullptr;
  // Final norm, lm_head, sampling.
  float* xr = nullptr;      // [out_rows, H]
  float* hr = nullptr;      // [out_rows, H]
  uint16_t* h16 = nullptr;  // [out_rows, H]
  float* logits = nullptr;  // [out_rows, V]
  int32_t* ids = nullptr;   // [out_rows]
  void* attn_ws = nullptr;
  size_t attn_ws_bytes = 0;
  GemmWorkspace gemm_ws;

  size_t bytes() const { return block_.bytes(); }

 private:
  DeviceBuffer<uint8_t> block_;
};

}  // namespace qserve::cuda
