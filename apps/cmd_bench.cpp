// qserve bench: offline throughput on random-token prompts, QServe's protocol
// (qserve-runtime.md §3): each round builds a fresh engine (not timed), queues `batch` requests
// of input-len random tokens and output-len generated tokens (EOS ignored), and times every
// step from the first to the last; throughput = generated tokens / wall time including prefill.
// Static mode (default, as QServe's paper numbers): every request admitted at once with its
// pages up front and prefilled in one step. --ifb: the in-flight batching scheduler with the
// engine flags. Without --model it runs the embedded default, synthetic:tiny (no download).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/engine.h"
#include "engine_options.h"

#ifndef QSERVE_GIT_COMMIT
#define QSERVE_GIT_COMMIT "unknown"
#endif

namespace qserve::cli {

namespace {

struct BenchArgs {
  std::string model = "synthetic:tiny";
  int64_t input_len = 128;
  int64_t output_len = 64;
  int64_t batch = 0;  // 0: env GLOBAL_BATCH_SIZE, else 4
  int64_t rounds = 3;
  bool ifb = false;
  bool profile = false;
  std::string json_out;
  std::string results_csv;
  PrecisionArgs precision;
  EngineArgs engine;
};

struct RoundResult {
  double seconds = 0.0, ttft_mean = 0.0;
  int64_t generated = 0, steps = 0, preemptions = 0;
  std::string profile;  // the executor's per-op-class report, with --profile
};

int64_t batch_size(const BenchArgs& a) {
  if (a.batch > 0) return a.batch;
  if (const char* env = std::getenv("GLOBAL_BATCH_SIZE"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    check(*end == '\0' && v > 0,
          std::string("GLOBAL_BATCH_SIZE must be a positive integer, got '") + env + "'");
    return v;
  }
  return 4;
}

EngineConfig engine_config(const BenchArgs& a, int64_t batch) {
  if (a.ifb) {
    EngineConfig c = a.engine.config(batch);
    c.profile = a.profile;
    return c;
  }
  EngineConfig c;
  c.profile = a.profile;  // static: all admitted at once, one prefill step, pages up front
  c.max_num_seqs = batch;
  c.max_num_batched_tokens = std::max(batch * a.input_len, batch);
  c.max_model_len = a.input_len + a.output_len;
  c.num_pages = a.engine.num_pages
                    ? a.engine.num_pages
                    : std::optional<int64_t>(batch * pages_for_tokens(a.input_len + a.output_len));
  c.watermark = 0.0;
  c.chunked_prefill = false;
  return c;
}

RoundResult run_round(const LlamaModel& model, const BenchArgs& a, int64_t batch, uint64_t seed) {
  const ModelConfig& cfg = model.config();
  auto engine = make_engine(model, nullptr, engine_config(a, batch), a.engine.device);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(cfg.vocab_size - 1));
  SamplingParams p;
  p.max_tokens = a.output_len;
  p.ignore_eos = true;
  RoundResult rr;
  double ttft_sum = 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> prompt(static_cast<size_t>(a.input_len));
    for (int32_t& t : prompt) t = tok(rng);
    engine->add_request(std::move(prompt), p, [&](const RequestOutput& o) {
      rr.generated += static_cast<int64_t>(o.token_ids.size());
      if (o.finished) ttft_sum += o.ttft_s;
    });
  }
  const auto t0 = std::chrono::steady_clock::now();
  while (engine->has_unfinished()) engine->step();
  rr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rr.ttft_mean = ttft_sum / static_cast<double>(batch);
  rr.steps = engine->stats().steps;
  rr.preemptions = engine->stats().preemptions;
  rr.profile = engine->executor().profile_report();
  return rr;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace

void add_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Offline throughput benchmark (QServe's protocol; static batch or --ifb)");
  cmd->add_option("--model", a->model, "Model folder or synthetic:NAME (default synthetic:tiny)");
  cmd->add_option("--input-len", a->input_len, "Prompt tokens per request")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--output-len", a->output_len, "Generated tokens per request")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", a->batch,
                  "Requests per round (default: env GLOBAL_BATCH_SIZE, else 4)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--rounds", a->rounds, "Timed rounds (after one warm-up)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--ifb", a->ifb, "In-flight batching (scheduler flags apply) instead of static");
  cmd->add_flag("--profile", a->profile,
                "Time each op class of every step with CUDA events (--device cuda) and print where "
                "decode and prefill steps spend their time against the roofline");
  cmd->add_option("--json-out", a->json_out,
                  "Write the results as JSON (device, commit, date, command, results)");
  cmd->add_option("--results-csv", a->results_csv,
                  "Append QServe's results.csv lines to this file");
  add_precision_options(cmd, a->precision, /*norm_flag=*/false);
  add_engine_options(cmd, a->engine);
  cmd->callback([a] {
    const int64_t batch = batch_size(*a);
    LoadedModel m = load_model(a->model, /*need_tokenizer=*/false, a->precision.options());
    const std::string precision = m.model->precision().name();
    const ModelConfig& cfg = m.model->config();
    check(a->input_len + a->output_len <= cfg.max_position_embeddings,
          "bench: input-len + output-len exceeds the model's context of " +
              std::to_string(cfg.max_position_embeddings) + " tokens");
    const std::string mode = a->ifb ? "ifb" : "static";
    const std::string device = device_description(resolve_device(a->engine.device));
    std::printf(
        "model %s (%.1f M parameters, %s), device %s, %s batching, batch %lld, "
        "input %lld, output %lld\n",
        a->model.c_str(), static_cast<double>(m.model->parameter_count()) / 1e6, precision.c_str(),
        device.c_str(), mode.c_str(), static_cast<long long>(batch),
        static_cast<long long>(a->input_len), static_cast<long long>(a->output_len));
    run_round(*m.model, *a, batch, 0);  // warm-up
    std::printf("%-6s %10s %10s %8s %12s %14s\n", "round", "time_s", "ttft_s", "steps",
                "preemptions", "gen_tok_per_s");
    double sum = 0.0, best = 0.0;
    std::string profile;
    nlohmann::json results = nlohmann::json::array();
    std::string csv = "==================================================\n" + a->model +
                      ": Batch=" + std::to_string(batch) +
                      ", Input=" + std::to_string(a->input_len) +
                      ", Output=" + std::to_string(a->output_len) + "\n";
    for (int64_t r = 0; r < a->rounds; ++r) {
      const RoundResult rr = run_round(*m.model, *a, batch, static_cast<uint64_t>(r + 1));
      const double tps = static_cast<double>(rr.generated) / rr.seconds;
      profile = rr.profile;
      sum += tps;
      best = std::max(best, tps);
      std::printf("%-6lld %10.3f %10.3f %8lld %12lld %14.1f\n", static_cast<long long>(r),
                  rr.seconds, rr.ttft_mean, static_cast<long long>(rr.steps),
                  static_cast<long long>(rr.preemptions), tps);
      csv += "Round " + std::to_string(r) + " Throughput: " + std::to_string(tps) +
             " tokens / second.\n";
      results.push_back({{"system", "qserve.cpp"},
                         {"model", a->model},
                         {"precision", precision},
                         {"mode", mode},
                         {"batch", batch},
                         {"input_len", a->input_len},
                         {"output_len", a->output_len},
                         {"round", r},
                         {"seconds", rr.seconds},
                         {"ttft_mean_s", rr.ttft_mean},
                         {"steps", rr.steps},
                         {"preemptions", rr.preemptions},
                         {"output_tokens_per_s", tps}});
    }
    csv += "==================================================\n";
    const double mean = sum / static_cast<double>(a->rounds);
    std::printf("throughput: %.1f generated tokens/s (mean of %lld rounds; best %.1f)\n", mean,
                static_cast<long long>(a->rounds), best);
    if (a->profile) {
      std::printf("profile of the last round%s:\n%s",
                  profile.empty() ? " (none: the CPU executor does not profile)" : "",
                  profile.c_str());
    }
    if (!a->json_out.empty()) {
      nlohmann::json j = {
          {"device", device},
          {"commit", QSERVE_GIT_COMMIT},
          {"date", utc_now()},
          {"command", "qserve bench --model " + a->model + " --precision " + precision +
                          " --batch " + std::to_string(batch) + " --input-len " +
                          std::to_string(a->input_len) + " --output-len " +
                          std::to_string(a->output_len) + (a->ifb ? " --ifb" : "") +
                          (a->profile ? " --profile" : "")},
          {"results", results}};
      std::ofstream out(a->json_out);
      check(static_cast<bool>(out), a->json_out + ": cannot open for writing");
      out << j.dump(2) << "\n";
    }
    if (!a->results_csv.empty()) {
      std::ofstream out(a->results_csv, std::ios::app);
      check(static_cast<bool>(out), a->results_csv + ": cannot open for writing");
      out << csv;
    }
  });
}

}  // namespace qserve::cli
