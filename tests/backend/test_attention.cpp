// Causal GQA attention over the KV cache against a double-precision reference, and the
// properties the serving engine relies on: decode == last prefill row, chunked prefill == one
// prefill, GQA head mapping, sliding-window masking, bounds checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "kernel_mode.h"
#include "reference.h"

namespace qserve {
namespace {

using test::KernelMode;
using test::KernelModeTest;

struct Dims {
  int64_t heads, kv_heads, hd;
};

// One sequence's full K/V history, [len][kv_heads][hd].
struct History {
  std::vector<float> k, v;
};

History random_history(int64_t len, const Dims& d, uint64_t seed) {
  return {test::random_floats(static_cast<size_t>(len * d.kv_heads * d.hd), seed, -2, 2),
          test::random_floats(static_cast<size_t>(len * d.kv_heads * d.hd), seed + 1)};
}

// Puts positions [0, context_len) of each history straight into the cache (earlier steps),
// then appends this step's rows with kv_append, and runs attention.
std::vector<float> run_step(cpu::KVCacheF32& cache, int64_t layer, const std::vector<SeqSpan>& seqs,
                            const std::vector<History>& hist, const std::vector<float>& q,
                            const Dims& d, int64_t window) {
  const int64_t row = d.kv_heads * d.hd;
  int64_t total = 0;
  for (const SeqSpan& s : seqs) total = std::max(total, s.token_offset + s.num_tokens);
  std::vector<float> k(static_cast<size_t>(total * row)), v(k.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqSpan& s = seqs[i];
    for (int64_t p = 0; p < s.context_len; ++p) {
      std::memcpy(cache.k_at(layer, s.kv_slot, p), &hist[i].k[p * row], row * sizeof(float));
      std::memcpy(cache.v_at(layer, s.kv_slot, p), &hist[i].v[p * row], row * sizeof(float));
    }
    std::memcpy(&k[s.token_offset * row], &hist[i].k[s.context_len * row],
                s.num_tokens * row * sizeof(float));
    std::memcpy(&v[s.token_offset * row], &hist[i].v[s.context_len * row],
                s.num_tokens * row * sizeof(float));
  }
  cpu::kv_append(cache, layer, seqs, k.data(), v.data());
  std::vector<float> out(static_cast<size_t>(total * d.heads * d.hd), NAN);
  cpu::attention(q.data(), cache, layer, seqs, d.heads, window, out.data());
  return out;
}

void expect_matches_reference(const std::vector<float>& out, const std::vector<SeqSpan>& seqs,
                              const std::vector<History>& hist, const std::vector<float>& q,
                              const Dims& d, int64_t window) {
  std::vector<test::RefSeq> rs;
  int64_t total = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    rs.push_back({seqs[i], hist[i].k.data(), hist[i].v.data()});
    total = std::max(total, seqs[i].token_offset + seqs[i].num_tokens);
  }
  const auto ref = test::ref_attention(q.data(), rs, total, d.heads, d.kv_heads, d.hd, window);
  ASSERT_EQ(out.size(), ref.size());
  const double tol = 1e-5 * std::max(1.0, test::max_abs(ref));
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], ref[i], tol) << "element " << i << " (token " << i / (d.heads * d.hd)
                                     << ", head " << (i / d.hd) % d.heads << ")";
  }
}

class Attention : public KernelModeTest {};

TEST_P(Attention, PrefillMatchesReference) {
  // The test model's shape, a head_dim with a 16-wide tail of 8, and one with a masked tail.
  for (const Dims& d : {Dims{4, 2, 128}, Dims{6, 3, 72}, Dims{3, 1, 20}, Dims{2, 2, 1}}) {
    for (int64_t len : {1, 3, 37, 70}) {
      cpu::KVCacheF32 cache;
      cache.allocate(2, 1, 80, d.kv_heads, d.hd);
      const std::vector<SeqSpan> seqs = {{0, len, 0, 0}};
      const std::vector<History> hist = {random_history(len, d, len)};
      const auto q = test::random_floats(static_cast<size_t>(len * d.heads * d.hd), 9, -2, 2);
      const auto out = run_step(cache, 1, seqs, hist, q, d, 0);
      SCOPED_TRACE("hd=" + std::to_string(d.hd) + " len=" + std::to_string(len));
      expect_matches_reference(out, seqs, hist, q, d, 0);
    }
  }
}

