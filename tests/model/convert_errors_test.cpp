// `qserve convert` on corrupt synthetic dumps (CI; convert_test_util.h): a non-integral code, a
// zero point, s2 or level-1 value out of range, a missing, misshapen, unexpected or misplaced key,
// a missing file - each fails with a qserve::Error naming the file, the tensor and (for values)
// the element.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "convert_test_util.h"
#include "formats/formats_test_util.h"
#include "formats/torch_test_util.h"
#include "model/qserve_convert.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;
using test::DumpStyle;
using test::SyntheticDump;

// tiny-llama2-mha: down_proj is [256, 512], so 4 groups of 128 per row.
const std::string kP = "model.layers.1.mlp.down_proj.weight";
constexpr int64_t kN = 256, kK = 512, kG = 4;

std::string tiny_model() {
  return test::model_dir("tiny-llama2-mha");
}

const SyntheticDump& base(DumpStyle style, bool g128) {
  static std::map<std::pair<int, bool>, SyntheticDump> cache;
  const auto key = std::make_pair(static_cast<int>(style), g128);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, test::make_dump(tiny_model(), style, g128)).first;
  return it->second;
}

// Writes `d` and converts it; returns the dump folder (for messages).
std::string convert(const SyntheticDump& d, const std::string& from, int64_t group_size,
                    const std::string& name) {
  const std::string dir = test::scratch_dir("errors_" + name);
  d.write(dir + "/dump");
  ConvertOptions o;
  o.from = from;
  o.model_dir = tiny_model();
  o.quant_path = dir + "/dump";
  o.group_size = group_size;
  o.out = dir + "/out";
  convert_dump(o);
  return o.quant_path;
}

float& at(SyntheticDump& d, const std::string& key, int64_t i) {
  return d.model.count(key) ? d.model.at(key).values.at(static_cast<size_t>(i))
                            : d.scale.at(key).values.at(static_cast<size_t>(i));
}

TEST(ConvertErrors, NonIntegralCodes) {
  {  // per-channel: a weight halfway between two grid points
    SyntheticDump d = base(DumpStyle::kLmquant, false);
    at(d, kP, 3 * kK + 5) += 0.5f * at(d, kP + ".scale.0", 3);
    EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "code_pc"), "model.pt: '" + kP + "'",
                        "element [3, 5]", "not within 0.25 of an integer");
  }
  for (DumpStyle style : {DumpStyle::kLmquant, DumpStyle::kDcScaledZero}) {
    // g128: w8 + 1 is a grid point of level 1 but not of level 2 when s2 > 1.
    SyntheticDump d = base(style, true);
    ASSERT_GT(at(d, kP + ".scale.1", 3 * kG), 1.0f);
    at(d, kP, 3 * kK + 5) += at(d, kP + ".scale.0", 3);
    EXPECT_QSERVE_ERROR(convert(d, test::dump_from(style), 128, "code_g128"),
                        "model.pt: '" + kP + "' codes", "element [3, 5]", "expected an integer");
  }
}

TEST(ConvertErrors, ZeroPointsOutOfRangeOrNotIntegers) {
  SyntheticDump d = base(DumpStyle::kLmquant, false);
  at(d, kP + ".zero", 7) = 16;
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "zero16"), "scale.pt: '" + kP + ".zero'",
                      "element 7 is 16", "expected an integer in [0, 15]");
  at(d, kP + ".zero", 7) = 2.5f;
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "zero2.5"), kP + ".zero'", "element 7 is 2.5");
  // Negative zeros make the tensor signed int4: -9 is out of [-8, 7].
  SyntheticDump s = base(DumpStyle::kLmquantSigned, false);
  at(s, kP + ".zero", 7) = -9;
  EXPECT_QSERVE_ERROR(convert(s, "lmquant", -1, "zero-9"), kP + ".zero'", "element 7 is -9",
                      "[-8, 7]", "signed int4");
  // g128, DeepCompressor's integer scaled zero.
  SyntheticDump g = base(DumpStyle::kDcScaledZero, true);
  at(g, kP + ".scaled_zero", 5 * kG + 2) = 3.5f;
  EXPECT_QSERVE_ERROR(convert(g, "deepcompressor", 128, "scaled_zero3.5"),
                      "scale.pt: '" + kP + ".scaled_zero'", "element [5, 2] is 3.5", "[-128, 255]");
  SyntheticDump z = base(DumpStyle::kDcZero, true);
  at(z, kP + ".zero", 5 * kG + 2) = 20;
  EXPECT_QSERVE_ERROR(convert(z, "deepcompressor", 128, "zero20_g128"), kP + ".zero'",
                      "element [5, 2] is 20", "[0, 15]");
}

