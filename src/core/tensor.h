// A host tensor: dtype, shape (row-major, contiguous) and shared storage. It either owns its
// bytes or views bytes owned by someone else (e.g. an mmapped safetensors file), in which case
// `owner` keeps that storage alive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace qserve {

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-initialised storage.
  Tensor(DType dtype, std::vector<int64_t> shape);
  // Views `data`; `owner` keeps it alive (may be null for static data).
  static Tensor view(DType dtype, std::vector<int64_t> shape, const void* data,
                     std::shared_ptr<const void> owner);

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t ndim() const { return shape_.size(); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool empty() const { return data_ == nullptr; }

  const void* raw() const { return data_; }
  void* raw_mut();  // throws if this is a read-only view

  template <typename T>
  const T* data() const {
    return static_cast<const T*>(data_);
  }
  template <typename T>
  T* data_mut() {
    return static_cast<T*>(raw_mut());
  }

  std::string shape_str() const;  // "[4096, 512]"

 private:
  DType dtype_ = DType::F32;
  std::vector<int64_t> shape_;
  const void* data_ = nullptr;
  bool writable_ = false;
  std::shared_ptr<const void> owner_;
};

// Converts any float dtype (F32/F16/BF16) to a freshly allocated F32 tensor of the same shape.
Tensor to_f32(const Tensor& t);
// Reads element i of a float tensor as fp32.
float float_at(const Tensor& t, int64_t i);

std::string shape_to_string(std::span<const int64_t> shape);

}  // namespace qserve
