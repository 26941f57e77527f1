// Overlapped decode steps (EngineConfig::overlap_steps) on the fake executor: launching step
// N + 1 before collecting step N must not change any request's tokens, stop or finish reason,
// or what its callback streams; stops, length limits, aborts, host-sampled rows and preemption
// must all still work, and every page must come back.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "fake_executor.h"

namespace qserve {
namespace {

constexpr int64_t kVocab = 512;
constexpr int32_t kEos = 7;

struct Shape {
  int64_t pages = 64, max_seqs = 8, budget = 256;
  bool overlap = true, launch_steps = true;
};

struct Outcome {
  std::vector<CompletedRequest> done;
  std::map<int64_t, std::vector<int32_t>> streamed;  // callback tokens per request id
  std::map<int64_t, int> finished_outputs;           // finished outputs per request id
  EngineStats stats;
  int64_t launches = 0, max_outstanding = 0;
  bool pages_back = false;
};

std::vector<GenerationRequest> make_requests(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, kVocab - 1);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    r.prompt_ids.resize(std::uniform_int_distribution<size_t>(1, 200)(rng));
    for (int32_t& t : r.prompt_ids) t = tok(rng);
    SamplingParams& p = r.params;
    p.max_tokens = std::uniform_int_distribution<int64_t>(1, 70)(rng);
    switch (i % 6) {
      case 0:  // greedy, stops on any of 24 ids (~5% a token): most stop early
        for (int32_t s = 100; s < 124; ++s) p.stop_token_ids.push_back(s);
        break;
      case 1:
        p.temperature = 0.8f;
        p.top_k = 40;
        p.seed = 100 + static_cast<uint64_t>(i);
        break;
      case 2:  // EOS banned for the first tokens: host rows, then device rows
        p.min_tokens = 6;
        p.stop_token_ids = {kEos, 3, 4, 5, 6};
        break;
      case 3:
        p.temperature = 1.0f;
        p.top_p = 0.9f;
        p.seed = 7 + static_cast<uint64_t>(i);
        p.ignore_eos = true;
        break;
      case 4:  // logprobs: sampled on the host every step
        p.logprobs = true;
        break;
      default:
        break;
    }
    reqs.push_back(std::move(r));
  }
  return reqs;
}

Outcome run_all(const Shape& s, const std::vector<GenerationRequest>& reqs) {
  EngineConfig cfg;
  cfg.max_num_seqs = s.max_seqs;
  cfg.max_num_batched_tokens = s.budget;
  cfg.overlap_steps = s.overlap;
  auto exec = std::make_unique<test::FakeExecutor>(kVocab, s.pages, s.max_seqs);
  exec->device_sampling = true;
  exec->launch_steps = s.launch_steps;
  // Some greedy rows pick EOS (a request that does not ignore it then stops).
  exec->favour = kEos;
  exec->favour_bonus = 0.35f;
  test::FakeExecutor* fake = exec.get();
  Engine e(std::move(exec), nullptr, cfg, 1024, {kEos});
  Outcome r;
  std::map<int64_t, size_t> index;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const int64_t id =
        e.add_request(reqs[i].prompt_ids, reqs[i].params, [&r](const RequestOutput& o) {
          r.streamed[o.id].insert(r.streamed[o.id].end(), o.token_ids.begin(), o.token_ids.end());
          r.finished_outputs[o.id] += o.finished ? 1 : 0;
        });
    index[id] = i;
  }
  r.done.resize(reqs.size());
  while (e.has_unfinished()) {
    for (const RequestOutput& o : e.step()) {
      CompletedRequest& c = r.done[index.at(o.id)];
      c.id = o.id;
      c.token_ids.insert(c.token_ids.end(), o.token_ids.begin(), o.token_ids.end());
      c.logprobs.insert(c.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      if (o.finished) {
        c.finish_reason = o.finish_reason;
        c.stop_reason = o.stop_reason;
      }
    }
  }
  r.stats = e.stats();
  r.launches = fake->launches;
  r.max_outstanding = fake->max_outstanding;
  r.pages_back = e.blocks().num_free() == e.blocks().num_pages();
  return r;
}

void expect_same(const Outcome& a, const Outcome& b) {
  ASSERT_EQ(a.done.size(), b.done.size());
  for (size_t i = 0; i < a.done.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(a.done[i].token_ids, b.done[i].token_ids);
    EXPECT_EQ(a.done[i].finish_reason, b.done[i].finish_reason);
    EXPECT_EQ(a.done[i].stop_reason, b.done[i].stop_reason);
    EXPECT_EQ(a.done[i].logprobs.size(), b.done[i].logprobs.size());
    const int64_t id = a.done[i].id;
    EXPECT_EQ(a.streamed.at(id), a.done[i].token_ids);
    EXPECT_EQ(b.streamed.at(b.done[i].id), b.done[i].token_ids);
    EXPECT_EQ(a.finished_outputs.at(id), 1);
  }
}

