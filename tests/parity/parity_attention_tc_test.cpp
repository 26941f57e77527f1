// Parity of the tensor-core decode attention kernels (attention_decode_tc.cu and
// attention_decode_mma.cu, issue 8) with the CPU specification, called directly (not through
// decode_attention's dispatch, so a dispatch change cannot silently hide it). The kernel's fp16
// hi/lo splitting of q and P and the tensor cores' accumulation must stay inside the same tolerance
// the CUDA-core kernels meet. Same reference, inputs and tolerance as parity_attention_test.cpp,
// whose run_case this file reuses in shape:
//  - KV4/KV8: model/paged_attention.cpp's paged_attention_step (quant::decode_attention_paged,
//    or quant::kv_gather + quant::attention_unquantized), on the very same page bytes;
//  - KV16: cpu::attention over a KVCacheF32 holding the same fp16 values the GPU pages hold.
// Fresh random inputs per case; shuffled, interleaved page tables; outputs poisoned (NaN) before
// every launch. Tolerance (ops_cuda_attention.h): |gpu - cpu| <= max|V| (3e-5 + 2^-21 B),
// B = scale * D * max|q| * max|K| bounds |score|: only summation order and expf differ.
// The mma kernel has an fp16-operand contract: it meets the (looser) bound of its header
// against the CPU specification, and a tight bound against a double-precision emulation of
// its own numerics (q rounded to fp16 after the CTA's power-of-two scaling, K/V = s (c - z)
// from the page codes): there only P' = p s's fp16 rounding and fp32 arithmetic remain.
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

// kMmaW8: decode_attention_mma with 8-warp CTAs forced (KV4 only; other formats skip it) at
// its own split, so its merge of 8 warp streams and its split path are both covered.
enum class DecodeKernel { kTc, kMma, kMmaW8 };
const DecodeKernel kKernels[] = {DecodeKernel::kTc, DecodeKernel::kMma, DecodeKernel::kMmaW8};

// Code, scale and zero of channel ch of (page, head, slot) in a KV4/KV8 pool (QServe's layout,
// ops_cuda_attention.h kv_page_bytes).
struct PageCode {
  int code;
  double s, z;
};
PageCode page_code(const std::vector<uint8_t>& pool, KvFormat fmt, int64_t page_bytes, int64_t hkv,
                   int64_t d, int64_t page, int64_t h, int64_t slot, int64_t ch) {
  const int64_t rb = fmt == KvFormat::kv4 ? d / 2 : d;
  const uint8_t* base = pool.data() + page * page_bytes;
  const uint8_t* row = base + (h * 64 + slot) * rb;
  const int code = fmt == KvFormat::kv4 ? ((row[ch / 2] >> (4 * (ch % 2))) & 15) : row[ch];
  uint16_t sb = 0, zb = 0;
  std::memcpy(&sb, base + hkv * 64 * rb + 2 * (h * 64 + slot), 2);
  std::memcpy(&zb, base + hkv * 64 * rb + hkv * 64 * 2 + 2 * (h * 64 + slot), 2);
  return {code, fp16_to_float(sb), fp16_to_float(zb)};
}

