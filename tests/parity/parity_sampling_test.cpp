// Parity of the GPU logits gather, argmax and seeded sampling with CPU implementations:
//  - gather_rows: bit-exact copies of the chosen rows;
//  - argmax_rows: engine's qserve::argmax (lowest id on ties, NaN at id 0 -> 0);
//  - sample_rows and sample_rows_fast: an independent, sort-based CPU implementation of the
//    algorithm specified in ops_cuda_attention.h (the GPU kernels use radix selects, or a
//    histogram cut plus a shared-memory sort, instead of a full sort). Given the same uniform
//    u, the token ids must be identical; the only inexact step is double exp (<= 1 ulp between
//    CUDA and glibc), which moves a weight by 1 in 2^40 and the pick only if r lands on it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "engine/sampling.h"
#include "parity/parity_main_util.h"

namespace qserve {
namespace {

using cuda::DeviceBuffer;

int32_t ref_argmax(const float* l, int64_t v) {
  return argmax(std::span<const float>(l, static_cast<size_t>(v)));
}

// The specification of sample_rows, written the obvious way: sort, cut, scan.
int32_t ref_sample(const float* l, int64_t vocab, float temp, int32_t top_k, float top_p,
                   double u) {
  if (!(temp > 0.0f)) return ref_argmax(l, vocab);
  std::vector<int32_t> ids;
  float lmax = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; ++i) {
    if (std::isnan(l[i])) continue;
    ids.push_back(static_cast<int32_t>(i));
    lmax = std::max(lmax, l[i]);
  }
  if (!std::isfinite(lmax)) return ref_argmax(l, vocab);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  if (top_k > 0 && static_cast<size_t>(top_k) < ids.size()) ids.resize(static_cast<size_t>(top_k));
  std::vector<uint64_t> w(ids.size());
  uint64_t total = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const float diff = l[ids[i]] - lmax;  // fp32 subtraction first
    const double e = std::exp(static_cast<double>(diff) / static_cast<double>(temp));
    w[i] = static_cast<uint64_t>(std::nearbyint(std::ldexp(e, 40)));
    total += w[i];
  }
  size_t keep = ids.size();
  if (top_p > 0.0f && top_p < 1.0f) {
    const double target = static_cast<double>(top_p) * static_cast<double>(total);
    uint64_t cum = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      cum += w[i];
      if (static_cast<double>(cum) >= target) {
        keep = i + 1;
        break;
      }
    }
    total = cum;
  }
  uint64_t r = static_cast<uint64_t>(u * static_cast<double>(total));
  r = std::min(r, total - 1);
  uint64_t cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += w[i];
    if (cum > r) return ids[i];
  }
  ADD_FAILURE() << "ref_sample: no token reached the cut";
  return -1;
}

struct Row {
  std::vector<float> logits;
  float temp;
  int32_t top_k;
  float top_p;
  double u;
};

void run_rows(const std::string& name, int64_t vocab, const std::vector<Row>& rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<float> logits;
  std::vector<float> temp, top_p;
  std::vector<int32_t> top_k;
  std::vector<double> uni;
  for (const Row& r : rows) {
    logits.insert(logits.end(), r.logits.begin(), r.logits.end());
    temp.push_back(r.temp);
    top_k.push_back(r.top_k);
    top_p.push_back(r.top_p);
    uni.push_back(r.u);
  }
  std::vector<int32_t> want_sample, want_argmax;
  for (int64_t b = 0; b < n; ++b) {
    const Row& r = rows[static_cast<size_t>(b)];
    want_sample.push_back(ref_sample(r.logits.data(), vocab, r.temp, r.top_k, r.top_p, r.u));
    want_argmax.push_back(ref_argmax(r.logits.data(), vocab));
  }
  DeviceBuffer<float> d_l = cuda::to_device(logits), d_t = cuda::to_device(temp),
                      d_p = cuda::to_device(top_p);
  DeviceBuffer<int32_t> d_k = cuda::to_device(top_k);
  DeviceBuffer<double> d_u = cuda::to_device(uni);
  DeviceBuffer<int32_t> d_out(static_cast<size_t>(n));
  const std::string shape = name + ":" + parity::shape_str({{"rows", n}, {"V", vocab}});

  parity::poison(d_out.data(), d_out.bytes());
  cuda::sample_rows(d_l.data(), n, vocab, d_t.data(), d_k.data(), d_p.data(), d_u.data(),
                    d_out.data(), nullptr);
  const std::vector<int32_t> got_sample = cuda::to_host(d_out);
  const parity::ParityResult rs =
      parity::compare_exact("sample_rows", shape, got_sample, want_sample);
  EXPECT_PARITY(rs, "sample_rows", shape);

  // The two-pass sampler must pick the very same ids (including the rows it hands back to the
  // baseline: flat rows without top-k, ties beyond its candidate cap).
  parity::poison(d_out.data(), d_out.bytes());
  cuda::sample_rows_fast(d_l.data(), n, vocab, d_t.data(), d_k.data(), d_p.data(), d_u.data(),
                         d_out.data(), nullptr);
  const std::vector<int32_t> got_fast = cuda::to_host(d_out);
  const parity::ParityResult rf =
      parity::compare_exact("sample_rows_fast", shape, got_fast, want_sample);
  EXPECT_PARITY(rf, "sample_rows_fast", shape);

  parity::poison(d_out.data(), d_out.bytes());
  cuda::argmax_rows(d_l.data(), n, vocab, d_out.data(), nullptr);
  const std::vector<int32_t> got_argmax = cuda::to_host(d_out);
  const parity::ParityResult ra =
      parity::compare_exact("argmax_rows", shape, got_argmax, want_argmax);
  EXPECT_PARITY(ra, "argmax_rows", shape);
}

