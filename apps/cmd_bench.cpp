// qserve bench: offline throughput on random-token prompts, QServe's protocol (bench_round.h):
// each round builds a fresh engine (not timed), queues `batch` requests and times every step;
// throughput = generated tokens / wall time including prefill. Static mode (default, as
// QServe's paper numbers): every request admitted at once with its pages up front and
// prefilled in one step. --ifb: the in-flight batching scheduler with the engine flags.
// Without --model it runs the embedded default, synthetic:tiny (no download).
//
// --batch max: the largest batch whose KV cache and activations fit the GPU beside the weights
// (engine_cuda/memory_plan.h). --batch auto: one shortened round (--sweep-output-len tokens)
// at 64, 128, 256, ... up to that maximum, then the full protocol at the batch whose estimated
// full-round throughput is best (docs/performance.md, "Batch sweeps"). In both, prompts are
// prefilled in steps of at most --max-num-batched-tokens rows (default about 64k), since one
// step for every prompt of a large batch would need more activation memory than the KV cache.
//
// synthetic:NAME on the GPU: the weights are generated on the device (synthetic_device.h), so
// a 70B model is ready in about a second and needs no host memory.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <optional>

#include <nlohmann/json.hpp>

#include "bench_output.h"
#include "bench_round.h"
#include "commands.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine_options.h"
#include "model/synthetic_configs.h"
#ifdef QSERVE_WITH_CUDA
#include "engine_cuda/memory_plan.h"
#endif

#ifndef QSERVE_GIT_COMMIT
#define QSERVE_GIT_COMMIT "unknown"
#endif

