// EngineLoop: owns the Engine on a thread of its own (the Engine is single-threaded) and serves
// HTTP threads through a mutex-protected inbox: they submit groups of requests and aborts; the
// loop admits them between steps, steps while anything is unfinished, and delivers each
// request's outputs to its RequestChannel, on which the HTTP thread waits.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "server/metrics.h"

namespace qserve::server {

// The outputs of one engine request, handed from the engine thread to the HTTP thread.
class RequestChannel {
 public:
  // Waits up to `timeout` for outputs; moves them into `out` (appending). Returns true when the
  // request has finished and every output has been taken.
  bool wait_pop(std::vector<RequestOutput>& out, std::chrono::milliseconds timeout);
  int64_t engine_id() const { return engine_id_; }

 private:
  friend class EngineLoop;
  void push(const RequestOutput& o);

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> outputs_;
  bool finished_ = false;
  int64_t engine_id_ = -1;
};

struct EngineSnapshot {
  int64_t running = 0, waiting = 0;
  int64_t pages_total = 0, pages_used = 0;
  int64_t active_requests = 0;  // submitted and not finished
};

class EngineLoop {
 public:
  // metrics may be null. Starts the thread.
  EngineLoop(std::unique_ptr<Engine> engine, Metrics* metrics);
  ~EngineLoop();  // stop(): aborts what is left and joins

  // Queues the requests as one group: all are admitted or none (the first error is thrown as
  // qserve::Error, e.g. a prompt the KV cache can never hold). Blocks until the loop has taken
  // them (between two steps). Throws qserve::Error("shutting down") once stop has begun.
  std::vector<std::shared_ptr<RequestChannel>> submit(std::vector<GenerationRequest> requests);
  // Aborts the request (its pages are freed at once by the engine); its final output, with
  // finish_reason "abort", arrives on the channel. Harmless if it already finished.
  void abort(const std::shared_ptr<RequestChannel>& channel);
  // Aborts every active request.
  void abort_all();
  // Lets the active requests finish (up to `drain`, then aborts them), then ends the thread.
  // New submissions are refused from the moment it is called.
  void stop(std::chrono::milliseconds drain = std::chrono::milliseconds(0));

  EngineSnapshot snapshot() const;
  int64_t max_model_len() const { return max_model_len_; }
  // Waits until no request is active (for tests and graceful shutdown); false on timeout.
  bool wait_idle(std::chrono::milliseconds timeout) const;

 private:
  struct Submission {
    std::vector<GenerationRequest> requests;
    std::vector<std::shared_ptr<RequestChannel>> channels;
    bool taken = false;
    std::string error;  // set by the loop when admission failed
  };
  void run();
  void admit(Submission& s);
  void deliver(const RequestOutput& o);
  void publish_snapshot();

  std::unique_ptr<Engine> engine_;
  Metrics* metrics_;
  const int64_t max_model_len_;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // inbox changed / submission taken / snapshot changed
  std::deque<std::shared_ptr<Submission>> inbox_;
  std::vector<int64_t> aborts_;
  bool abort_all_ = false;
  bool stopping_ = false;
  bool exit_ = false;
  EngineSnapshot snapshot_;

  // Engine-thread state: the channel of every active engine request.
  std::unordered_map<int64_t, std::shared_ptr<RequestChannel>> active_;
  std::thread thread_;
};

}  // namespace qserve::server
