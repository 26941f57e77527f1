// The engine from the CLI: batch generation over a JSONL dataset (200 WildChat-style
// conversations made from doc-heldout by tools/make_chat_dataset.py) and the QServe-protocol
// benchmark in static and in-flight modes.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_runner.h"
#include "test_paths.h"

namespace {

using qserve::test::RunResult;
std::string quote(const std::string& s) { return qserve::test::shell_quote(s); }
RunResult qserve(const std::string& args) { return qserve::test::run_qserve(args, true); }
const std::string kDoc = quote(qserve::test::model_dir("doc-llama-22m"));

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

TEST(EngineCli, GenerateOverTwoHundredConversations) {
  const std::string data = qserve::test::source_dir() + "/tests/data/engine/chat200.jsonl";
  const std::string out = qserve::test::binary_dir() + "/engine_cli_chat200.jsonl";
  std::filesystem::remove(out);
  RunResult r = qserve("generate --model " + kDoc + " --dataset " + quote(data) +
                       " --output " + quote(out) + " --max-tokens 8 --max-num-seqs 32 --quiet");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("200 requests in"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("output tok/s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("TTFT p50"), std::string::npos) << r.out;
  const std::vector<nlohmann::json> in_rows = read_jsonl(data), got = read_jsonl(out);
  ASSERT_EQ(got.size(), 200u);
  int with_stop = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const nlohmann::json& g = got[i];
    const nlohmann::json& row = in_rows[i];
    EXPECT_EQ(g["id"], row["id"]);
    EXPECT_GT(g["prompt_tokens"].get<int>(), 0);
    const int64_t cap = row.contains("max_tokens") ? row["max_tokens"].get<int64_t>() : 8;
    EXPECT_LE(g["completion_tokens"].get<int64_t>(), cap) << row["id"];
    EXPECT_GE(g["completion_tokens"].get<int64_t>(), 1) << row["id"];
    const std::string reason = g["finish_reason"];
    EXPECT_TRUE(reason == "stop" || reason == "length") << reason;
    if (reason == "length") {
      EXPECT_EQ(g["completion_tokens"].get<int64_t>(), cap) << row["id"];
    }
    EXPECT_GE(g["latency_s"].get<double>(), g["ttft_s"].get<double>());
    // (With min_tokens, stop strings are not checked before that many tokens - vLLM's rule,
    // docs/engine.md - so the text may contain one early.)
    if (row.contains("stop") && !row.contains("min_tokens")) {
      ++with_stop;
      std::vector<std::string> stops;
      if (row["stop"].is_string()) {
        stops.push_back(row["stop"]);
      } else {
        stops = row["stop"].get<std::vector<std::string>>();
      }
      for (const std::string& s : stops) {
        EXPECT_EQ(g["text"].get<std::string>().find(s), std::string::npos) << row["id"];
      }
    }
  }
  EXPECT_GT(with_stop, 0);
}

TEST(EngineCli, DatasetErrorsNameTheLineAndWriteNothing) {
  const std::string bad = qserve::test::binary_dir() + "/engine_cli_bad.jsonl";
  {
    std::ofstream f(bad);
    f << R"({"prompt": "fine"})" << "\n" << R"({"prompt": "x", "temperature": -2})" << "\n";
  }
  const std::string out = qserve::test::binary_dir() + "/engine_cli_bad_out.jsonl";
  std::filesystem::remove(out);
  RunResult r = qserve("generate --model " + kDoc + " --dataset " + quote(bad) + " --output " +
                       quote(out));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find(":2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("temperature"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(EngineCli, ChatPromptAndStopString) {
  RunResult r = qserve("generate --model " + kDoc +
                       " --prompt 'How do I list files?' --chat --max-tokens 24 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const std::string text = j["text"];
  ASSERT_GT(text.size(), 4u);
  const std::string stop = text.substr(2, 2);
  RunResult s = qserve("generate --model " + kDoc +
                       " --prompt 'How do I list files?' --chat --max-tokens 24 --json --stop " +
                       quote(stop));
  ASSERT_EQ(s.code, 0) << s.out;
  const nlohmann::json js = nlohmann::json::parse(s.out);
  EXPECT_EQ(js["finish_reason"], "stop");
  EXPECT_EQ(js["text"], text.substr(0, text.find(stop)));
}

TEST(EngineCli, BenchStaticAndIfbWriteResults) {
  const std::string json = qserve::test::binary_dir() + "/engine_cli_bench.json";
  const std::string csv = qserve::test::binary_dir() + "/engine_cli_results.csv";
  std::filesystem::remove(csv);
  RunResult a = qserve("bench --input-len 32 --output-len 6 --batch 3 --rounds 2 --json-out " +
                       quote(json) + " --results-csv " + quote(csv));
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("static batching"), std::string::npos) << a.out;
  std::ifstream in(json);
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const char* key : {"device", "commit", "date", "command", "results"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  ASSERT_EQ(j["results"].size(), 2u);
  EXPECT_EQ(j["results"][0]["steps"], 6);  // one prefill step and five decode steps
  EXPECT_GT(j["results"][0]["output_tokens_per_s"].get<double>(), 0.0);
  // The decode steps' host split: every phase measured, the executor call the bulk of it and
  // any wait for a device inside it.
  ASSERT_TRUE(j["results"][0].contains("decode_step_host_ms")) << j["results"][0].dump();
  const nlohmann::json& h = j["results"][0]["decode_step_host_ms"];
  for (const char* key : {"schedule", "prepare", "execute", "device_wait", "outputs"}) {
    ASSERT_TRUE(h.contains(key)) << key;
    EXPECT_GE(h[key].get<double>(), 0.0) << key;
  }
  EXPECT_GT(h["execute"].get<double>(), 0.0);
  EXPECT_LE(h["device_wait"].get<double>(), h["execute"].get<double>());
  EXPECT_NE(a.out.find("decode step "), std::string::npos) << a.out;
  // The CPU executor runs every step itself (only device executors launch ahead).
  EXPECT_EQ(j["results"][0]["overlapped_steps"], 0);
  EXPECT_NE(a.out.find("0 of 6 steps overlapped"), std::string::npos) << a.out;
  std::ifstream c(csv);
  std::stringstream ss;
  ss << c.rdbuf();
  EXPECT_NE(ss.str().find("Batch=3, Input=32, Output=6"), std::string::npos) << ss.str();
  EXPECT_NE(ss.str().find("Round 1 Throughput:"), std::string::npos) << ss.str();

  RunResult b = qserve("bench --input-len 40 --output-len 4 --batch 6 --rounds 1 --ifb "
                       "--max-num-seqs 4 --max-num-batched-tokens 64");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("ifb batching"), std::string::npos) << b.out;
  // QServe's environment variable sets the batch when --batch is not given.
  setenv("GLOBAL_BATCH_SIZE", "5", 1);
  RunResult env = qserve("bench --input-len 8 --output-len 2 --rounds 1");
  unsetenv("GLOBAL_BATCH_SIZE");
  ASSERT_EQ(env.code, 0) << env.out;
  EXPECT_NE(env.out.find("batch 5,"), std::string::npos) << env.out;
}

TEST(EngineCli, DeviceCudaWithoutAGpuIsAClearError) {
  RunResult r = qserve("generate --model " + kDoc + " --prompt hi --max-tokens 2 --device cuda");
  // On a machine with a GPU (and a CUDA build) this simply runs; elsewhere it must say why not.
  if (r.code != 0) {
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("--device cuda:"), std::string::npos) << r.out;
  }
  RunResult bad = qserve("generate --model " + kDoc + " --prompt hi --device tpu");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("--device"), std::string::npos) << bad.out;
}

}  // namespace
