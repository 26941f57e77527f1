// Parity of the Hopper wgmma prefill attention (prefill_attention_wgmma,
// attention_prefill_wgmma.cu) with the fp32 baseline kernel (prefill_attention_baseline), both on
// the GPU; skipped unless the device is compute capability 9.0 (parity_sm90.h).
//
// The kernel rounds q to 11 significant bits (fp16 after a power-of-two scale) and the softmax
// numerators to fp16, like prefill_attention_tc; so it is compared with the baseline fed
// q^ = RN11(q), the kernel's own q. Each is within its documented bound of the CPU reference on
// q^ (ops_cuda_attention.h), hence
//   |wgmma(q) - baseline(q^)| <= max|V| (2^-11 + 2 (3e-5 + 2^-21 B)),  B = scale D max|q| max|K|.
// A missed, extra or misplaced key, a wrong channel or a stale shared-memory stage moves outputs
// by far more. Cases: odd lengths around the 64/128-key tiles and the 128-row CTA, ragged
// batches, GQA groups 1/3/4/8, a sliding window, chunked prefill over cached KV16/KV8/KV4 pages,
// large and tiny q, every kernel variant (block_n / stages / ping-pong), determinism, and what
// prefill_attention_wgmma_supported() refuses. Outputs are poisoned (NaN) before every launch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"
#include "core/half.h"
#include "model/kv_cache.h"
#include "parity/parity_attention_util.h"
#include "parity/parity_main_util.h"
#include "parity/parity_sm90.h"
#include "quant/kv_cache.h"

namespace qserve {
namespace {

using cuda::DeviceBuffer;
using cuda::KvFormat;
using parity::fmt_name;
using parity::fp16_normal;
using parity::round11;

struct WgCase {
  std::string name;
  int64_t hq, hkv;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (context_len, num_tokens)
  int64_t window = 0;
  float q_std = 1.0f, k_std = 1.0f, v_std = 1.0f;
  uint64_t seed = 1;
};

constexpr int64_t kD = 128;

struct Variant {
  const char* name;
  int block_n, stages;
  bool pingpong;
};
constexpr Variant kVariants[] = {
    {"bn128s3", 128, 3, false},  {"bn128s2", 128, 2, false}, {"bn128s3pp", 128, 3, true},
    {"bn128s2pp", 128, 2, true}, {"bn64s4", 64, 4, false},
};

// Host inputs, page bytes and device buffers of one case.
struct Problem {
  WgCase c;
  KvFormat fmt = KvFormat::kv16;
  int64_t S = 0, T = 0, max_n = 0, max_total = 0, max_pages = 0, num_pages = 0;
  std::vector<std::vector<int32_t>> tables;
  std::vector<float> q;
  std::vector<uint16_t> k16, v16;
  std::vector<uint8_t> k_pool, v_pool;
  float qmax = 0.0f, kmax = 0.0f, vmax = 0.0f;
  std::vector<int32_t> tok_off, ntok, ctxl;

  DeviceBuffer<int32_t> d_off, d_n, d_ctx, d_bt;
  DeviceBuffer<uint8_t> d_kp, d_vp;
  DeviceBuffer<float> d_q, d_q11;
  DeviceBuffer<uint16_t> d_k, d_v;
  cuda::PagedKvDevice kv;
  cuda::VarlenBatchDevice b;

