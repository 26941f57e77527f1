// The flags of `qserve bench` that bench/e2e_table.sh relies on, on the CPU: runs gathered in
// one JSON (--json-append, --json-command) and one Markdown table (--markdown-out), the short
// warm-up, static prefill in steps of --max-num-batched-tokens rows, and the errors of --batch.
// The GPU side (--batch auto|max, synthetic weights on the device) is in tests/gpu.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli_runner.h"
#include "test_paths.h"

namespace {

using qserve::test::RunResult;
std::string quote(const std::string& s) {
  return qserve::test::shell_quote(s);
}
RunResult qserve(const std::string& args) {
  return qserve::test::run_qserve(args, true);
}

std::string read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(BenchTableCli, RunsAppendToOneJsonAndOneMarkdownTable) {
  const std::string json = qserve::test::binary_dir() + "/bench_table_cli.json";
  const std::string md = qserve::test::binary_dir() + "/bench_table_cli.md";
  std::filesystem::remove(json);
  std::filesystem::remove(md);
  const std::string sink = " --device cpu --json-append " + quote(json) + " --markdown-out " +
                           quote(md) + " --json-command table.sh";
  RunResult a =
      qserve("bench --input-len 16 --output-len 4 --batch 2 --rounds 1 --warmup short" + sink);
  ASSERT_EQ(a.code, 0) << a.out;
  // 3 prompts of 16 tokens in prefill steps of at most 20 rows: one prompt per step.
  RunResult b = qserve(
      "bench --input-len 16 --output-len 4 --batch 3 --rounds 2 --warmup none "
      "--max-num-batched-tokens 20" +
      sink);
  ASSERT_EQ(b.code, 0) << b.out;

  const nlohmann::json j = nlohmann::json::parse(read(json));
  EXPECT_EQ(j["command"], "table.sh");
  for (const char* key : {"device", "commit", "date"}) EXPECT_TRUE(j.contains(key)) << key;
  ASSERT_EQ(j["results"].size(), 3u);  // 1 round + 2 rounds
  for (const auto& row : j["results"]) {
    for (const char* key : {"model", "precision", "batch", "input_len", "output_len",
                            "output_tokens_per_s", "system", "command", "phase"}) {
      EXPECT_TRUE(row.contains(key)) << key << " in " << row.dump();
    }
    EXPECT_EQ(row["phase"], "full");
    EXPECT_GT(row["output_tokens_per_s"].get<double>(), 0.0);
  }
  EXPECT_EQ(j["results"][0]["batch"], 2);
  EXPECT_EQ(j["results"][0]["steps"], 4);  // one prefill step, three decode steps
  EXPECT_EQ(j["results"][2]["batch"], 3);
  EXPECT_EQ(j["results"][2]["prefill_tokens_per_step"], 20);
  EXPECT_GT(j["results"][2]["steps"].get<int64_t>(), 4);  // the prompts took several steps
  EXPECT_EQ(j["results"][2]["preemptions"], 0);
  EXPECT_NE(j["results"][2]["command"].get<std::string>().find("--max-num-batched-tokens 20"),
            std::string::npos);

  const std::string table = read(md);
  EXPECT_NE(table.find("| synthetic:tiny | w16a16kv16 | 2 | - | 16 / 4 |"), std::string::npos)
      << table;
  EXPECT_NE(table.find("| synthetic:tiny | w16a16kv16 | 3 | - | 16 / 4 |"), std::string::npos)
      << table;
}

TEST(BenchTableCli, BatchSpellingsAndWarmupAreChecked) {
  RunResult zero = qserve("bench --batch 0");
  EXPECT_EQ(zero.code, 1);
  EXPECT_NE(zero.out.find("positive integer, auto or max"), std::string::npos) << zero.out;
  RunResult warm = qserve("bench --warmup sometimes");
  EXPECT_EQ(warm.code, 1);
  EXPECT_NE(warm.out.find("--warmup must be full, short or none"), std::string::npos) << warm.out;
  // auto and max size the batch from GPU memory.
  RunResult cpu = qserve("bench --batch auto --device cpu");
  EXPECT_EQ(cpu.code, 1);
  EXPECT_NE(cpu.out.find("--device cuda"), std::string::npos) << cpu.out;
}

}  // namespace