TEST(ConvertErrors, ScalesOutOfRange) {
  SyntheticDump d = base(DumpStyle::kLmquant, true);
  at(d, kP + ".scale.1", 1) = 0;
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", 128, "s2_0"), "scale.pt: '" + kP + ".scale.1'",
                      "element [0, 1] is 0", "[1, 127]");
  at(d, kP + ".scale.1", 1) = 200;
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", 128, "s2_200"), "element [0, 1] is 200");
  SyntheticDump p = base(DumpStyle::kLmquant, false);
  at(p, kP + ".scale.0", 9) = 0;
  EXPECT_QSERVE_ERROR(convert(p, "lmquant", -1, "s1_0"), kP + ".scale.0'", "element 9 is 0",
                      "finite non-zero scale");
}

TEST(ConvertErrors, Level1OutsideInt8AndCarry) {
  SyntheticDump d = base(DumpStyle::kLmquant, true);
  at(d, kP, 2 * kK + 3) = 130.0f * at(d, kP + ".scale.0", 2);
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", 128, "w8_130"), "model.pt: '" + kP + "'",
                      "element [2, 3]", "round(weight / s1) = 130", "[-128, 127]");
  // A group that decodes exactly but whose Q * s2 would carry in the kernel's byte-wise
  // multiply (s2 = 18, z = 8, Q in {8, 15}: w8 in {0, 126}, 15 * 18 = 270 > 255).
  d = base(DumpStyle::kLmquant, true);
  const float s1 = at(d, kP + ".scale.0", 4);
  at(d, kP + ".scale.1", 4 * kG) = 18;
  at(d, kP + ".zero", 4 * kG) = 8;
  for (int64_t c = 0; c < 128; ++c) at(d, kP, 4 * kK + c) = (c % 2 ? 126.0f : 0.0f) * s1;
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", 128, "carry"), kP, "exceeds 255");
}

TEST(ConvertErrors, MissingKeys) {
  SyntheticDump d = base(DumpStyle::kLmquant, false);
  d.scale.erase(kP + ".zero");
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "no_zero"), "scale.pt: no '" + kP + ".zero'",
                      "model.pt: '" + kP + "'");
  SyntheticDump dc = base(DumpStyle::kDcScaledZero, false);
  dc.scale.erase(kP + ".scaled_zero");
  EXPECT_QSERVE_ERROR(convert(dc, "deepcompressor", -1, "no_scaled_zero"),
                      "neither '" + kP + ".zero' nor '" + kP + ".scaled_zero'");
  d = base(DumpStyle::kLmquant, false);
  d.scale.erase(kP + ".scale.0");
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "no_s1"), "no '" + kP + ".scale.0'");
  SyntheticDump g = base(DumpStyle::kLmquant, true);
  g.scale.erase(kP + ".scale.1");
  EXPECT_QSERVE_ERROR(convert(g, "lmquant", 128, "no_s2"), "no '" + kP + ".scale.1'",
                      "--group-size -1");
  // A linear without any entry: QServe's converter would fail on it too.
  d = base(DumpStyle::kLmquant, false);
  for (const char* s : {".scale.0", ".zero"}) d.scale.erase(kP + s);
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "no_entries"), "'" + kP + "' is a decoder linear",
                      "no '" + kP + ".scale.0'");
  // Entries for a weight model.pt does not have.
  d = base(DumpStyle::kLmquant, false);
  d.model.erase(kP);
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "orphan"), "has entries for '" + kP + "'",
                      "model.pt does not have");
}

TEST(ConvertErrors, WrongShapes) {
  SyntheticDump d = base(DumpStyle::kLmquant, false);
  d.scale.at(kP + ".scale.0").shape = {kN - 1, 1, 1, 1};
  d.scale.at(kP + ".scale.0").values.pop_back();
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "s1_shape"), "scale.pt: '" + kP + ".scale.0'",
                      "has shape [255, 1, 1, 1], expected [256]");
  // s2 stored transposed: same element count, wrong layout.
  SyntheticDump g = base(DumpStyle::kLmquant, true);
  g.scale.at(kP + ".scale.1").shape = {kG, kN};
  EXPECT_QSERVE_ERROR(convert(g, "lmquant", 128, "s2_shape"), kP + ".scale.1'",
                      "has shape [4, 256], expected [256, 4]");
  // A per-channel zero in a g128 dump.
  g = base(DumpStyle::kLmquant, true);
  g.scale.at(kP + ".zero") = {DType::F16, {kN, 1, 1, 1}, std::vector<float>(kN, 8.0f)};
  EXPECT_QSERVE_ERROR(convert(g, "lmquant", 128, "zero_shape"), kP + ".zero'", "expected [256, 4]");
  // The weight itself.
  d = base(DumpStyle::kLmquant, false);
  d.model.at(kP).shape = {kN * kK};
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "weight_1d"), "model.pt: '" + kP + "'",
                      "not a 2-D .weight");
  d.model.at(kP).shape = {kN / 2 + 16, kK * 2 - 64};  // 144 x 960 elements
  d.model.at(kP).values.resize(144 * 960);
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "weight_shape"), "multiples of 32");
}