  int64_t qd() const { return c.hq * kD; }
  int64_t kvd() const { return c.hkv * kD; }
};

void build(Problem& p, const WgCase& c, KvFormat fmt) {
  p.c = c;
  p.fmt = fmt;
  parity::ParityRng rng(c.seed * 1000 + static_cast<uint64_t>(fmt));
  p.S = static_cast<int64_t>(c.seqs.size());
  const int64_t kvd = p.kvd(), hkv = c.hkv;
  for (int64_t s = 0; s < p.S; ++s) {
    const auto [ctx, n] = c.seqs[static_cast<size_t>(s)];
    p.tok_off.push_back(static_cast<int32_t>(p.T));
    p.ntok.push_back(static_cast<int32_t>(n));
    p.ctxl.push_back(static_cast<int32_t>(ctx));
    p.T += n;
    p.max_n = std::max(p.max_n, n);
    p.max_total = std::max(p.max_total, ctx + n);
    p.max_pages = std::max(p.max_pages, (ctx + n + 63) / 64);
  }
  // Pages handed out round-robin from a shuffled free list: interleaved, non-monotone tables.
  p.num_pages = p.S * p.max_pages + 3;
  std::vector<int32_t> free_pages(static_cast<size_t>(p.num_pages));
  std::iota(free_pages.begin(), free_pages.end(), 0);
  std::shuffle(free_pages.begin(), free_pages.end(), rng.engine());
  p.tables.assign(static_cast<size_t>(p.S), {});
  for (int64_t round = 0, next = 0; round < p.max_pages; ++round) {
    for (int64_t s = 0; s < p.S; ++s) {
      const auto [ctx, n] = c.seqs[static_cast<size_t>(s)];
      if (round < (ctx + n + 63) / 64) {
        p.tables[static_cast<size_t>(s)].push_back(free_pages[static_cast<size_t>(next++)]);
      }
    }
  }
  std::vector<std::vector<uint16_t>> ctx_k(static_cast<size_t>(p.S)), ctx_v(ctx_k.size());
  for (int64_t s = 0; s < p.S; ++s) {
    const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
    ctx_k[static_cast<size_t>(s)] = fp16_normal(rng, static_cast<size_t>(ctx * kvd), c.k_std);
    ctx_v[static_cast<size_t>(s)] = fp16_normal(rng, static_cast<size_t>(ctx * kvd), c.v_std);
  }
  p.q = rng.normal(static_cast<size_t>(p.T * p.qd()), 0.0f, c.q_std);
  p.k16 = fp16_normal(rng, static_cast<size_t>(p.T * kvd), c.k_std);
  p.v16 = fp16_normal(rng, static_cast<size_t>(p.T * kvd), c.v_std);
  for (float x : p.q) p.qmax = std::max(p.qmax, std::fabs(x));
  auto scan = [&](const std::vector<uint16_t>& k, const std::vector<uint16_t>& v) {
    for (size_t i = 0; i < k.size(); ++i) {
      p.kmax = std::max(p.kmax, std::fabs(fp16_to_float(k[i])));
      p.vmax = std::max(p.vmax, std::fabs(fp16_to_float(v[i])));
    }
  };
  scan(p.k16, p.v16);
  for (int64_t s = 0; s < p.S; ++s)
    scan(ctx_k[static_cast<size_t>(s)], ctx_v[static_cast<size_t>(s)]);

  const int64_t page_bytes = cuda::kv_page_bytes(fmt, hkv, kD);
  if (fmt == KvFormat::kv16) {
    p.k_pool.assign(static_cast<size_t>(p.num_pages * page_bytes), 0);
    p.v_pool.assign(static_cast<size_t>(p.num_pages * page_bytes), 0);
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
      for (int64_t pos = 0; pos < ctx; ++pos) {
        const int64_t page = p.tables[static_cast<size_t>(s)][static_cast<size_t>(pos / 64)];
        for (int64_t h = 0; h < hkv; ++h) {
          // Our KV16 layout: [page][h][64][D] fp16.
          const int64_t e = page * page_bytes / 2 + (h * 64 + pos % 64) * kD;
          std::memcpy(p.k_pool.data() + 2 * e,
                      ctx_k[static_cast<size_t>(s)].data() + pos * kvd + h * kD, 2 * kD);
          std::memcpy(p.v_pool.data() + 2 * e,
                      ctx_v[static_cast<size_t>(s)].data() + pos * kvd + h * kD, 2 * kD);
        }
      }
    }
  } else {
    // KV4/KV8 page bytes exactly as the engine writes them (quant::kv_append).
    const quant::KvBits bits = fmt == KvFormat::kv4 ? quant::KvBits::k4 : quant::KvBits::k8;
    PagedKvCache cache =
        PagedKvCache::with_external_pages(bits, 1, p.num_pages, p.S, p.max_total + 64, hkv, kD);
    for (int64_t s = 0; s < p.S; ++s) {
      cache.set_page_table(s, p.tables[static_cast<size_t>(s)]);
      for (int64_t pos = 0; pos < c.seqs[static_cast<size_t>(s)].first; ++pos) {
        quant::kv_append(cache.pool(0), cache.page_table(s), pos,
                         ctx_k[static_cast<size_t>(s)].data() + pos * kvd,
                         ctx_v[static_cast<size_t>(s)].data() + pos * kvd);
      }
    }
    p.k_pool = cache.pool(0).k;
    p.v_pool = cache.pool(0).v;
  }