TEST(EngineOverlap, SameOutputsAsSequentialSteps) {
  const std::vector<GenerationRequest> reqs = make_requests(36, 11);
  for (const int64_t max_seqs : {8, 40}) {  // a queue that admits as requests end; all at once
    SCOPED_TRACE(max_seqs);
    Shape s;
    s.max_seqs = max_seqs;
    s.budget = 1024;
    const Outcome overlapped = run_all(s, reqs);
    s.overlap = false;
    const Outcome sequential = run_all(s, reqs);
    s.overlap = true;
    s.launch_steps = false;  // an executor that cannot launch: the engine runs every step itself
    const Outcome unsupported = run_all(s, reqs);

    expect_same(overlapped, sequential);
    expect_same(overlapped, unsupported);
    EXPECT_GT(overlapped.stats.overlapped_steps, 10);
    EXPECT_GT(overlapped.launches, overlapped.stats.overlapped_steps);  // + the first of each run
    EXPECT_EQ(overlapped.max_outstanding, 2);
    EXPECT_EQ(sequential.launches, 0);
    EXPECT_EQ(sequential.stats.overlapped_steps, 0);
    EXPECT_EQ(unsupported.stats.overlapped_steps, 0);
    // Rows run ahead for requests that then stopped are the only extra work.
    EXPECT_GE(overlapped.stats.decode_tokens, sequential.stats.decode_tokens);
    // With every request admitted at once, some stopped on a token with a row in flight.
    if (max_seqs == 40) {
      EXPECT_GT(overlapped.stats.decode_tokens, sequential.stats.decode_tokens);
    }
    for (const Outcome* r : {&overlapped, &sequential, &unsupported}) EXPECT_TRUE(r->pages_back);
    // The cases cover every way a request ends.
    std::map<std::string, int> reasons;
    for (const CompletedRequest& c : overlapped.done) ++reasons[c.finish_reason];
    EXPECT_GT(reasons["stop"], 0);
    EXPECT_GT(reasons["length"], 0);
    std::printf("max_seqs %lld: %lld steps, %lld run ahead\n", static_cast<long long>(max_seqs),
                static_cast<long long>(overlapped.stats.steps),
                static_cast<long long>(overlapped.stats.overlapped_steps));
  }
}

// A pool too small for every running sequence: steps that would need a page the pool cannot
// give are not launched ahead (the engine schedules them itself and preempts), with the same
// tokens as without overlap.
TEST(EngineOverlap, PreemptionUnderOverlapKeepsTheTokens) {
  const std::vector<GenerationRequest> reqs = make_requests(24, 5);
  Shape s;
  s.pages = 12;
  s.max_seqs = 8;
  s.budget = 48;
  const Outcome overlapped = run_all(s, reqs);
  s.overlap = false;
  const Outcome sequential = run_all(s, reqs);
  expect_same(overlapped, sequential);
  EXPECT_GT(overlapped.stats.preemptions, 0);
  EXPECT_GT(overlapped.stats.overlapped_steps, 0);
  EXPECT_TRUE(overlapped.pages_back);
}

// Overlap only removes host time: a long all-device decode runs ahead on every step but its
// first and last.
TEST(EngineOverlap, LongDecodeRunsAheadEveryStep) {
  std::mt19937_64 rng(3);
  std::vector<GenerationRequest> reqs(8);
  for (GenerationRequest& r : reqs) {
    r.prompt_ids.assign(20, 0);
    for (int32_t& t : r.prompt_ids) t = static_cast<int32_t>(rng() % kVocab);
    r.params.max_tokens = 50;
    r.params.ignore_eos = true;
  }
  const Outcome r = run_all(Shape{}, reqs);
  // 1 prefill step, then 49 decode steps: the first is launched, the next 48 run ahead of
  // their predecessors' samples, except the last (its tokens end every request by length).
  EXPECT_EQ(r.stats.steps, 50);
  EXPECT_EQ(r.stats.overlapped_steps, 48);
  for (const CompletedRequest& c : r.done) {
    EXPECT_EQ(c.token_ids.size(), 50u);
    EXPECT_EQ(c.finish_reason, "length");
  }
}

