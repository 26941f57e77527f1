// Property tests of the Scheduler + BlockManager: random add / step / abort / finish sequences
// (with a pool small enough to force preemption) must never leak a page, never share one, never
// exceed a budget, and must serve every request in the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <set>

#include "core/error.h"
#include "engine/scheduler.h"

namespace qserve {
namespace {

struct Sim {
  SchedulerConfig cfg;
  BlockManager blocks;
  Scheduler sched;
  std::vector<std::unique_ptr<Sequence>> seqs;
  std::vector<int64_t> target;  // output tokens at which each sequence finishes
  std::mt19937_64 rng;
  int64_t finished = 0, preemptions = 0, steps = 0;

  Sim(const SchedulerConfig& c, int64_t pages, uint64_t seed)
      : cfg(c), blocks(pages, 0.02), sched(c, blocks), rng(seed) {}

  int64_t uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }

  bool add(int64_t prompt, int64_t max_new) {
    auto s = std::make_unique<Sequence>();
    s->id = static_cast<int64_t>(seqs.size());
    s->arrival = s->id;
    s->tokens.assign(static_cast<size_t>(prompt), 7);
    s->num_prompt = prompt;
    s->max_total_len = std::min(cfg.max_model_len, prompt + max_new);
    try {
      sched.add(s.get());
    } catch (const Error&) {
      return false;  // can never fit: rejected, nothing queued
    }
    target.push_back(uniform(1, s->max_total_len - prompt));
    seqs.push_back(std::move(s));
    return true;
  }

  void check_invariants() const {
    int64_t held = 0;
    std::set<int32_t> pages;
    for (const auto& s : seqs) {
      if (s->status != SeqStatus::kRunning) {
        ASSERT_TRUE(s->pages.empty()) << "sequence " << s->id << " holds pages while not running";
        continue;
      }
      ASSERT_GE(static_cast<int64_t>(s->pages.size()), pages_for_tokens(s->num_computed));
      for (int32_t p : s->pages) {
        ASSERT_TRUE(pages.insert(p).second) << "page " << p << " held twice";
        ASSERT_EQ(blocks.refcount(p), 1);
      }
      held += static_cast<int64_t>(s->pages.size());
    }
    ASSERT_EQ(held, blocks.num_used()) << "leaked pages";
    ASSERT_LE(sched.num_running(), cfg.max_num_seqs);
  }

  void step() {
    const SchedulerOutput out = sched.schedule();
    ++steps;
    preemptions += static_cast<int64_t>(out.preempted.size());
    ASSERT_LE(out.num_tokens, cfg.max_num_batched_tokens);
    ASSERT_LE(static_cast<int64_t>(out.chunks.size()), cfg.max_num_seqs);
    int64_t total = 0;
    std::set<int64_t> ids;
    for (const ScheduledChunk& c : out.chunks) {
      ASSERT_TRUE(ids.insert(c.seq->id).second) << "sequence scheduled twice in one step";
      ASSERT_EQ(c.seq->status, SeqStatus::kRunning);
      ASSERT_EQ(c.context_len, c.seq->num_computed);
      ASSERT_GT(c.num_tokens, 0);
      ASSERT_LE(c.context_len + c.num_tokens, c.seq->num_tokens());
      ASSERT_GE(static_cast<int64_t>(c.seq->pages.size()) * kPageTokens,
                c.context_len + c.num_tokens);
      total += c.num_tokens;
    }
    ASSERT_EQ(total, out.num_tokens);
    sched.on_step_done(out);
    for (const ScheduledChunk& c : out.chunks) {
      if (!c.samples) continue;
      Sequence* s = c.seq;
      s->tokens.push_back(3);
      if (s->num_output() >= target[static_cast<size_t>(s->id)] ||
          s->num_tokens() >= s->max_total_len) {
        sched.finish(s);
        ++finished;
      }
    }
    check_invariants();
  }

