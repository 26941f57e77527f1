// `qserve convert` (model/qserve_convert.h) and our quantized checkpoint format.
//
// With QSERVE_REFERENCE_DIR (the reference generator's output): converting the LMQuant dumps
// gives exactly the zoo checkpoint's packed tensors (qweight, s1_*, s2_*) and bit-identical
// fp16 tensors, in our model.safetensors and in the pytorch_model.bin of --layout qserve, and the
// written folder loads with the precision taken from its metadata. Without it those tests are
// skipped; CI converts synthetic dumps instead (convert_synthetic_test.cpp,
// convert_errors_test.cpp).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "core/error.h"
#include "formats/safetensors.h"
#include "formats/torch_checkpoint.h"
#include "model/llama_model.h"
#include "model/qserve_checkpoint.h"
#include "model/qserve_convert.h"
#include "test_paths.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;

TEST(OurCheckpointMetadata, SchemeGivesPrecision) {
  EXPECT_EQ(our_checkpoint_precision({}), std::nullopt);
  EXPECT_EQ(our_checkpoint_precision({{"format", "pt"}}), std::nullopt);
  EXPECT_EQ(our_checkpoint_precision({{kFormatKey, kFormatValue}, {kSchemeKey, "w4a8-g128"}}),
            WeightPrecision::kW4A8G128);
  EXPECT_EQ(
      our_checkpoint_precision({{kFormatKey, kFormatValue}, {kSchemeKey, "w4a8-per-channel"}}),
      WeightPrecision::kW4A8PerChannel);
  EXPECT_THROW(our_checkpoint_precision({{kFormatKey, kFormatValue}, {kSchemeKey, "w3a8"}}), Error);
  EXPECT_THROW(our_checkpoint_precision({{kFormatKey, kFormatValue}}), Error);
}

TEST(Convert, RejectsUnsupportedInputs) {
  ConvertOptions o;
  o.from = "awq";
  EXPECT_THROW(convert_dump(o), Error);
  o.from = "lmquant";
  o.group_size = 64;
  EXPECT_THROW(convert_dump(o), Error);
}

struct Case {
  const char* dump;
  const char* zoo;
  int64_t group_size;
  WeightPrecision wp;
};

class ConvertReference : public ::testing::TestWithParam<Case> {};

TEST_P(ConvertReference, CodesEqualZooCheckpoint) {
  const char* env = std::getenv("QSERVE_REFERENCE_DIR");
  if (!env) GTEST_SKIP() << "set QSERVE_REFERENCE_DIR to the qserve_reference output";
  const Case c = GetParam();
  const std::string ref = env;
  const fs::path out = fs::path(test::binary_dir()) / "zoo_convert_test" / c.dump;
  fs::remove_all(out);
  ConvertOptions o;
  o.model_dir = ref + "/" + c.zoo;
  o.quant_path = ref + "/" + c.dump;
  o.group_size = c.group_size;
  o.out = out.string();
  o.layout_qserve = true;
  EXPECT_EQ(convert_dump(o), 42);

  auto ours = SafetensorsFile::open((out / kOurFile).string());
  EXPECT_EQ(ours->header().metadata.at(kGroupSizeKey), std::to_string(c.group_size));
  EXPECT_EQ(ours->header().metadata.at(kLayoutKey), "1");
  const TorchCheckpoint zoo = TorchCheckpoint::open(ref + "/" + c.zoo + "/pytorch_model.bin");
  const TorchCheckpoint our_bin = TorchCheckpoint::open((out / "pytorch_model.bin").string());
  int64_t compared = 0;
  for (const std::string& name : zoo.names()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(ours->has(name));
    ASSERT_TRUE(our_bin.has(name));
    const Tensor a = zoo.get(name), b = ours->get(name), d = our_bin.get(name);
    ASSERT_EQ(a.dtype(), b.dtype());
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
    ASSERT_EQ(a.dtype(), d.dtype());
    ASSERT_EQ(a.shape(), d.shape());
    EXPECT_EQ(std::memcmp(a.raw(), d.raw(), a.nbytes()), 0);
    ++compared;
  }
  EXPECT_EQ(static_cast<size_t>(compared), ours->header().tensors.size());
  EXPECT_EQ(our_bin.names().size(), zoo.names().size());
  EXPECT_TRUE(fs::exists(out / "config.json"));
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));

  EXPECT_EQ(detect_qserve_checkpoint(out.string()), c.wp);
  auto m = LlamaModel::load(out.string());
  EXPECT_EQ(m->precision().weights, c.wp);
  EXPECT_EQ(m->precision().kv, KvPrecision::kKv4);
}

INSTANTIATE_TEST_SUITE_P(Reference, ConvertReference,
                         ::testing::Values(Case{"lmquant-per-channel", "w4a8-per-channel", -1,
                                                WeightPrecision::kW4A8PerChannel},
                                           Case{"lmquant-g128", "w4a8-g128", 128,
                                                WeightPrecision::kW4A8G128}),
                         [](const auto& param_info) {
                           return std::string(param_info.param.group_size == 128 ? "g128"
                                                                                 : "per_channel");
                         });

}  // namespace
}  // namespace qserve
