// Engine behaviour on the fake executor (fake_executor.h): batching, paging and preemption
// must not change any request's tokens; seeds reproduce; abort frees everything; bad requests
// are refused without side effects.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>

#include "core/error.h"
#include "engine/engine.h"
#include "fake_executor.h"

namespace qserve {
namespace {

constexpr int64_t kVocab = 512;

std::unique_ptr<Engine> make_engine(int64_t pages, int64_t max_seqs, int64_t budget,
                                    int64_t max_len = 1024, std::vector<int32_t> eos = {}) {
  EngineConfig cfg;
  cfg.max_num_seqs = max_seqs;
  cfg.max_num_batched_tokens = budget;
  return std::make_unique<Engine>(std::make_unique<test::FakeExecutor>(kVocab, pages, max_seqs),
                                  nullptr, cfg, max_len, std::move(eos));
}

std::vector<int32_t> random_prompt(std::mt19937_64& rng, int64_t len) {
  std::uniform_int_distribution<int32_t> tok(0, kVocab - 1);
  std::vector<int32_t> p(static_cast<size_t>(len));
  for (int32_t& t : p) t = tok(rng);
  return p;
}

struct Case {
  std::vector<int32_t> prompt;
  SamplingParams params;
};

std::vector<Case> make_cases(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Case> cases;
  for (int i = 0; i < n; ++i) {
    Case c;
    c.prompt = random_prompt(rng, std::uniform_int_distribution<int64_t>(1, 300)(rng));
    c.params.max_tokens = std::uniform_int_distribution<int64_t>(1, 60)(rng);
    if (i % 3 == 1) {
      c.params.temperature = 0.8f;
      c.params.top_k = 50;
      c.params.seed = 1000 + static_cast<uint64_t>(i);
    } else if (i % 3 == 2) {
      c.params.temperature = 1.0f;
      c.params.top_p = 0.9f;
      c.params.seed = 77 + static_cast<uint64_t>(i);
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

std::vector<int32_t> run_alone(const Case& c) {
  auto e = make_engine(64, 1, 4096);
  return generate(*e, {{c.prompt, c.params}}).front().token_ids;
}

TEST(EngineFake, BatchedEqualsAloneWithPreemption) {
  const std::vector<Case> cases = make_cases(40, 3);
  std::vector<GenerationRequest> reqs;
  for (const Case& c : cases) reqs.push_back({c.prompt, c.params});
  // 12 pages (768 positions) for 40 requests of up to 360 tokens: admission waits, decodes
  // preempt, and a budget of 48 tokens splits every long prompt into chunks.
  auto e = make_engine(12, 8, 48);
  const std::vector<CompletedRequest> got = generate(*e, reqs);
  EXPECT_GT(e->stats().preemptions, 0);
  // Every step's phases were timed: the executor calls took some time, none went negative.
  EXPECT_GT(e->stats().execute_s, 0.0);
  for (double s : {e->stats().schedule_s, e->stats().prepare_s, e->stats().outputs_s}) {
    EXPECT_GE(s, 0.0);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].token_ids, run_alone(cases[i]));
    EXPECT_EQ(got[i].finish_reason, "length");
    EXPECT_EQ(static_cast<int64_t>(got[i].token_ids.size()), cases[i].params.max_tokens);
  }
  EXPECT_EQ(e->blocks().num_free(), e->blocks().num_pages());
}

TEST(EngineFake, SeededSamplingReproduces) {
  const std::vector<Case> cases = make_cases(9, 8);
  std::vector<GenerationRequest> reqs;
  for (const Case& c : cases) reqs.push_back({c.prompt, c.params});
  auto a = make_engine(64, 4, 256);
  auto b = make_engine(64, 9, 2048);  // different batching
  const auto ra = generate(*a, reqs), rb = generate(*b, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(ra[i].token_ids, rb[i].token_ids) << i;
}

TEST(EngineFake, AbortMidGenerationFreesItsPages) {
  auto e = make_engine(32, 4, 512);
  std::mt19937_64 rng(1);
  SamplingParams p;
  p.max_tokens = 200;
  std::map<int64_t, std::string> reasons;
  const auto record = [&](const RequestOutput& o) {
    if (o.finished) reasons[o.id] = o.finish_reason;
  };
  const int64_t a = e->add_request(random_prompt(rng, 100), p, record);
  const int64_t b = e->add_request(random_prompt(rng, 150), p, record);
  for (int i = 0; i < 5; ++i) e->step();
  const int64_t used = e->blocks().num_used();
  EXPECT_TRUE(e->abort(a));
  EXPECT_FALSE(e->abort(a));  // already finished
  EXPECT_LT(e->blocks().num_used(), used);
  while (e->has_unfinished()) e->step();
  EXPECT_EQ(reasons[a], "abort");
  EXPECT_EQ(reasons[b], "length");
  EXPECT_EQ(e->blocks().num_free(), e->blocks().num_pages());
  EXPECT_FALSE(e->abort(12345));
}

TEST(EngineFake, AbortWhileWaiting) {
  auto e = make_engine(8, 1, 64);
  std::mt19937_64 rng(2);
  SamplingParams p;
  p.max_tokens = 10;
  e->add_request(random_prompt(rng, 10), p);
  const int64_t queued = e->add_request(random_prompt(rng, 10), p);
  e->step();
  EXPECT_EQ(e->scheduler().num_waiting(), 1);
  EXPECT_TRUE(e->abort(queued));
  EXPECT_EQ(e->scheduler().num_waiting(), 0);
  bool saw_abort = false;
  while (e->has_unfinished()) {
    for (const RequestOutput& o : e->step())
      saw_abort |= o.id == queued && o.finish_reason == "abort";
  }
  EXPECT_TRUE(saw_abort);
}

TEST(EngineFake, EosStopsUnlessIgnoredAndNotBeforeMinTokens) {
  std::mt19937_64 rng(4);
  const std::vector<int32_t> prompt = random_prompt(rng, 20);
  const auto run = [&](const SamplingParams& p) {
    auto e = make_engine(16, 2, 256, 1024, {5});
    auto* fake =
        const_cast<test::FakeExecutor*>(dynamic_cast<const test::FakeExecutor*>(&e->executor()));
    fake->favour = 5;
    fake->favour_bonus = 100.0f;  // EOS always wins unless banned
    return generate(*e, {{prompt, p}}).front();
  };
  SamplingParams p;
  p.max_tokens = 10;
  CompletedRequest r = run(p);
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.token_ids, std::vector<int32_t>{5});
  EXPECT_EQ(r.stop_reason, "token:5");
  p.min_tokens = 4;
  r = run(p);
  EXPECT_EQ(r.finish_reason, "stop");
  ASSERT_EQ(r.token_ids.size(), 5u);
  for (int i = 0; i < 4; ++i) EXPECT_NE(r.token_ids[static_cast<size_t>(i)], 5);
  p.min_tokens = 0;
  p.ignore_eos = true;
  r = run(p);
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.token_ids, std::vector<int32_t>(10, 5));
  p.ignore_eos = false;
  p.stop_token_ids = {5};
  p.max_tokens = 3;
  EXPECT_EQ(run(p).finish_reason, "stop");
}

TEST(EngineFake, ContextLengthCapsGeneration) {
  auto e = make_engine(16, 2, 256, /*max_len=*/100);
  std::mt19937_64 rng(6);
  SamplingParams p;
  p.max_tokens = 500;
  const CompletedRequest r = generate(*e, {{random_prompt(rng, 90), p}}).front();
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.token_ids.size(), 10u);
}

TEST(EngineFake, BadRequestsAreRefusedAndLoseNothing) {
  auto e = make_engine(4, 2, 256, 1000);
  std::mt19937_64 rng(7);
  SamplingParams ok;
  ok.max_tokens = 5;
  const int64_t good = e->add_request(random_prompt(rng, 10), ok);
  EXPECT_THROW(e->add_request({}, ok), Error);                        // empty
  EXPECT_THROW(e->add_request({kVocab}, ok), Error);                  // outside the vocabulary
  EXPECT_THROW(e->add_request(random_prompt(rng, 1000), ok), Error);  // fills the context
  SamplingParams big = ok;
  big.max_tokens = 400;  // 410 tokens need 7 pages, the cache has 4
  EXPECT_THROW(e->add_request(random_prompt(rng, 10), big), Error);
  SamplingParams bad = ok;
  bad.temperature = -1.0f;
  EXPECT_THROW(e->add_request(random_prompt(rng, 10), bad), Error);
  bad = ok;
  bad.stop = {"x"};
  EXPECT_THROW(e->add_request(random_prompt(rng, 10), bad), Error);  // no tokenizer
  EXPECT_EQ(e->scheduler().num_waiting(), 1);
  std::vector<RequestOutput> all;
  while (e->has_unfinished()) {
    for (auto& o : e->step()) all.push_back(o);
  }
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back().id, good);
  EXPECT_TRUE(all.back().finished);
}