// decode: use decode_attention (all seqs must have num_tokens == 1); else prefill_attention.
void run_case(const AttnCase& c, KvFormat fmt, bool decode,
              DecodeKernel kernel = DecodeKernel::kTc) {
  if (kernel == DecodeKernel::kMmaW8 && fmt != KvFormat::kv4) return;
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
    if (kernel == DecodeKernel::kTc) {
      cuda::decode_attention_tc(d_q.data(), d_k.data(), d_v.data(), kv, b, hq, c.window,
                                d_out.data(), d_ws.data(), ws, stream);
    } else if (kernel == DecodeKernel::kMma) {
      cuda::decode_attention_mma(d_q.data(), d_k.data(), d_v.data(), kv, b, hq, c.window,
                                 d_out.data(), d_ws.data(), ws, stream);
    } else {
      cuda::decode_attention_mma_warps(d_q.data(), d_k.data(), d_v.data(), kv, b, hq, c.window,
                                       d_out.data(), d_ws.data(), ws, stream, 8);
    }
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
  const bool mma = decode && kernel != DecodeKernel::kTc;
  const std::string op =
      std::string(decode ? (kernel == DecodeKernel::kMmaW8 ? "decode_attention_mma_w8_"
                            : mma                          ? "decode_attention_mma_"
                                                           : "decode_attention_tc_")
                         : "prefill_attention_") +
      fmt_name(fmt);
  double tol = vq * (3e-5 + std::ldexp(1.0, -21) * B);
  if (mma) {
    // The header's bound with A measured on these inputs (+10% for the dequantization).
    const int64_t G = hq / hkv;
    double A = 0.0;
    for (int64_t s = 0; s < S; ++s) {
      const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
      const int64_t row = spans[static_cast<size_t>(s)].token_offset;
      const int64_t lo = c.window > 0 ? std::max<int64_t>(0, ctx - c.window + 1) : 0;
      for (int64_t h = 0; h < hq; ++h) {
        const float* qr = q.data() + (row * hq + h) * d;
        for (int64_t p = lo; p <= ctx; ++p) {
          double acc = 0.0;
          for (int64_t ch = 0; ch < d; ++ch) {
            const float kx =
                p < ctx ? fp16_to_float(ctx_k[static_cast<size_t>(s)]
                                             [static_cast<size_t>(p * kvd + (h / G) * d + ch)])
                        : kf[static_cast<size_t>(row * kvd + (h / G) * d + ch)];
            acc += std::fabs(static_cast<double>(qr[ch]) * kx);
          }
          A = std::max(A, acc);
        }
      }
    }
    A *= scale * 1.1;
    const double delta = std::ldexp(1.0, -9) * A;
    tol = vq * (std::expm1(2.0 * delta) + std::ldexp(1.0, -9) + 3e-5);
  }
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
  if (!mma) return;

  // Tight check against a double-precision emulation of the mma kernel's numerics.
  const int64_t G = hq / hkv;
  std::vector<float> emu(static_cast<size_t>(T * qd));
  double tight = 0.0;  // 2^-10 max_k s_k c_max + fp32 terms
  const double cmax = fmt == KvFormat::kv4 ? 15.0 : 255.0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t ctx = c.seqs[static_cast<size_t>(s)].first;
    const int64_t row = spans[static_cast<size_t>(s)].token_offset;
    const int64_t lo = c.window > 0 ? std::max<int64_t>(0, ctx - c.window + 1) : 0;
    const auto& tab = tables[static_cast<size_t>(s)];
    for (int64_t kh = 0; kh < hkv; ++kh) {
      // The CTA's power of two: max|q| over the group's heads into [2^14, 2^15).
      float qm = 0.0f;
      for (int64_t i = 0; i < G * d; ++i)
        qm = std::max(qm, std::fabs(q[static_cast<size_t>((row * hq + kh * G) * d + i)]));
      int ex = 0;
      int e = 0;
      if (qm > 0.0f && std::isfinite(qm)) {
        (void)std::frexp(qm, &ex);
        e = std::min(std::max(15 - ex, -120), 120);
      }
      for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
        const float* qr = q.data() + (row * hq + h) * d;
        std::vector<double> qh(static_cast<size_t>(d));
        for (int64_t ch = 0; ch < d; ++ch) {
          qh[static_cast<size_t>(ch)] = std::ldexp(
              static_cast<double>(fp16_to_float(float_to_fp16(std::ldexp(qr[ch], e)))), -e);
        }
        std::vector<double> sc;
        for (int64_t p = lo; p < ctx; ++p) {
          const int64_t page = tab[static_cast<size_t>(p / 64)];
          double acc = 0.0;
          for (int64_t ch = 0; ch < d; ++ch) {
            const PageCode pc = page_code(k_pool, fmt, page_bytes, hkv, d, page, kh, p % 64, ch);
            acc += qh[static_cast<size_t>(ch)] * pc.s * (pc.code - pc.z);
          }
          sc.push_back(acc * scale);
        }
        double cur = 0.0;
        for (int64_t ch = 0; ch < d; ++ch) {
          cur += static_cast<double>(qr[ch]) * kf[static_cast<size_t>(row * kvd + kh * d + ch)];
        }
        sc.push_back(cur * scale);
        double m = -INFINITY;
        for (double x : sc) m = std::max(m, x);
        double l = 0.0;
        std::vector<double> o(static_cast<size_t>(d), 0.0);
        for (size_t i = 0; i < sc.size(); ++i) {
          const double pw = std::exp(sc[i] - m);
          l += pw;
          const int64_t p = lo + static_cast<int64_t>(i);
          for (int64_t ch = 0; ch < d; ++ch) {
            double v = 0.0;
            if (p < ctx) {
              const PageCode pc = page_code(v_pool, fmt, page_bytes, hkv, d,
                                            tab[static_cast<size_t>(p / 64)], kh, p % 64, ch);
              v = pc.s * (pc.code - pc.z);
              if (ch == 0) tight = std::max(tight, pc.s * cmax);
            } else {
              v = vf[static_cast<size_t>(row * kvd + kh * d + ch)];
            }
            o[static_cast<size_t>(ch)] += pw * v;
          }
        }
        for (int64_t ch = 0; ch < d; ++ch) {
          emu[static_cast<size_t>((row * hq + h) * d + ch)] =
              static_cast<float>(o[static_cast<size_t>(ch)] / l);
        }
      }
    }
  }
  // P' rounding (2^-11 of p s c per term, both halves of the zero split), fp32 sums, exp2.
  const double tol_tight =
      std::ldexp(1.0, -10) * tight * 1.1 + vq * 2e-5 + vq * std::ldexp(1.0, -20) * B;
  const std::string op2 = op + "_emulated";
  const parity::ParityResult r2 = parity::compare_close(op2, shape, got, emu, tol_tight, 0.0);
  EXPECT_PARITY(r2, op2, shape);
}

