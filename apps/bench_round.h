// One round of `qserve bench` (QServe's protocol, qserve-runtime.md §3): a fresh engine (not
// timed), `batch` requests of input_len random tokens and output_len generated tokens (EOS
// ignored), every step timed from the first to the last; throughput = generated tokens / wall
// time including prefill.
#pragma once

#include <cstdint>
#include <exception>
#include <string>

#include "engine/engine.h"
#include "engine_options.h"
#include "model/llama_model.h"

namespace qserve::cli {

struct RoundSpec {
  int64_t batch = 1, input_len = 1, output_len = 1;
  bool ifb = false;      // in-flight batching with the engine flags; else static
  bool profile = false;  // per-op-class GPU timing
  // Static mode: token rows per step while prompts are being prefilled (whole prompts, decode
  // first: the engine's scheduler), so that a batch too large for one prefill step's
  // activations still runs. 0: every prompt in one prefill step (QServe's protocol).
  int64_t prefill_tokens = 0;
  uint64_t seed = 0;  // of the random prompts
};

struct RoundResult {
  double seconds = 0.0, ttft_mean = 0.0;
  // Wall time until every request had its first token (the prefill steps), and the median
  // duration of the steps in which every request decoded (all started, none finished; the
  // steps after the prefill when there were none of those; 0 when there were no such steps).
  double prefill_seconds = 0.0, decode_step_median = 0.0;
  int64_t generated = 0, steps = 0, preemptions = 0;
  int64_t overlapped_steps = 0;  // launched before the previous step was collected
  // Mean wall time per decode step (over the steps decode_step_median is taken over) of
  // Engine::step's phases (EngineStats): scheduling, input building, the executor call and, of
  // that, waiting for the device, accepting tokens and delivering outputs. Everything but the
  // device wait is host time the device does not overlap. Zero when there were no such steps.
  struct HostSplit {
    double schedule = 0.0, prepare = 0.0, execute = 0.0, device_wait = 0.0, outputs = 0.0;
  } decode_host;
  std::string profile;  // the executor's per-op-class report, with RoundSpec::profile
};

// The engine of one round. Static: every request admitted at once with all its KV pages up
// front, one prefill step (or steps of spec.prefill_tokens rows), no watermark; --ifb: the
// scheduler flags (args.config).
EngineConfig bench_engine_config(const EngineArgs& args, const RoundSpec& spec);

RoundResult run_round(const LlamaModel& model, const EngineArgs& args, const RoundSpec& spec);

// Generated tokens per second of a full round of output_len tokens per request, estimated from
// a shorter round of the same batch that generated short_len: its wall time plus the missing
// output_len - short_len tokens at its median full-batch decode step. Those steps ran at
// contexts of about input_len + short_len, so the estimate leaves out the attention's growth
// over the longer contexts of the full round (optimistic by a similar factor at every batch:
// for ranking batches, not for reporting).
double estimate_full_tokens_per_s(const RoundResult& r, int64_t batch, int64_t short_len,
                                  int64_t output_len);

// True for an allocation failure (the caching allocator's cudaMalloc, cuBLASLt's workspace).
bool is_out_of_memory(const std::exception& e);

}  // namespace qserve::cli
