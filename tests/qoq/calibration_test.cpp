// Calibration files (plain text, separator, JSONL) and DeepCompressor-style sampling: determinism,
// window lengths, and the errors / warnings for unusable input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "qoq/calibration.h"
#include "test_paths.h"

namespace qserve::qoq {
namespace {

namespace fs = std::filesystem;

std::string write_temp(const std::string& name, const std::string& content) {
  const fs::path p =
      fs::temp_directory_path() / ("qoq_calib_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p, std::ios::binary) << content;
  return p.string();
}

TEST(CalibrationFile, PlainTextLinesSeparatorAndJsonl) {
  const std::string plain = write_temp("a.txt", "first doc\n\n  second doc  \nthird\n");
  EXPECT_EQ(read_calibration_documents(plain, ""),
            (std::vector<std::string>{"first doc", "second doc", "third"}));
  const std::string sep = write_temp("b.txt", "one\nline\n<|doc|>\ntwo\n<|doc|>\n");
  EXPECT_EQ(read_calibration_documents(sep, "<|doc|>"),
            (std::vector<std::string>{"one\nline", "two"}));
  const std::string jsonl =
      write_temp("c.jsonl", "{\"text\": \"alpha\\nbeta\"}\n\n{\"text\": \"gamma\", \"x\": 1}\n");
  EXPECT_EQ(read_calibration_documents(jsonl, ""),
            (std::vector<std::string>{"alpha\nbeta", "gamma"}));
}

TEST(CalibrationFile, BadInputIsAClearError) {
  auto message = [](const std::string& path) {
    try {
      read_calibration_documents(path, "");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string empty = write_temp("empty.txt", "\n \n");
  EXPECT_NE(message(empty).find("no non-empty document"), std::string::npos) << message(empty);
  const std::string bad = write_temp("bad.jsonl", "{\"text\": \"ok\"}\nnot json\n");
  EXPECT_NE(message(bad).find("line 2 is not valid JSON"), std::string::npos) << message(bad);
  const std::string notext = write_temp("notext.jsonl", "{\"body\": \"x\"}\n");
  EXPECT_NE(message(notext).find("no string field \"text\""), std::string::npos);
  EXPECT_NE(message("/nonexistent/calib.txt").find("cannot open"), std::string::npos);
}

class Sampling : public ::testing::Test {
 protected:
  void SetUp() override {
    tok_ = load_tokenizer(test::model_dir("doc-llama-22m"));
    docs_ = read_calibration_documents(test::shared_dir() + "/data/wikitext-2/wiki.test.raw", "");
  }
  std::unique_ptr<Tokenizer> tok_;
  std::vector<std::string> docs_;
};

TEST_F(Sampling, DeterministicWindowsOfSeqLen) {
  const CalibrationSet a = sample_calibration(*tok_, docs_, 8, 256, 42);
  const CalibrationSet b = sample_calibration(*tok_, docs_, 8, 256, 42);
  const CalibrationSet c = sample_calibration(*tok_, docs_, 8, 256, 43);
  EXPECT_EQ(a.samples, 8);
  EXPECT_EQ(a.tokens.size(), 8u * 256u);
  EXPECT_TRUE(a.warnings.empty());
  EXPECT_GE(a.documents_used, 8);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens, c.tokens);
  // Every document starts with BOS (the tokenizer's post-processor), so BOS ids appear.
  EXPECT_NE(std::find(a.tokens.begin(), a.tokens.end(), *tok_->bos_id()), a.tokens.end());
}

TEST_F(Sampling, FewerTokensThanAskedWarnsOrFails) {
  const std::vector<std::string> few(docs_.begin(), docs_.begin() + 40);
  const CalibrationSet s = sample_calibration(*tok_, few, 128, 256, 42);
  EXPECT_GT(s.samples, 0);
  EXPECT_LT(s.samples, 128);
  ASSERT_EQ(s.warnings.size(), 1u);
  EXPECT_NE(s.warnings[0].find("using " + std::to_string(s.samples) + " samples"),
            std::string::npos);
  EXPECT_THROW(sample_calibration(*tok_, {"tiny"}, 4, 1024, 42), Error);
}

}  // namespace
}  // namespace qserve::qoq
