#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <string>

#include "core/error.h"
#include "engine/kv_sizing.h"
#include "model/llama_model.h"

namespace qserve {

using Clock = std::chrono::steady_clock;

namespace {
// Overlap: the token a sequence holds, for the length of one step() call, where the in-flight
// step's sample will go (never handed to an executor as a real id: launch() feeds that row).
constexpr int32_t kPlaceholderToken = -1;
}  // namespace

// Adds the wall time since the previous lap to one of EngineStats' phase totals.
struct Engine::PhaseClock {
  Clock::time_point mark = Clock::now();
  void lap(double& total) {
    const Clock::time_point now = Clock::now();
    total += std::chrono::duration<double>(now - mark).count();
    mark = now;
  }
};

struct Engine::Request {
  int64_t id = 0;
  Sequence seq;
  SamplingParams params;
  Sampler sampler;
  std::optional<IncrementalDetokenizer> detok;
  StopChecker stops;
  std::vector<int32_t> banned;  // EOS / stop ids while fewer than min_tokens are generated
  OutputCallback on_output;
  int64_t slot = -1;
  Clock::time_point arrival, first_token;
  bool has_first_token = false;

  Request(const SamplingParams& p, const Tokenizer* tok) : params(p), sampler(p), stops(p.stop) {
    if (tok != nullptr) detok.emplace(*tok, p.skip_special_tokens);
  }
};

Engine::Engine(std::unique_ptr<ModelExecutor> executor, const Tokenizer* tokenizer,
               const EngineConfig& cfg, int64_t max_model_len, std::vector<int32_t> eos_ids)
    : executor_(std::move(executor)),
      tokenizer_(tokenizer),
      cfg_(cfg),
      max_model_len_(max_model_len),
      eos_ids_(std::move(eos_ids)) {
  check(executor_ != nullptr, "engine: no model executor");
  check(max_model_len_ > 0, "engine: max_model_len must be positive");
  blocks_ = std::make_unique<BlockManager>(executor_->num_pages(), cfg_.watermark);
  SchedulerConfig sc;
  sc.max_num_seqs = cfg_.max_num_seqs;
  sc.max_num_batched_tokens = cfg_.max_num_batched_tokens > 0
                                  ? cfg_.max_num_batched_tokens
                                  : std::max<int64_t>(2048, cfg_.max_num_seqs);
  sc.max_model_len = max_model_len_;
  sc.chunked_prefill = cfg_.chunked_prefill;
  scheduler_ = std::make_unique<Scheduler>(sc, *blocks_);
  check(executor_->num_slots() >= cfg_.max_num_seqs,
        "engine: the executor has fewer cache slots than max_num_seqs");
  for (int64_t s = cfg_.max_num_seqs - 1; s >= 0; --s) free_slots_.push_back(s);
}

// A launched step still writes into the executor's buffers: wait for it first.
Engine::~Engine() {
  abandon_launched();
}

void Engine::abandon_launched() noexcept {
  in_flight_.reset();
  while (launched_ > 0) {
    --launched_;
    try {
      executor_->collect(ids_);
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): the step is dropped
    }
  }
}

void Engine::launch(std::span<const int32_t> feed) {
  executor_->launch(tokens_, feed, spans_, tables_, rows_);
  ++launched_;
  ++stats_.steps;
}

int64_t engine_max_model_len(const EngineConfig& cfg, const ModelConfig& model) {
  return cfg.max_model_len > 0 ? std::min(cfg.max_model_len, model.max_position_embeddings)
                               : model.max_position_embeddings;
}

int64_t engine_full_pages(const EngineConfig& cfg, int64_t max_model_len) {
  check(cfg.max_num_seqs > 0, "engine: max_num_seqs must be positive");
  return pages_for_tokens(max_model_len) * cfg.max_num_seqs;
}

std::vector<int32_t> engine_eos_ids(const Tokenizer* tokenizer) {
  return tokenizer != nullptr ? tokenizer->eos_ids() : std::vector<int32_t>{};
}

std::unique_ptr<Engine> Engine::create(const LlamaModel& model, const Tokenizer* tokenizer,
                                       const EngineConfig& cfg) {
  const ModelConfig& mc = model.config();
  const int64_t max_len = engine_max_model_len(cfg, mc);
  // Enough pages for every slot at full length, unless memory says fewer.
  const int64_t want = engine_full_pages(cfg, max_len);
  int64_t fallback = want;
  const int64_t avail = host_available_bytes();
  if (avail > 0) {
    const int64_t fit = pages_from_memory(avail, avail, cfg.memory_utilization,
                                          kv_page_bytes(mc, model.precision().kv));
    fallback = std::max<int64_t>(1, std::min(want, fit));
  }
  const int64_t pages = resolve_num_pages(cfg.num_pages, fallback);
  return std::make_unique<Engine>(make_cpu_executor(model, pages, cfg.max_num_seqs, max_len),
                                  tokenizer, cfg, max_len, engine_eos_ids(tokenizer));
}