namespace qserve::cli {

namespace {

struct BenchArgs {
  std::string model = "synthetic:tiny";
  int64_t input_len = 128;
  int64_t output_len = 64;
  std::string batch;      // N, auto or max; empty: env GLOBAL_BATCH_SIZE, else 4
  int64_t max_batch = 0;  // auto/max: upper bound on the batch (0: what fits)
  int64_t rounds = 3;
  std::string warmup = "full";
  int64_t sweep_output_len = 32;
  bool ifb = false;
  bool profile = false;
  std::string json_out, json_append, json_command, markdown_out;
  std::string results_csv;
  PrecisionArgs precision;
  EngineArgs engine;
};

enum class BatchMode { kFixed, kAuto, kMax };
struct BatchChoice {
  BatchMode mode = BatchMode::kFixed;
  int64_t n = 4;
  std::string spelling = "4";
};

BatchChoice parse_batch(const BenchArgs& a) {
  std::string s = a.batch, from = "--batch";
  if (s.empty()) {
    const char* env = std::getenv("GLOBAL_BATCH_SIZE");
    if (env == nullptr || *env == '\0') return {};
    s = env;
    from = "GLOBAL_BATCH_SIZE";
  }
  if (s == "auto") return {BatchMode::kAuto, 0, s};
  if (s == "max") return {BatchMode::kMax, 0, s};
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  check(end != nullptr && *end == '\0' && v > 0,
        from + " must be a positive integer, auto or max, got '" + s + "'");
  return {BatchMode::kFixed, v, s};
}

// synthetic:NAME on the GPU: only the config and the seed on the host (the executor generates
// the weights on the device); anything else through load_model (host weights, uploaded).
LoadedModel load_bench_model(const BenchArgs& a, const std::string& device) {
  const std::string prefix = "synthetic:";
  if (device == "cuda" && a.model.rfind(prefix, 0) == 0) {
    LoadedModel m;
    m.model = LlamaModel::synthetic_on_device(synthetic_config(a.model.substr(prefix.size())),
                                              /*seed=*/1234, a.precision.options());
    return m;
  }
  return load_model(a.model, /*need_tokenizer=*/false, a.precision.options());
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string command_line(const BenchArgs& a, const std::string& precision,
                         const BatchChoice& choice, const std::string& device) {
  std::string c = "qserve bench --model " + a.model + " --precision " + precision + " --batch " +
                  choice.spelling + " --input-len " + std::to_string(a.input_len) +
                  " --output-len " + std::to_string(a.output_len) + " --rounds " +
                  std::to_string(a.rounds) + " --device " + device;
  if (a.max_batch > 0) c += " --max-batch " + std::to_string(a.max_batch);
  if (a.engine.max_num_batched_tokens > 0) {
    c += " --max-num-batched-tokens " + std::to_string(a.engine.max_num_batched_tokens);
  }
  if (choice.mode == BatchMode::kAuto) {
    c += " --sweep-output-len " + std::to_string(a.sweep_output_len);
  }
  if (a.warmup != "full") c += " --warmup " + a.warmup;
  if (a.ifb) c += " --ifb";
  if (a.profile) c += " --profile";
  return c;
}

// Batches of the sweep: 64, 128, 256, ... below the largest that fits, and that one.
std::vector<int64_t> sweep_batches(int64_t max_batch) {
  std::vector<int64_t> v;
  for (int64_t b = 64; b < max_batch; b *= 2) v.push_back(b);
  v.push_back(max_batch);
  return v;
}

struct Plan {
  int64_t fit = 0;             // the most sequences that fit (0: no plan, a fixed batch)
  int64_t max_batch = 0;       // fit capped by --max-batch: the batch of --batch max
  int64_t prefill_tokens = 0;  // rows per prefill step (0: one step for every prompt)
};

// --batch auto|max: the largest batch that fits the GPU (capped by --max-batch).
Plan plan_for(const BenchArgs& a, const LlamaModel& model, const std::string& device) {
  Plan p;
  p.prefill_tokens = a.engine.max_num_batched_tokens;
#ifdef QSERVE_WITH_CUDA
  check(device == "cuda",
        "bench: --batch auto|max sizes the batch from GPU memory; use "
        "--device cuda (or give --batch N)");
  const ModelConfig& cfg = model.config();
  const int64_t seq_len = a.input_len + a.output_len;
  const cuda::DeviceMemory mem = cuda::device_memory();
  if (p.prefill_tokens == 0) {
    p.prefill_tokens =
        cuda::default_prefill_tokens(cfg, model.precision(), a.input_len, seq_len, mem);
  }
  const cuda::BatchPlan plan =
      cuda::plan_batch(cfg, model.precision(), seq_len, p.prefill_tokens, mem);
  p.fit = plan.max_batch;
  p.max_batch = a.max_batch > 0 ? std::min(a.max_batch, p.fit) : p.fit;
  const double gib = static_cast<double>(int64_t{1} << 30);
  std::printf(
      "memory plan: %.1f of %.1f GiB free; weights %.1f GiB; KV %.1f MiB per sequence of %lld "
      "tokens; prefill steps of <= %lld rows; reserve %.1f GiB -> max batch %lld%s\n",
      static_cast<double>(plan.free) / gib, static_cast<double>(plan.total) / gib,
      static_cast<double>(plan.weights) / gib,
      static_cast<double>(plan.kv_per_seq) / static_cast<double>(1 << 20),
      static_cast<long long>(seq_len), static_cast<long long>(p.prefill_tokens),
      static_cast<double>(plan.reserve) / gib, static_cast<long long>(plan.max_batch),
      p.max_batch < plan.max_batch ? (" (capped at " + std::to_string(p.max_batch) + ")").c_str()
                                   : "");
  check(p.max_batch > 0, "bench: not even one sequence of " + std::to_string(seq_len) +
                             " tokens fits beside the weights on this GPU");
#else
  (void)model;
  (void)device;
  throw Error(
      "bench: --batch auto|max sizes the batch from GPU memory; this build has no CUDA "
      "backend (give --batch N)");
#endif
  return p;
}

// A fixed --batch N prefills every prompt in one step (QServe's protocol) unless that step's
// activations would not fit beside the weights and KV cache: then it prefills in steps of the
// planned size (as --batch max does) and says so, instead of failing in the allocator.
int64_t fixed_batch_prefill_tokens(const BenchArgs& a, const LlamaModel& model,
                                   const std::string& device, int64_t batch) {
  if (a.engine.max_num_batched_tokens > 0) return a.engine.max_num_batched_tokens;
#ifdef QSERVE_WITH_CUDA
  if (device != "cuda") return 0;
  const ModelConfig& cfg = model.config();
  const int64_t seq_len = a.input_len + a.output_len;
  const cuda::DeviceMemory mem = cuda::device_memory();
  const cuda::BatchPlan one_step =
      cuda::plan_batch(cfg, model.precision(), seq_len, batch * a.input_len, mem);
  if (one_step.need(batch) <= mem.free) return 0;
  const int64_t rows =
      cuda::default_prefill_tokens(cfg, model.precision(), a.input_len, seq_len, mem);
  const double gib = static_cast<double>(int64_t{1} << 30);
  std::printf(
      "note: one prefill step for all %lld prompts would need %.1f GiB with %.1f GiB free; "
      "prefilling in steps of <= %lld rows (--max-num-batched-tokens)\n",
      static_cast<long long>(batch), static_cast<double>(one_step.need(batch)) / gib,
      static_cast<double>(mem.free) / gib, static_cast<long long>(rows));
  return rows;
#else
  (void)model;
  (void)device;
  (void)batch;
  return 0;
#endif
}

nlohmann::json base_row(const BenchArgs& a, const std::string& precision, const std::string& mode,
                        const std::string& phase, int64_t batch, int64_t output_len,
                        const Plan& plan) {
  nlohmann::json r = {{"system", "qserve.cpp"},   {"model", a.model},
                      {"precision", precision},   {"mode", mode},
                      {"phase", phase},           {"batch", batch},
                      {"input_len", a.input_len}, {"output_len", output_len}};
  if (plan.fit > 0) r["max_batch"] = plan.fit;
  if (plan.prefill_tokens > 0) r["prefill_tokens_per_step"] = plan.prefill_tokens;
  return r;
}

void add_round_fields(nlohmann::json& r, const RoundResult& rr) {
  r["seconds"] = rr.seconds;
  r["ttft_mean_s"] = rr.ttft_mean;
  r["prefill_s"] = rr.prefill_seconds;
  r["decode_step_median_ms"] = rr.decode_step_median * 1e3;
  r["steps"] = rr.steps;
  r["overlapped_steps"] = rr.overlapped_steps;
  r["preemptions"] = rr.preemptions;
  r["output_tokens_per_s"] = static_cast<double>(rr.generated) / rr.seconds;
  if (rr.decode_step_median > 0.0) {
    const RoundResult::HostSplit& h = rr.decode_host;
    r["decode_step_host_ms"] = {{"schedule", h.schedule * 1e3},
                                {"prepare", h.prepare * 1e3},
                                {"execute", h.execute * 1e3},
                                {"device_wait", h.device_wait * 1e3},
                                {"outputs", h.outputs * 1e3}};
  }
}

// --batch auto: one shortened round per candidate batch; returns the batch with the best
// estimated full-round throughput and adds a row per candidate (the best flagged).
int64_t sweep(const LlamaModel& model, const BenchArgs& a, const Plan& plan,
              const std::string& precision, const std::string& mode, nlohmann::json& rows) {
  std::printf(
      "sweep: one round per batch of >= %lld output tokens (more when the prompts take "
      "many prefill steps); est_tok_per_s: estimated full round of %lld output tokens\n",
      static_cast<long long>(a.sweep_output_len), static_cast<long long>(a.output_len));
  std::printf("%-7s %10s %10s %14s %14s %16s\n", "batch", "time_s", "prefill_s", "decode_step_ms",
              "gen_tok_per_s", "est_tok_per_s");
  int64_t best = 0;
  double best_est = -1.0;
  size_t best_row = 0;
  for (const int64_t b : sweep_batches(plan.max_batch)) {
    // Prompts fill the prefill steps while earlier ones already decode: generate enough tokens
    // that the whole batch also decodes together for a while (the estimate's step time).
    const int64_t per_step =
        plan.prefill_tokens > 0 ? std::max<int64_t>(1, plan.prefill_tokens / a.input_len) : b;
    const int64_t prefill_steps = (b + per_step - 1) / per_step;
    const int64_t out = std::min(a.output_len, std::max(a.sweep_output_len, prefill_steps + 24));
    RoundSpec spec{
        b, a.input_len, out, a.ifb, false, plan.prefill_tokens, 1000 + static_cast<uint64_t>(b)};
    nlohmann::json row = base_row(a, precision, mode, "sweep", b, out, plan);
    RoundResult rr;
    try {
      rr = run_round(model, a.engine, spec);
    } catch (const std::exception& e) {
      if (!is_out_of_memory(e)) throw;
      std::printf("%-7lld out of device memory (%s); the sweep stops here\n",
                  static_cast<long long>(b), e.what());
      row["out_of_memory"] = true;
      rows.push_back(row);
      break;
    }
    add_round_fields(row, rr);
    const double est = estimate_full_tokens_per_s(rr, b, out, a.output_len);
    row["est_full_output_tokens_per_s"] = est;
    row["best"] = false;
    std::printf("%-7lld %10.3f %10.3f %14.2f %14.1f %16.1f\n", static_cast<long long>(b),
                rr.seconds, rr.prefill_seconds, rr.decode_step_median * 1e3,
                row["output_tokens_per_s"].get<double>(), est);
    rows.push_back(row);
    if (est > best_est) {
      best_est = est;
      best = b;
      best_row = rows.size() - 1;
    }
  }
  check(best > 0, "bench: no batch of the sweep ran (out of device memory at the smallest)");
  rows[best_row]["best"] = true;
  std::printf("best batch: %lld (estimated %.1f generated tokens/s at %lld output tokens)\n",
              static_cast<long long>(best), best_est, static_cast<long long>(a.output_len));
  return best;
}

void run_bench(const BenchArgs& a) {
  const std::string device_name = resolve_device(a.engine.device);
  const BatchChoice choice = parse_batch(a);
  check(a.warmup == "full" || a.warmup == "short" || a.warmup == "none",
        "--warmup must be full, short or none, got '" + a.warmup + "'");
  check(choice.mode == BatchMode::kFixed || device_name == "cuda",
        "bench: --batch auto|max sizes the batch from GPU memory; use --device cuda (or give "
        "--batch N)");
  LoadedModel m = load_bench_model(a, device_name);
  const LlamaModel& model = *m.model;
  const std::string precision = model.precision().name();
  const ModelConfig& cfg = model.config();
  check(a.input_len + a.output_len <= cfg.max_position_embeddings,
        "bench: input-len + output-len exceeds the model's context of " +
            std::to_string(cfg.max_position_embeddings) + " tokens");
  const bool on_device = model.device_synthetic_seed().has_value();
  const int64_t params = on_device ? config_parameter_count(cfg) : model.parameter_count();
  const std::string mode = a.ifb ? "ifb" : "static";
  const std::string device = device_description(device_name);
  std::printf(
      "model %s (%.1f M parameters, %s%s), device %s, %s batching, batch %s, input %lld, "
      "output %lld\n",
      a.model.c_str(), static_cast<double>(params) / 1e6, precision.c_str(),
      on_device ? ", weights generated on the GPU" : "", device.c_str(), mode.c_str(),
      choice.spelling.c_str(), static_cast<long long>(a.input_len),
      static_cast<long long>(a.output_len));

  Plan plan;
  plan.prefill_tokens = a.engine.max_num_batched_tokens;
  if (choice.mode != BatchMode::kFixed) plan = plan_for(a, model, device_name);
  if (choice.mode == BatchMode::kFixed && !a.ifb) {
    plan.prefill_tokens = fixed_batch_prefill_tokens(a, model, device_name, choice.n);
  }
  nlohmann::json rows = nlohmann::json::array();
  int64_t batch = choice.n;
  if (choice.mode == BatchMode::kMax) batch = plan.max_batch;
  const auto spec_for = [&](int64_t b, int64_t out, uint64_t seed) {
    return RoundSpec{b, a.input_len, out, a.ifb, a.profile, plan.prefill_tokens, seed};
  };
  // Warm-up: `full` repeats the measured round; `short` runs at most 8 sequences for 4 tokens
  // (first-use costs: module loading, cuBLASLt heuristics, allocator growth); auto's sweep
  // warms up once before its first candidate and is itself the warm-up of the final rounds.
  const auto warm_up = [&](int64_t b) {
    if (a.warmup == "none") return;
    const bool full = a.warmup == "full" && choice.mode != BatchMode::kAuto;
    RoundSpec s = full ? spec_for(b, a.output_len, 0)
                       : spec_for(std::min<int64_t>(b, 8), std::min<int64_t>(a.output_len, 4), 0);
    s.profile = false;
    run_round(model, a.engine, s);
  };
  warm_up(choice.mode == BatchMode::kAuto ? plan.max_batch : batch);
  if (choice.mode == BatchMode::kAuto) batch = sweep(model, a, plan, precision, mode, rows);

  std::printf("%-6s %7s %10s %10s %8s %12s %14s\n", "round", "batch", "time_s", "ttft_s", "steps",
              "preemptions", "gen_tok_per_s");
  double sum = 0.0, best = 0.0;
  std::string profile;
  std::string csv_rounds;  // QServe's results.csv lines
  int64_t oom_retries = 0;
  for (int64_t r = 0; r < a.rounds; ++r) {
    RoundResult rr;
    try {
      rr = run_round(model, a.engine, spec_for(batch, a.output_len, static_cast<uint64_t>(r + 1)));
    } catch (const std::exception& e) {
      // --batch max: the plan is an estimate; should its batch not fit after all, back off by
      // 10% (three times at most) rather than lose the run.
      if (choice.mode != BatchMode::kMax || !is_out_of_memory(e) || oom_retries == 3 ||
          batch <= 1) {
        throw;
      }
      ++oom_retries;
      const int64_t smaller = std::max<int64_t>(1, batch * 9 / 10);
      std::printf("batch %lld did not fit (%s); retrying at %lld\n", static_cast<long long>(batch),
                  e.what(), static_cast<long long>(smaller));
      batch = plan.max_batch = smaller;
      plan.fit = std::min(plan.fit, smaller);
      --r;
      continue;
    }
    const double tps = static_cast<double>(rr.generated) / rr.seconds;
    profile = rr.profile;
    sum += tps;
    best = std::max(best, tps);
    std::printf("%-6lld %7lld %10.3f %10.3f %8lld %12lld %14.1f\n", static_cast<long long>(r),
                static_cast<long long>(batch), rr.seconds, rr.ttft_mean,
                static_cast<long long>(rr.steps), static_cast<long long>(rr.preemptions), tps);
    if (rr.decode_step_median > 0.0) {
      const RoundResult::HostSplit& h = rr.decode_host;
      std::printf(
          "  decode step %.3f ms (median); per step, mean: schedule %.3f, prepare %.3f, executor "
          "%.3f (waiting for the device %.3f), outputs %.3f ms; %lld of %lld steps overlapped\n",
          rr.decode_step_median * 1e3, h.schedule * 1e3, h.prepare * 1e3, h.execute * 1e3,
          h.device_wait * 1e3, h.outputs * 1e3, static_cast<long long>(rr.overlapped_steps),
          static_cast<long long>(rr.steps));
    }
    csv_rounds += "Round " + std::to_string(r) + " Throughput: " + std::to_string(tps) +
                  " tokens / second.\n";
    nlohmann::json row = base_row(a, precision, mode, "full", batch, a.output_len, plan);
    row["round"] = r;
    if (oom_retries > 0) row["oom_retries"] = oom_retries;
    add_round_fields(row, rr);
    if (choice.mode == BatchMode::kAuto) row["best"] = true;
    rows.push_back(row);
  }
  const double mean = sum / static_cast<double>(a.rounds);
  std::printf(
      "throughput: %.1f generated tokens/s (mean of %lld rounds; best %.1f) at batch %lld\n", mean,
      static_cast<long long>(a.rounds), best, static_cast<long long>(batch));
  if (a.profile) {
    std::printf("profile of the last round%s:\n%s",
                profile.empty() ? " (none: the CPU executor does not profile)" : "",
                profile.c_str());
  }
  const std::string command = command_line(a, precision, choice, device_name);
  for (nlohmann::json& row : rows) row["command"] = command;
  const nlohmann::json doc = {{"device", device},
                              {"commit", QSERVE_GIT_COMMIT},
                              {"date", utc_now()},
                              {"command", a.json_command.empty() ? command : a.json_command},
                              {"results", rows}};
  if (!a.json_out.empty()) write_json(a.json_out, doc);
  if (!a.json_append.empty()) append_json(a.json_append, doc);
  if (!a.markdown_out.empty()) {
    char line[512];
    std::snprintf(line, sizeof line, "| %s | %s | %lld | %s | %lld / %lld | %.1f | %lld |",
                  a.model.c_str(), precision.c_str(), static_cast<long long>(batch),
                  plan.fit > 0 ? std::to_string(plan.fit).c_str() : "-",
                  static_cast<long long>(a.input_len), static_cast<long long>(a.output_len), mean,
                  static_cast<long long>(a.rounds));
    append_text(a.markdown_out, std::string(line) + "\n");
  }
  if (!a.results_csv.empty()) {
    const std::string rule = "==================================================\n";
    append_text(a.results_csv, rule + a.model + ": Batch=" + std::to_string(batch) +
                                   ", Input=" + std::to_string(a.input_len) + ", Output=" +
                                   std::to_string(a.output_len) + "\n" + csv_rounds + rule);
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Offline throughput benchmark (QServe's protocol; static batch or --ifb)");
  cmd->add_option("--model", a->model,
                  "Model folder or synthetic:NAME (default synthetic:tiny; on the GPU its "
                  "weights are generated on the device)");
  cmd->add_option("--input-len", a->input_len, "Prompt tokens per request")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--output-len", a->output_len, "Generated tokens per request")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", a->batch,
                  "Requests per round: N, max (the most that fit the GPU) or auto (sweep "
                  "64, 128, ... up to max, then the full protocol at the best); default: env "
                  "GLOBAL_BATCH_SIZE, else 4");
  cmd->add_option("--max-batch", a->max_batch, "Upper bound for --batch auto|max")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--rounds", a->rounds, "Timed rounds (after the warm-up)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", a->warmup,
                  "full (a whole round first, default), short (<= 8 sequences, 4 tokens) or none");
  cmd->add_option("--sweep-output-len", a->sweep_output_len,
                  "--batch auto: generated tokens per request in each sweep round (default 32)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--ifb", a->ifb, "In-flight batching (scheduler flags apply) instead of static");
  cmd->add_flag("--profile", a->profile,
                "Time each op class of every step with CUDA events (--device cuda) and print where "
                "decode and prefill steps spend their time against the roofline");
  cmd->add_option("--json-out", a->json_out,
                  "Write the results as JSON (device, commit, date, command, results)");
  cmd->add_option("--json-append", a->json_append,
                  "Append the result rows to this JSON file's results (created when missing)");
  cmd->add_option("--json-command", a->json_command,
                  "The top-level \"command\" of the JSON written (default: this bench command)");
  cmd->add_option("--markdown-out", a->markdown_out,
                  "Append a Markdown table row: model | precision | batch | max batch | "
                  "input / output | generated tok/s | rounds");
  cmd->add_option("--results-csv", a->results_csv,
                  "Append QServe's results.csv lines to this file");
  add_precision_options(cmd, a->precision, /*norm_flag=*/false);
  add_engine_options(cmd, a->engine);
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace qserve::cli