  std::vector<int32_t> bt(static_cast<size_t>(p.S * p.max_pages), 0);
  for (int64_t s = 0; s < p.S; ++s) {
    const auto& t = p.tables[static_cast<size_t>(s)];
    std::copy(t.begin(), t.end(), bt.begin() + s * p.max_pages);
  }
  p.d_off = cuda::to_device(p.tok_off);
  p.d_n = cuda::to_device(p.ntok);
  p.d_ctx = cuda::to_device(p.ctxl);
  p.d_bt = cuda::to_device(bt);
  p.d_kp = cuda::to_device(p.k_pool);
  p.d_vp = cuda::to_device(p.v_pool);
  p.d_q = cuda::to_device(p.q);
  p.d_q11 = cuda::to_device(round11(p.q));
  p.d_k = cuda::to_device(p.k16);
  p.d_v = cuda::to_device(p.v16);
  p.kv.format = fmt;
  p.kv.kv_heads = static_cast<int32_t>(hkv);
  p.kv.head_dim = static_cast<int32_t>(kD);
  p.kv.k_pool = p.d_kp.data();
  p.kv.v_pool = p.d_vp.data();
  p.kv.num_pages = p.num_pages;
  p.b.num_seqs = static_cast<int32_t>(p.S);
  p.b.token_offset = p.d_off.data();
  p.b.num_tokens = p.d_n.data();
  p.b.context_len = p.d_ctx.data();
  p.b.block_table = p.d_bt.data();
  p.b.block_stride = static_cast<int32_t>(p.max_pages);
  p.b.max_num_tokens = static_cast<int32_t>(p.max_n);
  p.b.max_total_len = static_cast<int32_t>(p.max_total);
}

std::vector<float> run_baseline11(Problem& p) {
  DeviceBuffer<float> d_out(static_cast<size_t>(p.T * p.qd()));
  parity::poison(d_out.data(), d_out.bytes());
  cuda::prefill_attention_baseline(p.d_q11.data(), p.d_k.data(), p.d_v.data(), p.kv, p.b, p.c.hq,
                                   p.c.window, d_out.data(), nullptr);
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  return cuda::to_host(d_out);
}

std::vector<float> run_wgmma(Problem& p, const Variant& v) {
  DeviceBuffer<float> d_out(static_cast<size_t>(p.T * p.qd()));
  parity::poison(d_out.data(), d_out.bytes());
  cuda::prefill_attention_wgmma_variant(p.d_q.data(), p.d_k.data(), p.d_v.data(), p.kv, p.b, p.c.hq,
                                        p.c.window, d_out.data(), v.block_n, v.stages, v.pingpong,
                                        nullptr);
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  return cuda::to_host(d_out);
}

// Prints the worst element as (sequence, token, head, channel) when it exceeds tol.
void print_worst(const std::string& op, const Problem& p, const std::vector<float>& got,
                 const std::vector<float>& want, double tol) {
  double worst = -1.0;
  size_t wi = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::isfinite(got[i]) ? std::fabs(static_cast<double>(got[i]) - want[i])
                                           : std::numeric_limits<double>::infinity();
    if (e > worst) {
      worst = e;
      wi = i;
    }
  }
  if (worst <= tol) return;
  const int64_t row = static_cast<int64_t>(wi) / p.qd();
  const int64_t h = (static_cast<int64_t>(wi) % p.qd()) / kD;
  const int64_t ch = static_cast<int64_t>(wi) % kD;
  int64_t s = 0;
  while (s + 1 < p.S && p.tok_off[static_cast<size_t>(s + 1)] <= row) ++s;
  std::printf(
      "PARITY   op=%s worst: seq=%lld (ctx=%d n=%d) token=%lld head=%lld chan=%lld got=%.9g "
      "want=%.9g err=%.3g tol=%.3g\n",
      op.c_str(), static_cast<long long>(s), p.ctxl[static_cast<size_t>(s)],
      p.ntok[static_cast<size_t>(s)],
      static_cast<long long>(row - p.tok_off[static_cast<size_t>(s)]), static_cast<long long>(h),
      static_cast<long long>(ch), static_cast<double>(got[wi]), static_cast<double>(want[wi]),
      worst, tol);
}

