// One host-to-device copy per step: the executor packs every per-step input array (token ids,
// batch metadata, block tables, sampling parameters, output rows) into one pinned staging
// buffer and uploads it with a single cudaMemcpyAsync, instead of a copy (and a pageable-memory
// synchronization) per array.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include <cuda_runtime.h>

namespace qserve::cuda {

// Page-locked host memory from cudaMallocHost, grow-only. Growing frees the old block (which
// cudaFreeHost does only once the device no longer uses it) and does not keep the contents.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  // At least `bytes` bytes; the pointer stays valid until the next ensure() that grows.
  uint8_t* ensure(size_t bytes);
  uint8_t* data() { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
};

// A packed image of several arrays, built on the host: add() appends an array at a 16-byte
// aligned offset and returns that offset; upload() copies the image to pinned staging and from
// there to `device` in one asynchronous copy. The host side is free again once the stream has
// passed the copy (the executor synchronizes at the end of every step).
class HostPack {
 public:
  static constexpr size_t kAlign = 16;

  void clear() { bytes_.clear(); }
  template <typename T>
  size_t add(std::span<const T> v) {
    const size_t off = (bytes_.size() + kAlign - 1) / kAlign * kAlign;
    bytes_.resize(off + v.size_bytes());
    if (!v.empty()) std::memcpy(bytes_.data() + off, v.data(), v.size_bytes());
    return off;
  }
  template <typename T>
  size_t add(const std::vector<T>& v) {
    return add(std::span<const T>(v));
  }
  size_t size() const { return bytes_.size(); }
  void upload(PinnedBuffer& staging, void* device, cudaStream_t stream) const;

 private:
  std::vector<uint8_t> bytes_;
};

// The copy itself: `bytes` of `staging` to `device` (nothing when bytes == 0).
void upload_staging(const uint8_t* staging, size_t bytes, void* device, cudaStream_t stream);

}  // namespace qserve::cuda