  void abort_random() {
    std::vector<Sequence*> live;
    for (auto& s : seqs) {
      if (s->status != SeqStatus::kFinished) live.push_back(s.get());
    }
    if (live.empty()) return;
    sched.finish(live[static_cast<size_t>(uniform(0, static_cast<int64_t>(live.size()) - 1))]);
    ++finished;
    check_invariants();
  }
};

void run_random(uint64_t seed, bool chunked) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 8;
  cfg.max_num_batched_tokens = chunked ? 96 : 512;
  cfg.max_model_len = 512;
  cfg.chunked_prefill = chunked;
  Sim sim(cfg, /*pages=*/24, seed);  // 24 pages of 64: far less than 8 sequences x 512
  for (int op = 0; op < 10000; ++op) {
    const int64_t r = sim.uniform(0, 99);
    if (r < 20) {
      sim.add(sim.uniform(1, 300), sim.uniform(1, 400));
    } else if (r < 23) {
      sim.abort_random();
    } else {
      sim.step();
    }
    if (::testing::Test::HasFatalFailure()) return;
  }
  // Drain: everything still queued must be served.
  for (int guard = 0; sim.sched.has_unfinished(); ++guard) {
    ASSERT_LT(guard, 200000) << "requests starved";
    sim.step();
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_EQ(sim.finished, static_cast<int64_t>(sim.seqs.size()));
  EXPECT_EQ(sim.blocks.num_free(), sim.blocks.num_pages());
  EXPECT_GT(sim.preemptions, 0) << "the pool was meant to force preemption";
}

TEST(SchedulerProperty, RandomOpsChunkedPrefill) {
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    SCOPED_TRACE(seed);
    run_random(seed, true);
  }
}

TEST(SchedulerProperty, RandomOpsWholePrefill) { run_random(11, false); }

TEST(Scheduler, OldestRequestIsNotStarvedByAStreamOfShortOnes) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 4;
  cfg.max_num_batched_tokens = 64;
  cfg.max_model_len = 1024;
  Sim sim(cfg, 20, 5);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sim.add(8, 500));  // keep pages busy
  ASSERT_TRUE(sim.add(900, 50));                              // the big one
  Sequence* big = sim.seqs.back().get();
  for (int step = 0; step < 3000 && big->status != SeqStatus::kFinished; ++step) {
    sim.add(4, 4);  // younger short requests keep arriving
    sim.step();
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
  }
  EXPECT_EQ(big->status, SeqStatus::kFinished);
}

TEST(Scheduler, DecodesAndPrefillChunksShareAStepWithinBudgets) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 4;
  cfg.max_num_batched_tokens = 100;
  cfg.max_model_len = 1024;
  Sim sim(cfg, 64, 1);
  ASSERT_TRUE(sim.add(50, 100));
  sim.step();  // prefill 50
  ASSERT_TRUE(sim.add(300, 10));
  SchedulerOutput out = sim.sched.schedule();
  ASSERT_EQ(out.chunks.size(), 2u);
  EXPECT_EQ(out.chunks[0].num_tokens, 1);    // the decode
  EXPECT_EQ(out.chunks[1].num_tokens, 99);   // a prefill chunk fills the rest of the budget
  EXPECT_FALSE(out.chunks[1].samples);
  EXPECT_EQ(out.num_tokens, 100);
}

TEST(Scheduler, RejectsWhatCanNeverBeServed) {
  SchedulerConfig cfg;
  cfg.max_num_seqs = 2;
  cfg.max_num_batched_tokens = 256;
  cfg.max_model_len = 1000;
  BlockManager blocks(4, 0.0);  // 256 positions
  Scheduler sched(cfg, blocks);
  Sequence too_long;
  too_long.num_prompt = 1000;
  too_long.tokens.assign(1000, 1);
  too_long.max_total_len = 1000;
  EXPECT_THROW(sched.add(&too_long), Error);  // prompt fills the whole context
  Sequence no_pages;
  no_pages.num_prompt = 200;
  no_pages.tokens.assign(200, 1);
  no_pages.max_total_len = 400;  // 7 pages at its maximum length
  EXPECT_THROW(sched.add(&no_pages), Error);
  EXPECT_FALSE(sched.has_unfinished());
  EXPECT_THROW(Scheduler(SchedulerConfig{8, 4, 100, true}, blocks), Error);  // budget < seqs
}

}  // namespace
}  // namespace qserve
