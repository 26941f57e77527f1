// --precision and --qserve-norm on generate, perplexity and bench, and the error for a bad
// spelling.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "test_paths.h"

namespace {

using qserve::test::run_qserve;
using qserve::test::RunResult;

const std::string kDoc = "'" + qserve::test::model_dir("doc-llama-22m") + "'";
const std::string kText = "'" + qserve::test::shared_dir() + "/data/eval/doc-heldout.txt'";

TEST(PrecisionCli, GenerateAtQuantizedPrecisions) {
  for (const char* flags :
       {"--precision w4a8kv4-g128", "--precision w8a8kv8 --qserve-norm", "--precision w4a8kv4"}) {
    RunResult r = run_qserve("generate --model " + kDoc +
                                 " --prompt 'The kernel' --max-tokens 8 "
                                 "--ignore-eos --json " +
                                 std::string(flags),
                             false);
    ASSERT_EQ(r.code, 0) << flags << ": " << r.out;
    EXPECT_EQ(nlohmann::json::parse(r.out)["token_ids"].size(), 8u) << flags;
  }
}

TEST(PrecisionCli, PerplexityReportsItsPrecision) {
  const std::string base =
      "perplexity --model " + kDoc + " --text " + kText + " --window 64 --max-windows 2 --json";
  RunResult ref = run_qserve(base, false);
  RunResult q = run_qserve(base + " --precision w4a8kv4-g128", false);
  ASSERT_EQ(ref.code, 0) << ref.out;
  ASSERT_EQ(q.code, 0) << q.out;
  auto jr = nlohmann::json::parse(ref.out), jq = nlohmann::json::parse(q.out);
  EXPECT_EQ(jr["precision"], "w16a16kv16");
  EXPECT_EQ(jq["precision"], "w4a8kv4-g128");
  EXPECT_NE(jr["ppl"].get<double>(), jq["ppl"].get<double>());
}

TEST(PrecisionCli, BenchAtAPrecision) {
  RunResult r = run_qserve(
      "bench --input-len 16 --output-len 4 --batch 2 --rounds 1 "
      "--precision w4a8kv4",
      true);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("w4a8kv4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("throughput:"), std::string::npos) << r.out;
}

TEST(PrecisionCli, UnknownPrecisionIsOneLineListingTheValidOnes) {
  for (const std::string& cmd :
       {"generate --model " + kDoc + " --prompt hi --precision w4a4",
        "perplexity --model " + kDoc + " --text " + kText + " --precision w4a4",
        std::string("bench --precision w4a4")}) {
    RunResult r = run_qserve(cmd, true);
    EXPECT_EQ(r.code, 1) << cmd;
    EXPECT_EQ(r.out.rfind("error: unknown precision 'w4a4'; valid precisions: w4a8kv4, ", 0), 0u)
        << r.out;
    EXPECT_NE(r.out.find("w16a16kv16"), std::string::npos) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  }
}

}  // namespace
