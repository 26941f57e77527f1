#include "backend/cuda/device_buffer.h"

#include <string>

namespace qserve::cuda {

namespace {

std::string mib(size_t bytes) {
  return std::to_string(static_cast<double>(bytes) / (1024.0 * 1024.0)) + " MiB";
}

}  // namespace

DeviceAllocator& DeviceAllocator::global() {
  static DeviceAllocator* a = new DeviceAllocator();  // intentionally leaked (see header)
  return *a;
}

size_t DeviceAllocator::bucket_size(size_t bytes) {
  constexpr size_t kSmallStep = 512;
  constexpr size_t kSmallLimit = size_t{1} << 20;
  // Large blocks (weights, KV pools, step buffers) come in few, repeated sizes: rounding them to
  // the driver's 2 MiB granularity still reuses them between rounds, where quarter-power buckets
  // lost up to 20% (measured 10-14% of the weights of Llama-2-13B, Llama-30B and Yi-34B) and
  // with it KV capacity.
  constexpr size_t kLargeLimit = size_t{64} << 20, kLargeStep = size_t{2} << 20;
  if (bytes > kLargeLimit) return (bytes + kLargeStep - 1) / kLargeStep * kLargeStep;
  if (bytes <= kSmallLimit) return (bytes + kSmallStep - 1) / kSmallStep * kSmallStep;
  // 2^e <= bytes < 2^(e+1): round up to a quarter of 2^e.
  size_t e = 0;
  while ((size_t{2} << e) <= bytes) ++e;
  const size_t quarter = (size_t{1} << e) / 4;
  return (bytes + quarter - 1) / quarter * quarter;
}

void* DeviceAllocator::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t b = bucket_size(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  void* p = nullptr;
  if (auto it = free_.find(b); it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    stats_.bytes_cached -= b;
    ++stats_.cache_hits;
  } else {
    cudaError_t e = cudaMalloc(&p, b);
    if (e == cudaErrorMemoryAllocation) {
      // Cached blocks of other sizes may be what is missing: release them and retry once.
      (void)cudaGetLastError();
      trim_locked();
      e = cudaMalloc(&p, b);
    }
    cuda_check(e, "DeviceAllocator::allocate",
               "request=" + std::to_string(bytes) + " B, bucket=" + std::to_string(b) +
                   " B, in use=" + mib(stats_.bytes_in_use) +
                   ", cached=" + mib(stats_.bytes_cached));
    ++stats_.driver_allocs;
  }
  live_.emplace(p, b);
  stats_.bytes_in_use += b;
  if (stats_.bytes_in_use > stats_.peak_in_use) stats_.peak_in_use = stats_.bytes_in_use;
  return p;
}

void DeviceAllocator::deallocate(void* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = live_.find(p);
  check(it != live_.end(), "DeviceAllocator::deallocate: pointer was not allocated here");
  const size_t b = it->second;
  live_.erase(it);
  stats_.bytes_in_use -= b;
  stats_.bytes_cached += b;
  free_[b].push_back(p);
}

void DeviceAllocator::trim() {
  std::lock_guard<std::mutex> lock(mu_);
  trim_locked();
}

void DeviceAllocator::trim_locked() {
  // cudaFree synchronizes the device, so no queued kernel can still be using a cached block.
  for (auto& [b, blocks] : free_) {
    for (void* p : blocks) {
      cuda_check(cudaFree(p), "DeviceAllocator::trim", "bucket=" + std::to_string(b) + " B");
      stats_.bytes_cached -= b;
    }
  }
  free_.clear();
}

DeviceAllocator::Stats DeviceAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

Stream::Stream() {
  cuda_check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "Stream::Stream");
}

Stream::~Stream() {
  if (s_ != nullptr) (void)cudaStreamDestroy(s_);  // errors cannot be reported from here
}

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (s_ != nullptr) (void)cudaStreamDestroy(s_);
    s_ = std::exchange(o.s_, nullptr);
  }
  return *this;
}

void Stream::synchronize() const {
  cuda_check(cudaStreamSynchronize(s_), "Stream::synchronize");
}

Event::Event() {
  cuda_check(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
}

Event::~Event() {
  if (e_ != nullptr) (void)cudaEventDestroy(e_);
}

void Event::record(cudaStream_t stream) {
  cuda_check(cudaEventRecord(e_, stream), "cudaEventRecord");
}

void Event::synchronize() const {
  cuda_check(cudaEventSynchronize(e_), "Event::synchronize");
}

}  // namespace qserve::cuda
