// In-flight batching scheduler (FCFS, chunked prefill, preemption by recompute).
//
// Every step takes, within `max_num_batched_tokens` tokens and `max_num_seqs` sequences:
//  1. the running sequences in arrival order - one token for those decoding, the next chunk
//     for those still prefilling, nothing for those whose next token is not known yet (the
//     engine's overlapped steps). When a page is missing, the newest running sequence is
//     preempted (its pages freed, its K/V to be recomputed later) until the page fits; a
//     sequence that must preempt itself waits.
//  2. then waiting sequences in arrival order (a preempted sequence keeps its place), each
//     admitted with the largest prefill chunk the token budget allows, while pages above the
//     watermark remain. Admission stops at the first that does not fit (strict FCFS, so the
//     oldest request is never starved by younger ones), and is skipped in a step that preempted.
// Sequences that can never fit (their maximum length needs more pages than the pool has, or it
// exceeds the model's context) are rejected by add() with an error naming the limit.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "engine/block_manager.h"
#include "engine/sequence.h"

namespace qserve {

struct SchedulerConfig {
  int64_t max_num_seqs = 256;
  int64_t max_num_batched_tokens = 2048;
  int64_t max_model_len = 2048;
  bool chunked_prefill = true;  // false: a prompt is prefilled in one step or waits
};

struct ScheduledChunk {
  Sequence* seq;
  int64_t num_tokens;   // tokens to run: seq->tokens[context_len, context_len + num_tokens)
  int64_t context_len;  // == seq->num_computed at scheduling time
  bool samples;         // the chunk reaches the end of the sequence: a token is sampled after it
};

struct SchedulerOutput {
  std::vector<ScheduledChunk> chunks;  // running sequences first, in arrival order
  std::vector<Sequence*> preempted;    // moved back to waiting this step
  int64_t num_tokens = 0;
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& cfg, BlockManager& blocks);

  // Queues a new sequence (status waiting, nothing computed). Throws qserve::Error, queuing
  // nothing, if it can never be served.
  void add(Sequence* seq);
  SchedulerOutput schedule();
  // After the model ran a step: advances num_computed of every chunk. Tokens sampled for the
  // chunks with `samples` must be appended by the caller afterwards.
  void on_step_done(const SchedulerOutput& out);
  // Frees a sequence's pages and removes it from the queues (finished or aborted).
  void finish(Sequence* seq);

  bool has_unfinished() const { return !waiting_.empty() || !running_.empty(); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const std::vector<Sequence*>& running() const { return running_; }
  const SchedulerConfig& config() const { return cfg_; }
  const BlockManager& blocks() const { return blocks_; }

 private:
  void preempt(Sequence* seq);
  void insert_waiting(Sequence* seq);

  SchedulerConfig cfg_;
  BlockManager& blocks_;
  std::deque<Sequence*> waiting_;   // arrival order
  std::vector<Sequence*> running_;  // arrival order
};

}  // namespace qserve