TEST_P(Attention, VarlenBatchWithContextMatchesReference) {
  const Dims d{4, 2, 64};
  // A fresh prefill, a second chunk on top of 50 cached tokens, and two decode steps.
  const std::vector<SeqSpan> seqs = {{0, 40, 0, 2}, {40, 7, 50, 0}, {47, 1, 99, 1}, {48, 1, 0, 3}};
  std::vector<History> hist;
  for (size_t i = 0; i < seqs.size(); ++i) {
    hist.push_back(random_history(seqs[i].context_len + seqs[i].num_tokens, d, 10 * i));
  }
  const auto q = test::random_floats(49 * d.heads * d.hd, 3, -2, 2);
  for (int64_t window : {0, 16, 1}) {
    cpu::KVCacheF32 cache;
    cache.allocate(1, 4, 100, d.kv_heads, d.hd);
    const auto out = run_step(cache, 0, seqs, hist, q, d, window);
    SCOPED_TRACE("window=" + std::to_string(window));
    expect_matches_reference(out, seqs, hist, q, d, window);
  }
}

// More than 1024 keys: the P V product is split over K blocks.
TEST_P(Attention, LongContextMatchesReference) {
  const Dims d{2, 1, 16};
  const std::vector<SeqSpan> seqs = {{0, 3, 1500, 0}, {3, 1, 2100, 1}};
  const std::vector<History> hist = {random_history(1503, d, 1), random_history(2101, d, 2)};
  const auto q = test::random_floats(4 * d.heads * d.hd, 3, -2, 2);
  cpu::KVCacheF32 cache;
  cache.allocate(1, 2, 2200, d.kv_heads, d.hd);
  const auto out = run_step(cache, 0, seqs, hist, q, d, 0);
  expect_matches_reference(out, seqs, hist, q, d, 0);
}

TEST_P(Attention, DecodeStepEqualsLastRowOfPrefill) {
  const Dims d{4, 2, 128};
  for (int64_t len : {2, 33, 45, 100}) {
    const std::vector<History> hist = {random_history(len, d, len)};
    const auto q = test::random_floats(static_cast<size_t>(len * d.heads * d.hd), len, -2, 2);
    cpu::KVCacheF32 a, b;
    a.allocate(1, 1, len, d.kv_heads, d.hd);
    b.allocate(1, 1, len, d.kv_heads, d.hd);
    const auto prefill = run_step(a, 0, {{0, len, 0, 0}}, hist, q, d, 0);
    // The decode step sees len - 1 cached tokens and the last token's query.
    const std::vector<float> q_last(q.end() - d.heads * d.hd, q.end());
    const auto decode = run_step(b, 0, {{0, 1, len - 1, 0}}, hist, q_last, d, 0);
    for (int64_t i = 0; i < d.heads * d.hd; ++i) {
      ASSERT_NEAR(decode[i], prefill[(len - 1) * d.heads * d.hd + i], 1e-6)
          << "len=" << len << " i=" << i;
    }
  }
}

TEST_P(Attention, ChunkedPrefillEqualsOnePrefill) {
  const Dims d{4, 2, 128};
  const int64_t len = 77, first = 30;
  for (int64_t window : {0, 20}) {
    const std::vector<History> hist = {random_history(len, d, 5)};
    const auto q = test::random_floats(static_cast<size_t>(len * d.heads * d.hd), 6, -2, 2);
    cpu::KVCacheF32 a, b;
    a.allocate(1, 1, len, d.kv_heads, d.hd);
    b.allocate(1, 1, len, d.kv_heads, d.hd);
    const auto whole = run_step(a, 0, {{0, len, 0, 0}}, hist, q, d, window);
    const int64_t qrow = d.heads * d.hd;
    const std::vector<float> q1(q.begin(), q.begin() + first * qrow);
    const std::vector<float> q2(q.begin() + first * qrow, q.end());
    const auto c1 = run_step(b, 0, {{0, first, 0, 0}}, hist, q1, d, window);
    const auto c2 = run_step(b, 0, {{0, len - first, first, 0}}, hist, q2, d, window);
    std::vector<float> chunked = c1;
    chunked.insert(chunked.end(), c2.begin(), c2.end());
    ASSERT_EQ(chunked.size(), whole.size());
    for (size_t i = 0; i < whole.size(); ++i) {
      ASSERT_NEAR(chunked[i], whole[i], 1e-6) << "window=" << window << " i=" << i;
    }
  }
}