const KvFormat kTcFormats[] = {KvFormat::kv4, KvFormat::kv8};

// Llama-3-8B geometry (32 q heads / 8 KV heads x 128, GQA group 4): contexts around page
// boundaries and tile edges, the empty context, and a long context (several splits).
TEST(ParityAttentionTc, DecodeLlama3Group4) {
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
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) run_case(c, f, true, k);
  }
}

// GQA group 8 at head_dim 128 (32 q heads / 4 KV heads), same contexts.
TEST(ParityAttentionTc, DecodeGroup8) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{
      "hd128-g8", 32,   4,    128,  {{1, 1}, {63, 1}, {64, 1}, {65, 1}, {1000, 1}, {8192, 1}},
      0,          1.0f, 1.0f, 1.0f, 102};
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) run_case(c, f, true, k);
  }
}

// Many sequences: the host picks one split, so the CTA normalizes and writes `out` itself
// (the path the large benchmark shapes take).
TEST(ParityAttentionTc, DecodeOneSplit) {
  QSERVE_PARITY_REQUIRE_GPU();
  AttnCase c{"one-split", 32, 8, 128, {}, 0, 1.0f, 1.0f, 1.0f, 103};
  for (int64_t s = 0; s < 320; ++s) c.seqs.push_back({(s * 37) % 250, 1});
  ASSERT_EQ(cuda::decode_attention_tc_split_keys(320, 8, 250, 132), 256);   // -> 1 split
  ASSERT_EQ(cuda::decode_attention_mma_split_keys(320, 8, 250, 132), 256);  // -> 1 split
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) run_case(c, f, true, k);
  }
}

// head_dim 64 with groups 1, 2, 4 and 8.
TEST(ParityAttentionTc, DecodeHeadDim64) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase g1{"hd64-g1", 4, 4, 64, {{100, 1}, {129, 1}}, 0, 1.0f, 1.0f, 1.0f, 104};
  const AttnCase g2{"hd64-g2", 8, 4, 64, {{64, 1}, {700, 1}}, 0, 1.0f, 1.0f, 1.0f, 105};
  const AttnCase g4{"hd64-g4", 8, 2, 64, {{127, 1}, {2049, 1}, {5, 1}}, 0, 1.0f, 1.0f, 1.0f, 106};
  const AttnCase g8{"hd64-g8", 16, 2, 64, {{1, 1}, {65, 1}, {1000, 1}}, 0, 1.0f, 1.0f, 1.0f, 107};
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) {
      run_case(g1, f, true, k);
      run_case(g2, f, true, k);
      run_case(g4, f, true, k);
      run_case(g8, f, true, k);
    }
  }
}

