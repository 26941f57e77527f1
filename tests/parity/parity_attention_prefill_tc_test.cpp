// Parity of the tensor-core prefill attention (prefill_attention_tc, attention_prefill_tc.cu)
// with the CPU specification and with the fp32 baseline kernel.
//
// The kernel rounds q to 11 significant bits (fp16 after a power-of-two scale) and the softmax
// numerators to fp16; everything else is the reference's arithmetic on the reference's fp16
// K/V values. So every case is checked twice (ops_cuda_attention.h, prefill_attention_tc):
//  (a) tight:    against the CPU reference evaluated on q^ = RN11(q), the kernel's own q:
//                |gpu - ref(q^)| <= max|V| (2^-11 + 3e-5 + 2^-21 B);
//  (b) contract: against the CPU reference on q itself, with the worst-case score
//                perturbation d = 2^-11 A + 2^-20 B: + max|V| (e^(2d) - 1).
// (a) is the check that catches indexing, masking or dequantization bugs (a missed or extra key
// moves an output by far more than 2^-11 max|V|); (b) states what a caller can rely on.
// References: KV4/KV8 model/paged_attention.cpp's paged_attention_step over the very same page
// bytes; KV16 cpu::attention over the fp16 values the GPU pages hold. Shuffled, interleaved page
// tables; outputs poisoned (NaN) before every launch; one PARITY line per check, and on a
// failure the worst element's (token, head, channel).
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

#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"
#include "core/half.h"
#include "model/kv_cache.h"
#include "model/paged_attention.h"
#include "parity/parity_attention_util.h"
#include "parity/parity_main_util.h"
#include "quant/kv_cache.h"

namespace qserve {
namespace {

using cuda::DeviceBuffer;
using cuda::KvFormat;
using parity::fmt_name;
using parity::fp16_normal;
using parity::max_abs;
using parity::round11;

struct TcCase {
  std::string name;
  int64_t hq, hkv, d;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (context_len, num_tokens)
  int64_t window = 0;
  float q_std = 1.0f, k_std = 1.0f, v_std = 1.0f;
  uint64_t seed = 1;
};

// Host inputs, page bytes and device buffers of one case.
struct Problem {
  TcCase c;
  KvFormat fmt = KvFormat::kv16;
  int64_t S = 0, T = 0, max_n = 0, max_total = 0, max_pages = 0, num_pages = 0;
  std::vector<SeqSpan> spans;
  std::vector<std::vector<int32_t>> tables;
  std::vector<std::vector<uint16_t>> ctx_k, ctx_v;
  std::vector<float> q;
  std::vector<uint16_t> k16, v16;
  std::vector<uint8_t> k_pool, v_pool;
  float kmax = 0.0f, vmax = 0.0f;
  std::vector<float> kmax_chan;  // per channel, over every key of every head

  DeviceBuffer<int32_t> d_off, d_n, d_ctx, d_bt;
  DeviceBuffer<uint8_t> d_kp, d_vp;
  DeviceBuffer<float> d_q;
  DeviceBuffer<uint16_t> d_k, d_v;
  cuda::PagedKvDevice kv;
  cuda::VarlenBatchDevice b;