// With V constant per KV head (value g + 1 for KV head g), every query head's output is the
// value of the KV head it maps to: h / (heads / kv_heads).
TEST_P(Attention, GqaMapsQueryHeadsToKvHeads) {
  const Dims d{8, 2, 16};
  const int64_t len = 9;
  History hist = random_history(len, d, 1);
  for (int64_t p = 0; p < len; ++p) {
    for (int64_t g = 0; g < d.kv_heads; ++g) {
      for (int64_t e = 0; e < d.hd; ++e) hist.v[(p * d.kv_heads + g) * d.hd + e] = float(g + 1);
    }
  }
  const auto q = test::random_floats(static_cast<size_t>(len * d.heads * d.hd), 2, -2, 2);
  cpu::KVCacheF32 cache;
  cache.allocate(1, 1, len, d.kv_heads, d.hd);
  const auto out = run_step(cache, 0, {{0, len, 0, 0}}, {hist}, q, d, 0);
  for (int64_t t = 0; t < len; ++t) {
    for (int64_t h = 0; h < d.heads; ++h) {
      for (int64_t e = 0; e < d.hd; ++e) {
        ASSERT_NEAR(out[(t * d.heads + h) * d.hd + e], float(h / 4 + 1), 1e-5)
            << "t=" << t << " h=" << h;
      }
    }
  }
}

// Keys before the window have no influence at all, however large.
TEST_P(Attention, SlidingWindowMasksOlderKeys) {
  const Dims d{2, 1, 32};
  const int64_t len = 40, window = 6;
  History hist = random_history(len, d, 3);
  const auto q = test::random_floats(static_cast<size_t>(len * d.heads * d.hd), 4, -2, 2);
  cpu::KVCacheF32 a;
  a.allocate(1, 1, len, d.kv_heads, d.hd);
  const std::vector<SeqSpan> seqs = {{0, len, 0, 0}};
  const auto out = run_step(a, 0, seqs, {hist}, q, d, window);
  expect_matches_reference(out, seqs, {hist}, q, d, window);

  // Decode at the last position: only positions len-6 .. len-1 may matter.
  const std::vector<float> q_last(q.end() - d.heads * d.hd, q.end());
  cpu::KVCacheF32 b;
  b.allocate(1, 1, len, d.kv_heads, d.hd);
  const auto ref_out = run_step(b, 0, {{0, 1, len - 1, 0}}, {hist}, q_last, d, window);
  for (int64_t p = 0; p < len - window; ++p) {
    for (int64_t e = 0; e < d.kv_heads * d.hd; ++e) {
      hist.k[p * d.kv_heads * d.hd + e] = 1e4f;
      hist.v[p * d.kv_heads * d.hd + e] = -1e4f;
    }
  }
  cpu::KVCacheF32 c;
  c.allocate(1, 1, len, d.kv_heads, d.hd);
  const auto poked = run_step(c, 0, {{0, 1, len - 1, 0}}, {hist}, q_last, d, window);
  EXPECT_EQ(poked, ref_out);
  // Without the window the poked keys dominate.
  cpu::KVCacheF32 e;
  e.allocate(1, 1, len, d.kv_heads, d.hd);
  const auto full = run_step(e, 0, {{0, 1, len - 1, 0}}, {hist}, q_last, d, 0);
  EXPECT_NE(full, ref_out);
}

INSTANTIATE_TEST_SUITE_P(Kernels, Attention,
                         testing::Values(KernelMode::Avx2, KernelMode::Portable),
                         test::kernel_mode_name);

TEST(AttentionChecks, RejectsBadSpansAndShapes) {
  cpu::KVCacheF32 cache;
  cache.allocate(2, 2, 8, 2, 4);
  std::vector<float> q(64), out(64);
  const SeqSpan too_long{0, 3, 6, 0};  // positions 6..8 in an 8-long cache
  try {
    cpu::attention(q.data(), cache, 0, {&too_long, 1}, 4, 0, out.data());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("9 tokens"), std::string::npos) << e.what();
  }
  const SeqSpan ok{0, 1, 0, 0}, bad_slot{0, 1, 0, 2}, negative{0, -1, 0, 0};
  EXPECT_THROW(cpu::attention(q.data(), cache, 0, {&bad_slot, 1}, 4, 0, out.data()), Error);
  EXPECT_THROW(cpu::attention(q.data(), cache, 0, {&negative, 1}, 4, 0, out.data()), Error);
  EXPECT_THROW(cpu::attention(q.data(), cache, 2, {&ok, 1}, 4, 0, out.data()), Error);
  EXPECT_THROW(cpu::attention(q.data(), cache, 0, {&ok, 1}, 3, 0, out.data()), Error);
  EXPECT_NO_THROW(cpu::attention(q.data(), cache, 0, {&ok, 1}, 4, 0, out.data()));
}

}  // namespace
}  // namespace qserve
