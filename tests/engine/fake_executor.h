// A model stand-in for engine tests and the host-overhead benchmark: its "KV cache" stores token
// ids in pages, and the logits of a row are a pseudo-random function of every token id read
// back through the sequence's page table (its whole context) plus the row's own token. If the
// engine hands two sequences the same page, loses a page on preemption or schedules a chunk at
// the wrong context, the logits - and so the tokens - change, so "batched == alone" checks the
// paging, not just the bookkeeping.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/model_executor.h"

namespace qserve::test {

class FakeExecutor final : public ModelExecutor {
 public:
  FakeExecutor(int64_t vocab, int64_t num_pages, int64_t num_slots, uint64_t seed = 1)
      : vocab_(vocab),
        num_pages_(num_pages),
        num_slots_(num_slots),
        seed_(seed),
        kv_(static_cast<size_t>(num_pages * kPageTokens), -1) {}

  int64_t vocab_size() const override { return vocab_; }
  int64_t num_slots() const override { return num_slots_; }
  int64_t num_pages() const override { return num_pages_; }
  std::string describe() const override { return "fake"; }

  void execute(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
               std::span<const PageTable* const> pages, std::vector<float>& logits) override {
    check(pages.size() == seqs.size(), "fake: pages per sequence");
    logits.assign(seqs.size() * static_cast<size_t>(vocab_), 0.0f);
    ++steps;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const SeqSpan& s = seqs[i];
      const PageTable& table = *pages[i];
      check(s.kv_slot >= 0 && s.kv_slot < num_slots_, "fake: slot out of range");
      check(static_cast<int64_t>(table.size()) * kPageTokens >= s.context_len + s.num_tokens,
            "fake: page table does not cover the chunk");
      for (int64_t j = 0; j < s.num_tokens; ++j) {
        at(table, s.context_len + j) = tokens[static_cast<size_t>(s.token_offset + j)];
      }
      // Hash of the whole context as read through the pages.
      uint64_t h = seed_;
      const int64_t len = s.context_len + s.num_tokens;
      for (int64_t p = 0; p < len; ++p) {
        const int32_t t = at(table, p);
        check(t >= 0, "fake: read of a position never written");
        h = mix(h ^ static_cast<uint64_t>(t));
      }
      float* row = &logits[i * static_cast<size_t>(vocab_)];
      uint64_t x = h;
      for (int64_t v = 0; v < vocab_; ++v) {
        x = mix(x + 0x9e3779b97f4a7c15ULL);
        row[v] = static_cast<float>(x >> 40) / static_cast<float>(1 << 24) * 8.0f;  // [0, 8)
      }
      if (favour >= 0 && favour < vocab_) row[favour] += favour_bonus;
    }
  }

  // With device_sampling, the fake claims to sample on a device: kDevice rows get argmax
  // (temperature 0) or floor(uniform * vocab), a deterministic function of the row's uniform, so
  // seeded reproducibility is visible; every RowSample seen is recorded in `seen`.
  bool samples_on_device() const override { return device_sampling; }
  void execute_rows(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                    std::span<const PageTable* const> pages, std::span<const RowSample> rows,
                    std::vector<float>& logits, std::vector<int32_t>& ids) override {
    check(outstanding_.empty(), "fake: a synchronous step while one is launched");
    run_rows(tokens, seqs, pages, rows, logits, ids);
  }