// The variants of `variants` on one case and format against the baseline on q^.
void run_case(const WgCase& c, KvFormat fmt, std::initializer_list<Variant> variants) {
  ASSERT_TRUE(cuda::prefill_attention_wgmma_supported(fmt, c.hq, c.hkv, kD));
  Problem p;
  build(p, c, fmt);
  const std::vector<float> want = run_baseline11(p);
  const double kq = 1.1 * p.kmax, vq = 1.1 * p.vmax;  // KV4/KV8 rounding overshoot
  const double scale = 1.0 / std::sqrt(static_cast<double>(kD));
  const double B = scale * static_cast<double>(kD) * p.qmax * kq;
  const double tol = vq * (std::ldexp(1.0, -11) + 2.0 * (3e-5 + std::ldexp(1.0, -21) * B));
  const std::string shape = c.name + ":" +
                            parity::shape_str({{"S", p.S},
                                               {"T", p.T},
                                               {"Hq", c.hq},
                                               {"Hkv", c.hkv},
                                               {"max_total", p.max_total},
                                               {"window", c.window}});
  for (const Variant& v : variants) {
    const std::string op =
        std::string("prefill_attention_wgmma_") + v.name + "_" + fmt_name(fmt) + "_vs_baseline_q11";
    const std::vector<float> got = run_wgmma(p, v);
    const parity::ParityResult r = parity::compare_close(op, shape, got, want, tol, 0.0);
    print_worst(op, p, got, want, tol);
    EXPECT_PARITY(r, op, shape);
  }
}

const std::initializer_list<Variant> kAll = {kVariants[0], kVariants[1], kVariants[2], kVariants[3],
                                             kVariants[4]};
const std::initializer_list<Variant> kDefault = {kVariants[0]};

TEST(ParityPrefillWgmma, RaggedFreshPromptsLlama3Geometry) {
  QSERVE_PARITY_REQUIRE_SM90();
  // 32 query heads, 8 KV heads (group 4); lengths around the 64/128-key tiles and the 32-token
  // (128-row) CTA, one long sequence, one token.
  const WgCase c{"llama3-8b", 32,   8,    {{0, 1}, {0, 17}, {0, 64}, {0, 129}, {0, 200}, {0, 1000}},
                 0,           1.0f, 1.0f, 1.0f,
                 31};
  run_case(c, KvFormat::kv16, kAll);
  // 3 sequences of 1000 / 517 / 77 tokens (the bench's odd-length case).
  const WgCase odd{"1000-517-77", 32, 8, {{0, 1000}, {0, 517}, {0, 77}}, 0, 1.0f, 1.0f, 1.0f, 32};
  run_case(odd, KvFormat::kv16, kAll);
}

