#include "bench_round.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "engine/block_manager.h"

namespace qserve::cli {

EngineConfig bench_engine_config(const EngineArgs& args, const RoundSpec& spec) {
  if (spec.ifb) {
    EngineConfig c = args.config(spec.batch);
    c.profile = spec.profile;
    return c;
  }
  const int64_t seq_len = spec.input_len + spec.output_len;
  const int64_t all_prompts = spec.batch * spec.input_len;
  EngineConfig c;
  c.profile = spec.profile;
  c.cuda_graphs = !args.no_cuda_graphs;
  c.overlap_steps = !args.no_overlap;
  c.max_num_seqs = spec.batch;
  // Every running sequence decodes in every step and, without chunked prefill, a whole
  // sequence must fit one step: the budget is at least both.
  c.max_num_batched_tokens =
      std::max({spec.prefill_tokens > 0 ? std::min(spec.prefill_tokens, all_prompts) : all_prompts,
                spec.batch, seq_len});
  c.max_model_len = seq_len;
  c.num_pages = args.num_pages ? args.num_pages
                               : std::optional<int64_t>(spec.batch * pages_for_tokens(seq_len));
  c.watermark = 0.0;
  c.chunked_prefill = false;
  return c;
}

RoundResult run_round(const LlamaModel& model, const EngineArgs& args, const RoundSpec& spec) {
  const ModelConfig& cfg = model.config();
  auto engine = make_engine(model, nullptr, bench_engine_config(args, spec), args.device);
  std::mt19937_64 rng(spec.seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(cfg.vocab_size - 1));
  SamplingParams p;
  p.max_tokens = spec.output_len;
  p.ignore_eos = true;
  RoundResult rr;
  double ttft_sum = 0.0;
  int64_t started = 0, finished = 0;  // requests with a generated token; finished ones
  for (int64_t b = 0; b < spec.batch; ++b) {
    std::vector<int32_t> prompt(static_cast<size_t>(spec.input_len));
    for (int32_t& t : prompt) t = tok(rng);
    engine->add_request(std::move(prompt), p, [&, first = true](const RequestOutput& o) mutable {
      rr.generated += static_cast<int64_t>(o.token_ids.size());
      if (first && !o.token_ids.empty()) {
        first = false;
        ++started;
      }
      if (o.finished) {
        ttft_sum += o.ttft_s;
        ++finished;
      }
    });
  }
  using Clock = std::chrono::steady_clock;
  // Step durations once every request has started, and of those the steps in which all of
  // them decoded (none had finished yet).
  std::vector<double> after_prefill, full_batch;
  // Engine::step's phases summed over the same two sets of steps.
  using HostSplit = RoundResult::HostSplit;
  HostSplit host_after, host_full;
  const auto add = [](HostSplit& h, const HostSplit& d) {
    h.schedule += d.schedule;
    h.prepare += d.prepare;
    h.execute += d.execute;
    h.device_wait += d.device_wait;
    h.outputs += d.outputs;
  };
  const auto t0 = Clock::now();
  while (engine->has_unfinished()) {
    const bool prefilling = started < spec.batch, full = !prefilling && finished == 0;
    const EngineStats st0 = engine->stats();
    const double wait0 = engine->executor().device_wait_seconds();
    const auto s0 = Clock::now();
    engine->step();
    const auto s1 = Clock::now();
    const double dt = std::chrono::duration<double>(s1 - s0).count();
    if (prefilling) {
      rr.prefill_seconds = std::chrono::duration<double>(s1 - t0).count();
    } else {
      const EngineStats& st1 = engine->stats();
      const HostSplit d{st1.schedule_s - st0.schedule_s, st1.prepare_s - st0.prepare_s,
                        st1.execute_s - st0.execute_s,
                        engine->executor().device_wait_seconds() - wait0,
                        st1.outputs_s - st0.outputs_s};
      after_prefill.push_back(dt);
      add(host_after, d);
      if (full) {
        full_batch.push_back(dt);
        add(host_full, d);
      }
    }
  }
  rr.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double>& steps = full_batch.empty() ? after_prefill : full_batch;
  if (!steps.empty()) {
    auto mid = steps.begin() + static_cast<std::ptrdiff_t>(steps.size() / 2);
    std::nth_element(steps.begin(), mid, steps.end());
    rr.decode_step_median = *mid;
    rr.decode_host = full_batch.empty() ? host_after : host_full;
    const double n = static_cast<double>(steps.size());
    HostSplit& h = rr.decode_host;
    for (double* v : {&h.schedule, &h.prepare, &h.execute, &h.device_wait, &h.outputs}) *v /= n;
  }
  rr.ttft_mean = ttft_sum / static_cast<double>(spec.batch);
  rr.steps = engine->stats().steps;
  rr.overlapped_steps = engine->stats().overlapped_steps;
  rr.preemptions = engine->stats().preemptions;
  rr.profile = engine->executor().profile_report();
  return rr;
}

double estimate_full_tokens_per_s(const RoundResult& r, int64_t batch, int64_t short_len,
                                  int64_t output_len) {
  const double seconds =
      r.seconds +
      static_cast<double>(std::max<int64_t>(0, output_len - short_len)) * r.decode_step_median;
  return seconds > 0.0 ? static_cast<double>(batch * output_len) / seconds : 0.0;
}

bool is_out_of_memory(const std::exception& e) {
  const std::string what = e.what();
  return what.find("cudaErrorMemoryAllocation") != std::string::npos ||
         what.find("out of memory") != std::string::npos ||
         what.find("ALLOC_FAILED") != std::string::npos ||
         what.find("allocation failed") != std::string::npos;
}

}  // namespace qserve::cli