  // With launch_steps (and device_sampling), pure decode steps of kDevice rows are launched:
  // computed at launch like a device would (fed tokens taken from the previous launch's ids),
  // their ids held until collect(). Checks the engine's side of the contract: at most two
  // outstanding, feed only from an outstanding step, no synchronous step while one is.
  bool can_launch(std::span<const SeqSpan> seqs, std::span<const RowSample> rows) const override {
    if (!launch_steps || !device_sampling || seqs.size() != rows.size()) return false;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (seqs[i].num_tokens != 1 || seqs[i].context_len == 0 ||
          seqs[i].token_offset != static_cast<int64_t>(i) ||
          rows[i].kind != RowSample::Kind::kDevice) {
        return false;
      }
    }
    return true;
  }
  void launch(std::span<const int32_t> tokens, std::span<const int32_t> feed,
              std::span<const SeqSpan> seqs, std::span<const PageTable* const> pages,
              std::span<const RowSample> rows) override {
    check(can_launch(seqs, rows), "fake: launch of a step it cannot launch");
    check(outstanding_.size() < 2, "fake: a third outstanding step");
    std::vector<int32_t> in(tokens.begin(), tokens.end());
    if (!feed.empty()) {
      check(feed.size() == seqs.size() && !outstanding_.empty(), "fake: feed without a step");
      const std::vector<int32_t>& prev = outstanding_.back();
      for (size_t i = 0; i < feed.size(); ++i) {
        if (feed[i] < 0) continue;
        check(static_cast<size_t>(feed[i]) < prev.size(), "fake: feed index out of range");
        in[i] = prev[static_cast<size_t>(feed[i])];
      }
    }
    for (int32_t t : in) check(t >= 0 && t < vocab_, "fake: launched token outside the vocabulary");
    std::vector<float> logits;
    std::vector<int32_t> ids;
    run_rows(in, seqs, pages, rows, logits, ids);
    outstanding_.push_back(std::move(ids));
    ++launches;
    max_outstanding = std::max<int64_t>(max_outstanding, static_cast<int64_t>(outstanding_.size()));
  }
  void collect(std::vector<int32_t>& ids) override {
    check(!outstanding_.empty(), "fake: collect without a launched step");
    ids = std::move(outstanding_.front());
    outstanding_.erase(outstanding_.begin());
    if (collects++ == fail_collect) throw Error("fake: device error while collecting");
  }

  bool device_sampling = false;
  bool launch_steps = false;
  int64_t launches = 0, max_outstanding = 0, collects = 0;
  int64_t fail_collect = -1;  // the collect() (0-based) that throws, after dropping its step
  int64_t outstanding() const { return static_cast<int64_t>(outstanding_.size()); }
  std::vector<RowSample> seen;
  int64_t steps = 0;
  int32_t favour = -1;  // a token id to boost in every row (e.g. EOS), tests only
  float favour_bonus = 0.0f;

 private:
  // One step's rows: the logits of kLogits rows, the ids of kDevice rows (see execute_rows).
  void run_rows(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                std::span<const PageTable* const> pages, std::span<const RowSample> rows,
                std::vector<float>& logits, std::vector<int32_t>& ids) {
    if (!device_sampling) {
      ModelExecutor::execute_rows(tokens, seqs, pages, rows, logits, ids);
      seen.insert(seen.end(), rows.begin(), rows.end());
      return;
    }
    std::vector<float> all;
    execute(tokens, seqs, pages, all);
    logits.clear();
    ids.clear();
    for (size_t i = 0; i < rows.size(); ++i) {
      seen.push_back(rows[i]);
      const float* row = all.data() + i * static_cast<size_t>(vocab_);
      if (rows[i].kind == RowSample::Kind::kLogits) {
        logits.insert(logits.end(), row, row + vocab_);
      } else if (rows[i].kind == RowSample::Kind::kDevice) {
        if (rows[i].temperature == 0.0f) {
          ids.push_back(static_cast<int32_t>(std::max_element(row, row + vocab_) - row));
        } else {
          ids.push_back(static_cast<int32_t>(rows[i].uniform * static_cast<double>(vocab_)));
        }
      }
    }
  }

  static constexpr int64_t kPageTokens = 64;
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  int32_t& at(const PageTable& table, int64_t pos) {
    const int32_t page = table[static_cast<size_t>(pos / kPageTokens)];
    check(page >= 0 && page < num_pages_, "fake: page id out of range");
    return kv_[static_cast<size_t>(page * kPageTokens + pos % kPageTokens)];
  }
  int64_t vocab_, num_pages_, num_slots_;
  uint64_t seed_;
  std::vector<int32_t> kv_;
  std::vector<std::vector<int32_t>> outstanding_;  // launched steps' ids, oldest first
};

}  // namespace qserve::test
