// Host-side cost of one engine step at 256 and 1024 running sequences: scheduling, page
// bookkeeping, per-request sampling and incremental detokenization, without a model. The
// executor is a stand-in that returns a fixed logits buffer (written once), so what is timed is
// everything the engine does around the model. Sampling is also timed alone at Llama-3's
// vocabulary (128,256), because on the CPU it is the dominant host cost.
//
//   ./build/bench_engine_host [--json bench/results/FILE.json]
//
// Uses doc-llama-22m's tokenizer (8,192 tokens) for detokenization when ../shared is present.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

#ifndef QSERVE_SHARED_DEFAULT
#define QSERVE_SHARED_DEFAULT "../shared"
#endif

namespace {

using qserve::PageTable;
using qserve::SeqSpan;

// Logits written once; every later step reuses them (no per-step model cost).
class FixedLogitsExecutor final : public qserve::ModelExecutor {
 public:
  FixedLogitsExecutor(int64_t vocab, int64_t pages, int64_t slots)
      : vocab_(vocab), pages_(pages), slots_(slots) {}
  int64_t vocab_size() const override { return vocab_; }
  int64_t num_slots() const override { return slots_; }
  int64_t num_pages() const override { return pages_; }
  std::string describe() const override { return "fixed logits"; }
  void execute(std::span<const int32_t>, std::span<const SeqSpan> seqs,
               std::span<const PageTable* const>, std::vector<float>& logits) override {
    const size_t n = seqs.size() * static_cast<size_t>(vocab_);
    if (logits.size() != n) {
      const size_t old = logits.size();
      logits.resize(n);
      std::mt19937 rng(static_cast<uint32_t>(n));
      std::uniform_real_distribution<float> u(-4.0f, 4.0f);
      for (size_t i = old; i < n; ++i) logits[i] = u(rng);
    }
  }

 private:
  int64_t vocab_, pages_, slots_;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct StepFigures {
  double step_us_median = 0.0, step_us_p99 = 0.0;
};

StepFigures time_engine(int64_t running, const qserve::Tokenizer* tok, int64_t vocab,
                        const qserve::SamplingParams& base) {
  qserve::EngineConfig cfg;
  cfg.max_num_seqs = running;
  cfg.max_num_batched_tokens = running * 64;
  const int64_t pages = running * 40;
  auto engine = std::make_unique<qserve::Engine>(
      std::make_unique<FixedLogitsExecutor>(vocab, pages, running), tok, cfg, 4096,
      std::vector<int32_t>{});
  std::mt19937 rng(1);
  qserve::SamplingParams p = base;
  p.max_tokens = 2000;
  p.ignore_eos = true;
  for (int64_t i = 0; i < running; ++i) {
    std::vector<int32_t> prompt(64);
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    p.seed = static_cast<uint64_t>(i);
    engine->add_request(std::move(prompt), p);
  }
  engine->step();  // all prefills
  std::vector<double> us;
  for (int s = 0; s < 60; ++s) {
    const double t0 = now_s();
    engine->step();
    us.push_back((now_s() - t0) * 1e6);
  }
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 99 / 100]};
}

double time_sampling_us(int64_t rows, int64_t vocab, const qserve::SamplingParams& p) {
  std::vector<float> logits(static_cast<size_t>(vocab));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  for (float& x : logits) x = u(rng);
  qserve::Sampler sampler(p);
  int64_t sink = 0;
  const double t0 = now_s();
  for (int64_t r = 0; r < rows; ++r) sink += sampler.sample(logits).id;
  const double us = (now_s() - t0) * 1e6;
  if (sink == -1) std::printf("impossible\n");
  return us;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) json_path = argv[++i];
  }
  std::unique_ptr<qserve::Tokenizer> tok;
  try {
    tok = qserve::load_tokenizer(std::string(QSERVE_SHARED_DEFAULT) + "/models/doc-llama-22m");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "no tokenizer (%s): detokenization not timed\n", e.what());
  }
  const int64_t vocab = tok ? tok->vocab_size() : 8192;
  nlohmann::json results = nlohmann::json::array();
  qserve::SamplingParams greedy, topp;
  topp.temperature = 0.7f;
  topp.top_p = 0.95f;
  topp.top_k = 40;
  std::printf("%-10s %-22s %14s %14s\n", "running", "case", "step_us_p50", "step_us_p99");
  for (int64_t running : {256, 1024}) {
    for (const auto& [name, params] :
         {std::pair<const char*, qserve::SamplingParams>{"greedy", greedy}, {"top-k40-p0.95", topp}}) {
      const StepFigures f = time_engine(running, tok.get(), vocab, params);
      std::printf("%-10lld %-22s %14.1f %14.1f\n", static_cast<long long>(running),
                  (std::string(name) + "+detok, V=" + std::to_string(vocab)).c_str(),
                  f.step_us_median, f.step_us_p99);
      results.push_back({{"system", "qserve.cpp"}, {"case", "engine_step_host"},
                         {"running", running}, {"sampling", name}, {"vocab", vocab},
                         {"detokenize", tok != nullptr}, {"us", f.step_us_median},
                         {"us_p99", f.step_us_p99}});
    }
    {
      // Scheduling and bookkeeping alone: a 16-token vocabulary and no tokenizer make sampling
      // and detokenization negligible (what remains when both run on the GPU).
      const StepFigures f = time_engine(running, nullptr, 16, greedy);
      std::printf("%-10lld %-22s %14.1f %14.1f\n", static_cast<long long>(running),
                  "scheduler+bookkeeping", f.step_us_median, f.step_us_p99);
      results.push_back({{"system", "qserve.cpp"}, {"case", "engine_step_bookkeeping"},
                         {"running", running}, {"us", f.step_us_median},
                         {"us_p99", f.step_us_p99}});
    }
    if (tok) {
      // Scheduling + detokenization with sampling made negligible (16 logits per row; ids 0-15
      // are real tokens of the vocabulary): the host cost left once sampling runs on the GPU.
      const StepFigures f = time_engine(running, tok.get(), 16, greedy);
      std::printf("%-10lld %-22s %14.1f %14.1f\n", static_cast<long long>(running),
                  "scheduler+detok", f.step_us_median, f.step_us_p99);
      results.push_back({{"system", "qserve.cpp"}, {"case", "engine_step_bookkeeping_detok"},
                         {"running", running}, {"us", f.step_us_median},
                         {"us_p99", f.step_us_p99}});
    }
    for (const auto& [name, params] :
         {std::pair<const char*, qserve::SamplingParams>{"greedy", greedy}, {"top-k40-p0.95", topp}}) {
      const double us = time_sampling_us(running, 128256, params);
      std::printf("%-10lld %-22s %14.1f\n", static_cast<long long>(running),
                  (std::string("cpu sampling ") + name + ", V=128256").c_str(), us);
      results.push_back({{"system", "qserve.cpp"}, {"case", "cpu_sampling"}, {"running", running},
                         {"sampling", name}, {"vocab", 128256}, {"us", us}});
    }
  }
  if (!json_path.empty()) {
    const std::time_t t = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&t));
    nlohmann::json j = {{"device", "cpu"}, {"commit", QSERVE_GIT_COMMIT}, {"date", date},
                        {"command", "bench_engine_host --json " + json_path},
                        {"results", results}};
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return 0;
}