// Sliding window: visible ranges start off page boundaries (the unaligned tile path).
TEST(ParityAttentionTc, DecodeSlidingWindow) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{"window100", 32,   8,    128,  {{50, 1}, {99, 1}, {100, 1}, {101, 1}, {700, 1}},
                   100,         1.0f, 1.0f, 1.0f, 108};
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) run_case(c, f, true, k);
  }
}

// K/V near fp16's largest values (sharp softmax, large dequantized magnitudes).
TEST(ParityAttentionTc, DecodeLargeMagnitudes) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{"large", 32, 8, 128, {{90, 1}, {513, 1}}, 0, 2e-3f, 2e4f, 2e4f, 109};
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) run_case(c, f, true, k);
  }
}

// Odd GQA groups (3, 5, 7): only the tensor-core kernel supports them (rows of the m16 A
// operand beyond the group are zero), so they exercise the g >= G masking.
TEST(ParityAttentionTc, DecodeOddGroups) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase g3{"hd128-g3", 6, 2, 128, {{1, 1}, {65, 1}, {1000, 1}}, 0, 1.0f, 1.0f, 1.0f, 111};
  const AttnCase g5{"hd64-g5", 10, 2, 64, {{63, 1}, {300, 1}}, 0, 1.0f, 1.0f, 1.0f, 112};
  const AttnCase g7{"hd128-g7", 14, 2, 128, {{64, 1}, {2049, 1}}, 50, 1.0f, 1.0f, 1.0f, 113};
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) {
      run_case(g3, f, true, k);
      run_case(g5, f, true, k);
      run_case(g7, f, true, k);
    }
  }
}

// Large q with small K (the power-of-two q scaling must move q down, not up) and the
// Llama-3 long context, so every split merges several warp streams.
TEST(ParityAttentionTc, DecodeLargeQuery) {
  QSERVE_PARITY_REQUIRE_GPU();
  const AttnCase c{"large-q", 32, 8, 128, {{200, 1}, {4097, 1}}, 0, 3e3f, 1e-2f, 1.0f, 114};
  for (DecodeKernel k : kKernels) {
    for (KvFormat f : kTcFormats) run_case(c, f, true, k);
  }
}

// A cache and batch description for the calls that must throw before touching memory.
struct RejectCall {
  cuda::PagedKvDevice kv;
  cuda::VarlenBatchDevice b;
};
RejectCall reject_call(KvFormat format, int32_t num_seqs) {
  RejectCall c;
  c.kv.format = format;
  c.kv.kv_heads = 8;
  c.kv.head_dim = 128;
  c.b.num_seqs = num_seqs;
  c.b.max_total_len = 100;
  return c;
}

