#include "engine/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "core/error.h"

namespace qserve {
namespace {

SamplingParams params(float temperature, int top_k = 0, float top_p = 1.0f, uint64_t seed = 0,
                      float min_p = 0.0f) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  p.min_p = min_p;
  return p;
}

std::vector<float> random_logits(size_t n, uint64_t seed, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> l(n);
  for (float& x : l) x = d(rng);
  return l;
}

TEST(Sampling, GreedyPicksArgmaxLowestIdOnTies) {
  std::vector<float> l = {0.1f, 3.0f, 3.0f, -1.0f};
  Sampler s({});
  EXPECT_EQ(s.sample(l).id, 1);
}

TEST(Sampling, TinyTemperatureIsGreedy) {
  std::vector<float> l = {0.1f, 3.0f, 2.9f, -1.0f};
  Sampler s(params(1e-6f, 0, 1.0f, 7));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(l).id, 1);
}

TEST(Sampling, TopKOneIsGreedy) {
  std::vector<float> l = {0.1f, 0.3f, 2.0f, 1.9f};
  Sampler s(params(1.0f, 1, 1.0f, 3));
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(l).id, 2);
}

TEST(Sampling, TopPKeepsSmallestNucleus) {
  // Probabilities ~ {0.64, 0.24, 0.09, 0.03}: top_p 0.8 keeps ids 0 and 1 only.
  std::vector<float> l = {2.0f, 1.0f, 0.0f, -1.0f};
  Sampler s(params(1.0f, 0, 0.8f, 11));
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) seen[s.sample(l).id]++;
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(3), 0u);
  EXPECT_GT(seen[0], seen[1]);
}

TEST(Sampling, TemperatureFollowsSoftmax) {
  std::vector<float> l = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  Sampler s(params(1.0f, 0, 1.0f, 5));
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.sample(l).id == 1;
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.02);
}

TEST(Sampling, MinPDropsTokensBelowFractionOfMax) {
  // p ∝ {1, 0.5, 0.2, 0.05}: min_p 0.3 keeps ids 0 and 1 (ratios 1 and 0.5), drops 0.2 and 0.05.
  std::vector<float> l = {0.0f, std::log(0.5f), std::log(0.2f), std::log(0.05f)};
  Sampler s(params(1.0f, 0, 1.0f, 1, 0.3f));
  std::map<int32_t, int> seen;
  const int n = 6000;
  for (int i = 0; i < n; ++i) seen[s.sample(l).id]++;
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(3), 0u);
  EXPECT_NEAR(static_cast<double>(seen[0]) / n, 2.0 / 3.0, 0.03);  // renormalized over {1, 0.5}
}

TEST(Sampling, MinPUsesTemperatureScaledProbabilities) {
  // Ratio of p1/p0 at T=1 is 0.5 (kept by min_p 0.4); at T=0.5 it is 0.25 (dropped).
  std::vector<float> l = {0.0f, std::log(0.5f)};
  Sampler hot(params(1.0f, 0, 1.0f, 2, 0.4f));
  Sampler cold(params(0.5f, 0, 1.0f, 2, 0.4f));
  bool hot_saw_1 = false;
  for (int i = 0; i < 200; ++i) {
    hot_saw_1 |= hot.sample(l).id == 1;
    EXPECT_EQ(cold.sample(l).id, 0);
  }
  EXPECT_TRUE(hot_saw_1);
}

TEST(Sampling, MinPOneIsGreedy) {
  const std::vector<float> l = random_logits(1000, 4);
  Sampler s(params(1.5f, 0, 1.0f, 9, 1.0f));
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(l).id, argmax(l));
}

TEST(Sampling, BannedIdsAreNeverSampled) {
  std::vector<float> l = {5.0f, 4.9f, 0.0f, -1.0f};
  const std::vector<int32_t> banned = {0, 3, 99, -5};  // out-of-range ids are ignored
  Sampler greedy({});
  EXPECT_EQ(greedy.sample(l, banned).id, 1);
  EXPECT_EQ(greedy.sample(l).id, 0);  // only this step
  Sampler s(params(2.0f, 0, 1.0f, 8));
  std::set<int32_t> seen;
  for (int i = 0; i < 500; ++i) seen.insert(s.sample(l, banned).id);
  EXPECT_EQ(seen, (std::set<int32_t>{1, 2}));
}

TEST(Sampling, BanningEverythingThrows) {
  std::vector<float> l = {1.0f, 2.0f};
  const std::vector<int32_t> banned = {1, 0};
  Sampler s({});
  EXPECT_THROW(s.sample(l, banned), Error);
}

