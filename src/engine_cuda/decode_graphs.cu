#include "engine_cuda/decode_graphs.h"

#include "backend/cuda/cuda_check.h"

namespace qserve::cuda {

cudaGraphExec_t DecodeGraphCache::find(const DecodeGraphKey& key) {
  auto it = graphs_.find(key);
  if (it == graphs_.end()) return nullptr;
  it->second.last_used = ++tick_;
  return it->second.exec;
}

void DecodeGraphCache::insert(const DecodeGraphKey& key, cudaGraphExec_t exec) {
  auto [it, fresh] = graphs_.try_emplace(key);
  if (!fresh && it->second.exec != nullptr) (void)cudaGraphExecDestroy(it->second.exec);
  it->second = {exec, ++tick_};
  while (graphs_.size() > capacity_ && capacity_ > 0) {
    auto oldest = graphs_.begin();
    for (auto g = graphs_.begin(); g != graphs_.end(); ++g) {
      if (g->second.last_used < oldest->second.last_used) oldest = g;
    }
    (void)cudaGraphExecDestroy(oldest->second.exec);
    graphs_.erase(oldest);
    ++evictions_;
  }
}

void DecodeGraphCache::clear() {
  for (auto& [key, e] : graphs_) {
    if (e.exec != nullptr) (void)cudaGraphExecDestroy(e.exec);
  }
  graphs_.clear();
}

cudaGraphExec_t capture_graph(cudaStream_t stream, const std::function<void()>& body) {
  cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
             "decode graph: begin capture");
  try {
    body();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    (void)cudaStreamEndCapture(stream, &broken);
    if (broken != nullptr) (void)cudaGraphDestroy(broken);
    (void)cudaGetLastError();
    throw;
  }
  cudaGraph_t graph = nullptr;
  cuda_check(cudaStreamEndCapture(stream, &graph), "decode graph: end capture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  cuda_check(e, "decode graph: instantiate");
  return exec;
}

void launch_graph(cudaGraphExec_t exec, cudaStream_t stream) {
  cuda_check(cudaGraphLaunch(exec, stream), "decode graph: launch");
}

}  // namespace qserve::cuda
