// qserve bench: offline throughput on random-token prompts, QServe's protocol (static batch: all
// requests admitted at once; throughput = generated tokens / wall time including prefill).
// Without --model it runs the embedded default, synthetic:tiny, so it needs no download.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/sampling.h"

namespace qserve::cli {

namespace {

struct BenchArgs {
  std::string model = "synthetic:tiny";
  int64_t input_len = 128;
  int64_t output_len = 64;
  int64_t batch = 4;
  int64_t rounds = 3;
  std::string json_out;
  PrecisionArgs precision;
};

struct RoundResult {
  double seconds, prefill_seconds;
  int64_t generated;
};

RoundResult run_round(const LlamaModel& model, const BenchArgs& a, uint64_t seed) {
  const ModelConfig& cfg = model.config();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(cfg.vocab_size - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(a.batch * a.input_len));
  for (int32_t& t : prompt) t = tok(rng);
  KvCache cache = model.make_cache(a.batch, a.input_len + a.output_len);

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<SeqSpan> spans;
  for (int64_t b = 0; b < a.batch; ++b) spans.push_back({b * a.input_len, a.input_len, 0, b});
  std::vector<float> logits = model.forward(prompt, spans, cache, LogitsMode::LastPerSequence);
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<int32_t> next(static_cast<size_t>(a.batch));
  int64_t generated = 0;
  for (int64_t step = 0; step < a.output_len; ++step) {
    for (int64_t b = 0; b < a.batch; ++b) {
      next[b] = argmax({&logits[b * cfg.vocab_size], static_cast<size_t>(cfg.vocab_size)});
    }
    generated += a.batch;
    if (step + 1 == a.output_len) break;
    for (int64_t b = 0; b < a.batch; ++b) spans[b] = {b, 1, a.input_len + step, b};
    logits = model.forward(next, spans, cache, LogitsMode::LastPerSequence);
  }
  const auto t2 = std::chrono::steady_clock::now();
  return {std::chrono::duration<double>(t2 - t0).count(),
          std::chrono::duration<double>(t1 - t0).count(), generated};
}

}  // namespace

void add_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Offline throughput benchmark (static batch)");
  cmd->add_option("--model", a->model, "Model folder or synthetic:NAME (default synthetic:tiny)");
  cmd->add_option("--input-len", a->input_len, "Prompt tokens per request")->check(CLI::PositiveNumber);
  cmd->add_option("--output-len", a->output_len, "Generated tokens per request")->check(CLI::PositiveNumber);
  cmd->add_option("--batch", a->batch, "Requests per round")->check(CLI::PositiveNumber);
  cmd->add_option("--rounds", a->rounds, "Timed rounds (after one warm-up)")->check(CLI::PositiveNumber);
  cmd->add_option("--json-out", a->json_out, "Append the result as one JSON line to this file");
  add_precision_options(cmd, a->precision, /*norm_flag=*/false);
  cmd->callback([a] {
    LoadedModel m = load_model(a->model, /*need_tokenizer=*/false, a->precision.options());
    const std::string precision = m.model->precision().name();
    const ModelConfig& cfg = m.model->config();
    check(a->input_len + a->output_len <= cfg.max_position_embeddings,
          "bench: input-len + output-len exceeds the model's context of " +
              std::to_string(cfg.max_position_embeddings) + " tokens");
    std::printf("model %s (%.1f M parameters, %s), device cpu (%d threads), batch %lld, "
                "input %lld, output %lld\n",
                a->model.c_str(), static_cast<double>(m.model->parameter_count()) / 1e6,
                precision.c_str(),
                ThreadPool::global().size(), static_cast<long long>(a->batch),
                static_cast<long long>(a->input_len), static_cast<long long>(a->output_len));
    run_round(*m.model, *a, 0);  // warm-up
    std::printf("%-6s %10s %10s %14s\n", "round", "time_s", "prefill_s", "gen_tok_per_s");
    double best = 0.0, sum = 0.0;
    nlohmann::json rounds = nlohmann::json::array();
    for (int64_t r = 0; r < a->rounds; ++r) {
      const RoundResult rr = run_round(*m.model, *a, static_cast<uint64_t>(r + 1));
      const double tps = static_cast<double>(rr.generated) / rr.seconds;
      best = std::max(best, tps);
      sum += tps;
      std::printf("%-6lld %10.3f %10.3f %14.1f\n", static_cast<long long>(r + 1), rr.seconds,
                  rr.prefill_seconds, tps);
      rounds.push_back({{"seconds", rr.seconds}, {"prefill_seconds", rr.prefill_seconds},
                        {"generated_tokens", rr.generated}, {"tokens_per_second", tps}});
    }
    const double mean = sum / static_cast<double>(a->rounds);
    std::printf("throughput: %.1f generated tokens/s (mean of %lld rounds; best %.1f)\n", mean,
                static_cast<long long>(a->rounds), best);
    if (!a->json_out.empty()) {
      nlohmann::json j = {{"model", a->model},        {"device", "cpu"},
                          {"precision", precision},
                          {"threads", ThreadPool::global().size()},
                          {"batch", a->batch},        {"input_len", a->input_len},
                          {"output_len", a->output_len}, {"rounds", rounds},
                          {"tokens_per_second", mean}};
      std::ofstream out(a->json_out, std::ios::app);
      check(static_cast<bool>(out), a->json_out + ": cannot open for writing");
      out << j.dump() << "\n";
    }
  });
}

}  // namespace qserve::cli