TEST(Sampling, NonFiniteLogitsDoNotCrash) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> all_neg_inf = {-inf, -inf, -inf};
  const std::vector<int32_t> banned = {0};
  Sampler s(params(1.0f, 0, 1.0f, 3));
  EXPECT_EQ(s.sample(all_neg_inf).id, 0);
  EXPECT_EQ(s.sample(all_neg_inf, banned).id, 1);
  std::vector<float> with_nan = {nan, 1.0f, nan, 0.5f};
  for (int i = 0; i < 100; ++i) {
    const int32_t id = s.sample(with_nan).id;
    EXPECT_TRUE(id == 1 || id == 3) << id;
  }
  EXPECT_EQ(argmax(with_nan), 1);
  std::vector<float> pos_inf = {0.0f, inf, 1.0f};
  EXPECT_EQ(s.sample(pos_inf).id, 1);
}

// Reference: full sorts instead of partial selection, with the sampler's documented arithmetic
// (float weights exp((l - max) / T); the mass summed in walk order, except top-p without top-k,
// which sums in id order; candidates walked in (logit desc, id asc) order under top-k or top-p,
// else in id order).
int32_t reference_sample(std::span<const float> l, const SamplingParams& p, std::mt19937_64& rng) {
  const float mx = *std::max_element(l.begin(), l.end());
  const float inv_t = 1.0f / p.temperature;
  auto w = [&](int32_t id) { return std::exp((l[id] - mx) * inv_t); };
  const float min_logit = p.min_p > 0 ? mx + p.temperature * std::log(p.min_p) : -INFINITY;
  std::vector<int32_t> ids;
  for (size_t i = 0; i < l.size(); ++i) {
    if (l[i] >= min_logit) ids.push_back(static_cast<int32_t>(i));
  }
  auto by_logit = [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  double total = 0;
  if (p.top_k > 0) {
    std::sort(ids.begin(), ids.end(), by_logit);
    if (static_cast<size_t>(p.top_k) < ids.size()) ids.resize(p.top_k);
    for (int32_t id : ids) total += w(id);
  } else {
    for (int32_t id : ids) total += w(id);  // id order
    if (p.top_p < 1.0f) std::sort(ids.begin(), ids.end(), by_logit);
  }
  size_t keep = ids.size();
  if (p.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += w(ids[i]);
      if (cum >= static_cast<double>(p.top_p) * total) {
        keep = i + 1;
        break;
      }
    }
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += w(ids[i]);
  }
  double r = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
  for (size_t i = 0; i < keep; ++i) {
    r -= w(ids[i]);
    if (r < 0) return ids[i];
  }
  return ids[keep - 1];
}

TEST(Sampling, PartialSelectionMatchesFullSortReference) {
  // Many ties (integer logits) make the (logit, id) order matter.
  std::mt19937_64 gen(123);
  for (int trial = 0; trial < 60; ++trial) {
    const size_t n = 50 + gen() % 20000;
    std::vector<float> l(n);
    // Mostly peaked; every 5th trial nearly flat, so top-p must grow its sorted prefix.
    const float spacing = trial % 5 == 0 ? 0.01f : 0.5f;
    for (float& x : l) x = static_cast<float>(static_cast<int>(gen() % 21) - 10) * spacing;
    const int k = trial % 4 == 0 ? static_cast<int>(gen() % 5000) : static_cast<int>(gen() % 60);
    SamplingParams p = params(0.3f + static_cast<float>(gen() % 20) / 10.0f, k, 1.0f, gen());
    if (trial % 2) p.top_p = 0.5f + static_cast<float>(gen() % 50) / 100.0f;
    if (trial % 3 == 0) p.min_p = static_cast<float>(gen() % 30) / 100.0f;
    Sampler s(p);
    std::mt19937_64 ref_rng(p.seed);
    for (int step = 0; step < 20; ++step)
      ASSERT_EQ(s.sample(l).id, reference_sample(l, p, ref_rng)) << "trial " << trial;
  }
}

TEST(Sampling, SeedIsReproducibleAndPerSampler) {
  const std::vector<float> a = random_logits(5000, 1, 1.0f), b = random_logits(5000, 2, 1.0f);
  const SamplingParams p = params(1.0f, 50, 0.9f, 42);
  // Request 1 alone...
  Sampler alone(p);
  std::vector<int32_t> ref;
  for (int i = 0; i < 30; ++i) ref.push_back(alone.sample(a).id);
  // ...and interleaved with another request (a different batch): same tokens.
  Sampler mine(p), other(params(1.0f, 0, 1.0f, 42));
  for (int i = 0; i < 30; ++i) {
    (void)other.sample(b);
    EXPECT_EQ(mine.sample(a).id, ref[i]);
  }
  Sampler different(params(1.0f, 50, 0.9f, 43));
  int same = 0;
  for (int i = 0; i < 30; ++i) same += different.sample(a).id == ref[i];
  EXPECT_LT(same, 30);
}

