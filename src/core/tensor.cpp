#include "core/tensor.h"

#include <cstring>

#include "core/error.h"
#include "core/half.h"

namespace qserve {

Tensor::Tensor(DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_) check(d >= 0, "tensor shape has a negative dimension");
  const size_t n = nbytes();
  // Allocate at least one byte so even empty tensors have distinct, valid storage.
  auto storage = std::shared_ptr<uint8_t[]>(new uint8_t[n == 0 ? 1 : n]());
  data_ = storage.get();
  owner_ = std::shared_ptr<const void>(storage, storage.get());
  writable_ = true;
}

Tensor Tensor::view(DType dtype, std::vector<int64_t> shape, const void* data,
                    std::shared_ptr<const void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data;
  t.owner_ = std::move(owner);
  t.writable_ = false;
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

void* Tensor::raw_mut() {
  check(writable_, "tensor is a read-only view");
  return const_cast<void*>(data_);
}

std::string shape_to_string(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string Tensor::shape_str() const { return shape_to_string(shape_); }

float float_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::F32: return t.data<float>()[i];
    case DType::F16: return fp16_to_float(t.data<uint16_t>()[i]);
    case DType::BF16: return bf16_to_float(t.data<uint16_t>()[i]);
    default: throw Error("float_at: tensor of dtype " + std::string(dtype_name(t.dtype())) +
                         " is not a float tensor");
  }
}

Tensor to_f32(const Tensor& t) {
  check(dtype_is_float(t.dtype()), "to_f32: tensor of dtype " + std::string(dtype_name(t.dtype())) +
                                       " is not a float tensor");
  // A default-constructed Tensor has shape [] (numel 1) but no storage; copying from it would
  // read through a null pointer.
  check(!t.empty(), "to_f32: tensor has no storage");
  Tensor out(DType::F32, t.shape());
  float* o = out.data_mut<float>();
  const int64_t n = t.numel();
  if (t.dtype() == DType::F32) {
    std::memcpy(o, t.raw(), t.nbytes());
  } else if (t.dtype() == DType::F16) {
    const uint16_t* s = t.data<uint16_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = fp16_to_float(s[i]);
  } else {
    const uint16_t* s = t.data<uint16_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = bf16_to_float(s[i]);
  }
  return out;
}

}  // namespace qserve