// A queue longer than the slots (a loaded server): while every slot runs and none is freed by
// length, steps still run ahead; a request that stops on a token hands its slot to the queue one
// step later than without overlap, which changes no request's tokens.
TEST(EngineOverlap, QueuedRequestsStillRunAhead) {
  std::mt19937_64 rng(21);
  std::vector<GenerationRequest> reqs(24);
  for (size_t i = 0; i < reqs.size(); ++i) {
    GenerationRequest& r = reqs[i];
    r.prompt_ids.assign(20, 0);
    for (int32_t& t : r.prompt_ids) t = static_cast<int32_t>(rng() % kVocab);
    r.params.max_tokens = 40 + static_cast<int64_t>(i % 5);
    r.params.ignore_eos = true;
    if (i % 3 == 0) {
      for (int32_t t = 200; t < 240; ++t) r.params.stop_token_ids.push_back(t);
    }
  }
  Shape s;
  s.max_seqs = 4;
  const Outcome overlapped = run_all(s, reqs);
  s.overlap = false;
  const Outcome sequential = run_all(s, reqs);
  expect_same(overlapped, sequential);
  // Decode steps between admissions run ahead although the queue is never empty until the end.
  EXPECT_GT(overlapped.stats.overlapped_steps, overlapped.stats.steps / 2);
  EXPECT_TRUE(overlapped.pages_back);
  std::printf("queue of 24 over 4 slots: %lld steps, %lld run ahead\n",
              static_cast<long long>(overlapped.stats.steps),
              static_cast<long long>(overlapped.stats.overlapped_steps));
}

// An engine of 4 slots and 32 pages over a fake that launches steps.
struct SmallEngine {
  test::FakeExecutor* fake = nullptr;
  std::unique_ptr<Engine> engine;
};
SmallEngine small_launching_engine() {
  EngineConfig cfg;
  cfg.max_num_seqs = 4;
  cfg.max_num_batched_tokens = 512;
  auto exec = std::make_unique<test::FakeExecutor>(kVocab, 32, 4);
  exec->device_sampling = true;
  exec->launch_steps = true;
  SmallEngine s;
  s.fake = exec.get();
  s.engine = std::make_unique<Engine>(std::move(exec), nullptr, cfg, 1024, std::vector<int32_t>{});
  return s;
}

TEST(EngineOverlap, AbortWhileAStepIsInFlight) {
  SmallEngine small = small_launching_engine();
  Engine& e = *small.engine;
  std::mt19937_64 rng(1);
  std::vector<int32_t> prompt(100);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % kVocab);
  SamplingParams p;
  p.max_tokens = 200;
  std::map<int64_t, std::string> reasons;
  std::map<int64_t, int64_t> tokens;
  const auto record = [&](const RequestOutput& o) {
    tokens[o.id] += static_cast<int64_t>(o.token_ids.size());
    if (o.finished) reasons[o.id] = o.finish_reason;
  };
  const int64_t a = e.add_request(prompt, p, record);
  const int64_t b = e.add_request(prompt, p, record);
  for (int i = 0; i < 6; ++i) e.step();
  ASSERT_GT(e.stats().overlapped_steps, 0);
  const int64_t used = e.blocks().num_used();
  const int64_t a_tokens = tokens[a];
  EXPECT_TRUE(e.abort(a));
  EXPECT_FALSE(e.abort(a));
  EXPECT_LT(e.blocks().num_used(), used);
  while (e.has_unfinished()) e.step();
  EXPECT_EQ(reasons[a], "abort");
  EXPECT_EQ(tokens[a], a_tokens);  // the in-flight token of an aborted request is discarded
  EXPECT_EQ(reasons[b], "length");
  EXPECT_EQ(tokens[b], 200);
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_pages());
}

// A device error while collecting: step() throws with nothing left launched, the requests whose
// tokens were lost end with "abort" in the next step, and every page comes back.
TEST(EngineOverlap, AFailedCollectLeavesNothingLaunched) {
  SmallEngine small = small_launching_engine();
  Engine& e = *small.engine;
  test::FakeExecutor* fake = small.fake;
  fake->fail_collect = 3;
  std::vector<int32_t> prompt(50, 9);
  SamplingParams p;
  p.max_tokens = 100;
  std::vector<int64_t> ids = {e.add_request(prompt, p), e.add_request(prompt, p)};
  bool threw = false;
  for (int i = 0; i < 10 && !threw; ++i) {
    try {
      e.step();
    } catch (const Error& err) {
      threw = true;
      EXPECT_NE(std::string(err.what()).find("device error"), std::string::npos);
    }
  }
  ASSERT_TRUE(threw);
  EXPECT_EQ(fake->outstanding(), 0);
  EXPECT_TRUE(e.has_unfinished());
  std::map<int64_t, std::string> reasons;
  while (e.has_unfinished()) {
    for (const RequestOutput& o : e.step()) {
      if (o.finished) reasons[o.id] = o.finish_reason;
    }
  }
  for (int64_t id : ids) EXPECT_EQ(reasons[id], "abort");
  EXPECT_EQ(e.blocks().num_free(), e.blocks().num_pages());
}

}  // namespace
}  // namespace qserve