TEST(EngineFake, OutputsStreamToCallbacksAndCarryTimings) {
  auto e = make_engine(16, 2, 256);
  std::mt19937_64 rng(9);
  SamplingParams p;
  p.max_tokens = 7;
  p.logprobs = true;
  p.top_logprobs = 2;
  std::vector<int32_t> streamed;
  RequestOutput last;
  e->add_request(random_prompt(rng, 30), p, [&](const RequestOutput& o) {
    streamed.insert(streamed.end(), o.token_ids.begin(), o.token_ids.end());
    EXPECT_EQ(o.logprobs.size(), o.token_ids.size());
    for (const SampledToken& t : o.logprobs) {
      EXPECT_LE(t.logprob, 0.0f);
      EXPECT_EQ(t.top.size(), 2u);
    }
    last = o;
  });
  while (e->has_unfinished()) e->step();
  EXPECT_EQ(streamed.size(), 7u);
  EXPECT_TRUE(last.finished);
  EXPECT_EQ(last.completion_tokens, 7);
  EXPECT_EQ(last.prompt_tokens, 30);
  EXPECT_GT(last.ttft_s, 0.0);
  EXPECT_GE(last.latency_s, last.ttft_s);
}

}  // namespace
}  // namespace qserve

namespace qserve {
namespace {

// An executor that samples on a device gets kDevice rows for plain requests and kLogits rows for
// what only the host can do (logprobs, min-p, ids banned before min_tokens); rows of chunks that
// do not reach the end of the prompt ask for nothing. Greedy device rows equal host greedy,
// and seeded device rows do not depend on the batch.
TEST(EngineFake, RowsGoToTheDeviceUnlessTheHostIsNeeded) {
  const auto make = [](bool device, int64_t budget) {
    EngineConfig cfg;
    cfg.max_num_seqs = 8;
    cfg.max_num_batched_tokens = budget;
    auto exec = std::make_unique<test::FakeExecutor>(kVocab, 64, 8);
    exec->device_sampling = device;
    test::FakeExecutor* raw = exec.get();
    return std::make_pair(
        std::make_unique<Engine>(std::move(exec), nullptr, cfg, 1024, std::vector<int32_t>{7}),
        raw);
  };
  std::mt19937_64 rng(5);
  const std::vector<int32_t> prompt = random_prompt(rng, 100);
  SamplingParams greedy;
  greedy.max_tokens = 12;
  greedy.ignore_eos = true;
  SamplingParams seeded = greedy;
  seeded.temperature = 0.9f;
  seeded.top_k = 20;
  seeded.top_p = 0.8f;
  seeded.seed = 42;
  SamplingParams logprobs = greedy;
  logprobs.logprobs = true;
  SamplingParams minp = seeded;
  minp.min_p = 0.1f;
  SamplingParams banned = greedy;
  banned.ignore_eos = false;
  banned.min_tokens = 5;
  const std::vector<GenerationRequest> reqs = {
      {prompt, greedy}, {prompt, seeded}, {prompt, logprobs}, {prompt, minp}, {prompt, banned}};

  auto [dev, dev_exec] = make(true, 64);  // 64-token budget: 100-token prompts take two chunks
  const auto got = generate(*dev, reqs);
  int none = 0, logits = 0, device = 0;
  for (const RowSample& r : dev_exec->seen) {
    none += r.kind == RowSample::Kind::kNone;
    logits += r.kind == RowSample::Kind::kLogits;
    device += r.kind == RowSample::Kind::kDevice;
    if (r.kind == RowSample::Kind::kDevice && r.temperature > 0.0f) {
      EXPECT_EQ(r.top_k, 20);
      EXPECT_FLOAT_EQ(r.top_p, 0.8f);
      EXPECT_GE(r.uniform, 0.0);
      EXPECT_LT(r.uniform, 1.0);
    }
  }
  EXPECT_GT(none, 0);  // first chunks of the prompts
  // logprobs and min_p: 12 tokens each on the host; banned: its first 5 tokens.
  EXPECT_EQ(logits, 12 + 12 + 5);
  EXPECT_EQ(device, 12 + 12 + 7);
  EXPECT_EQ(got[2].logprobs.size(), 12u);
  EXPECT_GE(got[4].token_ids.size(), 5u);

  // Greedy on the device is the host's argmax; a seeded device request is batch-independent.
  auto [host, host_exec] = make(false, 4096);
  const auto ref = generate(*host, {{prompt, greedy}});
  EXPECT_EQ(got[0].token_ids, ref[0].token_ids);
  for (const RowSample& r : host_exec->seen) EXPECT_NE(r.kind, RowSample::Kind::kDevice);
  auto [alone, alone_exec] = make(true, 4096);
  (void)alone_exec;
  EXPECT_EQ(generate(*alone, {{prompt, seeded}})[0].token_ids, got[1].token_ids);
}

}  // namespace
}  // namespace qserve