// Rows covering every option, on logits drawn by `gen` (called per row).
template <typename Gen>
std::vector<Row> option_rows(parity::ParityRng& rng, int64_t vocab, Gen gen) {
  struct P {
    float t;
    int32_t k;
    float p;
  };
  const int32_t v = static_cast<int32_t>(vocab);
  const P params[] = {{0.0f, 0, 1.0f},  {1.0f, 0, 1.0f},     {0.7f, 40, 1.0f},    {1.3f, 0, 0.9f},
                      {1.0f, 50, 0.8f}, {0.5f, 1, 1.0f},     {1.0f, v - 1, 1.0f}, {1.0f, v, 1.0f},
                      {1.0f, 0, 1e-6f}, {2.0f, 1000, 0.95f}, {0.9f, 0, 0.5f},     {1.0f, 7, 0.3f}};
  std::vector<Row> rows;
  std::uniform_real_distribution<double> ud(0.0, 1.0);
  int set = 0;
  for (const P& p : params) {
    // Two random u per parameter set, then an extreme: 0, or just below 1 (the last token).
    for (int rep = 0; rep < 3; ++rep) {
      const double u = rep < 2 ? ud(rng.engine()) : (set % 2 ? 0.999999999 : 0.0);
      rows.push_back({gen(), p.t, p.k, p.p, u});
    }
    ++set;
  }
  return rows;
}

TEST(ParitySampling, GatherRows) {
  QSERVE_PARITY_REQUIRE_GPU();
  parity::ParityRng rng(11);
  const int64_t T = 37, V = 1000;
  const std::vector<float> logits = rng.normal(static_cast<size_t>(T * V), 0.0f, 3.0f);
  const std::vector<int32_t> rows = {0, 5, 36, 17, 17};
  DeviceBuffer<float> d_l = cuda::to_device(logits);
  DeviceBuffer<int32_t> d_r = cuda::to_device(rows);
  DeviceBuffer<float> d_out(rows.size() * static_cast<size_t>(V));
  parity::poison(d_out.data(), d_out.bytes());
  cuda::gather_rows(d_l.data(), d_r.data(), static_cast<int64_t>(rows.size()), V, d_out.data(),
                    nullptr);
  const std::vector<float> got = cuda::to_host(d_out);
  std::vector<uint32_t> got_bits(got.size()), want_bits(got.size());
  std::memcpy(got_bits.data(), got.data(), got.size() * 4);
  for (size_t b = 0; b < rows.size(); ++b) {
    std::memcpy(want_bits.data() + b * V, logits.data() + rows[b] * V, static_cast<size_t>(V) * 4);
  }
  const std::string shape = parity::shape_str({{"rows", 5}, {"T", T}, {"V", V}});
  const parity::ParityResult r = parity::compare_exact("gather_rows", shape, got_bits, want_bits);
  EXPECT_PARITY(r, "gather_rows", shape);
}

TEST(ParitySampling, NormalLogitsLlama3Vocab) {
  QSERVE_PARITY_REQUIRE_GPU();
  parity::ParityRng rng(12);
  const int64_t V = 128256;
  auto gen = [&] { return rng.normal(static_cast<size_t>(V), 0.0f, 3.0f); };
  run_rows("normal-128256", V, option_rows(rng, V, gen));
}