int64_t Engine::add_request(std::vector<int32_t> prompt_ids, const SamplingParams& params,
                            OutputCallback on_output) {
  validate(params);
  check(!prompt_ids.empty(), "request: empty prompt");
  const int64_t vocab = executor_->vocab_size();
  for (int32_t t : prompt_ids) {
    check(t >= 0 && t < vocab, "request: prompt token id " + std::to_string(t) +
                                   " outside the vocabulary of " + std::to_string(vocab));
  }
  check(params.stop.empty() || tokenizer_ != nullptr, "request: stop strings need a tokenizer");
  auto r = std::make_unique<Request>(params, tokenizer_);
  r->id = next_id_;
  r->seq.id = r->id;
  r->seq.arrival = r->id;
  r->seq.num_prompt = static_cast<int64_t>(prompt_ids.size());
  r->seq.tokens = std::move(prompt_ids);
  r->seq.max_total_len = std::min(max_model_len_, r->seq.num_prompt + params.max_tokens);
  r->on_output = std::move(on_output);
  r->arrival = Clock::now();
  if (params.min_tokens > 0) {
    r->banned = params.stop_token_ids;
    if (!params.ignore_eos) r->banned.insert(r->banned.end(), eos_ids_.begin(), eos_ids_.end());
  }
  scheduler_->add(&r->seq);  // throws, queuing nothing, if it can never be served
  ++next_id_;
  const int64_t id = r->id;
  requests_.emplace(id, std::move(r));
  return id;
}

bool Engine::has_unfinished() const {
  return scheduler_->has_unfinished() || !pending_.empty() || in_flight_.has_value();
}

RequestOutput Engine::new_output(const Request& r) const {
  RequestOutput o;
  o.id = r.id;
  o.prompt_tokens = r.seq.num_prompt;
  o.completion_tokens = r.seq.num_output();
  if (r.has_first_token) {
    o.ttft_s = std::chrono::duration<double>(r.first_token - r.arrival).count();
  }
  return o;
}

void Engine::finish(Request& r, const std::string& reason, RequestOutput& out) {
  scheduler_->finish(&r.seq);
  if (r.slot >= 0) {
    free_slots_.push_back(r.slot);
    r.slot = -1;
  }
  out.finished = true;
  out.finish_reason = reason;
  out.completion_tokens = r.seq.num_output();
  out.latency_s = std::chrono::duration<double>(Clock::now() - r.arrival).count();
  ++stats_.finished;
}

bool Engine::abort(int64_t id) {
  auto it = requests_.find(id);
  if (it == requests_.end() || it->second->seq.status == SeqStatus::kFinished) return false;
  Request& r = *it->second;
  RequestOutput out = new_output(r);
  finish(r, "abort", out);
  pending_.push_back(std::move(out));
  return true;
}

// Where the next token of r is sampled: on the executor's device when it can and nothing
// host-only is needed (logprobs, min-p, ids banned before min_tokens), else from the logits.
bool Engine::device_row_ok(const Request& r) const {
  const bool banning = r.seq.num_output() < r.params.min_tokens && !r.banned.empty();
  return executor_->samples_on_device() && r.sampler.device_eligible() && !banning;
}

RowSample Engine::plan_row(Request& r) {
  RowSample row;
  if (device_row_ok(r)) {
    const Sampler::DeviceRow d = r.sampler.next_device_row();
    row.kind = RowSample::Kind::kDevice;
    row.temperature = d.temperature;
    row.top_k = d.top_k;
    row.top_p = d.top_p;
    row.uniform = d.uniform;
  } else {
    row.kind = RowSample::Kind::kLogits;
  }
  return row;
}

void Engine::sample_and_check(Request& r, std::span<const float> logits, RequestOutput& out) {
  const bool before_min = r.seq.num_output() < r.params.min_tokens;
  accept_token(r,
               r.sampler.sample(logits, before_min ? std::span<const int32_t>(r.banned)
                                                   : std::span<const int32_t>()),
               out);
}

void Engine::accept_token(Request& r, const SampledToken& tok, RequestOutput& out) {
  accept_token_at(r, r.seq.num_tokens(), tok, out);
}

