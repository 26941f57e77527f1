// Parity of the fast decode attention (attention_decode_fast.cu, issue 8) with the CPU
// specification, called directly (not through decode_attention's dispatch, so a dispatch
// change cannot silently hide it). Same reference, inputs and tolerance as
// parity_attention_test.cpp, whose run_case this file reuses in shape:
//  - KV4/KV8: model/paged_attention.cpp's paged_attention_step (quant::decode_attention_paged,
//    or quant::kv_gather + quant::attention_unquantized), on the very same page bytes;
//  - KV16: cpu::attention over a KVCacheF32 holding the same fp16 values the GPU pages hold.
// Fresh random inputs per case; shuffled, interleaved page tables; outputs poisoned (NaN) before
// every launch. Tolerance (ops_cuda_attention.h): |gpu - cpu| <= max|V| (3e-5 + 2^-21 B),
// B = scale * D * max|q| * max|K| bounds |score|: only summation order and expf differ.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda_attention.h"
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

struct AttnCase {
  std::string name;
  int64_t hq, hkv, d;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (context_len, num_tokens)
  int64_t window = 0;
  float q_std = 1.0f, k_std = 1.0f, v_std = 1.0f;
  uint64_t seed = 1;
};

// decode: use decode_attention (all seqs must have num_tokens == 1); else prefill_attention.
void run_case(const AttnCase& c, KvFormat fmt, bool decode) {
  parity::ParityRng rng(c.seed * 1000 + static_cast<uint64_t>(fmt) + (decode ? 7 : 0));
  const int64_t S = static_cast<int64_t>(c.seqs.size());
  const int64_t hq = c.hq, hkv = c.hkv, d = c.d, kvd = hkv * d, qd = hq * d;

  // Spans and page tables: pages handed out round-robin over the sequences from a shuffled
  // free list, so tables are interleaved and non-monotone.
  std::vector<SeqSpan> spans;
  int64_t T = 0, max_n = 0, max_total = 0, max_pages = 0;
  for (int64_t s = 0; s < S; ++s) {
    const auto [ctx, n] = c.seqs[static_cast<size_t>(s)];
    spans.push_back({T, n, ctx, s});
    T += n;
    max_n = std::max(max_n, n);
    max_total = std::max(max_total, ctx + n);
    max_pages = std::max(max_pages, (ctx + n + 63) / 64);
  }
  const int64_t num_pages = S * max_pages + 3;
  std::vector<int32_t> free_pages(static_cast<size_t>(num_pages));
  std::iota(free_pages.begin(), free_pages.end(), 0);
  std::shuffle(free_pages.begin(), free_pages.end(), rng.engine());
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(S));
  for (int64_t round = 0, next = 0; round < max_pages; ++round) {
    for (int64_t s = 0; s < S; ++s) {
      const auto [ctx, n] = c.seqs[static_cast<size_t>(s)];
      if (round < (ctx + n + 63) / 64) {
        tables[static_cast<size_t>(s)].push_back(free_pages[static_cast<size_t>(next++)]);
      }
    }
  }

  // The cached context (fp16 values) and this step's q (fp32) and K/V (fp16).
  std::vector<std::vector<uint16_t>> ctx_k(static_cast<size_t>(S)), ctx_v(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
    ctx_k[static_cast<size_t>(s)] = fp16_normal(rng, static_cast<size_t>(ctx * kvd), c.k_std);
    ctx_v[static_cast<size_t>(s)] = fp16_normal(rng, static_cast<size_t>(ctx * kvd), c.v_std);
  }
  const std::vector<float> q = rng.normal(static_cast<size_t>(T * qd), 0.0f, c.q_std);
  const std::vector<uint16_t> k16 = fp16_normal(rng, static_cast<size_t>(T * kvd), c.k_std);
  const std::vector<uint16_t> v16 = fp16_normal(rng, static_cast<size_t>(T * kvd), c.v_std);
  const std::vector<float> kf = parity::fp16_to_float_vec(k16);
  const std::vector<float> vf = parity::fp16_to_float_vec(v16);

  // CPU reference and the page bytes the GPU reads.
  std::vector<float> want(static_cast<size_t>(T * qd));
  std::vector<uint8_t> k_pool, v_pool;
  const int64_t page_bytes = cuda::kv_page_bytes(fmt, hkv, d);
  float kmax = max_abs(kf), vmax = max_abs(vf);
  for (int64_t s = 0; s < S; ++s) {
    kmax = std::max(kmax, max_abs(parity::fp16_to_float_vec(ctx_k[static_cast<size_t>(s)])));
    vmax = std::max(vmax, max_abs(parity::fp16_to_float_vec(ctx_v[static_cast<size_t>(s)])));
  }
  if (fmt != KvFormat::kv16) {
    const quant::KvBits bits = fmt == KvFormat::kv4 ? quant::KvBits::k4 : quant::KvBits::k8;
    PagedKvCache cache =
        PagedKvCache::with_external_pages(bits, 1, num_pages, S, max_total + 64, hkv, d);
    ASSERT_EQ(cache.pool(0).layout.page_bytes(), page_bytes);
    for (int64_t s = 0; s < S; ++s) {
      cache.set_page_table(s, tables[static_cast<size_t>(s)]);
      const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
      for (int64_t p = 0; p < ctx; ++p) {
        quant::kv_append(cache.pool(0), cache.page_table(s), p,
                         ctx_k[static_cast<size_t>(s)].data() + p * kvd,
                         ctx_v[static_cast<size_t>(s)].data() + p * kvd);
      }
    }
    k_pool = cache.pool(0).k;
    v_pool = cache.pool(0).v;
    paged_attention_step(q.data(), kf.data(), vf.data(), k16.data(), v16.data(), cache, 0, spans,
                         hq, d, c.window, want.data());
  } else {
    cpu::KVCacheF32 cache;
    cache.allocate(1, S, max_total, hkv, d);
    k_pool.assign(static_cast<size_t>(num_pages * page_bytes), 0);
    v_pool.assign(static_cast<size_t>(num_pages * page_bytes), 0);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
      for (int64_t p = 0; p < ctx; ++p) {
        const int64_t page = tables[static_cast<size_t>(s)][static_cast<size_t>(p / 64)];
        for (int64_t h = 0; h < hkv; ++h) {
          for (int64_t ch = 0; ch < d; ++ch) {
            const size_t src = static_cast<size_t>(p * kvd + h * d + ch);
            const uint16_t kb = ctx_k[static_cast<size_t>(s)][src];
            const uint16_t vb = ctx_v[static_cast<size_t>(s)][src];
            cache.k_at(0, s, p)[h * d + ch] = fp16_to_float(kb);
            cache.v_at(0, s, p)[h * d + ch] = fp16_to_float(vb);
            // Our KV16 layout: [page][h][64][D] fp16.
            const int64_t e = page * page_bytes / 2 + (h * 64 + p % 64) * d + ch;
            std::memcpy(k_pool.data() + 2 * e, &kb, 2);
            std::memcpy(v_pool.data() + 2 * e, &vb, 2);
          }
        }
      }
    }
    cpu::kv_append(cache, 0, spans, kf.data(), vf.data());
    cpu::attention(q.data(), cache, 0, spans, hq, c.window, want.data());
  }

  // GPU.
  cudaStream_t stream = nullptr;
  std::vector<int32_t> tok_off, ntok, ctxl, bt(static_cast<size_t>(S * max_pages), 0);
  for (int64_t s = 0; s < S; ++s) {
    tok_off.push_back(static_cast<int32_t>(spans[static_cast<size_t>(s)].token_offset));
    ntok.push_back(static_cast<int32_t>(spans[static_cast<size_t>(s)].num_tokens));
    ctxl.push_back(static_cast<int32_t>(spans[static_cast<size_t>(s)].context_len));
    const auto& t = tables[static_cast<size_t>(s)];
    std::copy(t.begin(), t.end(), bt.begin() + s * max_pages);
  }
  DeviceBuffer<int32_t> d_off = cuda::to_device(tok_off), d_n = cuda::to_device(ntok),
                        d_ctx = cuda::to_device(ctxl), d_bt = cuda::to_device(bt);
  DeviceBuffer<uint8_t> d_kp = cuda::to_device(k_pool), d_vp = cuda::to_device(v_pool);
  DeviceBuffer<float> d_q = cuda::to_device(q);
  DeviceBuffer<uint16_t> d_k = cuda::to_device(k16), d_v = cuda::to_device(v16);
  DeviceBuffer<float> d_out(static_cast<size_t>(T * qd));

  cuda::PagedKvDevice kv;
  kv.format = fmt;
  kv.kv_heads = static_cast<int32_t>(hkv);
  kv.head_dim = static_cast<int32_t>(d);
  kv.k_pool = d_kp.data();
  kv.v_pool = d_vp.data();
  kv.num_pages = num_pages;
  cuda::VarlenBatchDevice b;
  b.num_seqs = static_cast<int32_t>(S);
  b.token_offset = d_off.data();
  b.num_tokens = d_n.data();
  b.context_len = d_ctx.data();
  b.block_table = d_bt.data();
  b.block_stride = static_cast<int32_t>(max_pages);
  b.max_num_tokens = static_cast<int32_t>(max_n);
  b.max_total_len = static_cast<int32_t>(max_total);

  parity::poison(d_out.data(), d_out.bytes());
  if (decode) {
    const size_t ws = cuda::decode_attention_workspace_bytes(S, hq, d, max_total);
    DeviceBuffer<uint8_t> d_ws(ws);
    parity::poison(d_ws.data(), d_ws.bytes());
    cuda::decode_attention_fast(d_q.data(), d_k.data(), d_v.data(), kv, b, hq, c.window,
                                d_out.data(), d_ws.data(), ws, stream);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  } else {
    // The fp32 contract below is the baseline prefill kernel's; prefill_attention itself now
    // dispatches to the fp16 tensor-core kernel, whose own contract is tested in
    // parity_attention_prefill_tc_test.cpp.
    cuda::prefill_attention_baseline(d_q.data(), d_k.data(), d_v.data(), kv, b, hq, c.window,
                                     d_out.data(), stream);
  }
  const std::vector<float> got = cuda::to_host(d_out);

  // KV4 dequantization can overshoot the original range by a rounding step or two.
  const float kq = kmax * 1.1f, vq = vmax * 1.1f;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const double B = scale * static_cast<double>(d) * max_abs(q) * kq;
  const double tol = vq * (3e-5 + std::ldexp(1.0, -21) * B);
  const std::string op =
      std::string(decode ? "decode_attention_fast_" : "prefill_attention_") + fmt_name(fmt);
  std::string shape = c.name + ":" +
                      parity::shape_str({{"S", S},
                                         {"T", T},
                                         {"Hq", hq},
                                         {"Hkv", hkv},
                                         {"D", d},
                                         {"max_total", max_total},
                                         {"window", c.window}});
  const parity::ParityResult r = parity::compare_close(op, shape, got, want, tol, 0.0);
  EXPECT_PARITY(r, op, shape);
}

