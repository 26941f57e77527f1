// `qserve convert` on synthetic dumps (CI; convert_test_util.h): LMQuant- and DeepCompressor-style
// model.pt / scale.pt built from tiny-llama2-mha by RTN and written with our torch writer. The
// converter must recover exactly the codes and scales the dump was made from, for every dump
// style and both group sizes; the folder loads with the scheme of its metadata; and with
// --layout qserve the zoo pytorch_model.bin holds the same tensors and loads, through
// LlamaModel::load, into bit-identical linears.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <variant>

#include "convert_test_util.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "model/llama_model.h"
#include "model/qserve_checkpoint.h"
#include "model/qserve_convert.h"
#include "quant/qserve_format.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;
using test::DumpStyle;

std::string tiny_model() {
  return test::model_dir("tiny-llama2-mha");
}

template <typename T>
std::span<const T> span_of(const Tensor& t) {
  return {static_cast<const T*>(t.raw()), static_cast<size_t>(t.numel())};
}

struct Case {
  DumpStyle style;
  int64_t group_size;
  const char* name;
};

class ConvertSynthetic : public ::testing::TestWithParam<Case> {};

TEST_P(ConvertSynthetic, RecoversTheDumpsCodesExactly) {
  const Case c = GetParam();
  const bool g128 = c.group_size == 128;
  const test::SyntheticDump dump = test::make_dump(tiny_model(), c.style, g128);
  const std::string dir = test::scratch_dir(c.name);
  dump.write(dir + "/dump");
  ConvertOptions o;
  o.from = test::dump_from(c.style);
  o.model_dir = tiny_model();
  o.quant_path = dir + "/dump";
  o.group_size = c.group_size;
  o.out = dir + "/out";
  EXPECT_EQ(convert_dump(o), 14);  // 2 layers x 7 linears

  auto st = SafetensorsFile::open(o.out + "/" + kOurFile);
  EXPECT_EQ(st->header().metadata.at(kSchemeKey), g128 ? "w4a8-g128" : "w4a8-per-channel");
  EXPECT_EQ(st->header().metadata.at(kGroupSizeKey), std::to_string(c.group_size));
  EXPECT_EQ(st->header().metadata.at("source"), std::string(o.from) + " dump " + o.quant_path);
  size_t linears = 0;
  for (const auto& [p, want] : dump.per_channel) {
    SCOPED_TRACE(p);
    const int64_t n = want.n, k = want.k;
    const quant::W4PerChannel got = quant::w4_per_channel_from_qserve(
        span_of<uint8_t>(st->get(p + ".qweight")), span_of<uint16_t>(st->get(p + ".s1_scales")),
        span_of<uint16_t>(st->get(p + ".s1_szeros")), n, k);
    EXPECT_EQ(got.q, want.q);
    EXPECT_EQ(got.s1_scales, want.s1_scales);
    EXPECT_EQ(got.s1_szeros, want.s1_szeros);
    ++linears;
  }
  for (const auto& [p, want] : dump.g128) {
    SCOPED_TRACE(p);
    const quant::W4G128 got = quant::w4_g128_from_qserve(
        span_of<uint8_t>(st->get(p + ".qweight")), span_of<uint16_t>(st->get(p + ".s1_scales")),
        span_of<int8_t>(st->get(p + ".s2_scales")), span_of<int8_t>(st->get(p + ".s2_zeros")),
        want.n, want.k);
    EXPECT_EQ(got.q, want.q);
    EXPECT_EQ(got.s1_scales, want.s1_scales);
    EXPECT_EQ(got.s2_scales, want.s2_scales);
    EXPECT_EQ(got.s2_zeros, want.s2_zeros);
    EXPECT_EQ(st->get(p + ".s2_scales").shape(), (std::vector<int64_t>{want.k / 128, want.n}));
    ++linears;
  }
  EXPECT_EQ(linears, 14u);
  // Everything else is model.pt's fp16 tensor, bit for bit.
  for (const auto& [name, t] : dump.model) {
    if (test::is_linear_weight(name)) continue;
    SCOPED_TRACE(name);
    const Tensor got = st->get(name);
    ASSERT_EQ(got.dtype(), DType::F16);
    EXPECT_EQ(got.shape(), t.shape);
    const std::vector<uint8_t> want = test::SyntheticDump::encode(t);
    EXPECT_EQ(std::memcmp(got.raw(), want.data(), want.size()), 0);
  }
  EXPECT_TRUE(fs::exists(o.out + "/config.json"));
  EXPECT_TRUE(fs::exists(o.out + "/generation_config.json"));
  EXPECT_FALSE(fs::exists(o.out + "/pytorch_model.bin"));  // only with --layout qserve

  auto m = LlamaModel::load(o.out);
  EXPECT_EQ(m->precision().weights,
            g128 ? WeightPrecision::kW4A8G128 : WeightPrecision::kW4A8PerChannel);
}

