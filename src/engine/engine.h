// qserve::Engine - the serving core: requests in, incremental outputs out, one model step at a
// time with in-flight batching over the paged KV cache.
//
//   auto engine = qserve::Engine::create(model, tokenizer.get(), {.max_num_seqs = 64});
//   qserve::SamplingParams p;  p.max_tokens = 64;  p.stop = {"\n\n"};
//   int64_t id = engine->add_request(tokenizer->encode("Once upon", true), p,
//       [](const qserve::RequestOutput& o) { std::cout << o.text << std::flush; });
//   while (engine->has_unfinished()) engine->step();
//
// Single-threaded: one caller drives add_request / step / abort (the server does so from its
// engine thread). Each step: schedule (scheduler.h), run the model on the batch, sample per
// request with its own SamplingParams and RNG, detokenize incrementally, apply stops, free what
// finished, and deliver each request's new text/tokens to its callback and in step()'s result.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/block_manager.h"
#include "engine/model_executor.h"
#include "engine/sampling.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "engine/stop_checker.h"
#include "formats/hf_config.h"
#include "tokenizer/tokenizer.h"

namespace qserve {

struct EngineConfig {
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 0;  // 0: max(2048, max_num_seqs)
  int64_t max_model_len = 0;           // 0: the model's max_position_embeddings
  std::optional<int64_t> num_pages;    // unset: NUM_GPU_PAGE_BLOCKS, else sized from memory
  double memory_utilization = 0.9;     // fraction of memory the KV cache may take when sizing
  double watermark = 0.01;             // fraction of pages kept free at admission
  bool chunked_prefill = true;
  // Per-op-class GPU timing of every step (executors that support it; see
  // ModelExecutor::profile_report). Slows the run a little.
  bool profile = false;
  // CUDA engine: replay pure-decode steps from captured CUDA graphs (docs/cuda.md); profile
  // forces eager steps. Other executors ignore it.
  bool cuda_graphs = true;
  // Overlapped decode steps: while the executor runs decode step N, the engine schedules and
  // launches step N + 1 (its input tokens fed on the device from step N's samples), then
  // collects step N. Applies to pure decode steps whose rows are all sampled on the device
  // (ModelExecutor::can_launch); the outputs are the same as without it, delivered by the same
  // step() calls. See docs/engine.md, "Overlapped steps".
  bool overlap_steps = true;
};

// What a request produced since its last output (and, when finished, how it ended).
struct RequestOutput {
  int64_t id = 0;
  std::string text;                    // new text (complete UTF-8; stop strings never included)
  std::vector<int32_t> token_ids;      // new token ids (an EOS / stop token id included)
  std::vector<SampledToken> logprobs;  // per new token, when SamplingParams::logprobs
  bool finished = false;
  std::string finish_reason;  // "stop" | "length" | "abort", when finished
  std::string stop_reason;    // the stop string or "token:<id>" that ended it
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // generated so far
  double ttft_s = 0.0;            // arrival to first token (0 until there is one)
  double latency_s = 0.0;         // arrival to finish (when finished)
};

using OutputCallback = std::function<void(const RequestOutput&)>;

struct EngineStats {
  int64_t steps = 0;
  int64_t prefill_tokens = 0;  // prompt (and recomputed) tokens run
  int64_t decode_tokens = 0;   // single-token decode rows run
  int64_t preemptions = 0;
  int64_t finished = 0;
  // Wall time of step()'s phases, summed over the steps (seconds): scheduling (incl. preempted
  // slots), building the executor's inputs, the executor call (the model step, incl. waiting for
  // the device: ModelExecutor::device_wait_seconds), and accepting the sampled tokens and
  // delivering the outputs. What is not executor time is host time the device does not overlap.
  double schedule_s = 0.0, prepare_s = 0.0, execute_s = 0.0, outputs_s = 0.0;
  // Steps launched while the previous one was still running (overlap_steps).
  int64_t overlapped_steps = 0;
};

class Engine {
 public:
  // num_pages must equal executor->num_pages(). tokenizer may be null (token ids only; no text,
  // no stop strings, no EOS unless eos_ids is given).
  Engine(std::unique_ptr<ModelExecutor> executor, const Tokenizer* tokenizer,
         const EngineConfig& cfg, int64_t max_model_len, std::vector<int32_t> eos_ids);
  ~Engine();

  // An engine over `model` on the CPU backend, with the KV cache sized per cfg.
  static std::unique_ptr<Engine> create(const LlamaModel& model, const Tokenizer* tokenizer,
                                        const EngineConfig& cfg);

  // Queues a request; returns its id. Throws qserve::Error (nothing queued) for invalid
  // sampling parameters, an empty or oversized prompt, out-of-vocabulary ids, or a request that
  // can never fit the KV cache.
  int64_t add_request(std::vector<int32_t> prompt_ids, const SamplingParams& params,
                      OutputCallback on_output = {});
  // Runs one step; returns the outputs produced (also delivered to the callbacks). If it throws
  // (a device error), every launched step is collected and dropped first and the requests whose
  // sampled tokens were lost with them are aborted (their final outputs come with the next step),
  // so the engine goes on from no step in flight.
  std::vector<RequestOutput> step();
  // Aborts a queued or running request: its pages are freed now, and its final output
  // (finish_reason "abort") comes with the next step. False if unknown or already finished.
  bool abort(int64_t id);
  // Queued, running, an output not yet delivered, or a launched step not yet collected.
  bool has_unfinished() const;

