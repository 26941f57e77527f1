#include "engine_cuda/host_staging.h"

#include <string>

#include "backend/cuda/cuda_check.h"

namespace qserve::cuda {

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) (void)cudaFreeHost(data_);
}

uint8_t* PinnedBuffer::ensure(size_t bytes) {
  if (bytes <= bytes_) return data_;
  if (data_ != nullptr) {
    cuda_check(cudaFreeHost(data_), "PinnedBuffer: cudaFreeHost");
    data_ = nullptr;
    bytes_ = 0;
  }
  // Some headroom, so a slowly growing prefill does not reallocate every step.
  const size_t want = bytes + bytes / 4;
  void* p = nullptr;
  cuda_check(cudaMallocHost(&p, want), "PinnedBuffer: cudaMallocHost",
             "bytes=" + std::to_string(want));
  data_ = static_cast<uint8_t*>(p);
  bytes_ = want;
  return data_;
}

void upload_staging(const uint8_t* staging, size_t bytes, void* device, cudaStream_t stream) {
  if (bytes == 0) return;
  cuda_check(cudaMemcpyAsync(device, staging, bytes, cudaMemcpyHostToDevice, stream),
             "step inputs to the device", "bytes=" + std::to_string(bytes));
}

void HostPack::upload(PinnedBuffer& staging, void* device, cudaStream_t stream) const {
  if (bytes_.empty()) return;
  uint8_t* host = staging.ensure(bytes_.size());
  std::memcpy(host, bytes_.data(), bytes_.size());
  upload_staging(host, bytes_.size(), device, stream);
}

}  // namespace qserve::cuda
