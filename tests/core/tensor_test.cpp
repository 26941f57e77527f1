// Tensor storage, views, shapes, dtype helpers and float conversion.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/half.h"
#include "core/tensor.h"

namespace qserve {
namespace {

constexpr DType kAll[] = {DType::F32, DType::F16, DType::BF16, DType::I8,  DType::U8,
                          DType::I16, DType::I32, DType::I64,  DType::BOOL};

TEST(DType, NamesSizesAndRoundTrip) {
  const size_t sizes[] = {4, 2, 2, 1, 1, 2, 4, 8, 1};
  for (size_t i = 0; i < std::size(kAll); ++i) {
    EXPECT_EQ(dtype_size(kAll[i]), sizes[i]);
    EXPECT_EQ(dtype_from_name(dtype_name(kAll[i])), kAll[i]);
  }
  EXPECT_FALSE(dtype_from_name("F64").has_value());
  EXPECT_FALSE(dtype_from_name("f32").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_TRUE(dtype_is_float(DType::BF16));
  EXPECT_FALSE(dtype_is_float(DType::I32));
}

TEST(Tensor, OwnedStorageIsZeroedAndWritable) {
  Tensor t(DType::F32, {2, 3});
  EXPECT_EQ(t.ndim(), 2u);
  EXPECT_EQ(t.dim(0), 2);
  EXPECT_EQ(t.dim(1), 3);
  EXPECT_THROW((void)t.dim(2), std::out_of_range);
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.nbytes(), 24u);
  EXPECT_EQ(t.shape_str(), "[2, 3]");
  EXPECT_FALSE(t.empty());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t.data<float>()[i], 0.0f);
  t.data_mut<float>()[5] = 7.0f;
  EXPECT_EQ(float_at(t, 5), 7.0f);
  // Copies share storage.
  Tensor c = t;
  EXPECT_EQ(c.raw(), t.raw());
}

TEST(Tensor, ScalarsEmptyAndDefault) {
  Tensor s(DType::I64, {});
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.nbytes(), 8u);
  EXPECT_EQ(s.shape_str(), "[]");
  Tensor e(DType::F16, {4, 0});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.nbytes(), 0u);
  EXPECT_FALSE(e.empty());  // has (zero bytes of) storage
  Tensor d;
  EXPECT_TRUE(d.empty());
  EXPECT_THROW(Tensor(DType::F32, {2, -1}), Error);
}

TEST(Tensor, ViewsAreReadOnlyAndKeepTheOwnerAlive) {
  bool freed = false;
  std::shared_ptr<const void> owner;
  const float* data = nullptr;
  {
    auto buf = std::shared_ptr<float[]>(new float[4]{1, 2, 3, 4}, [&freed](float* p) {
      freed = true;
      delete[] p;
    });
    data = buf.get();
    owner = std::shared_ptr<const void>(buf, buf.get());
  }
  Tensor v = Tensor::view(DType::F32, {2, 2}, data, std::move(owner));
  EXPECT_FALSE(freed);
  EXPECT_EQ(v.raw(), data);
  EXPECT_EQ(v.data<float>()[3], 4.0f);
  EXPECT_THROW(v.raw_mut(), Error);
  EXPECT_THROW(v.data_mut<float>(), Error);
  v = Tensor();
  EXPECT_TRUE(freed);

  static const int32_t kStatic[2] = {5, 6};  // views of static data need no owner
  Tensor st = Tensor::view(DType::I32, {2}, kStatic, nullptr);
  EXPECT_EQ(st.data<int32_t>()[1], 6);
}

TEST(Tensor, ToF32) {
  Tensor h(DType::F16, {3});
  h.data_mut<uint16_t>()[0] = float_to_fp16(1.5f);
  h.data_mut<uint16_t>()[1] = float_to_fp16(-0.25f);
  h.data_mut<uint16_t>()[2] = 0x7c00;  // inf
  Tensor f = to_f32(h);
  EXPECT_EQ(f.dtype(), DType::F32);
  EXPECT_EQ(f.shape(), h.shape());
  EXPECT_EQ(f.data<float>()[0], 1.5f);
  EXPECT_EQ(f.data<float>()[1], -0.25f);
  EXPECT_TRUE(std::isinf(f.data<float>()[2]));

  Tensor b(DType::BF16, {2});
  b.data_mut<uint16_t>()[0] = float_to_bf16(3.0f);
  b.data_mut<uint16_t>()[1] = float_to_bf16(-1e30f);
  Tensor fb = to_f32(b);
  EXPECT_EQ(fb.data<float>()[0], 3.0f);
  EXPECT_EQ(fb.data<float>()[1], bf16_to_float(float_to_bf16(-1e30f)));
  EXPECT_EQ(float_at(b, 0), 3.0f);

  // F32 input is copied, not aliased.
  Tensor x(DType::F32, {2});
  x.data_mut<float>()[1] = 9.0f;
  Tensor y = to_f32(x);
  EXPECT_NE(y.raw(), x.raw());
  EXPECT_EQ(y.data<float>()[1], 9.0f);

  // Empty tensors convert to empty tensors.
  EXPECT_EQ(to_f32(Tensor(DType::F16, {0, 8})).numel(), 0);

  EXPECT_THROW(to_f32(Tensor(DType::I32, {2})), Error);
  EXPECT_THROW((void)float_at(Tensor(DType::U8, {2}), 0), Error);
  EXPECT_THROW(to_f32(Tensor()), Error);  // no storage
}

TEST(Tensor, ShapeToString) {
  const std::vector<int64_t> s = {8192, 512};
  EXPECT_EQ(shape_to_string(s), "[8192, 512]");
  EXPECT_EQ(shape_to_string({}), "[]");
}

}  // namespace
}  // namespace qserve
