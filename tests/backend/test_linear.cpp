// make_linear / concat_linear (conversion, validation, fusion) and linear = GEMM + bias.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "core/half.h"
#include "reference.h"

namespace qserve {
namespace {

Tensor f32_tensor(std::vector<int64_t> shape, const std::vector<float>& values) {
  Tensor t(DType::F32, std::move(shape));
  std::memcpy(t.data_mut<float>(), values.data(), values.size() * sizeof(float));
  return t;
}

// Runs fn, expecting a qserve::Error whose message contains every one of `needles`.
template <typename Fn>
void expect_error_mentioning(Fn fn, std::initializer_list<const char*> needles) {
  try {
    fn();
    ADD_FAILURE() << "no qserve::Error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST(MakeLinear, ConvertsEveryFloatDtypeExactly) {
  const int64_t n = 3, k = 5;
  const auto ref = test::random_floats(n * k, 11, -4.0f, 4.0f);
  Tensor h(DType::F16, {n, k}), b(DType::BF16, {n, k});
  std::vector<float> h_vals(ref.size()), b_vals(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    h.data_mut<uint16_t>()[i] = float_to_fp16(ref[i]);
    b.data_mut<uint16_t>()[i] = float_to_bf16(ref[i]);
    h_vals[i] = fp16_to_float(float_to_fp16(ref[i]));
    b_vals[i] = bf16_to_float(float_to_bf16(ref[i]));
  }
  const cpu::LinearF32 lf = cpu::make_linear(f32_tensor({n, k}, ref), Tensor());
  const cpu::LinearF32 lh = cpu::make_linear(h, Tensor());
  const cpu::LinearF32 lb = cpu::make_linear(b, Tensor());
  for (const cpu::LinearF32* l : {&lf, &lh, &lb}) {
    EXPECT_EQ(l->n, n);
    EXPECT_EQ(l->k, k);
    EXPECT_TRUE(l->bias.empty());
  }
  EXPECT_EQ(lf.w, ref);
  EXPECT_EQ(lh.w, h_vals);
  EXPECT_EQ(lb.w, b_vals);
}

TEST(MakeLinear, KeepsBias) {
  Tensor bias(DType::BF16, {2});
  bias.data_mut<uint16_t>()[0] = float_to_bf16(0.5f);
  bias.data_mut<uint16_t>()[1] = float_to_bf16(-2.0f);
  const cpu::LinearF32 l = cpu::make_linear(f32_tensor({2, 3}, {1, 2, 3, 4, 5, 6}), bias);
  EXPECT_EQ(l.bias, (std::vector<float>{0.5f, -2.0f}));
}

TEST(MakeLinear, RejectsBadShapesAndDtypesNamingThem) {
  const Tensor w = f32_tensor({3, 4}, std::vector<float>(12, 1.0f));
  expect_error_mentioning([&] { cpu::make_linear(Tensor(DType::F32, {12}), Tensor()); }, {"[12]"});
  expect_error_mentioning(
      [&] {
        cpu::make_linear(Tensor(DType::F32, {2, 3, 2}), Tensor());
      },
      {"[2, 3, 2]"});
  expect_error_mentioning([&] { cpu::make_linear(w, Tensor(DType::F32, {4})); },
                          {"[3]", "[3, 4]", "[4]"});
  expect_error_mentioning([&] { cpu::make_linear(w, Tensor(DType::F32, {3, 1})); }, {"[3, 1]"});
  expect_error_mentioning([&] { cpu::make_linear(Tensor(DType::I32, {3, 4}), Tensor()); }, {"I32"});
  expect_error_mentioning([&] { cpu::make_linear(Tensor(), Tensor()); }, {"empty"});
}

TEST(ConcatLinear, StacksAlongNAndFillsMissingBiasWithZeros) {
  cpu::LinearF32 a = cpu::make_linear(f32_tensor({1, 2}, {1, 2}), f32_tensor({1}, {10}));
  cpu::LinearF32 b = cpu::make_linear(f32_tensor({2, 2}, {3, 4, 5, 6}), Tensor());
  const cpu::LinearF32 c = cpu::concat_linear({a, b});
  EXPECT_EQ(c.n, 3);
  EXPECT_EQ(c.k, 2);
  EXPECT_EQ(c.w, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(c.bias, (std::vector<float>{10, 0, 0}));
  const cpu::LinearF32 d = cpu::concat_linear({b, b});
  EXPECT_TRUE(d.bias.empty());
}

TEST(ConcatLinear, RejectsMismatchedK) {
  cpu::LinearF32 a = cpu::make_linear(f32_tensor({1, 2}, {1, 2}), Tensor());
  cpu::LinearF32 b = cpu::make_linear(f32_tensor({1, 3}, {1, 2, 3}), Tensor());
  expect_error_mentioning([&] { cpu::concat_linear({a, b}); }, {"[1, 3]", "K = 2"});
  expect_error_mentioning([&] { cpu::concat_linear({}); }, {"no parts"});
}

TEST(Linear, IsGemmPlusBias) {
  for (int64_t m : {1, 3, 17}) {
    for (bool with_bias : {false, true}) {
      const int64_t n = 37, k = 70;
      const auto w = test::random_floats(static_cast<size_t>(n * k), 5);
      const auto bias = test::random_floats(static_cast<size_t>(n), 6);
      const auto x = test::random_floats(static_cast<size_t>(m * k), 7);
      const cpu::LinearF32 l =
          cpu::make_linear(f32_tensor({n, k}, w), with_bias ? f32_tensor({n}, bias) : Tensor());
      std::vector<float> y(static_cast<size_t>(m * n));
      cpu::linear(x.data(), m, l, y.data());
      const std::vector<double> ref = test::ref_gemm_nt(x.data(), w.data(), m, n, k);
      const double tol = 1e-5 * test::max_abs(ref);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          const double r = ref[static_cast<size_t>(i * n + j)] + (with_bias ? bias[j] : 0.0);
          ASSERT_NEAR(y[static_cast<size_t>(i * n + j)], r, tol) << i << "," << j;
        }
      }
    }
  }
}

TEST(Linear, RejectsInconsistentHandBuiltWeights) {
  cpu::LinearF32 l;
  l.n = 2;
  l.k = 3;
  l.w.assign(5, 0.0f);
  std::vector<float> x(3), y(2);
  EXPECT_THROW(cpu::linear(x.data(), 1, l, y.data()), Error);
}

}  // namespace
}  // namespace qserve