const KvFormat kFastFormats[] = {KvFormat::kv4, KvFormat::kv8};

// Llama-3-8B geometry (32 q heads / 8 KV heads x 128, GQA group 4): contexts around page
// boundaries and tile edges, the empty context, and a long context (several splits).
TEST(ParityAttentionFast, DecodeLlama3Group4) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{"llama3-8b-g4",
                   32,
                   8,
                   128,
                   {{1, 1}, {63, 1}, {64, 1}, {65, 1}, {1000, 1}, {8192, 1}, {0, 1}},
                   0,
                   1.0f,
                   1.0f,
                   1.0f,
                   101};
  for (KvFormat f : kFastFormats) run_case(c, f, true);
}

// GQA group 8 at head_dim 128 (32 q heads / 4 KV heads), same contexts.
TEST(ParityAttentionFast, DecodeGroup8) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{
      "hd128-g8", 32,   4,    128,  {{1, 1}, {63, 1}, {64, 1}, {65, 1}, {1000, 1}, {8192, 1}},
      0,          1.0f, 1.0f, 1.0f, 102};
  for (KvFormat f : kFastFormats) run_case(c, f, true);
}

// Many sequences: the host picks one split, so the CTA normalizes and writes `out` itself
// (the path the large benchmark shapes take).
TEST(ParityAttentionFast, DecodeOneSplit) {
  QSERVE_PARITY_REQUIRE_GPU();
  AttnCase c{"one-split", 32, 8, 128, {}, 0, 1.0f, 1.0f, 1.0f, 103};
  for (int64_t s = 0; s < 320; ++s) c.seqs.push_back({(s * 37) % 250, 1});
  ASSERT_EQ(cuda::decode_attention_fast_split_keys(320, 8, 250, 132), 256);  // -> 1 split
  for (KvFormat f : kFastFormats) run_case(c, f, true);
}