void Engine::accept_device_id(Request& r, int64_t position, int32_t id, RequestOutput& out) {
  check(id >= 0 && id < executor_->vocab_size(),
        "engine: the executor sampled an id outside the vocabulary");
  accept_token_at(r, position, SampledToken{id, 0.0f, {}}, out);
}

void Engine::accept_token_at(Request& r, int64_t position, const SampledToken& tok,
                             RequestOutput& out) {
  const SamplingParams& p = r.params;
  if (r.seq.num_tokens() == position + 1) {
    check(r.seq.tokens.back() == kPlaceholderToken, "engine: no placeholder where a token lands");
    r.seq.tokens.back() = tok.id;
  } else {
    check(r.seq.num_tokens() == position, "engine: a sampled token for the wrong position");
    r.seq.tokens.push_back(tok.id);
  }
  // Whether this token is one of the first min_tokens (stop ids and strings do not apply yet).
  const bool before_min = r.seq.num_output() - 1 < p.min_tokens;
  if (!r.has_first_token) {
    r.has_first_token = true;
    r.first_token = Clock::now();
  }
  out.token_ids.push_back(tok.id);
  if (p.logprobs) out.logprobs.push_back(tok);
  out.completion_tokens = r.seq.num_output();
  out.ttft_s = std::chrono::duration<double>(r.first_token - r.arrival).count();

  // Stop order as QServe/vLLM: stop token ids, EOS, stop strings, then the length limits.
  const auto contains = [](const std::vector<int32_t>& v, int32_t x) {
    return std::find(v.begin(), v.end(), x) != v.end();
  };
  if (contains(p.stop_token_ids, tok.id) || (!p.ignore_eos && contains(eos_ids_, tok.id))) {
    out.stop_reason = "token:" + std::to_string(tok.id);
    if (r.detok) {
      // Release the text held back for UTF-8 or a possible stop string (the stop token itself
      // is not detokenized).
      StopChecker::Result res = r.stops.push(r.detok->flush(), !before_min);
      out.text += res.emit;
      if (res.stopped) {
        out.stop_reason = res.matched;
      } else {
        out.text += r.stops.flush();
      }
    }
    finish(r, "stop", out);
    return;
  }
  if (r.detok) {
    StopChecker::Result res = r.stops.push(r.detok->push(tok.id), !before_min);
    out.text += res.emit;
    if (res.stopped) {
      out.stop_reason = res.matched;
      finish(r, "stop", out);
      return;
    }
  }
  if (r.seq.num_tokens() >= r.seq.max_total_len) {
    if (r.detok) {
      StopChecker::Result res = r.stops.push(r.detok->flush(), true);
      out.text += res.emit;
      if (res.stopped) {
        out.stop_reason = res.matched;
        finish(r, "stop", out);
        return;
      }
      out.text += r.stops.flush();
    }
    finish(r, "length", out);
  }
}

void Engine::build_step(const SchedulerOutput& sched) {
  tokens_.clear();
  spans_.clear();
  tables_.clear();
  rows_.clear();
  for (const ScheduledChunk& c : sched.chunks) {
    Request& r = *requests_.at(c.seq->id);
    if (r.slot < 0) {
      check(!free_slots_.empty(), "engine: no free cache slot (scheduler over max_num_seqs)");
      r.slot = free_slots_.back();
      free_slots_.pop_back();
    }
    spans_.push_back({static_cast<int64_t>(tokens_.size()), c.num_tokens, c.context_len, r.slot});
    tables_.push_back(&c.seq->pages);
    tokens_.insert(tokens_.end(), c.seq->tokens.begin() + c.context_len,
                   c.seq->tokens.begin() + c.context_len + c.num_tokens);
    if (c.num_tokens == 1 && c.context_len > 0) {
      ++stats_.decode_tokens;
    } else {
      stats_.prefill_tokens += c.num_tokens;
    }
    rows_.push_back(c.samples ? plan_row(r) : RowSample{});
  }
}

// A step the executor may run while the engine goes on (pure decode, every row on the device:
// ModelExecutor::can_launch's contract).
bool Engine::launchable() const {
  return cfg_.overlap_steps && executor_->can_launch(spans_, rows_);
}

Engine::InFlight Engine::in_flight_rows(const SchedulerOutput& sched) const {
  InFlight rows;
  rows.reserve(sched.chunks.size());
  for (const ScheduledChunk& c : sched.chunks) {
    rows.push_back({c.seq->id, c.context_len + c.num_tokens});
  }
  return rows;
}