  const EngineStats& stats() const { return stats_; }
  const Scheduler& scheduler() const { return *scheduler_; }
  const BlockManager& blocks() const { return *blocks_; }
  const ModelExecutor& executor() const { return *executor_; }
  int64_t max_model_len() const { return max_model_len_; }

 private:
  struct Request;
  // A step handed to ModelExecutor::launch and not collected yet: per row, the request and the
  // index its sampled token takes in the request's tokens.
  struct InFlightRow {
    int64_t request = 0;
    int64_t position = 0;
  };
  using InFlight = std::vector<InFlightRow>;

  bool device_row_ok(const Request& r) const;
  RowSample plan_row(Request& r);
  // tokens_ / spans_ / tables_ / rows_ for a scheduled step (claims cache slots, counts tokens).
  void build_step(const SchedulerOutput& sched);
  bool launchable() const;  // the step in tokens_ / spans_ / tables_ / rows_
  InFlight in_flight_rows(const SchedulerOutput& sched) const;
  // Overlap: schedules and launches the step after the in-flight one, its tokens fed from the
  // in-flight step's samples, when every running sequence is one of its continuing decode rows
  // and nothing else could change the schedule. Returns the new step's rows, or nothing.
  struct PhaseClock;
  std::vector<RequestOutput> step_once();
  void launch(std::span<const int32_t> feed);  // tokens_ / spans_ / tables_ / rows_
  // Collects and drops every launched step (after an error; at destruction).
  void abandon_launched() noexcept;
  // After an error: aborts the running requests whose next token was in a dropped step.
  void abort_lost();
  std::optional<InFlight> launch_next(PhaseClock& clock);
  // Waits for the in-flight step and accepts its tokens into `outputs`.
  void collect_in_flight(std::vector<RequestOutput>& outputs, PhaseClock& clock);
  void sample_and_check(Request& r, std::span<const float> logits, RequestOutput& out);
  // Appends tok to r (or fills the placeholder at `position` that overlap put there) and
  // applies the stop rules.
  void accept_token(Request& r, const SampledToken& tok, RequestOutput& out);
  void accept_token_at(Request& r, int64_t position, const SampledToken& tok, RequestOutput& out);
  // The same for an id sampled by the executor (checked against the vocabulary).
  void accept_device_id(Request& r, int64_t position, int32_t id, RequestOutput& out);
  void finish(Request& r, const std::string& reason, RequestOutput& out);
  RequestOutput new_output(const Request& r) const;

  std::unique_ptr<ModelExecutor> executor_;
  const Tokenizer* tokenizer_;
  EngineConfig cfg_;
  int64_t max_model_len_;
  std::vector<int32_t> eos_ids_;
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unordered_map<int64_t, std::unique_ptr<Request>> requests_;
  std::vector<int64_t> free_slots_;
  std::vector<RequestOutput> pending_;  // aborted requests' final outputs, sent next step
  int64_t next_id_ = 0;
  EngineStats stats_;
  // Step scratch, kept to avoid reallocating every step.
  std::vector<int32_t> tokens_;
  std::vector<SeqSpan> spans_;
  std::vector<const PageTable*> tables_;
  std::vector<RowSample> rows_;
  std::vector<float> logits_;
  std::vector<int32_t> ids_;
  std::vector<int32_t> feed_;
  std::optional<InFlight> in_flight_;  // overlap: the launched step not collected yet
  int64_t launched_ = 0;               // steps handed to the executor's launch(), not collected
};

// Shared by every backend's engine factory (Engine::create, create_cuda_engine):
// the context limit (cfg.max_model_len capped at the model's, or the model's),
int64_t engine_max_model_len(const EngineConfig& cfg, const ModelConfig& model);
// the KV pages that hold every slot at that length (the default before memory caps it),
int64_t engine_full_pages(const EngineConfig& cfg, int64_t max_model_len);
// and the stop ids a tokenizer contributes (none without one).
std::vector<int32_t> engine_eos_ids(const Tokenizer* tokenizer);

// One finished request of an offline run.
struct CompletedRequest {
  int64_t id = 0;
  std::vector<int32_t> token_ids;
  std::vector<SampledToken> logprobs;
  std::string text;
  std::string finish_reason, stop_reason;
  int64_t prompt_tokens = 0;
  double ttft_s = 0.0, latency_s = 0.0;
};

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;
  SamplingParams params;
};

// Offline generation: queues every request and steps until all finish. Results come in the
// order of `requests`. on_progress (optional) is called after each request finishes.
std::vector<CompletedRequest> generate(
    Engine& engine, const std::vector<GenerationRequest>& requests,
    const std::function<void(const CompletedRequest&)>& on_done = {});

}  // namespace qserve