INSTANTIATE_TEST_SUITE_P(
    Styles, ConvertSynthetic,
    ::testing::Values(Case{DumpStyle::kLmquant, -1, "lmquant_per_channel"},
                      Case{DumpStyle::kLmquant, 128, "lmquant_g128"},
                      Case{DumpStyle::kLmquantSigned, -1, "lmquant_signed_zero_per_channel"},
                      Case{DumpStyle::kLmquantSigned, 128, "lmquant_signed_zero_g128"},
                      Case{DumpStyle::kDcZero, -1, "deepcompressor_zero_per_channel"},
                      Case{DumpStyle::kDcZero, 128, "deepcompressor_zero_g128"},
                      Case{DumpStyle::kDcScaledZero, -1, "deepcompressor_scaled_zero_per_channel"},
                      Case{DumpStyle::kDcScaledZero, 128, "deepcompressor_scaled_zero_g128"},
                      Case{DumpStyle::kDcScaledZeroSigned, 128,
                           "deepcompressor_scaled_zero_signed_codes_g128"}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

// A model's quantized linear weights, whichever scheme.
void expect_same_linear(const Linear& a, const Linear& b) {
  ASSERT_TRUE(a.quantized() && b.quantized());
  if (const auto* x = std::get_if<quant::W4PerChannel>(&a.quant()->w)) {
    const auto& y = std::get<quant::W4PerChannel>(b.quant()->w);
    EXPECT_EQ(x->q, y.q);
    EXPECT_EQ(x->s1_scales, y.s1_scales);
    EXPECT_EQ(x->s1_szeros, y.s1_szeros);
  } else {
    const auto& x2 = std::get<quant::W4G128>(a.quant()->w);
    const auto& y = std::get<quant::W4G128>(b.quant()->w);
    EXPECT_EQ(x2.q, y.q);
    EXPECT_EQ(x2.s1_scales, y.s1_scales);
    EXPECT_EQ(x2.s2_scales, y.s2_scales);
    EXPECT_EQ(x2.s2_zeros, y.s2_zeros);
  }
}

class ConvertZooLayout : public ::testing::TestWithParam<int64_t> {};

TEST_P(ConvertZooLayout, PytorchModelBinLoadsTheSameLinears) {
  const int64_t gs = GetParam();
  const std::string dir =
      test::scratch_dir(gs == 128 ? "zoo_layout_g128" : "zoo_layout_per_channel");
  test::make_dump(tiny_model(), DumpStyle::kDcScaledZero, gs == 128).write(dir + "/dump");
  ConvertOptions o;
  o.from = "deepcompressor";
  o.model_dir = tiny_model();
  o.quant_path = dir + "/dump";
  o.group_size = gs;
  o.out = dir + "/out";
  o.layout_qserve = true;
  EXPECT_EQ(convert_dump(o), 14);

  // The .bin holds exactly the safetensors' tensors (QServe's names, dtypes, shapes, bytes).
  auto st = SafetensorsFile::open(o.out + "/" + kOurFile);
  const TorchCheckpoint bin = TorchCheckpoint::open(o.out + "/pytorch_model.bin");
  ASSERT_EQ(bin.names().size(), st->header().tensors.size());
  for (const std::string& name : bin.names()) {
    SCOPED_TRACE(name);
    const Tensor a = bin.get(name), b = st->get(name);
    ASSERT_EQ(a.dtype(), b.dtype());
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  }

  // The zoo folder alone (QServe's layout: config.json + pytorch_model.bin) loads through
  // LlamaModel::load into the same linears as our safetensors.
  const std::string zoo = dir + "/zoo";
  fs::create_directories(zoo);
  fs::copy_file(o.out + "/pytorch_model.bin", zoo + "/pytorch_model.bin");
  fs::copy_file(o.out + "/config.json", zoo + "/config.json");
  const WeightPrecision wp =
      gs == 128 ? WeightPrecision::kW4A8G128 : WeightPrecision::kW4A8PerChannel;
  EXPECT_EQ(detect_qserve_checkpoint(zoo), wp);
  auto from_bin = LlamaModel::load(zoo);
  auto from_st = LlamaModel::load(o.out);
  EXPECT_EQ(from_bin->precision().weights, wp);
  EXPECT_EQ(from_st->precision().weights, wp);
  const LlamaWeights& a = from_bin->weights();
  const LlamaWeights& b = from_st->weights();
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    SCOPED_TRACE(l);
    expect_same_linear(a.layers[l].qkv, b.layers[l].qkv);
    expect_same_linear(a.layers[l].o, b.layers[l].o);
    expect_same_linear(a.layers[l].gate_up, b.layers[l].gate_up);
    expect_same_linear(a.layers[l].down, b.layers[l].down);
  }
  EXPECT_EQ(a.embed, b.embed);
  EXPECT_EQ(a.lm_head.w, b.lm_head.w);
}

INSTANTIATE_TEST_SUITE_P(GroupSizes, ConvertZooLayout, ::testing::Values(-1, 128),
                         [](const auto& param_info) {
                           return std::string(param_info.param == 128 ? "g128" : "per_channel");
                         });

}  // namespace
}  // namespace qserve
