// GPTQ on small synthetic layers: it lowers the output error below round-to-nearest on
// correlated inputs, reduces to round-to-nearest when the Hessian is diagonal, and handles dead
// inputs and non-positive-definite Hessians.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "qoq/gptq.h"

namespace qserve::qoq {
namespace {

// Rounding to a uniform grid of step 0.05 in [-0.4, 0.35] (16 levels): a stand-in for a 4-bit grid.
float grid(int64_t, int64_t, float v) {
  return std::clamp(std::nearbyint(v / 0.05f), -8.0f, 7.0f) * 0.05f;
}

struct Problem {
  int64_t n = 48, k = 96, t = 1024;
  std::vector<float> w, x;
  std::vector<double> h;
};

Problem correlated_problem() {
  Problem p;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  p.w.resize(static_cast<size_t>(p.n * p.k));
  for (float& v : p.w) v = 0.12f * nd(rng);
  // Inputs with strongly correlated channels (a few latent factors plus noise).
  p.x.resize(static_cast<size_t>(p.t * p.k));
  std::vector<float> mix(static_cast<size_t>(4 * p.k));
  for (float& v : mix) v = nd(rng);
  for (int64_t r = 0; r < p.t; ++r) {
    float z[4];
    for (float& v : z) v = nd(rng);
    for (int64_t c = 0; c < p.k; ++c) {
      float s = 0.1f * nd(rng);
      for (int j = 0; j < 4; ++j) s += z[j] * mix[j * p.k + c];
      p.x[r * p.k + c] = s;
    }
  }
  p.h.assign(static_cast<size_t>(p.k * p.k), 0.0);
  for (int64_t r = 0; r < p.t; ++r) {
    for (int64_t i = 0; i < p.k; ++i) {
      for (int64_t j = 0; j < p.k; ++j)
        p.h[i * p.k + j] += double(p.x[r * p.k + i]) * p.x[r * p.k + j];
    }
  }
  return p;
}

double output_error(const Problem& p, const std::vector<float>& wq) {
  double e = 0.0;
  for (int64_t r = 0; r < p.t; ++r) {
    for (int64_t o = 0; o < p.n; ++o) {
      double d = 0.0;
      for (int64_t c = 0; c < p.k; ++c)
        d += double(p.x[r * p.k + c]) * (wq[o * p.k + c] - p.w[o * p.k + c]);
      e += d * d;
    }
  }
  return e;
}

TEST(Gptq, BeatsRoundToNearestOnCorrelatedInputs) {
  const Problem p = correlated_problem();
  std::vector<float> rtn = p.w, gq = p.w;
  rtn_quantize(rtn.data(), p.n, p.k, grid);
  const GptqInfo info = gptq_quantize(gq.data(), p.n, p.k, p.h, grid);
  EXPECT_EQ(info.dead_columns, 0);
  for (float v : gq) EXPECT_FLOAT_EQ(v, grid(0, 0, v)) << "every GPTQ output is a grid value";
  const double e_rtn = output_error(p, rtn), e_gptq = output_error(p, gq);
  EXPECT_LT(e_gptq, 0.7 * e_rtn) << "rtn " << e_rtn << " gptq " << e_gptq;
}

TEST(Gptq, DiagonalHessianIsRoundToNearest) {
  const Problem p = correlated_problem();
  std::vector<double> h(static_cast<size_t>(p.k * p.k), 0.0);
  for (int64_t i = 0; i < p.k; ++i) h[i * p.k + i] = 1.0 + 0.01 * static_cast<double>(i % 7);
  std::vector<float> rtn = p.w, gq = p.w;
  rtn_quantize(rtn.data(), p.n, p.k, grid);
  gptq_quantize(gq.data(), p.n, p.k, h, grid);
  EXPECT_EQ(gq, rtn);
}

TEST(Gptq, StaticGroupsSeeOriginalColumnIndices) {
  // A quantizer that depends on the column: act-order must still pass the original index.
  const Problem p = correlated_problem();
  std::vector<float> gq = p.w;
  auto by_column = [](int64_t, int64_t c, float v) {
    const float step = c < 48 ? 0.05f : 0.5f;
    return std::nearbyint(v / step) * step;
  };
  gptq_quantize(gq.data(), p.n, p.k, p.h, by_column);
  for (int64_t r = 0; r < p.n; ++r) {
    for (int64_t c = 48; c < p.k; ++c) {
      const float v = gq[r * p.k + c];
      EXPECT_FLOAT_EQ(v, std::nearbyint(v / 0.5f) * 0.5f);
    }
  }
}

TEST(Gptq, DeadInputsAreZeroedAndCounted) {
  Problem p = correlated_problem();
  for (int64_t i = 0; i < p.k; ++i) {
    p.h[5 * p.k + i] = 0.0;
    p.h[i * p.k + 5] = 0.0;
  }
  std::vector<float> gq = p.w;
  const GptqInfo info = gptq_quantize(gq.data(), p.n, p.k, p.h, grid);
  EXPECT_EQ(info.dead_columns, 1);
  for (int64_t r = 0; r < p.n; ++r) EXPECT_EQ(gq[r * p.k + 5], 0.0f);
}

TEST(Gptq, IndefiniteHessianGetsDampingRetriesThenAnError) {
  const int64_t k = 4, n = 2;
  // A block with eigenvalues 1.007 and -0.007 (mean diagonal 0.5): 1% damping (+0.005) is not
  // enough; the fifth retry (1.5%, +0.0075) is.
  std::vector<double> h = {0.5, 0.507, 0, 0, 0.507, 0.5, 0, 0, 0, 0, 0.5, 0, 0, 0, 0, 0.5};
  std::vector<float> w(static_cast<size_t>(n * k), 0.1f);
  const GptqInfo info = gptq_quantize(w.data(), n, k, h, grid);
  EXPECT_EQ(info.retries, 5);
  std::vector<double> bad = {-1, 0, 0, -1};
  std::vector<float> w2(4, 0.1f);
  GptqOptions o;
  o.max_retries = 3;
  EXPECT_THROW(gptq_quantize(w2.data(), 2, 2, bad, grid, o), Error);
}

}  // namespace
}  // namespace qserve::qoq
