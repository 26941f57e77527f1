// The qserve CLI as a user runs it: exact forms from the foundation issue, JSON outputs, and
// clear errors with exit code 1.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "test_paths.h"

namespace {

using qserve::test::RunResult;

std::string quote(const std::string& s) {
  return qserve::test::shell_quote(s);
}

RunResult qserve(const std::string& args, bool merge_stderr = true) {
  return qserve::test::run_qserve(args, merge_stderr);
}

nlohmann::json golden() {
  std::ifstream in(qserve::test::model_dir("doc-llama-22m") + "/golden.json");
  return nlohmann::json::parse(in);
}

const std::string kDoc = quote(qserve::test::model_dir("doc-llama-22m"));

TEST(Cli, GenerateJsonMatchesGreedyGolden) {
  const auto g = golden();
  const auto& p = g["prompts"][0];
  RunResult r = qserve("generate --model " + kDoc + " --prompt " + quote(p["text"]) +
                           " --max-tokens 32 --temperature 0 --json",
                       false);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["token_ids"], p["greedy_32"]);
  EXPECT_EQ(j["text"], p["greedy_32_text"]);
}

TEST(Cli, GeneratePrintsContinuationOnly) {
  const auto g = golden();
  const auto& p = g["prompts"][3];
  RunResult r = qserve("generate --model " + kDoc + " --prompt " + quote(p["text"]) +
                           " --max-tokens 32 --temperature 0",
                       false);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out, p["greedy_32_text"].get<std::string>() + "\n");
}

TEST(Cli, TokenizeWithAndWithoutSpecial) {
  const auto g = golden();
  for (const auto& c : g["tokenizer"]) {
    RunResult a = qserve("tokenize --model " + kDoc + " --text " + quote(c["text"]), false);
    ASSERT_EQ(a.code, 0) << a.out;
    EXPECT_EQ(nlohmann::json::parse(a.out), c["ids"]) << c["text"];
    RunResult b =
        qserve("tokenize --model " + kDoc + " --text " + quote(c["text"]) + " --no-special", false);
    ASSERT_EQ(b.code, 0) << b.out;
    EXPECT_EQ(nlohmann::json::parse(b.out), c["ids_no_special"]) << c["text"];
  }
}

TEST(Cli, PerplexityJsonOnAFewWindows) {
  RunResult r =
      qserve("perplexity --model " + kDoc + " --text " +
                 quote(qserve::test::shared_dir() + "/data/eval/doc-heldout.txt") +
                 " --window 128 --doc-separator '\\n\\n<|doc|>\\n\\n' --max-windows 2 --json",
             false);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["windows"], 2);
  EXPECT_EQ(j["tokens"], 308393);
  EXPECT_GT(j["ppl"].get<double>(), 1.0);
}

TEST(Cli, InspectPrintsConfigAndParameters) {
  RunResult r = qserve("inspect --model " + kDoc);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("LlamaForCausalLM"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.layers.5.mlp.down_proj.weight"), std::string::npos);
  EXPECT_NE(r.out.find("parameters: 22"), std::string::npos) << r.out;
}

TEST(Cli, BenchRunsOnEmbeddedSyntheticModel) {
  RunResult r = qserve("bench --input-len 16 --output-len 4 --batch 2 --rounds 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("throughput:"), std::string::npos) << r.out;
}

TEST(Cli, ErrorsAreOneClearLine) {
  RunResult a = qserve("generate --model /nonexistent/model --prompt hi");
  EXPECT_EQ(a.code, 1);
  EXPECT_NE(a.out.find("error: --model /nonexistent/model"), std::string::npos) << a.out;
  RunResult b = qserve("bench --model synthetic:nope");
  EXPECT_EQ(b.code, 1);
  EXPECT_NE(b.out.find("unknown synthetic model 'nope'"), std::string::npos) << b.out;
  RunResult s = qserve("serve --model synthetic:tiny");  // no tokenizer to serve text with
  EXPECT_EQ(s.code, 1);
  EXPECT_NE(s.out.find("--tokenizer DIR"), std::string::npos) << s.out;
  RunResult c = qserve("perplexity --model " + kDoc + " --text /nonexistent.txt");
  EXPECT_EQ(c.code, 1);
  EXPECT_NE(c.out.find("/nonexistent.txt"), std::string::npos) << c.out;
  RunResult d = qserve("generate --model " + kDoc);  // missing --prompt
  EXPECT_NE(d.code, 0);
  EXPECT_NE(d.out.find("--prompt"), std::string::npos) << d.out;
}

}  // namespace