// The tensor-core kernel refuses what it does not support (the dispatch then falls back).
TEST(ParityAttentionTc, SupportAndRejects) {
  EXPECT_TRUE(cuda::decode_attention_mma_supported(KvFormat::kv4, 32, 8, 128));
  EXPECT_TRUE(cuda::decode_attention_mma_supported(KvFormat::kv8, 14, 2, 64));  // group 7
  EXPECT_FALSE(cuda::decode_attention_mma_supported(KvFormat::kv16, 32, 8, 128));
  EXPECT_FALSE(cuda::decode_attention_mma_supported(KvFormat::kv4, 32, 2, 128));  // group 16
  EXPECT_TRUE(cuda::decode_attention_tc_supported(KvFormat::kv4, 32, 8, 128));
  EXPECT_TRUE(cuda::decode_attention_tc_supported(KvFormat::kv8, 16, 2, 64));
  EXPECT_TRUE(cuda::decode_attention_tc_supported(KvFormat::kv4, 14, 2, 64));  // group 7
  EXPECT_FALSE(cuda::decode_attention_tc_supported(KvFormat::kv16, 32, 8, 128));
  EXPECT_FALSE(cuda::decode_attention_tc_supported(KvFormat::kv4, 32, 2, 128));  // group 16
  EXPECT_FALSE(cuda::decode_attention_tc_supported(KvFormat::kv4, 32, 8, 96));
  // Split sizes are page multiples of at least 256 keys (the baseline's workspace suffices).
  for (int64_t s : {1, 7, 32, 256, 4096}) {
    const int64_t keys = cuda::decode_attention_tc_split_keys(s, 8, 8193, 132);
    EXPECT_EQ(keys % 64, 0);
    EXPECT_GE(keys, 256);
  }
  QSERVE_PARITY_REQUIRE_GPU();
  RejectCall c = reject_call(KvFormat::kv16, 1);
  EXPECT_THROW(cuda::decode_attention_tc(nullptr, nullptr, nullptr, c.kv, c.b, 32, 0, nullptr,
                                         nullptr, 0, nullptr),
               Error);
  c.kv.format = KvFormat::kv4;  // supported, but no workspace
  EXPECT_THROW(cuda::decode_attention_tc(nullptr, nullptr, nullptr, c.kv, c.b, 32, 0, nullptr,
                                         nullptr, 16, nullptr),
               Error);
}

// The mma kernel's plan (host only): 8-warp CTAs where they remove splits at the same fill,
// 4-warp CTAs everywhere else; the forced warp count is validated.
TEST(ParityAttentionTc, MmaPlan) {
  // 32 x 8192 on 132 SMs (4 / 2 resident CTAs): two 4096-key splits of 4-warp CTAs (512 of 528
  // slots) or one split of 8-warp CTAs (256 of 264): the 8-warp CTAs.
  cuda::DecodeMmaPlan p = cuda::decode_attention_mma_plan(32, 8, 8193, 132, 4, 2);
  EXPECT_EQ(p.warps, 8);
  EXPECT_EQ(p.split_keys, 8192);
  EXPECT_EQ(cuda::decode_attention_mma_split_keys(32, 8, 8193, 132, 4), 4096);
  // Without 8-warp CTAs (KV8): the 4-warp split.
  p = cuda::decode_attention_mma_plan(32, 8, 8193, 132, 4, 0);
  EXPECT_EQ(p.warps, 4);
  EXPECT_EQ(p.split_keys, 4096);
  // One split already (256 x 1536, and the engine's large batches): unchanged.
  for (int64_t s : {256, 1024}) {
    p = cuda::decode_attention_mma_plan(s, 8, 1537, 132, 4, 2);
    EXPECT_EQ(p.warps, 4);
    EXPECT_EQ(p.split_keys, cuda::decode_attention_mma_split_keys(s, 8, 1537, 132, 4));
  }
  // Batch 1: 8-warp CTAs would need as many splits to fill the GPU: 4-warp CTAs.
  p = cuda::decode_attention_mma_plan(1, 8, 1025, 132, 4, 2);
  EXPECT_EQ(p.warps, 4);
  EXPECT_EQ(p.split_keys % 64, 0);

  // QSERVE_DECODE_MMA_WARPS' values.
  EXPECT_EQ(cuda::parse_decode_mma_warps("4"), 4);
  EXPECT_EQ(cuda::parse_decode_mma_warps("8"), 8);
  EXPECT_EQ(cuda::parse_decode_mma_warps("auto"), 0);
  EXPECT_THROW(cuda::parse_decode_mma_warps("16"), Error);
  EXPECT_THROW(cuda::parse_decode_mma_warps("8 "), Error);

  RejectCall c = reject_call(KvFormat::kv8, 0);
  EXPECT_THROW(cuda::decode_attention_mma_warps(nullptr, nullptr, nullptr, c.kv, c.b, 32, 0,
                                                nullptr, nullptr, 0, nullptr, 8),  // 8 needs KV4
               Error);
  c.kv.format = KvFormat::kv4;
  EXPECT_THROW(cuda::decode_attention_mma_warps(nullptr, nullptr, nullptr, c.kv, c.b, 32, 0,
                                                nullptr, nullptr, 0, nullptr, 6),
               Error);
}

}  // namespace
}  // namespace qserve