TEST(Sampling, LogprobsAreRawLogSoftmax) {
  const std::vector<float> l = random_logits(3000, 9);
  SamplingParams p = params(0.7f, 5, 0.9f, 1);  // filtering must not change the logprobs
  p.logprobs = true;
  p.top_logprobs = 20;
  Sampler s(p);
  double m = *std::max_element(l.begin(), l.end()), sum = 0;
  for (float x : l) sum += std::exp(x - m);
  const double lse = m + std::log(sum);
  double total = 0;
  for (float x : l) total += std::exp(x - lse);
  EXPECT_NEAR(total, 1.0, 1e-9);
  std::vector<int32_t> order(l.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  for (int step = 0; step < 10; ++step) {
    const SampledToken t = s.sample(l, std::vector<int32_t>{order[0]});  // banning: still raw
    EXPECT_NE(t.id, order[0]);
    EXPECT_NEAR(t.logprob, l[t.id] - lse, 1e-5);
    ASSERT_EQ(t.top.size(), 20u);
    for (size_t i = 0; i < 20; ++i) {
      EXPECT_EQ(t.top[i].id, order[i]);
      EXPECT_NEAR(t.top[i].logprob, l[order[i]] - lse, 1e-5);
    }
    // The sampled token is among the top 5, so its logprob appears in top.
    const auto it = std::find_if(t.top.begin(), t.top.end(),
                                 [&](const TokenLogprob& x) { return x.id == t.id; });
    ASSERT_NE(it, t.top.end());
    EXPECT_FLOAT_EQ(it->logprob, t.logprob);
  }
}

TEST(Sampling, LogprobsOffLeavesThemEmpty) {
  const std::vector<float> l = random_logits(100, 3);
  Sampler s({});
  const SampledToken t = s.sample(l);
  EXPECT_EQ(t.logprob, 0.0f);
  EXPECT_TRUE(t.top.empty());
  SamplingParams p;
  p.logprobs = true;  // without alternatives
  Sampler s2(p);
  const SampledToken t2 = s2.sample(l);
  EXPECT_LT(t2.logprob, 0.0f);
  EXPECT_TRUE(t2.top.empty());
}

TEST(Sampling, TopLogprobsTiesAndSmallVocab) {
  std::vector<float> l = {1.0f, 2.0f, 2.0f};
  SamplingParams p;
  p.logprobs = true;
  p.top_logprobs = 20;  // more than the vocabulary
  Sampler s(p);
  const SampledToken t = s.sample(l);
  ASSERT_EQ(t.top.size(), 3u);
  EXPECT_EQ(t.top[0].id, 1);
  EXPECT_EQ(t.top[1].id, 2);
  EXPECT_EQ(t.top[2].id, 0);
  EXPECT_EQ(t.id, 1);
}

std::string error_of(const SamplingParams& p) {
  try {
    validate(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Sampling, ValidateNamesTheField) {
  auto with = [](auto f) {
    SamplingParams p;
    f(p);
    return error_of(p);
  };
  EXPECT_EQ(error_of({}), "");
  EXPECT_NE(with([](SamplingParams& p) { p.temperature = -1; }).find("temperature"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.temperature = NAN; }).find("temperature"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.top_k = -2; }).find("top_k"), std::string::npos);
  EXPECT_EQ(with([](SamplingParams& p) { p.top_k = -1; }), "");
  EXPECT_NE(with([](SamplingParams& p) { p.top_p = 0; }).find("top_p"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.top_p = 1.5f; }).find("top_p"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.min_p = -0.1f; }).find("min_p"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.min_p = 1.1f; }).find("min_p"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.max_tokens = 0; }).find("max_tokens"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.min_tokens = 17; }).find("min_tokens"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.min_tokens = -1; }).find("min_tokens"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.stop = {"a", ""}; }).find("stop[1]"), std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.stop_token_ids = {-3}; }).find("stop_token_ids[0]"),
            std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.logprobs = true, p.top_logprobs = 21; }).find("top_logprobs"),
            std::string::npos);
  EXPECT_NE(with([](SamplingParams& p) { p.top_logprobs = 2; }).find("top_logprobs"), std::string::npos);
  EXPECT_THROW(Sampler(params(-1.0f)), Error);
}

}  // namespace
}  // namespace qserve