  int64_t qd() const { return c.hq * c.d; }
  int64_t kvd() const { return c.hkv * c.d; }
};

void build(Problem& p, const TcCase& c, KvFormat fmt) {
  p.c = c;
  p.fmt = fmt;
  parity::ParityRng rng(c.seed * 1000 + static_cast<uint64_t>(fmt));
  p.S = static_cast<int64_t>(c.seqs.size());
  const int64_t kvd = p.kvd(), qd = p.qd(), d = c.d, hkv = c.hkv;
  for (int64_t s = 0; s < p.S; ++s) {
    const auto [ctx, n] = c.seqs[static_cast<size_t>(s)];
    p.spans.push_back({p.T, n, ctx, s});
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
  p.ctx_k.resize(static_cast<size_t>(p.S));
  p.ctx_v.resize(static_cast<size_t>(p.S));
  for (int64_t s = 0; s < p.S; ++s) {
    const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
    p.ctx_k[static_cast<size_t>(s)] = fp16_normal(rng, static_cast<size_t>(ctx * kvd), c.k_std);
    p.ctx_v[static_cast<size_t>(s)] = fp16_normal(rng, static_cast<size_t>(ctx * kvd), c.v_std);
  }
  p.q = rng.normal(static_cast<size_t>(p.T * qd), 0.0f, c.q_std);
  p.k16 = fp16_normal(rng, static_cast<size_t>(p.T * kvd), c.k_std);
  p.v16 = fp16_normal(rng, static_cast<size_t>(p.T * kvd), c.v_std);

  // max|K|, max|V| and per-channel max|K| over every key (context and chunk).
  p.kmax_chan.assign(static_cast<size_t>(d), 0.0f);
  auto scan = [&](const std::vector<uint16_t>& k, const std::vector<uint16_t>& v) {
    for (size_t i = 0; i < k.size(); ++i) {
      const float kf = std::fabs(fp16_to_float(k[i]));
      p.kmax = std::max(p.kmax, kf);
      p.vmax = std::max(p.vmax, std::fabs(fp16_to_float(v[i])));
      float& kc = p.kmax_chan[i % static_cast<size_t>(d)];
      kc = std::max(kc, kf);
    }
  };
  scan(p.k16, p.v16);
  for (int64_t s = 0; s < p.S; ++s)
    scan(p.ctx_k[static_cast<size_t>(s)], p.ctx_v[static_cast<size_t>(s)]);

  const int64_t page_bytes = cuda::kv_page_bytes(fmt, hkv, d);
  if (fmt == KvFormat::kv16) {
    p.k_pool.assign(static_cast<size_t>(p.num_pages * page_bytes), 0);
    p.v_pool.assign(static_cast<size_t>(p.num_pages * page_bytes), 0);
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
      for (int64_t pos = 0; pos < ctx; ++pos) {
        const int64_t page = p.tables[static_cast<size_t>(s)][static_cast<size_t>(pos / 64)];
        for (int64_t h = 0; h < hkv; ++h) {
          // Our KV16 layout: [page][h][64][D] fp16.
          const int64_t e = page * page_bytes / 2 + (h * 64 + pos % 64) * d;
          std::memcpy(p.k_pool.data() + 2 * e,
                      p.ctx_k[static_cast<size_t>(s)].data() + pos * kvd + h * d, 2 * d);
          std::memcpy(p.v_pool.data() + 2 * e,
                      p.ctx_v[static_cast<size_t>(s)].data() + pos * kvd + h * d, 2 * d);
        }
      }
    }
  }  // KV4/KV8 pages are written by reference() (quant::kv_append) before the upload.
}

// CPU reference for query values `q` (the page bytes of KV4/KV8 are produced here on first use).
std::vector<float> reference(Problem& p, const std::vector<float>& q) {
  const TcCase& c = p.c;
  const int64_t kvd = p.kvd(), d = c.d, hkv = c.hkv;
  std::vector<float> want(static_cast<size_t>(p.T * p.qd()));
  const std::vector<float> kf = parity::fp16_to_float_vec(p.k16);
  const std::vector<float> vf = parity::fp16_to_float_vec(p.v16);
  if (p.fmt != KvFormat::kv16) {
    const quant::KvBits bits = p.fmt == KvFormat::kv4 ? quant::KvBits::k4 : quant::KvBits::k8;
    PagedKvCache cache =
        PagedKvCache::with_external_pages(bits, 1, p.num_pages, p.S, p.max_total + 64, hkv, d);
    for (int64_t s = 0; s < p.S; ++s) {
      cache.set_page_table(s, p.tables[static_cast<size_t>(s)]);
      const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
      for (int64_t pos = 0; pos < ctx; ++pos) {
        quant::kv_append(cache.pool(0), cache.page_table(s), pos,
                         p.ctx_k[static_cast<size_t>(s)].data() + pos * kvd,
                         p.ctx_v[static_cast<size_t>(s)].data() + pos * kvd);
      }
    }
    if (p.k_pool.empty()) {
      p.k_pool = cache.pool(0).k;
      p.v_pool = cache.pool(0).v;
    }
    paged_attention_step(q.data(), kf.data(), vf.data(), p.k16.data(), p.v16.data(), cache, 0,
                         p.spans, c.hq, d, c.window, want.data());
  } else {
    cpu::KVCacheF32 cache;
    cache.allocate(1, p.S, p.max_total, hkv, d);
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
      for (int64_t pos = 0; pos < ctx; ++pos) {
        for (int64_t i = 0; i < kvd; ++i) {
          cache.k_at(0, s, pos)[i] = fp16_to_float(p.ctx_k[static_cast<size_t>(s)][pos * kvd + i]);
          cache.v_at(0, s, pos)[i] = fp16_to_float(p.ctx_v[static_cast<size_t>(s)][pos * kvd + i]);
        }
      }
    }
    cpu::kv_append(cache, 0, p.spans, kf.data(), vf.data());
    cpu::attention(q.data(), cache, 0, p.spans, c.hq, c.window, want.data());
  }
  return want;
}

void upload(Problem& p) {
  std::vector<int32_t> tok_off, ntok, ctxl, bt(static_cast<size_t>(p.S * p.max_pages), 0);
  for (int64_t s = 0; s < p.S; ++s) {
    tok_off.push_back(static_cast<int32_t>(p.spans[static_cast<size_t>(s)].token_offset));
    ntok.push_back(static_cast<int32_t>(p.spans[static_cast<size_t>(s)].num_tokens));
    ctxl.push_back(static_cast<int32_t>(p.spans[static_cast<size_t>(s)].context_len));
    const auto& t = p.tables[static_cast<size_t>(s)];
    std::copy(t.begin(), t.end(), bt.begin() + s * p.max_pages);
  }
  p.d_off = cuda::to_device(tok_off);
  p.d_n = cuda::to_device(ntok);
  p.d_ctx = cuda::to_device(ctxl);
  p.d_bt = cuda::to_device(bt);
  p.d_kp = cuda::to_device(p.k_pool);
  p.d_vp = cuda::to_device(p.v_pool);
  p.d_q = cuda::to_device(p.q);
  p.d_k = cuda::to_device(p.k16);
  p.d_v = cuda::to_device(p.v16);
  p.kv.format = p.fmt;
  p.kv.kv_heads = static_cast<int32_t>(p.c.hkv);
  p.kv.head_dim = static_cast<int32_t>(p.c.d);
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

using PrefillFn = void (*)(const float*, const uint16_t*, const uint16_t*,
                           const cuda::PagedKvDevice&, const cuda::VarlenBatchDevice&, int64_t,
                           int64_t, float*, cudaStream_t);

std::vector<float> run_gpu(Problem& p, PrefillFn fn, const float* d_q) {
  DeviceBuffer<float> d_out(static_cast<size_t>(p.T * p.qd()));
  parity::poison(d_out.data(), d_out.bytes());
  fn(d_q, p.d_k.data(), p.d_v.data(), p.kv, p.b, p.c.hq, p.c.window, d_out.data(), nullptr);
  EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  return cuda::to_host(d_out);
}

// Prints the worst element as (token, head, channel) so a failure says where it is.
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
  const int64_t h = (static_cast<int64_t>(wi) % p.qd()) / p.c.d;
  const int64_t ch = static_cast<int64_t>(wi) % p.c.d;
  int64_t s = 0;
  while (s + 1 < p.S && p.spans[static_cast<size_t>(s + 1)].token_offset <= row) ++s;
  const SeqSpan& sp = p.spans[static_cast<size_t>(s)];
  std::printf(
      "PARITY   op=%s worst: seq=%lld (ctx=%lld n=%lld) token=%lld pos=%lld head=%lld "
      "chan=%lld got=%.9g want=%.9g err=%.3g tol=%.3g\n",
      op.c_str(), static_cast<long long>(s), static_cast<long long>(sp.context_len),
      static_cast<long long>(sp.num_tokens), static_cast<long long>(row - sp.token_offset),
      static_cast<long long>(sp.context_len + row - sp.token_offset), static_cast<long long>(h),
      static_cast<long long>(ch), static_cast<double>(got[wi]), static_cast<double>(want[wi]),
      worst, tol);
}

// (a) and (b) of the file comment for one case and format; warps: the CTA shape
// (prefill_attention_tc_warps; 4 is what prefill_attention_tc uses).
void run_case(const TcCase& c, KvFormat fmt, int warps = 4) {
  ASSERT_TRUE(cuda::prefill_attention_tc_supported(fmt, c.hq, c.hkv, c.d));
  Problem p;
  build(p, c, fmt);
  const std::vector<float> q11 = round11(p.q);
  const std::vector<float> want11 = reference(p, q11);
  const std::vector<float> want = reference(p, p.q);
  upload(p);
  DeviceBuffer<float> d_out(static_cast<size_t>(p.T * p.qd()));
  parity::poison(d_out.data(), d_out.bytes());
  cuda::prefill_attention_tc_warps(p.d_q.data(), p.d_k.data(), p.d_v.data(), p.kv, p.b, c.hq,
                                   c.window, d_out.data(), warps, nullptr);
  ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  const std::vector<float> got = cuda::to_host(d_out);

  // KV4 dequantization can overshoot the original range by a rounding step or two.
  const double kq = 1.1 * p.kmax, vq = 1.1 * p.vmax;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  const double B = scale * static_cast<double>(c.d) * max_abs(p.q) * kq;
  // A <= scale * max_rows sum_c |q_c| max_keys |k_c| (bounds every |q|.|k| dot of a row).
  double A = 0.0;
  for (int64_t r = 0; r < p.T * c.hq; ++r) {
    double a = 0.0;
    for (int64_t ch = 0; ch < c.d; ++ch) {
      a += std::fabs(static_cast<double>(p.q[static_cast<size_t>(r * c.d + ch)])) * 1.1 *
           p.kmax_chan[static_cast<size_t>(ch)];
    }
    A = std::max(A, scale * a);
  }
  const double base = vq * (std::ldexp(1.0, -11) + 3e-5 + std::ldexp(1.0, -21) * B);
  const double delta = std::ldexp(1.0, -11) * A + std::ldexp(1.0, -20) * B;
  const double tol_b = base + vq * std::expm1(2.0 * delta);

  const std::string op =
      std::string(warps == 4 ? "prefill_attention_tc_" : "prefill_attention_tc_w8_") +
      fmt_name(fmt);
  const std::string shape = c.name + ":" +
                            parity::shape_str({{"S", p.S},
                                               {"T", p.T},
                                               {"Hq", c.hq},
                                               {"Hkv", c.hkv},
                                               {"D", c.d},
                                               {"max_total", p.max_total},
                                               {"window", c.window}});
  const parity::ParityResult ra =
      parity::compare_close(op + "_vs_ref_q11", shape, got, want11, base, 0.0);
  print_worst(op + "_vs_ref_q11", p, got, want11, base);
  EXPECT_PARITY(ra, op + "_vs_ref_q11", shape);
  const parity::ParityResult rb =
      parity::compare_close(op + "_vs_ref", shape, got, want, tol_b, 0.0);
  print_worst(op + "_vs_ref", p, got, want, tol_b);
  EXPECT_PARITY(rb, op + "_vs_ref", shape);
}

const KvFormat kFormats[] = {KvFormat::kv4, KvFormat::kv8, KvFormat::kv16};

TEST(ParityPrefillTc, RaggedFreshPromptsLlama3Geometry) {
  QSERVE_PARITY_REQUIRE_GPU();
  // 32 query heads, 8 KV heads (group 4), D 128; lengths around tile edges and a long one.
  const TcCase c{"llama3-8b", 32,   8,    128,  {{0, 1}, {0, 17}, {0, 64}, {0, 200}, {0, 1000}},
                 0,           1.0f, 1.0f, 1.0f, 11};
  for (KvFormat f : kFormats) run_case(c, f);
}

TEST(ParityPrefillTc, ChunkedPrefillOverCachedPages) {
  QSERVE_PARITY_REQUIRE_GPU();
  // Contexts 0 / 63 / 130 (page edges inside a key tile), chunk lengths 1..1000, decode rows.
  const TcCase g4{
      "ctx-g4", 16,   4,    128,  {{63, 17}, {130, 200}, {0, 64}, {63, 1}, {130, 1000}, {130, 1}},
      0,        1.0f, 1.0f, 1.0f, 12};
  for (KvFormat f : kFormats) run_case(g4, f);
}

TEST(ParityPrefillTc, HeadDim64AndGroups) {
  QSERVE_PARITY_REQUIRE_GPU();
  const TcCase g8{"hd64-g8", 16,   2,    64,   {{0, 17}, {130, 200}, {63, 64}, {0, 1}},
                  0,         1.0f, 1.0f, 1.0f, 13};
  const TcCase g1{"hd128-mha", 4, 4, 128, {{0, 200}, {63, 17}, {130, 64}}, 0, 1.0f, 1.0f, 1.0f, 14};
  const TcCase g1d64{"hd64-mha", 4, 4, 64, {{0, 1000}, {130, 1}}, 0, 1.0f, 1.0f, 1.0f, 15};
  // Groups that do not divide the 128-row tile: a token's heads straddle two CTAs.
  const TcCase g3{"hd128-g3", 12, 4, 128, {{0, 200}, {63, 17}, {130, 64}}, 0, 1.0f, 1.0f, 1.0f, 16};
  const TcCase g7{"hd64-g7", 14, 2, 64, {{0, 200}, {130, 70}, {0, 1}}, 0, 1.0f, 1.0f, 1.0f, 17};
  for (KvFormat f : kFormats) {
    run_case(g8, f);
    run_case(g1, f);
    run_case(g1d64, f);
    run_case(g3, f);
    run_case(g7, f);
  }
}

TEST(ParityPrefillTc, SlidingWindow) {
  QSERVE_PARITY_REQUIRE_GPU();
  const TcCase w{"window100", 8,    2,    128,  {{0, 200}, {130, 70}, {63, 17}, {0, 1000}, {10, 5}},
                 100,         1.0f, 1.0f, 1.0f, 18};
  const TcCase w64{
      "hd64-window64-g8", 8, 1, 64, {{0, 200}, {130, 70}, {63, 1}}, 64, 1.0f, 1.0f, 1.0f, 19};
  for (KvFormat f : kFormats) {
    run_case(w, f);
    run_case(w64, f);
  }
}

TEST(ParityPrefillTc, LargeAndSmallMagnitudes) {
  QSERVE_PARITY_REQUIRE_GPU();
  // K/V near fp16's largest values with small q; then q beyond fp16's range (the power-of-two
  // tile scale must keep it finite) with small K.
  const TcCase big_kv{"large-kv", 8, 2, 128, {{0, 100}, {65, 40}}, 0, 2e-3f, 2e4f, 2e4f, 20};
  const TcCase big_q{"large-q", 8, 2, 128, {{0, 100}, {65, 40}}, 0, 1e5f, 1e-4f, 1.0f, 21};
  const TcCase tiny_q{"tiny-q", 8, 2, 64, {{0, 100}, {65, 40}}, 0, 1e-6f, 1.0f, 1.0f, 22};
  for (KvFormat f : kFormats) {
    run_case(big_kv, f);
    run_case(big_q, f);
    run_case(tiny_q, f);
  }
}

// The 8-warp (256-row) CTA shape that bench_attention times beside the default.
TEST(ParityPrefillTc, EightWarpVariant) {
  QSERVE_PARITY_REQUIRE_GPU();
  const TcCase llama{"llama3-8b", 32,   8,    128,  {{0, 1}, {0, 200}, {130, 300}, {63, 17}},
                     0,           1.0f, 1.0f, 1.0f, 25};
  const TcCase g7{"hd64-g7", 14, 2, 64, {{0, 200}, {130, 70}, {0, 1}}, 0, 1.0f, 1.0f, 1.0f, 26};
  const TcCase win{"window100", 8, 2, 128, {{0, 300}, {130, 70}}, 100, 1.0f, 1.0f, 1.0f, 27};
  for (KvFormat f : kFormats) {
    run_case(llama, f, 8);
    run_case(g7, f, 8);
    run_case(win, f, 8);
  }
  cuda::PagedKvDevice kv;
  kv.format = KvFormat::kv16;
  kv.kv_heads = 2;
  kv.head_dim = 128;
  cuda::VarlenBatchDevice b;
  EXPECT_THROW(
      cuda::prefill_attention_tc_warps(nullptr, nullptr, nullptr, kv, b, 8, 0, nullptr, 6, nullptr),
      Error);
}

// prefill_attention_tc against the fp32 baseline kernel at 4 x 1024 (Llama-3-8B geometry), both
// on the GPU: tc(q) vs baseline(q^) within max|V| (2^-11 + 2 (3e-5 + 2^-21 B)) (each within
// its bound of ref(q^)); fresh prompts and a chunk over 512 cached tokens.
TEST(ParityPrefillTc, AgainstBaseline4x1024) {
  QSERVE_PARITY_REQUIRE_GPU();
  const TcCase c{"4x1024", 32,   8,    128,  {{0, 1024}, {0, 1024}, {512, 1024}, {0, 1024}},
                 0,        1.0f, 1.0f, 1.0f, 23};
  for (KvFormat f : kFormats) {
    Problem p;
    build(p, c, f);
    if (f != KvFormat::kv16) {
      // Page bytes without the (slow) CPU attention: quantize the context with quant::kv_append.
      const quant::KvBits bits = f == KvFormat::kv4 ? quant::KvBits::k4 : quant::KvBits::k8;
      PagedKvCache cache = PagedKvCache::with_external_pages(bits, 1, p.num_pages, p.S,
                                                             p.max_total + 64, c.hkv, c.d);
      for (int64_t s = 0; s < p.S; ++s) {
        cache.set_page_table(s, p.tables[static_cast<size_t>(s)]);
        for (int64_t pos = 0; pos < c.seqs[static_cast<size_t>(s)].first; ++pos) {
          quant::kv_append(cache.pool(0), cache.page_table(s), pos,
                           p.ctx_k[static_cast<size_t>(s)].data() + pos * p.kvd(),
                           p.ctx_v[static_cast<size_t>(s)].data() + pos * p.kvd());
        }
      }
      p.k_pool = cache.pool(0).k;
      p.v_pool = cache.pool(0).v;
    }
    upload(p);
    const std::vector<float> got = run_gpu(p, &cuda::prefill_attention_tc, p.d_q.data());
    DeviceBuffer<float> d_q11 = cuda::to_device(round11(p.q));
    const std::vector<float> base11 = run_gpu(p, &cuda::prefill_attention_baseline, d_q11.data());
    const std::vector<float> base = run_gpu(p, &cuda::prefill_attention_baseline, p.d_q.data());

    const double kq = 1.1 * p.kmax, vq = 1.1 * p.vmax;
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    const double B = scale * static_cast<double>(c.d) * max_abs(p.q) * kq;
    const double tol = vq * (std::ldexp(1.0, -11) + 2.0 * (3e-5 + std::ldexp(1.0, -21) * B));
    const std::string op = std::string("prefill_attention_tc_") + fmt_name(f);
    const std::string shape = c.name + ":" + parity::shape_str({{"S", p.S}, {"T", p.T}});
    const parity::ParityResult r =
        parity::compare_close(op + "_vs_baseline_q11", shape, got, base11, tol, 0.0);
    print_worst(op + "_vs_baseline_q11", p, got, base11, tol);
    EXPECT_PARITY(r, op + "_vs_baseline_q11", shape);
    // Informational: the distance to the fp32 kernel on the unrounded q (no bound asserted
    // beyond finiteness here; the contract bound (b) is checked against the CPU above).
    const parity::ParityResult ri = parity::compare_close(
        op + "_vs_baseline_info", shape, got, base, std::numeric_limits<double>::max(), 0.0);
    EXPECT_PARITY(ri, op + "_vs_baseline_info", shape);
  }
}

// The dispatch: aligned inputs go to the tensor-core kernel (bitwise identical output: the
// kernel is deterministic), a misaligned q to the baseline (bitwise identical to it).
TEST(ParityPrefillTc, DispatchAndDeterminism) {
  QSERVE_PARITY_REQUIRE_GPU();
  const TcCase c{"dispatch", 8, 2, 128, {{0, 70}, {63, 33}}, 0, 1.0f, 1.0f, 1.0f, 24};
  Problem p;
  build(p, c, KvFormat::kv8);
  (void)reference(p, p.q);  // writes the KV8 page bytes
  upload(p);
  const std::vector<float> tc1 = run_gpu(p, &cuda::prefill_attention_tc, p.d_q.data());
  const std::vector<float> tc2 = run_gpu(p, &cuda::prefill_attention_tc, p.d_q.data());
  const std::vector<float> disp = run_gpu(p, &cuda::prefill_attention, p.d_q.data());
  EXPECT_EQ(0, std::memcmp(tc1.data(), tc2.data(), tc1.size() * sizeof(float)))
      << "prefill_attention_tc is not deterministic";
  EXPECT_EQ(0, std::memcmp(tc1.data(), disp.data(), tc1.size() * sizeof(float)))
      << "prefill_attention did not dispatch an aligned Llama-style case to the tc kernel";

  // q at a 4-byte offset: not 16-byte aligned, so the dispatch must take the baseline.
  DeviceBuffer<float> d_q_off(p.q.size() + 1);
  ASSERT_EQ(cudaMemcpy(d_q_off.data() + 1, p.q.data(), p.q.size() * sizeof(float),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  const std::vector<float> disp_off = run_gpu(p, &cuda::prefill_attention, d_q_off.data() + 1);
  const std::vector<float> base_off =
      run_gpu(p, &cuda::prefill_attention_baseline, d_q_off.data() + 1);
  EXPECT_EQ(0, std::memcmp(disp_off.data(), base_off.data(), disp_off.size() * sizeof(float)))
      << "a misaligned q must fall back to the baseline";
  EXPECT_THROW(cuda::prefill_attention_tc(d_q_off.data() + 1, p.d_k.data(), p.d_v.data(), p.kv, p.b,
                                          c.hq, 0, nullptr, nullptr),
               Error);
  // Unsupported geometry (group 16) is refused by the tc kernel, accepted by the dispatch.
  EXPECT_FALSE(cuda::prefill_attention_tc_supported(KvFormat::kv8, 32, 2, 128));
  EXPECT_FALSE(cuda::prefill_attention_tc_supported(KvFormat::kv8, 8, 2, 96));
  EXPECT_TRUE(cuda::prefill_attention_tc_supported(KvFormat::kv16, 8, 1, 64));
}

}  // namespace
}  // namespace qserve