TEST(ConvertErrors, KeysThatDoNotBelong) {
  // LMQuant dumps have no post-scale zero: point at --from deepcompressor.
  EXPECT_QSERVE_ERROR(convert(base(DumpStyle::kDcScaledZero, false), "lmquant", -1, "lq_scaled"),
                      ".scaled_zero' is a DeepCompressor post-scale zero point",
                      "--from deepcompressor");
  SyntheticDump d = base(DumpStyle::kDcScaledZero, false);
  d.scale[kP + ".zero"] = d.scale.at(kP + ".scaled_zero");
  EXPECT_QSERVE_ERROR(convert(d, "deepcompressor", -1, "both_zeros"), "both '" + kP + ".zero'");
  // Group size and dump disagree.
  EXPECT_QSERVE_ERROR(convert(base(DumpStyle::kLmquant, true), "lmquant", -1, "g128_as_pc"),
                      ".scale.1' is a per-group scale", "--group-size 128");
  EXPECT_QSERVE_ERROR(convert(base(DumpStyle::kLmquant, false), "lmquant", 128, "pc_as_g128"),
                      ".scale.1'", "--group-size -1");
  d = base(DumpStyle::kLmquant, false);
  d.scale["extra"] = {DType::F16, {1}, {1.0f}};
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "extra_key"), "unexpected key 'extra'");
  d = base(DumpStyle::kLmquant, false);
  d.scale[kP + ".scale.2"] = {DType::F16, {1}, {1.0f}};
  EXPECT_QSERVE_ERROR(convert(d, "lmquant", -1, "level2"), kP + ".scale.2'", "scale levels");
}

TEST(ConvertErrors, FilesAndOptions) {
  const std::string dir = test::scratch_dir("errors_files");
  ConvertOptions o;
  o.model_dir = tiny_model();
  o.quant_path = dir;
  o.out = dir + "/out";
  EXPECT_QSERVE_ERROR(convert_dump(o), dir + "/model.pt: no such file", "scale.pt");
  // DeepCompressor's converted checkpoint is not a dump.
  test::write_file(dir + "/quant_model.pt", "x");
  EXPECT_QSERVE_ERROR(convert_dump(o), "quant_model.pt", "not a fake-quant dump");
  fs::remove(dir + "/quant_model.pt");
  base(DumpStyle::kLmquant, false).write(dir);
  fs::remove(dir + "/scale.pt");
  EXPECT_QSERVE_ERROR(convert_dump(o), dir + "/scale.pt: no such file");
  // A plain value where a zero point tensor belongs (DeepCompressor stores non-tensor zeros as
  // they are).
  test::Pickle pk;
  pk.proto(2).empty_dict().str(kP + ".zero").none().setitem().stop();
  test::write_file(dir + "/scale.pt", test::torch_archive(pk.data(), {}));
  EXPECT_QSERVE_ERROR(convert_dump(o), "scale.pt: '" + kP + ".zero' is a plain value (None)");

  o.from = "awq";
  EXPECT_QSERVE_ERROR(convert_dump(o), "--from awq");
  o.from = "lmquant";
  o.group_size = 64;
  EXPECT_QSERVE_ERROR(convert_dump(o), "--group-size", "64");
  o.group_size = -1;
  o.out = tiny_model();
  EXPECT_QSERVE_ERROR(convert_dump(o), "the output folder is the HF model folder");
  o.out = "";
  EXPECT_QSERVE_ERROR(convert_dump(o), "no output folder");
  o.out = dir + "/out";
  o.model_dir = dir + "/nowhere";
  EXPECT_QSERVE_ERROR(convert_dump(o), dir + "/nowhere: not a folder");
}

}  // namespace
}  // namespace qserve