// head_dim 64 with groups 1, 2, 4 and 8.
TEST(ParityAttentionFast, DecodeHeadDim64) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase g1{"hd64-g1", 4, 4, 64, {{100, 1}, {129, 1}}, 0, 1.0f, 1.0f, 1.0f, 104};
  const AttnCase g2{"hd64-g2", 8, 4, 64, {{64, 1}, {700, 1}}, 0, 1.0f, 1.0f, 1.0f, 105};
  const AttnCase g4{"hd64-g4", 8, 2, 64, {{127, 1}, {2049, 1}, {5, 1}}, 0, 1.0f, 1.0f, 1.0f, 106};
  const AttnCase g8{"hd64-g8", 16, 2, 64, {{1, 1}, {65, 1}, {1000, 1}}, 0, 1.0f, 1.0f, 1.0f, 107};
  for (KvFormat f : kFastFormats) {
    run_case(g1, f, true);
    run_case(g2, f, true);
    run_case(g4, f, true);
    run_case(g8, f, true);
  }
}

// Sliding window: visible ranges start off page boundaries (the unaligned tile path).
TEST(ParityAttentionFast, DecodeSlidingWindow) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{"window100", 32,   8,    128,  {{50, 1}, {99, 1}, {100, 1}, {101, 1}, {700, 1}},
                   100,         1.0f, 1.0f, 1.0f, 108};
  for (KvFormat f : kFastFormats) run_case(c, f, true);
}