TEST(ParitySampling, PeakedAndTiedLogits) {
  QSERVE_PARITY_REQUIRE_GPU();
  parity::ParityRng rng(13);
  const int64_t V = 32000;
  // Integer-valued logits: many exact ties (order by id), +0/-0, and a few dominant tokens.
  auto tied = [&] {
    std::vector<float> l = rng.normal(static_cast<size_t>(V), 0.0f, 2.0f);
    for (float& x : l) x = std::round(x);
    for (int64_t i = 0; i < V; i += 3) l[static_cast<size_t>(i)] = (i % 2) ? -0.0f : 0.0f;
    l[123] = l[4567] = 9.0f;
    return l;
  };
  run_rows("tied-32000", V, option_rows(rng, V, tied));
  // -inf and NaN entries (never sampled); a NaN at id 0 (argmax: 0, as the engine's scan).
  auto holes = [&] {
    std::vector<float> l = rng.normal(static_cast<size_t>(V), 0.0f, 1.0f);
    for (int64_t i = 1; i < V; i += 17) l[static_cast<size_t>(i)] = -INFINITY;
    for (int64_t i = 5; i < V; i += 101) l[static_cast<size_t>(i)] = NAN;
    return l;
  };
  run_rows("holes-32000", V, option_rows(rng, V, holes));
  auto nan0 = [&] {
    std::vector<float> l = rng.normal(static_cast<size_t>(V), 0.0f, 1.0f);
    l[0] = NAN;
    return l;
  };
  run_rows("nan0-32000", V, option_rows(rng, V, nan0));
}

TEST(ParitySampling, LargeMagnitudesAndSmallVocab) {
  QSERVE_PARITY_REQUIRE_GPU();
  parity::ParityRng rng(14);
  // Logits of 1e4 scale: all but a handful of weights round to 0.
  const int64_t V = 151936;
  auto big = [&] { return rng.normal(static_cast<size_t>(V), 0.0f, 1e4f); };
  run_rows("large-151936", V, option_rows(rng, V, big));
  // A tiny vocabulary (fewer entries than threads) and flat logits.
  const int64_t v2 = 7;
  auto small = [&] { return rng.uniform(static_cast<size_t>(v2), -0.01f, 0.01f); };
  run_rows("small-7", v2, option_rows(rng, v2, small));
}

TEST(ParitySampling, FastSamplerCutsAndFallbacks) {
  QSERVE_PARITY_REQUIRE_GPU();
  parity::ParityRng rng(15);
  const int64_t V = 128256;
  // A peaked row (what a trained model gives): few candidates carry the mass.
  auto peaked = [&] {
    std::vector<float> l = rng.normal(static_cast<size_t>(V), -4.0f, 2.0f);
    for (int i = 0; i < 30; ++i) l[static_cast<size_t>(rng.engine()() % V)] = 8.0f + 0.3f * i;
    return l;
  };
  run_rows("peaked-128256", V, option_rows(rng, V, peaked));
  // 5000 logits of exactly one value right at the top: top-k cannot cut inside the bin within
  // 2048 candidates, so those rows go to the baseline.
  auto tied_top = [&] {
    std::vector<float> l = rng.normal(static_cast<size_t>(V), -3.0f, 1.0f);
    for (int i = 0; i < 5000; ++i) l[static_cast<size_t>((i * 25) % V)] = 4.0f;
    return l;
  };
  run_rows("tied-top-128256", V, option_rows(rng, V, tied_top));
  // Flat rows: the top-p mass and the draw lie far below any 2048 candidates.
  auto flat = [&] { return rng.uniform(static_cast<size_t>(V), -0.5f, 0.5f); };
  run_rows("flat-128256", V, option_rows(rng, V, flat));
  // 3000 tokens near the top, the rest far below (weight 0): with top-k above 3000 every weighted
  // token must be a candidate, more than the fast kernel holds (baseline); with top-k 1000 or
  // none, the candidates cover the decision.
  auto two_level = [&] {
    std::vector<float> l(static_cast<size_t>(V), -100.0f);
    for (int i = 0; i < 3000; ++i) {
      l[static_cast<size_t>((i * 41) % V)] =
          5.0f + 0.3f * static_cast<float>(rng.normal(1, 0.0f, 1.0f)[0]);
    }
    return l;
  };
  run_rows("two-level-128256", V, option_rows(rng, V, two_level));
  // An odd vocabulary and an unaligned row start (rows of 32001 floats).
  const int64_t v2 = 32001;
  auto odd = [&] { return rng.normal(static_cast<size_t>(v2), 0.0f, 2.5f); };
  run_rows("odd-32001", v2, option_rows(rng, v2, odd));
}

}  // namespace
}  // namespace qserve
