// CPU reference implementations of the fp32 ops (see backend/ops.h for the contract). Clear,
// exact, multi-threaded through ThreadPool::global() where it matters (GEMM, attention).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "backend/ops.h"
#include "core/tensor.h"
#include "formats/hf_config.h"

namespace qserve::cpu {

// A linear layer's fp32 weight [N, K] (HF layout) and optional bias [N].
struct LinearF32 {
  int64_t n = 0;
  int64_t k = 0;
  std::vector<float> w;     // N*K, row-major
  std::vector<float> bias;  // empty or N
};

// Builds a LinearF32 from a float tensor of shape [N, K] (F32/F16/BF16) and an optional bias
// tensor [N] (pass an empty Tensor for none).
LinearF32 make_linear(const Tensor& weight, const Tensor& bias);
// Concatenates linears along N (for fused QKV and gate_up); all must have the same K.
LinearF32 concat_linear(std::vector<LinearF32> parts);

// y[M, N] = x[M, K] W^T + b. Multi-threaded, vectorised with AVX2/FMA where the CPU has it.
void linear(const float* x, int64_t m, const LinearF32& w, float* y);

// Plain GEMM used by linear: C[M,N] = A[M,K] * B[N,K]^T (both row-major, K contiguous).
// fp32 accumulation. A row of C depends only on its row of A, B and K, never on M, N or the
// tiling, so a decode step (M=1) reproduces the matching prefill row bit for bit.
void gemm_nt(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k);

// out[r, :] = x[r, :] / sqrt(mean(x[r,:]^2) + eps) * w   for r < rows. out may alias x.
void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t dim, float* out);

// Inverse frequencies inv_freq[i], i < head_dim/2, including llama3/linear scaling.
std::vector<float> rope_inv_freq(const ModelConfig& cfg);
// Rotates x [T, heads, head_dim] in place at the given positions (NeoX pairing).
void rope(float* x, const int64_t* positions, int64_t t, int64_t heads, int64_t head_dim,
          std::span<const float> inv_freq);

// out[t, i] = silu(gu[t, i]) * gu[t, inter + i]  for gate_up rows [T, 2*inter]. With AVX2 the
// exp is a vectorised expf within 1 ulp (as PyTorch's Sleef exp); softmax in attention too.
void silu_mul(const float* gu, int64_t t, int64_t inter, float* out);

// A contiguous fp32 KV cache: [layers][slots][max_len][kv_heads][head_dim] for K and for V.
struct KVCacheF32 {
  int64_t layers = 0, slots = 0, max_len = 0, kv_heads = 0, head_dim = 0;
  std::vector<float> k, v;
  void allocate(int64_t layers_, int64_t slots_, int64_t max_len_, int64_t kv_heads_,
                int64_t head_dim_);
  // The [kv_heads, head_dim] row of (layer, slot, pos); throws qserve::Error when out of range.
  float* k_at(int64_t layer, int64_t slot, int64_t pos);
  float* v_at(int64_t layer, int64_t slot, int64_t pos);
  const float* k_at(int64_t layer, int64_t slot, int64_t pos) const;
  const float* v_at(int64_t layer, int64_t slot, int64_t pos) const;
  // Index of that row's first float in k / v.
  size_t offset(int64_t layer, int64_t slot, int64_t pos) const;
};

// Checks the layer and every span (slot in range, no negative field, context + new tokens within
// max_len) against the cache; throws qserve::Error prefixed with `op`. kv_append and attention
// share it.
void validate_spans(const KVCacheF32& cache, int64_t layer, std::span<const SeqSpan> seqs,
                    const char* op);

// Writes this step's K/V rows [T, kv_heads, head_dim] into the cache at each sequence's
// positions context_len .. context_len + num_tokens - 1.
void kv_append(KVCacheF32& cache, int64_t layer, std::span<const SeqSpan> seqs, const float* k,
               const float* v);

// Causal GQA attention for a varlen batch. q [T, heads, head_dim]; K/V come from the cache
// (which already holds this step's tokens). Query token j of a sequence sits at position
// context_len + j and attends to positions [max(0, pos - window + 1), pos] (window <= 0: all).
// out [T, heads, head_dim]. Softmax in fp32 with max subtraction; scale = 1/sqrt(head_dim).
void attention(const float* q, const KVCacheF32& cache, int64_t layer,
               std::span<const SeqSpan> seqs, int64_t heads, int64_t window, float* out);

}  // namespace qserve::cpu
