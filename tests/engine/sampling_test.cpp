#include "engine/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"

namespace qserve {
namespace {

TEST(Sampling, GreedyPicksArgmaxLowestIdOnTies) {
  std::vector<float> l = {0.1f, 3.0f, 3.0f, -1.0f};
  Sampler s({});
  EXPECT_EQ(s.sample(l), 1);
}

TEST(Sampling, TopKOneIsGreedy) {
  std::vector<float> l = {0.1f, 0.3f, 2.0f, 1.9f};
  Sampler s({1.0f, 1, 1.0f, 3});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(l), 2);
}

TEST(Sampling, TopPKeepsSmallestNucleus) {
  // Probabilities ~ {0.64, 0.24, 0.09, 0.03}: top_p 0.8 keeps ids 0 and 1 only.
  std::vector<float> l = {2.0f, 1.0f, 0.0f, -1.0f};
  Sampler s({1.0f, 0, 0.8f, 11});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) seen[s.sample(l)]++;
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(3), 0u);
  EXPECT_GT(seen[0], seen[1]);
}

TEST(Sampling, TemperatureFollowsSoftmax) {
  std::vector<float> l = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  Sampler s({1.0f, 0, 1.0f, 5});
  int ones = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ones += s.sample(l) == 1;
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.02);
}

TEST(Sampling, RejectsBadParams) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 1.5f, 0}), Error);
}

}  // namespace
}  // namespace qserve