TEST(ParityPrefillWgmma, Groups) {
  QSERVE_PARITY_REQUIRE_SM90();
  const WgCase mha{"mha", 4, 4, {{0, 200}, {0, 17}, {0, 300}, {0, 128}}, 0, 1.0f, 1.0f, 1.0f, 33};
  const WgCase g8{"g8", 16, 2, {{0, 517}, {0, 77}, {0, 1}, {0, 16}}, 0, 1.0f, 1.0f, 1.0f, 34};
  // Group 3: a token's heads straddle the two warpgroups of a CTA and two CTAs.
  const WgCase g3{"g3", 12, 4, {{0, 200}, {0, 1000}, {0, 43}}, 0, 1.0f, 1.0f, 1.0f, 35};
  const WgCase g2{"g2", 4, 2, {{0, 333}, {0, 64}}, 0, 1.0f, 1.0f, 1.0f, 36};
  for (const WgCase* c : {&mha, &g8, &g3, &g2}) run_case(*c, KvFormat::kv16, kAll);
}

TEST(ParityPrefillWgmma, SlidingWindow) {
  QSERVE_PARITY_REQUIRE_SM90();
  const WgCase w{"window100", 8,    2, {{0, 200}, {0, 1000}, {0, 5}, {0, 129}}, 100, 1.0f,
                 1.0f,        1.0f, 37};
  const WgCase w64{"window64-mha", 4, 4, {{0, 700}, {0, 65}}, 64, 1.0f, 1.0f, 1.0f, 38};
  const WgCase w1{"window1-g8", 8, 1, {{0, 300}}, 1, 1.0f, 1.0f, 1.0f, 39};
  for (const WgCase* c : {&w, &w64, &w1}) run_case(*c, KvFormat::kv16, kAll);
}

// Chunked prefill over cached pages: correct (the producer warp copies KV16 and dequantizes
// KV4/KV8 bit-exactly), not optimized.
TEST(ParityPrefillWgmma, ChunkedPrefillOverCachedPages) {
  QSERVE_PARITY_REQUIRE_SM90();
  const WgCase c{
      "ctx-g4", 16,   4, {{63, 17}, {130, 200}, {0, 64}, {63, 1}, {130, 1000}, {300, 9}}, 0, 1.0f,
      1.0f,     1.0f, 40};
  const WgCase w{"ctx-window100", 8, 2, {{130, 70}, {63, 200}}, 100, 1.0f, 1.0f, 1.0f, 41};
  for (KvFormat f : {KvFormat::kv16, KvFormat::kv8, KvFormat::kv4}) {
    run_case(c, f, kDefault);
    run_case(w, f, kDefault);
  }
  run_case(c, KvFormat::kv8, kAll);
}

TEST(ParityPrefillWgmma, LargeAndSmallMagnitudes) {
  QSERVE_PARITY_REQUIRE_SM90();
  // K/V near fp16's largest values with small q; q beyond fp16's range (the power-of-two scale
  // must keep it finite) with small K; tiny q.
  const WgCase big_kv{"large-kv", 8, 2, {{0, 100}, {0, 140}}, 0, 2e-3f, 2e4f, 2e4f, 42};
  const WgCase big_q{"large-q", 8, 2, {{0, 100}, {0, 140}}, 0, 1e5f, 1e-4f, 1.0f, 43};
  const WgCase tiny_q{"tiny-q", 8, 2, {{0, 100}, {0, 140}}, 0, 1e-6f, 1.0f, 1.0f, 44};
  for (const WgCase* c : {&big_kv, &big_q, &tiny_q}) run_case(*c, KvFormat::kv16, kDefault);
}

// 4 x 1024 at Llama-3-8B geometry (the bench's check shape, larger), every variant.
TEST(ParityPrefillWgmma, FourBy1024) {
  QSERVE_PARITY_REQUIRE_SM90();
  const WgCase c{"4x1024", 32,   8, {{0, 1024}, {0, 1024}, {0, 1024}, {0, 1024}}, 0, 1.0f,
                 1.0f,     1.0f, 45};
  run_case(c, KvFormat::kv16, kAll);
}

