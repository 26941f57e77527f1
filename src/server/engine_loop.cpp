#include "server/engine_loop.h"

#include <cstdio>

#include "core/error.h"

namespace qserve::server {

void RequestChannel::push(const RequestOutput& o) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    outputs_.push_back(o);
    if (o.finished) finished_ = true;
  }
  cv_.notify_all();
}

bool RequestChannel::wait_pop(std::vector<RequestOutput>& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !outputs_.empty() || finished_; });
  while (!outputs_.empty()) {
    out.push_back(std::move(outputs_.front()));
    outputs_.pop_front();
  }
  return finished_;
}

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine, Metrics* metrics)
    : engine_(std::move(engine)), metrics_(metrics), max_model_len_(engine_->max_model_len()) {
  publish_snapshot();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() {
  stop();
}

std::vector<std::shared_ptr<RequestChannel>> EngineLoop::submit(
    std::vector<GenerationRequest> requests) {
  auto s = std::make_shared<Submission>();
  s->requests = std::move(requests);
  std::unique_lock<std::mutex> lock(mu_);
  check(!stopping_, "the server is shutting down");
  inbox_.push_back(s);
  cv_.notify_all();
  cv_.wait(lock, [&] { return s->taken; });
  if (!s->error.empty()) throw Error(s->error);
  return s->channels;
}

void EngineLoop::abort(const std::shared_ptr<RequestChannel>& channel) {
  std::lock_guard<std::mutex> lock(mu_);
  aborts_.push_back(channel->engine_id());
  cv_.notify_all();
}

void EngineLoop::abort_all() {
  std::lock_guard<std::mutex> lock(mu_);
  abort_all_ = true;
  cv_.notify_all();
}

void EngineLoop::stop(std::chrono::milliseconds drain) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!thread_.joinable()) return;
    stopping_ = true;
    cv_.notify_all();
  }
  if (!wait_idle(drain)) abort_all();
  {
    std::lock_guard<std::mutex> lock(mu_);
    exit_ = true;
    cv_.notify_all();
  }
  thread_.join();
}

EngineSnapshot EngineLoop::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return snapshot_;
}

bool EngineLoop::wait_idle(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout,
                      [&] { return snapshot_.active_requests == 0 && inbox_.empty(); });
}

void EngineLoop::deliver(const RequestOutput& o) {
  if (metrics_ != nullptr) {
    if (!o.token_ids.empty())
      metrics_->on_generation_tokens(static_cast<int64_t>(o.token_ids.size()));
    if (o.finished) {
      const bool has_tpot = o.completion_tokens > 1 && o.ttft_s > 0.0;
      const double tpot =
          has_tpot ? (o.latency_s - o.ttft_s) / static_cast<double>(o.completion_tokens - 1) : 0;
      metrics_->on_request_finished(o.finish_reason, o.ttft_s, tpot, has_tpot, o.latency_s,
                                    o.prompt_tokens, o.completion_tokens);
    }
  }
  const auto it = active_.find(o.id);
  if (it == active_.end()) return;
  it->second->push(o);
  if (o.finished) active_.erase(it);
}

void EngineLoop::admit(Submission& s) {
  std::vector<int64_t> ids;
  int64_t prompt_tokens = 0;
  for (const GenerationRequest& r : s.requests)
    prompt_tokens += static_cast<int64_t>(r.prompt_ids.size());
  try {
    for (GenerationRequest& r : s.requests) {
      auto ch = std::make_shared<RequestChannel>();
      const int64_t id = engine_->add_request(std::move(r.prompt_ids), r.params,
                                              [this](const RequestOutput& o) { deliver(o); });
      ch->engine_id_ = id;
      active_[id] = ch;
      ids.push_back(id);
      s.channels.push_back(std::move(ch));
    }
  } catch (const std::exception& e) {
    // All or nothing: take back the ones already queued (their pages are freed now, and their
    // abort outputs go nowhere).
    for (const int64_t id : ids) {
      engine_->abort(id);
      active_.erase(id);
    }
    s.channels.clear();
    s.error = e.what();
    return;
  }
  if (metrics_ != nullptr) metrics_->on_prompt_tokens(prompt_tokens);
}

void EngineLoop::publish_snapshot() {
  EngineSnapshot s;
  s.running = engine_->scheduler().num_running();
  s.waiting = engine_->scheduler().num_waiting();
  s.pages_total = engine_->blocks().num_pages();
  s.pages_used = engine_->blocks().num_used();
  s.active_requests = static_cast<int64_t>(active_.size());
  if (metrics_ != nullptr) {
    metrics_->set_engine_gauges({s.running, s.waiting, s.pages_total, s.pages_used});
  }
  std::lock_guard<std::mutex> lock(mu_);
  snapshot_ = s;
  cv_.notify_all();
}

void EngineLoop::run() {
  for (;;) {
    std::deque<std::shared_ptr<Submission>> inbox;
    std::vector<int64_t> aborts;
    bool abort_all = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        return exit_ || !inbox_.empty() || !aborts_.empty() || abort_all_ ||
               engine_->has_unfinished();
      });
      if (exit_ && inbox_.empty() && !engine_->has_unfinished() && active_.empty()) break;
      inbox.swap(inbox_);
      aborts.swap(aborts_);
      abort_all = abort_all_;
      abort_all_ = false;
    }
    for (const auto& s : inbox) {
      admit(*s);
      std::lock_guard<std::mutex> lock(mu_);
      s->taken = true;
    }
    if (!inbox.empty()) cv_.notify_all();
    if (abort_all) {
      for (const auto& [id, ch] : active_) aborts.push_back(id);
    }
    for (const int64_t id : aborts) engine_->abort(id);
    if (engine_->has_unfinished() || !aborts.empty()) {
      try {
        engine_->step();
      } catch (const std::exception& e) {
        // A failing step (out of memory, a device error) must not leave clients waiting
        // forever: end every active request with finish_reason "abort".
        std::fprintf(stderr, "error: engine step failed: %s; aborting %zu requests\n", e.what(),
                     active_.size());
        for (const auto& [id, ch] : active_) engine_->abort(id);
      }
    }
    publish_snapshot();
  }
  publish_snapshot();
}

}  // namespace qserve::server
