// What the two tensor-core decode kernels (attention_decode_tc.cu, attention_decode_mma.cu)
// share: the cp.async ring primitives and shared-memory word loads of their per-warp page
// streams, the host-side argument checks of their entry points, and the kernel that merges
// split-KV partials. Internal to src/backend/cuda.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"

namespace qserve::cuda::attn {

__device__ __forceinline__ uint32_t h2u(__half2 h) {
  uint32_t u;
  memcpy(&u, &h, 4);
  return u;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// NW consecutive 32-bit words from shared memory with the widest aligned loads.
template <int NW>
__device__ __forceinline__ void lds_words(uint32_t (&w)[NW], const uint8_t* p) {
  if constexpr (NW % 4 == 0) {
#pragma unroll
    for (int i = 0; i < NW / 4; ++i) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[i];
      w[4 * i] = v.x;
      w[4 * i + 1] = v.y;
      w[4 * i + 2] = v.z;
      w[4 * i + 3] = v.w;
    }
  } else if constexpr (NW == 2) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x;
    w[1] = v.y;
  } else {
    static_assert(NW == 1, "word count");
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  }
}

// out = sum_j o_j w_j / sum_j l_j w_j over the used splits, w_j = e^(m_j - M) (natural-log
// maxima) or 2^(m_j - M) (kLog2: maxima in log2 units).
template <bool kLog2>
__global__ void decode_split_merge_kernel(const float* part_o, const float* part_ml,
                                          const int32_t* token_offset, const int32_t* context_len,
                                          int num_heads, int head_dim, int splits, int split_keys,
                                          int window, float* out) {
  const auto weight = [](float m, float M) {
    return m == -INFINITY ? 0.0f : (kLog2 ? exp2f(m - M) : expf(m - M));
  };
  const int h = blockIdx.x, seq = blockIdx.y;
  const int ctx = context_len[seq];
  const int lo = first_key(ctx, window);
  const int used = (ctx + 1 - lo + split_keys - 1) / split_keys;
  const int64_t base = (static_cast<int64_t>(seq) * num_heads + h) * splits;
  float M = -INFINITY;
  for (int j = 0; j < used; ++j) M = fmaxf(M, part_ml[(base + j) * 2]);
  float L = 0.0f;
  for (int j = 0; j < used; ++j)
    L += part_ml[(base + j) * 2 + 1] * weight(part_ml[(base + j) * 2], M);
  const int64_t row = token_offset[seq];
  for (int c = threadIdx.x; c < head_dim; c += blockDim.x) {
    float o = 0.0f;
    for (int j = 0; j < used; ++j) {
      o += part_o[(base + j) * head_dim + c] * weight(part_ml[(base + j) * 2], M);
    }
    out[(row * num_heads + h) * head_dim + c] = o / L;
  }
}

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// SMs of the current device (132 when the query fails).
inline int sm_count() {
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    return 132;
  }
  return n;
}

// The entry-point checks of a tensor-core decode kernel `op`: geometry (`supported`), sequence
// count, and — when there is work — 16-byte alignment and the workspace size. Returns the
// shape string for later messages; throws qserve::Error naming op and shape.
inline std::string check_decode_call(const char* op, bool supported, const float* q,
                                     const uint16_t* k16, const uint16_t* v16,
                                     const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                     int64_t num_heads, const void* workspace,
                                     size_t workspace_bytes) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = "S=" + std::to_string(S) + " Hq=" + std::to_string(num_heads) +
                            " Hkv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                            " max_total_len=" + std::to_string(batch.max_total_len);
  const std::string name(op);
  check(supported, name + ": needs KV4/KV8, head_dim 64 or 128 and Hq/Hkv in 1..8 (" + shape + ")");
  check(S >= 0 && S <= 65535 && batch.max_total_len >= 0,
        name + ": 0..65535 sequences (" + shape + ")");
  if (S == 0) return shape;
  check(aligned16(q) && aligned16(k16) && aligned16(v16) && aligned16(cache.k_pool) &&
            aligned16(cache.v_pool),
        name + ": q, k16, v16 and the pools must be 16-byte aligned (" + shape + ")");
  const size_t need = decode_attention_workspace_bytes(S, num_heads, d, batch.max_total_len);
  check(workspace != nullptr && workspace_bytes >= need,
        name + ": workspace of " + std::to_string(workspace_bytes) + " bytes, need " +
            std::to_string(need) + " (" + shape + ")");
  return shape;
}

}  // namespace qserve::cuda::attn