TEST(ParityPrefillWgmma, DeterminismAndSupport) {
  QSERVE_PARITY_REQUIRE_SM90();
  const WgCase c{"determinism", 32, 8, {{0, 300}, {0, 77}}, 0, 1.0f, 1.0f, 1.0f, 46};
  Problem p;
  build(p, c, KvFormat::kv16);
  for (const Variant& v : kAll) {
    const std::vector<float> a = run_wgmma(p, v), b = run_wgmma(p, v);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
        << "prefill_attention_wgmma " << v.name << " is not deterministic";
  }
  // The default entry point is one of the variants (bn128s3 unless QSERVE_PREFILL_WGMMA says
  // otherwise): finite and deterministic too.
  DeviceBuffer<float> d_out(static_cast<size_t>(p.T * p.qd()));
  parity::poison(d_out.data(), d_out.bytes());
  cuda::prefill_attention_wgmma(p.d_q.data(), p.d_k.data(), p.d_v.data(), p.kv, p.b, c.hq, 0,
                                d_out.data(), nullptr);
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  for (float x : cuda::to_host(d_out)) ASSERT_TRUE(std::isfinite(x));

  EXPECT_FALSE(cuda::prefill_attention_wgmma_supported(KvFormat::kv16, 8, 2, 64));    // head_dim
  EXPECT_FALSE(cuda::prefill_attention_wgmma_supported(KvFormat::kv16, 32, 2, 128));  // group 16
  EXPECT_FALSE(cuda::prefill_attention_wgmma_supported(KvFormat::kv16, 6, 4, 128));   // 6 % 4
  EXPECT_TRUE(cuda::prefill_attention_wgmma_supported(KvFormat::kv4, 8, 1, 128));
  // A variant that does not exist, and a misaligned q, are refused.
  EXPECT_THROW(
      cuda::prefill_attention_wgmma_variant(p.d_q.data(), p.d_k.data(), p.d_v.data(), p.kv, p.b,
                                            c.hq, 0, d_out.data(), 64, 2, false, nullptr),
      Error);
  EXPECT_THROW(cuda::prefill_attention_wgmma(p.d_q.data() + 1, p.d_k.data(), p.d_v.data(), p.kv,
                                             p.b, c.hq, 0, d_out.data(), nullptr),
               Error);
}

// QSERVE_PREFILL_WGMMA's names (host code: runs without a GPU too). An unknown name throws, so
// a mistyped A/B override cannot silently time the default.
TEST(ParityPrefillWgmma, VariantNamesParse) {
  const cuda::PrefillWgmmaVariant d = cuda::parse_prefill_wgmma_variant("bn128s3");
  EXPECT_EQ(d.block_n, 128);
  EXPECT_EQ(d.stages, 3);
  EXPECT_FALSE(d.pingpong);
  const cuda::PrefillWgmmaVariant pp = cuda::parse_prefill_wgmma_variant("bn128s2pp");
  EXPECT_EQ(pp.block_n, 128);
  EXPECT_EQ(pp.stages, 2);
  EXPECT_TRUE(pp.pingpong);
  const cuda::PrefillWgmmaVariant b64 = cuda::parse_prefill_wgmma_variant("bn64s4");
  EXPECT_EQ(b64.block_n, 64);
  EXPECT_EQ(b64.stages, 4);
  EXPECT_EQ(cuda::parse_prefill_wgmma_variant("bn128s3pp").pingpong, true);
  EXPECT_EQ(cuda::parse_prefill_wgmma_variant("bn128s2").stages, 2);
  for (const char* bad : {"", "bn128", "bn128s4", "BN128S2", "bn64s4pp", " bn128s2"}) {
    EXPECT_THROW(cuda::parse_prefill_wgmma_variant(bad), Error) << "'" << bad << "'";
  }
}

}  // namespace
}  // namespace qserve