// K/V near fp16's largest values (sharp softmax, large dequantized magnitudes).
TEST(ParityAttentionFast, DecodeLargeMagnitudes) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{"large", 32, 8, 128, {{90, 1}, {513, 1}}, 0, 2e-3f, 2e4f, 2e4f, 109};
  for (KvFormat f : kFastFormats) run_case(c, f, true);
}

// The fast kernel refuses what it does not support (the dispatch then uses the baseline).
TEST(ParityAttentionFast, SupportAndRejects) {
  EXPECT_TRUE(cuda::decode_attention_fast_supported(KvFormat::kv4, 32, 8, 128));
  EXPECT_TRUE(cuda::decode_attention_fast_supported(KvFormat::kv8, 16, 2, 64));
  EXPECT_FALSE(cuda::decode_attention_fast_supported(KvFormat::kv16, 32, 8, 128));
  EXPECT_FALSE(cuda::decode_attention_fast_supported(KvFormat::kv4, 14, 2, 64));  // group 7
  EXPECT_FALSE(cuda::decode_attention_fast_supported(KvFormat::kv4, 32, 8, 96));
  // Split sizes are page multiples of at least 256 keys (the baseline's workspace suffices).
  for (int64_t s : {1, 7, 32, 256, 4096}) {
    const int64_t keys = cuda::decode_attention_fast_split_keys(s, 8, 8193, 132);
    EXPECT_EQ(keys % 64, 0);
    EXPECT_GE(keys, 256);
  }
  QSERVE_PARITY_REQUIRE_GPU();
  cuda::PagedKvDevice kv;
  kv.format = KvFormat::kv16;
  kv.kv_heads = 8;
  kv.head_dim = 128;
  cuda::VarlenBatchDevice b;
  b.num_seqs = 1;
  b.max_total_len = 100;
  EXPECT_THROW(cuda::decode_attention_fast(nullptr, nullptr, nullptr, kv, b, 32, 0, nullptr,
                                           nullptr, 0, nullptr),
               Error);
  kv.format = KvFormat::kv4;  // supported, but no workspace
  EXPECT_THROW(cuda::decode_attention_fast(nullptr, nullptr, nullptr, kv, b, 32, 0, nullptr,
                                           nullptr, 16, nullptr),
               Error);
}

}  // namespace
}  // namespace qserve
