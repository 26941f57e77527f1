#include "engine/scheduler.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace qserve {

namespace {
bool older(const Sequence* a, const Sequence* b) { return a->arrival < b->arrival; }
}  // namespace

Scheduler::Scheduler(const SchedulerConfig& cfg, BlockManager& blocks) : cfg_(cfg), blocks_(blocks) {
  check(cfg.max_num_seqs > 0, "scheduler: max_num_seqs must be positive");
  check(cfg.max_model_len > 0, "scheduler: max_model_len must be positive");
  // Every running sequence must be able to decode in every step, or the newest ones would wait
  // behind the budget until the older ones finish.
  check(cfg.max_num_batched_tokens >= cfg.max_num_seqs,
        "scheduler: max_num_batched_tokens (" + std::to_string(cfg.max_num_batched_tokens) +
            ") must be at least max_num_seqs (" + std::to_string(cfg.max_num_seqs) + ")");
}

void Scheduler::add(Sequence* seq) {
  check(seq != nullptr && seq->num_prompt > 0 && seq->num_tokens() == seq->num_prompt,
        "scheduler: a new sequence needs a non-empty prompt and no output yet");
  const std::string who = "request " + std::to_string(seq->id) + ": ";
  check(seq->num_prompt < cfg_.max_model_len,
        who + "prompt of " + std::to_string(seq->num_prompt) +
            " tokens leaves no room to generate within the model's context of " +
            std::to_string(cfg_.max_model_len) + " tokens");
  check(seq->max_total_len > seq->num_prompt && seq->max_total_len <= cfg_.max_model_len,
        who + "maximum length " + std::to_string(seq->max_total_len) + " must be in (" +
            std::to_string(seq->num_prompt) + ", " + std::to_string(cfg_.max_model_len) + "]");
  check(blocks_.can_ever_fit(seq->max_total_len),
        who + "at its maximum length of " + std::to_string(seq->max_total_len) +
            " tokens it needs " + std::to_string(pages_for_tokens(seq->max_total_len)) +
            " KV pages; the cache has " + std::to_string(blocks_.num_pages()) + " (" +
            std::to_string(blocks_.watermark()) + " kept free as the watermark)");
  if (!cfg_.chunked_prefill) {
    // A preempted sequence is recomputed in one step, so its whole length must fit the budget.
    check(seq->max_total_len <= cfg_.max_num_batched_tokens,
          who + "maximum length of " + std::to_string(seq->max_total_len) +
              " tokens exceeds max_num_batched_tokens (" +
              std::to_string(cfg_.max_num_batched_tokens) + ") with chunked prefill off");
  }
  seq->status = SeqStatus::kWaiting;
  seq->num_computed = 0;
  seq->pages.clear();
  insert_waiting(seq);
}

void Scheduler::insert_waiting(Sequence* seq) {
  waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), seq, older), seq);
}

void Scheduler::preempt(Sequence* seq) {
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  blocks_.release(seq->pages);
  seq->num_computed = 0;
  seq->status = SeqStatus::kWaiting;
  ++seq->num_preemptions;
  insert_waiting(seq);
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  int64_t budget = cfg_.max_num_batched_tokens;

  // 1. Running sequences, oldest first; preempt the newest when a page is missing.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    if (s->num_pending() == 0) {  // overlap: its next token is still being sampled
      ++i;
      continue;
    }
    const int64_t n = std::min(s->num_pending(), budget);
    bool preempted_self = false;
    while (!blocks_.grow(s->pages, s->num_computed + n)) {
      Sequence* victim = running_.back();
      preempt(victim);
      out.preempted.push_back(victim);
      if (victim == s) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) break;  // s was the newest; nothing after it is left to schedule
    out.chunks.push_back({s, n, s->num_computed, s->num_computed + n == s->num_tokens()});
    budget -= n;
    ++i;
  }

  // 2. Waiting sequences, strictly in arrival order, unless memory was short this step.
  if (out.preempted.empty()) {
    while (!waiting_.empty() && budget > 0 &&
           static_cast<int64_t>(running_.size()) < cfg_.max_num_seqs) {
      Sequence* s = waiting_.front();
      const int64_t pending = s->num_pending();
      const int64_t n = std::min(pending, budget);
      if (!cfg_.chunked_prefill && n < pending) break;
      if (!blocks_.can_admit(s->pages, s->num_computed + n)) break;
      const bool grown = blocks_.grow(s->pages, s->num_computed + n);
      check(grown, "scheduler: page accounting is inconsistent");
      waiting_.pop_front();
      s->status = SeqStatus::kRunning;
      running_.insert(std::upper_bound(running_.begin(), running_.end(), s, older), s);
      out.chunks.push_back({s, n, s->num_computed, n == pending});
      budget -= n;
    }
  }
  out.num_tokens = cfg_.max_num_batched_tokens - budget;
  return out;
}

void Scheduler::on_step_done(const SchedulerOutput& out) {
  for (const ScheduledChunk& c : out.chunks) {
    check(c.seq->status == SeqStatus::kRunning && c.seq->num_computed == c.context_len,
          "scheduler: step result for a sequence that changed since it was scheduled");
    c.seq->num_computed += c.num_tokens;
  }
}

void Scheduler::finish(Sequence* seq) {
  if (seq->status == SeqStatus::kFinished) return;
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) {
    running_.erase(it);
  } else if (auto w = std::find(waiting_.begin(), waiting_.end(), seq); w != waiting_.end()) {
    waiting_.erase(w);
  }
  blocks_.release(seq->pages);
  seq->status = SeqStatus::kFinished;
}

}  // namespace qserve