// The step after the in-flight one is known before its tokens are when nothing but those tokens
// could change it: no request can be admitted (none waits, or every slot runs and none is freed
// by length in the in-flight step), every running sequence is a row of the in-flight step, none
// needs a page the pool cannot give (so scheduling preempts nothing), and every continuing row
// can be sampled on the device. The rows whose in-flight token is their last by length are left
// out; rows that stop on a token or string are run once more and their extra token discarded
// when the in-flight step is collected (with a queue, their slot is refilled one step later than
// without overlap: the only difference overlap makes to a schedule).
std::optional<Engine::InFlight> Engine::launch_next(PhaseClock& clock) {
  const bool queue = scheduler_->num_waiting() > 0;
  if (!cfg_.overlap_steps || (queue && scheduler_->num_running() < cfg_.max_num_seqs)) {
    return std::nullopt;
  }
  for (const Sequence* s : scheduler_->running()) {
    if (s->num_pending() != 0) return std::nullopt;  // still prefilling: not in the step
  }
  std::vector<Request*> next;
  feed_.clear();
  const InFlight& cur = *in_flight_;
  for (size_t i = 0; i < cur.size(); ++i) {
    auto it = requests_.find(cur[i].request);
    if (it == requests_.end() || it->second->seq.status != SeqStatus::kRunning) continue;
    Request& r = *it->second;
    check(r.seq.num_tokens() == cur[i].position, "engine: in-flight row out of step");
    if (cur[i].position + 1 >= r.seq.max_total_len) {  // its last token is in flight
      if (queue) return std::nullopt;                  // its slot goes to a waiting request
      continue;
    }
    next.push_back(&r);
    feed_.push_back(static_cast<int32_t>(i));
  }
  if (next.empty()) return std::nullopt;

  // Tentatively: the placeholders, then whether the step qualifies (undone if not).
  int64_t new_pages = 0;
  bool ok = true;
  spans_.clear();
  rows_.clear();
  for (Request* r : next) {
    r->seq.tokens.push_back(kPlaceholderToken);
    ok = ok && device_row_ok(*r);
    new_pages += pages_for_tokens(r->seq.num_tokens()) > static_cast<int64_t>(r->seq.pages.size());
    spans_.push_back({static_cast<int64_t>(spans_.size()), 1, r->seq.num_computed, r->slot});
    rows_.push_back({RowSample::Kind::kDevice});
  }
  ok = ok && new_pages <= blocks_->num_free() && executor_->can_launch(spans_, rows_);
  if (!ok) {
    for (Request* r : next) r->seq.tokens.pop_back();
    return std::nullopt;
  }

  const SchedulerOutput sched = scheduler_->schedule();
  bool as_predicted = sched.preempted.empty() && sched.chunks.size() == next.size();
  for (size_t i = 0; as_predicted && i < next.size(); ++i) {
    const ScheduledChunk& c = sched.chunks[i];
    as_predicted = c.seq == &next[i]->seq && c.num_tokens == 1 && c.samples;
  }
  check(as_predicted, "engine: the overlapped step was not scheduled as predicted");
  clock.lap(stats_.schedule_s);
  build_step(sched);
  clock.lap(stats_.prepare_s);
  launch(feed_);
  ++stats_.overlapped_steps;
  scheduler_->on_step_done(sched);
  clock.lap(stats_.execute_s);
  return in_flight_rows(sched);
}

void Engine::collect_in_flight(std::vector<RequestOutput>& outputs, PhaseClock& clock) {
  --launched_;  // consumed even if collecting throws
  executor_->collect(ids_);
  clock.lap(stats_.execute_s);
  const InFlight& cur = *in_flight_;
  check(ids_.size() == cur.size(), "engine: executor returned ids of the wrong size");
  for (size_t i = 0; i < cur.size(); ++i) {
    auto it = requests_.find(cur[i].request);
    // Finished (a stop in the step before, or an abort): its extra token is discarded.
    if (it == requests_.end() || it->second->seq.status != SeqStatus::kRunning) continue;
    Request& r = *it->second;
    RequestOutput out = new_output(r);
    accept_device_id(r, cur[i].position, ids_[i], out);
    outputs.push_back(std::move(out));
  }
}

std::vector<RequestOutput> Engine::step() {
  try {
    return step_once();
  } catch (...) {
    abandon_launched();
    abort_lost();
    throw;
  }
}

void Engine::abort_lost() {
  std::vector<int64_t> lost;
  for (const auto& [id, r] : requests_) {
    const Sequence& s = r->seq;
    if (s.status == SeqStatus::kRunning &&
        (s.num_pending() == 0 || s.tokens.back() == kPlaceholderToken)) {
      lost.push_back(id);
    }
  }
  for (const int64_t id : lost) abort(id);
}

