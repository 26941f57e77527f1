// qserve bench-serve: a load generator for a running `qserve serve` (or any OpenAI-compatible
// server): random token-id prompts of a given length, or a JSONL dataset, sent as streaming
// requests with Poisson arrivals under a concurrency cap. Prints vLLM's metric set as a table and
// writes it as JSON with --json-out (device, commit, date, command, results).
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "engine/dataset.h"
#include "server/bench_serve.h"

#ifndef QSERVE_GIT_COMMIT
#define QSERVE_GIT_COMMIT "unknown"
#endif

namespace qserve::cli {

namespace {

using nlohmann::json;

struct BenchServeArgs {
  std::string url = "http://127.0.0.1:8000";
  std::string model;  // "" = none in the body (the server's only model)
  std::string api_key;
  std::string dataset = "random";
  std::string rate = "inf";
  int64_t concurrency = 0;
  int64_t num_prompts = 64;
  int64_t input_len = 128;
  int64_t output_len = 32;
  int32_t random_id_min = 100;
  int32_t random_id_max = 1100;
  uint64_t seed = 0;
  float temperature = 0.0f;
  std::string device = "unknown";
  std::string json_out;
  std::vector<std::string> argv;
};

std::vector<server::BenchItem> random_items(const BenchServeArgs& a) {
  check(a.random_id_min >= 0 && a.random_id_min < a.random_id_max,
        "bench-serve: --random-id-min must be >= 0 and below --random-id-max");
  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int32_t> id(a.random_id_min, a.random_id_max - 1);
  std::vector<server::BenchItem> items;
  for (int64_t i = 0; i < a.num_prompts; ++i) {
    std::vector<int32_t> ids(static_cast<size_t>(a.input_len));
    for (int32_t& t : ids) t = id(rng);
    // ignore_eos: every request generates exactly output_len tokens, as vLLM's random dataset.
    json body = {{"prompt", ids},
                 {"max_tokens", a.output_len},
                 {"ignore_eos", true},
                 {"temperature", a.temperature},
                 {"seed", a.seed + static_cast<uint64_t>(i)}};
    items.push_back({"/v1/completions", body});
  }
  return items;
}

std::vector<server::BenchItem> dataset_items(const BenchServeArgs& a) {
  const std::vector<DatasetRow> rows = read_prompt_dataset(a.dataset);
  std::vector<server::BenchItem> items;
  for (int64_t i = 0; i < a.num_prompts; ++i) {
    const DatasetRow& row = rows[static_cast<size_t>(i) % rows.size()];  // cycle if short
    json body = row.sampling;  // per-row sampling fields pass through
    if (!body.contains("max_tokens")) body["max_tokens"] = a.output_len;
    if (!body.contains("temperature")) body["temperature"] = a.temperature;
    if (row.prompt) {
      body["prompt"] = *row.prompt;
      items.push_back({"/v1/completions", body});
    } else {
      json msgs = json::array();
      for (const ChatMessage& m : row.conversation) {
        msgs.push_back({{"role", m.role}, {"content", m.content}});
      }
      body["messages"] = msgs;
      items.push_back({"/v1/chat/completions", body});
    }
  }
  return items;
}

double parse_rate(const std::string& s) {
  if (s == "inf") return INFINITY;
  char* end = nullptr;
  const double r = std::strtod(s.c_str(), &end);
  check(end != s.c_str() && *end == '\0' && r > 0.0 && std::isfinite(r),
        "bench-serve: --rate must be a positive number of requests/s or 'inf', got '" + s + "'");
  return r;
}

std::string command_line(const std::vector<std::string>& argv) {
  std::string s = "qserve";
  for (const std::string& x : argv) {
    const bool quote = x.empty() || x.find_first_of(" \t\"'") != std::string::npos;
    s += quote ? " '" + x + "'" : " " + x;
  }
  return s;
}

std::string utc_date() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void print_table(const json& r) {
  const auto row = [&](const char* label, const char* key, const char* fmt) {
    std::printf("%-34s", label);
    std::printf(fmt, r.at(key).get<double>());
    std::printf("\n");
  };
  std::printf("============ Serving Benchmark Result ============\n");
  std::printf("%-34s%lld\n", "Successful requests:", static_cast<long long>(r.at("completed")));
  std::printf("%-34s%lld\n", "Failed requests:", static_cast<long long>(r.at("failed")));
  row("Benchmark duration (s):", "duration_s", "%.2f");
  std::printf("%-34s%lld\n",
              "Total input tokens:", static_cast<long long>(r.at("total_input_tokens")));
  std::printf("%-34s%lld\n",
              "Total generated tokens:", static_cast<long long>(r.at("total_output_tokens")));
  row("Request throughput (req/s):", "request_throughput", "%.2f");
  row("Output token throughput (tok/s):", "output_throughput", "%.2f");
  row("Total token throughput (tok/s):", "total_token_throughput", "%.2f");
  for (const auto& [title, key] :
       {std::pair{"Time to First Token", "ttft"},
        std::pair{"Time per Output Token (excl. 1st token)", "tpot"},
        std::pair{"Inter-token Latency", "itl"}, std::pair{"End-to-end Latency", "e2el"}}) {
    std::printf("%s\n", ("---------- " + std::string(title) + " ----------").c_str());
    for (const char* stat : {"mean", "median", "p90", "p99"}) {
      const std::string k = std::string(stat) + "_" + key + "_ms";
      const std::string label = std::string(stat) + " " + key + " (ms):";
      std::printf("%-34s%.2f\n", label.c_str(), r.at(k).get<double>());
    }
  }
  std::printf("==================================================\n");
}

void run(const BenchServeArgs& a) {
  check(a.num_prompts > 0, "bench-serve: --num-prompts must be > 0");
  server::BenchOptions opts;
  opts.base_url = a.url;
  opts.api_key = a.api_key;
  if (opts.api_key.empty()) {
    if (const char* env = std::getenv("QSERVE_API_KEY")) opts.api_key = env;
  }
  opts.rate = parse_rate(a.rate);
  opts.concurrency = a.concurrency;
  opts.seed = a.seed;
  std::vector<server::BenchItem> items = a.dataset == "random" ? random_items(a) : dataset_items(a);
  if (!a.model.empty()) {
    for (server::BenchItem& it : items) it.body["model"] = a.model;
  }
  double duration = 0.0;
  const std::vector<server::BenchRequestResult> results = server::run_bench(items, opts, &duration);
  json summary = server::summarize(results, duration);
  size_t shown = 0;
  for (const server::BenchRequestResult& r : results) {
    if (!r.ok && shown++ < 3) std::fprintf(stderr, "request failed: %s\n", r.error.c_str());
  }
  print_table(summary);
  json row = {{"dataset", a.dataset},
              {"num_prompts", a.num_prompts},
              {"rate", a.rate},
              {"concurrency", a.concurrency},
              {"url", a.url}};
  if (a.dataset == "random") {
    row["input_len"] = a.input_len;
    row["output_len"] = a.output_len;
  }
  row.update(summary);
  if (!a.json_out.empty()) {
    const json out = {{"device", a.device},
                      {"commit", QSERVE_GIT_COMMIT},
                      {"date", utc_date()},
                      {"command", command_line(a.argv)},
                      {"results", json::array({row})}};
    std::ofstream f(a.json_out);
    check(f.good(), a.json_out + ": cannot open for writing");
    f << out.dump(2) << "\n";
  }
  check(summary.at("completed").get<int64_t>() > 0, "bench-serve: every request failed");
}

}  // namespace

void add_bench_serve(CLI::App& app) {
  auto args = std::make_shared<BenchServeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench-serve",
      "Load generator for an OpenAI-compatible server: TTFT/TPOT/ITL/E2E latency "
      "and throughput (docs/server.md)");
  cmd->add_option("--url", args->url, "Server base URL (default http://127.0.0.1:8000)");
  cmd->add_option("--model", args->model, "Model name to send (default: none, the server's)");
  cmd->add_option("--api-key", args->api_key, "Bearer key (default: env QSERVE_API_KEY)");
  cmd->add_option("--dataset", args->dataset,
                  "'random' (token-id prompts of --input-len) or a JSONL file of prompts / "
                  "conversations (rows cycled up to --num-prompts)");
  cmd->add_option("--rate", args->rate, "Poisson request rate in requests/s, or inf (default)");
  cmd->add_option("--concurrency", args->concurrency, "Requests in flight at most (0 = no cap)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--num-prompts", args->num_prompts, "Requests to send (default 64)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--input-len", args->input_len, "Random prompts: tokens each (default 128)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--output-len", args->output_len,
                  "Tokens to generate (random: exactly, EOS ignored; dataset: max_tokens unless "
                  "the row sets it; default 32)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--random-id-min", args->random_id_min,
                  "Random prompts: smallest token id (100)");
  cmd->add_option("--random-id-max", args->random_id_max,
                  "Random prompts: token ids below this (1100)");
  cmd->add_option("--seed", args->seed, "Seed of the prompts, arrivals and sampling (default 0)");
  cmd->add_option("--temperature", args->temperature, "Sampling temperature (default 0, greedy)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args->device,
                  "What the server runs on, recorded in the JSON (e.g. \"cpu (2 threads)\")");
  cmd->add_option("--json-out", args->json_out, "Write the results as JSON here");
  cmd->callback([args, cmd] {
    args->argv.clear();
    args->argv.push_back("bench-serve");
    for (const auto* opt : cmd->get_options()) {
      for (const std::string& v : opt->results()) {
        args->argv.push_back(opt->get_name());
        args->argv.push_back(v);
      }
    }
    run(*args);
  });
}

}  // namespace qserve::cli
