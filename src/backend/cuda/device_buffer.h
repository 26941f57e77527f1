// Device memory for the CUDA backend: a caching allocator, an RAII typed buffer on top of it,
// an RAII stream, and host <-> device copy helpers (used by the engine and the parity tests).
//
// The caching allocator keeps freed blocks in size-bucketed free lists instead of returning them
// to the driver: cudaMalloc/cudaFree synchronize the device and cost tens of microseconds, and
// the forward allocates the same activation sizes every step. Reuse is NOT stream-aware: a block
// returned by deallocate() can be handed out again at once, so free a buffer only when all work
// reading or writing it has completed, or when that work and every later user of the memory are
// on the same stream (stream order then serializes them). This matches the single-stream engine.
// One allocator per process, for the device that is current when memory is first requested
// (tensor parallelism will need one per device).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_check.h"

namespace qserve::cuda {

class DeviceAllocator {
 public:
  struct Stats {
    size_t bytes_in_use = 0;   // bucket bytes held by live allocations
    size_t bytes_cached = 0;   // bucket bytes sitting in the free lists
    size_t peak_in_use = 0;    // high-water mark of bytes_in_use
    size_t driver_allocs = 0;  // cudaMalloc calls made
    size_t cache_hits = 0;     // allocations served from a free list
  };

  // The process-wide allocator (never destroyed: freeing at static-destruction time would race
  // the CUDA runtime's own teardown).
  static DeviceAllocator& global();

  // At least `bytes` of device memory, 256-byte aligned; nullptr for bytes == 0. Throws
  // qserve::Error (naming the size and the allocator's state) when the device is out of memory
  // even after releasing the cache.
  void* allocate(size_t bytes);
  // Returns a block from allocate() to the cache. nullptr is ignored; an unknown pointer throws.
  void deallocate(void* p);
  // cudaFree every cached (free) block; live allocations are untouched.
  void trim();
  Stats stats() const;

  // Bucket size of a request: multiples of 512 B up to 1 MiB, then 2^e * {1, 1.25, 1.5, 1.75}
  // (at most 25% waste). Exposed for tests.
  static size_t bucket_size(size_t bytes);

 private:
  DeviceAllocator() = default;
  void trim_locked();

  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;  // bucket size -> cached blocks
  std::unordered_map<void*, size_t> live_;     // live block -> bucket size
  Stats stats_;
};

// An owning, move-only array of `size()` T in device memory from DeviceAllocator::global().
// Contents are uninitialized.
template <typename T>
class DeviceBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "device buffers hold trivially copyable types");

 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n)
      : ptr_(static_cast<T*>(DeviceAllocator::global().allocate(n * sizeof(T)))), size_(n) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

  // Returns the memory to the cache (see the stream caveat at the top of this file).
  void reset() noexcept {
    if (ptr_ != nullptr) {
      try {
        DeviceAllocator::global().deallocate(ptr_);
      } catch (...) {  // only an unknown pointer throws; nothing useful to do in a destructor
      }
    }
    ptr_ = nullptr;
    size_ = 0;
  }

  // Asynchronous copies on `stream`. Host memory must stay valid until the stream reaches them
  // (pageable memory makes cudaMemcpyAsync synchronous with respect to the host anyway).
  void copy_from_host(std::span<const T> src, cudaStream_t stream) {
    check(src.size() <= size_, "DeviceBuffer::copy_from_host: source larger than the buffer");
    if (src.empty()) return;
    cuda_check(cudaMemcpyAsync(ptr_, src.data(), src.size_bytes(), cudaMemcpyHostToDevice, stream),
               "DeviceBuffer::copy_from_host", "bytes=" + std::to_string(src.size_bytes()));
  }
  void copy_to_host(std::span<T> dst, cudaStream_t stream) const {
    check(dst.size() <= size_, "DeviceBuffer::copy_to_host: destination larger than the buffer");
    if (dst.empty()) return;
    cuda_check(cudaMemcpyAsync(dst.data(), ptr_, dst.size_bytes(), cudaMemcpyDeviceToHost, stream),
               "DeviceBuffer::copy_to_host", "bytes=" + std::to_string(dst.size_bytes()));
  }
  // Fills every byte with `byte` (0xFF poisons fp16/fp32 to NaN and integers to -1).
  void fill_bytes(int byte, cudaStream_t stream) {
    if (size_ == 0) return;
    cuda_check(cudaMemsetAsync(ptr_, byte, bytes(), stream), "DeviceBuffer::fill_bytes",
               "bytes=" + std::to_string(bytes()));
  }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

// Synchronous helpers (they wait for `stream`): copies of host data to a new device buffer and
// back. Meant for tests, weight upload and debugging, not for the hot loop.
template <typename T>
DeviceBuffer<T> to_device(std::span<const T> host, cudaStream_t stream = nullptr) {
  DeviceBuffer<T> d(host.size());
  d.copy_from_host(host, stream);
  cuda_check(cudaStreamSynchronize(stream), "to_device", "bytes=" + std::to_string(d.bytes()));
  return d;
}
template <typename T>
DeviceBuffer<T> to_device(const std::vector<T>& host, cudaStream_t stream = nullptr) {
  return to_device(std::span<const T>(host), stream);
}
// The first `n` elements of a device array.
template <typename T>
std::vector<T> to_host(const T* dev, size_t n, cudaStream_t stream = nullptr) {
  std::vector<T> h(n);
  if (n == 0) return h;
  cuda_check(cudaMemcpyAsync(h.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost, stream),
             "to_host", "bytes=" + std::to_string(n * sizeof(T)));
  cuda_check(cudaStreamSynchronize(stream), "to_host", "bytes=" + std::to_string(n * sizeof(T)));
  return h;
}
template <typename T>
std::vector<T> to_host(const DeviceBuffer<T>& d, cudaStream_t stream = nullptr) {
  return to_host(d.data(), d.size(), stream);
}

// An owning, move-only CUDA stream (non-blocking with respect to the legacy default stream).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  Stream& operator=(Stream&& o) noexcept;

  cudaStream_t get() const { return s_; }
  operator cudaStream_t() const { return s_; }  // NOLINT: implicit on purpose, for launches
  void synchronize() const;

 private:
  cudaStream_t s_ = nullptr;
};

// An owning CUDA event without timing: marks where a stream has got to (e.g. the CUDA executor's
// launched step, its ids copied back), so the host can wait for that point and no further.
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(cudaStream_t stream);
  void synchronize() const;  // throws qserve::Error with the stream's error, if any

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace qserve::cuda