// One step. Without a launched step: schedule, build the inputs, then either run the step and
// accept its tokens, or (a launchable decode step) launch it. With a launched step in flight:
// launch the next one if it is known (launch_next), then collect the in-flight one. Either way
// the outputs of one model step come back, then go to the callbacks.
std::vector<RequestOutput> Engine::step_once() {
  PhaseClock clock;
  std::vector<RequestOutput> outputs = std::move(pending_);
  pending_.clear();
  if (!in_flight_) {
    const SchedulerOutput sched = scheduler_->schedule();
    stats_.preemptions += static_cast<int64_t>(sched.preempted.size());
    for (Sequence* s : sched.preempted) {
      Request& r = *requests_.at(s->id);
      free_slots_.push_back(r.slot);
      r.slot = -1;
    }
    clock.lap(stats_.schedule_s);
    if (!sched.empty()) {
      build_step(sched);
      clock.lap(stats_.prepare_s);
      if (launchable()) {
        launch({});
        scheduler_->on_step_done(sched);
        in_flight_ = in_flight_rows(sched);
        clock.lap(stats_.execute_s);
      } else {
        executor_->execute_rows(tokens_, spans_, tables_, rows_, logits_, ids_);
        clock.lap(stats_.execute_s);
        ++stats_.steps;
        scheduler_->on_step_done(sched);
        size_t n_logits = 0, n_ids = 0;
        for (const RowSample& row : rows_) {
          n_logits += row.kind == RowSample::Kind::kLogits;
          n_ids += row.kind == RowSample::Kind::kDevice;
        }
        const size_t vocab = static_cast<size_t>(executor_->vocab_size());
        check(logits_.size() == vocab * n_logits && ids_.size() == n_ids,
              "engine: executor returned logits or ids of the wrong size");
        size_t li = 0, di = 0;
        for (size_t i = 0; i < sched.chunks.size(); ++i) {
          if (rows_[i].kind == RowSample::Kind::kNone) continue;
          Request& r = *requests_.at(sched.chunks[i].seq->id);
          RequestOutput out = new_output(r);
          if (rows_[i].kind == RowSample::Kind::kLogits) {
            sample_and_check(r, {logits_.data() + vocab * li++, vocab}, out);
          } else {
            accept_device_id(r, r.seq.num_tokens(), ids_[di++], out);
          }
          outputs.push_back(std::move(out));
        }
      }
    }
  }
  if (in_flight_) {
    std::optional<InFlight> next = launch_next(clock);
    collect_in_flight(outputs, clock);
    in_flight_ = std::move(next);
  }
  for (const RequestOutput& o : outputs) {
    auto it = requests_.find(o.id);
    if (it == requests_.end()) continue;
    if (it->second->on_output) it->second->on_output(o);
    if (o.finished) requests_.erase(it);
  }
  clock.lap(stats_.outputs_s);
  return outputs;
}

std::vector<CompletedRequest> generate(
    Engine& engine, const std::vector<GenerationRequest>& requests,
    const std::function<void(const CompletedRequest&)>& on_done) {
  std::vector<CompletedRequest> done(requests.size());
  std::unordered_map<int64_t, size_t> index;
  try {
    for (size_t i = 0; i < requests.size(); ++i) {
      const int64_t id = engine.add_request(requests[i].prompt_ids, requests[i].params);
      index.emplace(id, i);
      done[i].id = id;
      done[i].prompt_tokens = static_cast<int64_t>(requests[i].prompt_ids.size());
    }
  } catch (const Error& e) {
    // All or nothing: withdraw what was queued, then report which request was refused.
    for (const auto& [id, i] : index) engine.abort(id);
    throw Error("generate: request " + std::to_string(index.size()) + ": " + e.what());
  }
  while (engine.has_unfinished()) {
    for (RequestOutput& o : engine.step()) {
      auto it = index.find(o.id);
      if (it == index.end()) continue;
      CompletedRequest& c = done[it->second];
      c.token_ids.insert(c.token_ids.end(), o.token_ids.begin(), o.token_ids.end());
      c.logprobs.insert(c.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      c.text += o.text;
      c.ttft_s = o.ttft_s;
      if (o.finished) {
        c.finish_reason = o.finish_reason;
        c.stop_reason = o.stop_reason;
        c.latency_s = o.latency_s;
        if (on_done) on_done(c);
      }
    }
  }
  return done;
}

}  // namespace qserve
