// CUDA graphs of pure-decode steps (docs/cuda.md, "CUDA graphs"): one captured graph per
// (batch bucket, context bucket), kept in a small LRU cache. A graph replays a whole step - 20-odd
// kernels per layer - with one launch, so the GPU does not idle between kernels while the host
// enqueues the next one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <utility>

#include <cuda_runtime.h>

namespace qserve::cuda {

struct DecodeGraphKey {
  int32_t batch = 0;    // batch bucket (rows of the step, real and padding)
  int64_t context = 0;  // context bucket (the attention's max_total_len)
  auto operator<=>(const DecodeGraphKey&) const = default;
};

// Instantiated graphs by key, least recently used evicted beyond `capacity`. Destroying a graph
// that is still running is safe (CUDA frees it when it completes).
class DecodeGraphCache {
 public:
  explicit DecodeGraphCache(size_t capacity) : capacity_(capacity) {}
  ~DecodeGraphCache() { clear(); }
  DecodeGraphCache(const DecodeGraphCache&) = delete;
  DecodeGraphCache& operator=(const DecodeGraphCache&) = delete;

  // The graph of `key` (now the most recently used), or nullptr.
  cudaGraphExec_t find(const DecodeGraphKey& key);
  // Takes ownership of `exec`; evicts the least recently used graph when over capacity.
  void insert(const DecodeGraphKey& key, cudaGraphExec_t exec);
  void clear();
  size_t size() const { return graphs_.size(); }
  int64_t evictions() const { return evictions_; }

 private:
  struct Entry {
    cudaGraphExec_t exec = nullptr;
    uint64_t last_used = 0;
  };
  size_t capacity_;
  uint64_t tick_ = 0;
  int64_t evictions_ = 0;
  std::map<DecodeGraphKey, Entry> graphs_;
};

// Captures what `body` enqueues on `stream` and instantiates it. The capture runs in
// thread-local mode, so an allocation (cudaMalloc), a synchronization or any other call that is
// illegal while capturing fails inside `body` with an error instead of silently baking a
// pointer that will move; on any failure the capture is ended and the error rethrown, leaving
// the stream usable.
cudaGraphExec_t capture_graph(cudaStream_t stream, const std::function<void()>& body);
void launch_graph(cudaGraphExec_t exec, cudaStream_t stream);

}  // namespace qserve::cuda
