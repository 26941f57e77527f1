// Parity of the fused RoPE + fp16 rounding + paged KV append with the CPU path of the forward:
// cpu::rope on q and k, round_to_fp16 on k and v, quant::kv_page_write into QServe's pages
// (KV4/KV8) or our KV16 page layout ([page][head][64][D] fp16).
//
// Checks per case (fresh random inputs, outputs poisoned, pools pre-filled with random bytes):
//  - q_out within 2^-21 * max|input| of cpu::rope (cos/sin: double on the GPU, glibc cosf/sinf
//    on the CPU, <= 1 ulp apart; the products and sums are the same IEEE operations);
//  - k16 within 1 fp16 ulp of the CPU's rounding, and equal on all but 0.1% of elements (a
//    1-ulp fp32 difference crosses an fp16 rounding boundary only rarely);
//  - v16 bit-exact (a plain fp16 rounding);
//  - every byte of both pools bit-exact against the CPU quantizer applied to the GPU's k16/v16
//    rows: the written slots, and every other byte left untouched (a guard page backs the
//    positions before the step, which must never be written);
//  - every output (q, k16, v16, both pools) bit-exact against the baseline kernel
//    (cuda::baseline, the one-block-per-token kernel the vectorized one replaced), for the
//    dispatch, the vec kernel before 2026-11-30 (fifth session) (cuda::prev) and both launch forms
//    of the v2 kernel forced at every size (cuda::forced: spread, token).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/fused_baseline.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"
#include "core/half.h"
#include "formats/hf_config.h"
#include "parity/parity_attention_util.h"
#include "parity/parity_main_util.h"
#include "quant/kv_cache.h"

namespace qserve {
namespace {

using cuda::DeviceBuffer;
using cuda::KvFormat;
using parity::fmt_name;

struct RopeCase {
  std::string name;
  int64_t hq, hkv, d;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (context_len, num_tokens)
  bool fp16_input = false;
  float magnitude = 2.0f;  // normal stddev, or the uniform bound when `uniform`
  bool uniform = false;
  double theta = 10000.0;
  bool llama3 = false;
  bool append = true;
  uint64_t seed = 1;
};

void run_case(const RopeCase& c, KvFormat fmt) {
  parity::ParityRng rng(c.seed * 100 + static_cast<uint64_t>(fmt));
  const int64_t S = static_cast<int64_t>(c.seqs.size());
  const int64_t hq = c.hq, hkv = c.hkv, d = c.d, kvd = hkv * d;
  const int64_t stride = (hq + 2 * hkv) * d + 16;  // padded rows: the stride is honoured

  ModelConfig cfg;
  cfg.head_dim = d;
  cfg.rope_theta = c.theta;
  if (c.llama3) {
    cfg.rope_scaling.type = RopeScaling::Type::Llama3;
    cfg.rope_scaling.factor = 8.0;
    cfg.rope_scaling.low_freq_factor = 1.0;
    cfg.rope_scaling.high_freq_factor = 4.0;
    cfg.rope_scaling.original_max_position_embeddings = 8192;
  }
  const std::vector<float> inv_freq = cpu::rope_inv_freq(cfg);

  // Rows, positions and page tables. Only the pages this step writes are real; table entries
  // before the step point at a guard page (index 0) that must stay untouched.
  int64_t T = 0, max_n = 0, max_total = 0, max_pages = 0;
  std::vector<int64_t> positions;
  for (const auto& [ctx, n] : c.seqs) {
    for (int64_t j = 0; j < n; ++j) positions.push_back(ctx + j);
    T += n;
    max_n = std::max(max_n, n);
    max_total = std::max(max_total, ctx + n);
    max_pages = std::max(max_pages, (ctx + n + 63) / 64);
  }
  int64_t fresh = 0;
  for (const auto& [ctx, n] : c.seqs) fresh += (ctx + n + 63) / 64 - ctx / 64;
  const int64_t num_pages = fresh + 1;
  std::vector<int32_t> free_pages(static_cast<size_t>(fresh));
  std::iota(free_pages.begin(), free_pages.end(), 1);
  std::shuffle(free_pages.begin(), free_pages.end(), rng.engine());
  std::vector<int32_t> bt(static_cast<size_t>(S * max_pages), 0);
  std::vector<int32_t> tok_off, ntok, ctxl;
  size_t next = 0;
  for (int64_t s = 0, row = 0; s < S; ++s) {
    const auto [ctx, n] = c.seqs[static_cast<size_t>(s)];
    for (int64_t p = ctx / 64; p < (ctx + n + 63) / 64; ++p) {
      bt[static_cast<size_t>(s * max_pages + p)] = free_pages[next++];
    }
    tok_off.push_back(static_cast<int32_t>(row));
    ntok.push_back(static_cast<int32_t>(n));
    ctxl.push_back(static_cast<int32_t>(ctx));
    row += n;
  }

  // Inputs.
  const size_t nin = static_cast<size_t>(T * stride);
  std::vector<float> qkv =
      c.uniform ? rng.uniform(nin, -c.magnitude, c.magnitude) : rng.normal(nin, 0.0f, c.magnitude);
  std::vector<uint16_t> qkv16(nin);
  if (c.fp16_input) {
    for (size_t i = 0; i < nin; ++i) {
      qkv16[i] = float_to_fp16(qkv[i]);
      qkv[i] = fp16_to_float(qkv16[i]);  // the CPU sees the fp16 values
    }
  }
  const int64_t page_bytes = cuda::kv_page_bytes(fmt, hkv, d);
  std::vector<uint8_t> k_pool0 =
      rng.ints<uint8_t>(static_cast<size_t>(num_pages * page_bytes), 0, 255);
  std::vector<uint8_t> v_pool0 =
      rng.ints<uint8_t>(static_cast<size_t>(num_pages * page_bytes), 0, 255);

  // CPU path of the forward.
  std::vector<float> q(static_cast<size_t>(T * hq * d)), k(static_cast<size_t>(T * kvd)),
      v(static_cast<size_t>(T * kvd));
  for (int64_t t = 0; t < T; ++t) {
    const float* r = qkv.data() + t * stride;
    std::copy(r, r + hq * d, q.begin() + t * hq * d);
    std::copy(r + hq * d, r + hq * d + kvd, k.begin() + t * kvd);
    std::copy(r + hq * d + kvd, r + hq * d + 2 * kvd, v.begin() + t * kvd);
  }
  float in_max = 0.0f;
  for (float x : q) in_max = std::max(in_max, std::fabs(x));
  for (float x : k) in_max = std::max(in_max, std::fabs(x));
  cpu::rope(q.data(), positions.data(), T, hq, d, inv_freq);
  cpu::rope(k.data(), positions.data(), T, hkv, d, inv_freq);
  std::vector<uint16_t> k16_cpu(k.size()), v16_cpu(v.size());
  for (size_t i = 0; i < k.size(); ++i) k16_cpu[i] = float_to_fp16(k[i]);
  for (size_t i = 0; i < v.size(); ++i) v16_cpu[i] = float_to_fp16(v[i]);

  // GPU.
  DeviceBuffer<int32_t> d_off = cuda::to_device(tok_off), d_n = cuda::to_device(ntok),
                        d_ctx = cuda::to_device(ctxl), d_bt = cuda::to_device(bt);
  DeviceBuffer<float> d_inv = cuda::to_device(inv_freq);
  DeviceBuffer<uint8_t> d_kp = cuda::to_device(k_pool0), d_vp = cuda::to_device(v_pool0);
  DeviceBuffer<float> d_q(static_cast<size_t>(T * hq * d));
  DeviceBuffer<uint16_t> d_k16(static_cast<size_t>(T * kvd)), d_v16(static_cast<size_t>(T * kvd));
  parity::poison(d_q.data(), d_q.bytes());
  parity::poison(d_k16.data(), d_k16.bytes());
  parity::poison(d_v16.data(), d_v16.bytes());

  cuda::PagedKvDevice kv;
  kv.format = fmt;
  kv.kv_heads = static_cast<int32_t>(hkv);
  kv.head_dim = static_cast<int32_t>(d);
  kv.k_pool = c.append ? d_kp.data() : nullptr;
  kv.v_pool = c.append ? d_vp.data() : nullptr;
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

  if (c.fp16_input) {
    DeviceBuffer<uint16_t> d_in = cuda::to_device(qkv16);
    cuda::rope_kv_append_f16(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), kv, d_q.data(),
                             d_k16.data(), d_v16.data(), nullptr);
    ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  } else {
    DeviceBuffer<float> d_in = cuda::to_device(qkv);
    cuda::rope_kv_append(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), kv, d_q.data(),
                         d_k16.data(), d_v16.data(), nullptr);
    ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
  }
  const std::vector<float> q_gpu = cuda::to_host(d_q);
  const std::vector<uint16_t> k16_gpu = cuda::to_host(d_k16), v16_gpu = cuda::to_host(d_v16);

  // The baseline kernel on the same inputs and initial pools, and every other version (the vec
  // kernel before 2026-11-30 (fifth session) as cuda::prev, the v2 kernel's two launch forms
  // forced, each with and without the step's cos/sin table, and the dispatch with the table as
  // the engine calls it): every output bit for bit against the baseline.
  DeviceBuffer<float> d_table(static_cast<size_t>(T * d));
  DeviceBuffer<uint8_t> d_info(static_cast<size_t>(T) * cuda::kRopeRowInfoBytes);
  parity::poison(d_table.data(), d_table.bytes());
  parity::poison(d_info.data(), d_info.bytes());
  const cuda::RopeTableDevice table{d_table.data(), d_info.data(), T};
  cuda::rope_cos_sin_table(b, d, d_inv.data(), table, nullptr);
  {
    struct Outs {
      std::vector<uint32_t> q;  // fp32 q compared as bit patterns
      std::vector<uint16_t> k16, v16;
      std::vector<uint8_t> kp, vp;
    };
    // version: 0 baseline, 1 prev, 2 forced spread (1 task block per block), 3 forced token,
    // 4 / 5: spread / token with the table, 6: the dispatch with the table, 7: the same with
    // kPadRows rows of no token after the batch's (an engine step padded to its bucket): the
    // row-indexed kernel must skip them and leave their outputs as they were.
    constexpr int64_t kPadRows = 5;
    auto run_version = [&](int version) {
      const int64_t rows = version == 7 ? T + kPadRows : T;
      DeviceBuffer<uint8_t> b_kp = cuda::to_device(k_pool0), b_vp = cuda::to_device(v_pool0);
      DeviceBuffer<float> b_q(static_cast<size_t>(rows * hq * d));
      DeviceBuffer<uint16_t> b_k16(static_cast<size_t>(rows * kvd)),
          b_v16(static_cast<size_t>(rows * kvd));
      DeviceBuffer<float> p_table(static_cast<size_t>(rows * d));
      DeviceBuffer<uint8_t> p_info(static_cast<size_t>(rows) * cuda::kRopeRowInfoBytes);
      const cuda::RopeTableDevice padded{p_table.data(), p_info.data(), rows};
      if (version == 7) {
        parity::poison(p_info.data(), p_info.bytes());
        cuda::rope_cos_sin_table(b, d, d_inv.data(), padded, nullptr);
      }
      parity::poison(b_q.data(), b_q.bytes());
      parity::poison(b_k16.data(), b_k16.bytes());
      parity::poison(b_v16.data(), b_v16.bytes());
      cuda::PagedKvDevice bkv = kv;
      bkv.k_pool = c.append ? b_kp.data() : nullptr;
      bkv.v_pool = c.append ? b_vp.data() : nullptr;
      if (c.fp16_input) {
        std::vector<uint16_t> in16 = qkv16;
        in16.resize(static_cast<size_t>(rows * stride), 0x3c00);  // padding rows: 1.0
        DeviceBuffer<uint16_t> d_in = cuda::to_device(in16);
        if (version == 7) {
          cuda::rope_kv_append_f16(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                   b_q.data(), b_k16.data(), b_v16.data(), nullptr, &padded);
        } else if (version == 0) {
          cuda::baseline::rope_kv_append_f16(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                             b_q.data(), b_k16.data(), b_v16.data(), nullptr);
        } else if (version == 1) {
          cuda::prev::rope_kv_append_f16(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                         b_q.data(), b_k16.data(), b_v16.data(), nullptr);
        } else if (version == 6) {
          cuda::rope_kv_append_f16(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                   b_q.data(), b_k16.data(), b_v16.data(), nullptr, &table);
        } else {
          cuda::forced::rope_kv_append_f16(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                           b_q.data(), b_k16.data(), b_v16.data(), nullptr,
                                           version == 3 || version == 5 ? 3 : 1,
                                           version >= 4 ? &table : nullptr);
        }
      } else {
        std::vector<float> in32 = qkv;
        in32.resize(static_cast<size_t>(rows * stride), 1.0f);
        DeviceBuffer<float> d_in = cuda::to_device(in32);
        if (version == 7) {
          cuda::rope_kv_append(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv, b_q.data(),
                               b_k16.data(), b_v16.data(), nullptr, &padded);
        } else if (version == 0) {
          cuda::baseline::rope_kv_append(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                         b_q.data(), b_k16.data(), b_v16.data(), nullptr);
        } else if (version == 1) {
          cuda::prev::rope_kv_append(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                     b_q.data(), b_k16.data(), b_v16.data(), nullptr);
        } else if (version == 6) {
          cuda::rope_kv_append(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv, b_q.data(),
                               b_k16.data(), b_v16.data(), nullptr, &table);
        } else {
          cuda::forced::rope_kv_append(d_in.data(), stride, b, hq, hkv, d, d_inv.data(), bkv,
                                       b_q.data(), b_k16.data(), b_v16.data(), nullptr,
                                       version == 3 || version == 5 ? 3 : 1,
                                       version >= 4 ? &table : nullptr);
        }
      }
      EXPECT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
      Outs o;
      const std::vector<float> bq = cuda::to_host(b_q);
      o.q.resize(bq.size());
      std::memcpy(o.q.data(), bq.data(), bq.size() * sizeof(float));
      o.k16 = cuda::to_host(b_k16);
      o.v16 = cuda::to_host(b_v16);
      o.kp = cuda::to_host(b_kp);
      o.vp = cuda::to_host(b_vp);
      if (rows > T) {
        // The padding rows' outputs keep the poison; then compare the batch's rows.
        const auto untouched = [](const auto& vec, size_t from, auto poison_value) {
          return std::all_of(vec.begin() + static_cast<std::ptrdiff_t>(from), vec.end(),
                             [&](auto x) { return x == poison_value; });
        };
        EXPECT_TRUE(untouched(o.q, static_cast<size_t>(T * hq * d), 0xFFFFFFFFu));
        EXPECT_TRUE(untouched(o.k16, static_cast<size_t>(T * kvd), uint16_t{0xFFFF}));
        EXPECT_TRUE(untouched(o.v16, static_cast<size_t>(T * kvd), uint16_t{0xFFFF}));
        o.q.resize(static_cast<size_t>(T * hq * d));
        o.k16.resize(static_cast<size_t>(T * kvd));
        o.v16.resize(static_cast<size_t>(T * kvd));
      }
      return o;
    };
    const Outs base = run_version(0);
    Outs cur;
    cur.q.resize(q_gpu.size());
    std::memcpy(cur.q.data(), q_gpu.data(), q_gpu.size() * sizeof(float));
    cur.k16 = k16_gpu;
    cur.v16 = v16_gpu;
    cur.kp = cuda::to_host(d_kp);
    cur.vp = cuda::to_host(d_vp);
    const std::string tag = std::string(fmt_name(fmt)) + (c.fp16_input ? "_f16in" : "_f32in");
    const char* names[] = {"current",      "prev",        "spread",        "token",
                           "spread_table", "token_table", "current_table", "current_table_padded"};
    for (int version = 0; version < 8; ++version) {
      const Outs o = version == 0 ? cur : run_version(version);
      const std::string shape = c.name + ":" + names[version] + "_vs_baseline";
      const auto r1 = parity::compare_exact<uint32_t>("rope_q_bits_" + tag, shape, o.q, base.q);
      EXPECT_PARITY(r1, "rope_q vs baseline", shape);
      const auto r2 = parity::compare_exact<uint16_t>("rope_k16_" + tag, shape, o.k16, base.k16);
      EXPECT_PARITY(r2, "rope_k16 vs baseline", shape);
      const auto r3 = parity::compare_exact<uint16_t>("rope_v16_" + tag, shape, o.v16, base.v16);
      EXPECT_PARITY(r3, "rope_v16 vs baseline", shape);
      if (c.append) {
        const auto r4 =
            parity::compare_exact<uint8_t>("kv_append_k_pages_" + tag, shape, o.kp, base.kp);
        EXPECT_PARITY(r4, "k pages vs baseline", shape);
        const auto r5 =
            parity::compare_exact<uint8_t>("kv_append_v_pages_" + tag, shape, o.vp, base.vp);
        EXPECT_PARITY(r5, "v pages vs baseline", shape);
      }
    }
  }

  const std::string tag = std::string(fmt_name(fmt)) + (c.fp16_input ? "_f16in" : "_f32in");
  const std::string shape =
      c.name + ":" +
      parity::shape_str(
          {{"S", S}, {"T", T}, {"Hq", hq}, {"Hkv", hkv}, {"D", d}, {"max_total", max_total}});

  const double q_tol = std::ldexp(static_cast<double>(in_max), -21);
  const parity::ParityResult rq =
      parity::compare_close("rope_q_" + tag, shape, q_gpu, q, q_tol, 0.0);
  EXPECT_PARITY(rq, "rope_q", shape);

  // k16 = fp16(k rotated in fp32): the two fp32 rotations differ by up to q_tol (as q), which
  // fp16 rounding turns into at most that plus one fp16 ulp (<= 2^-10 relative, 2^-24 for
  // subnormals). An absolute term is needed where cos/sin cancel to a small result: 4M
  // elements (ParityRopeKv.Llama3BatchSizes, 4096 tokens) hit such cases.
  const parity::ParityResult rk = parity::compare_close(
      "rope_k16_" + tag, shape, parity::fp16_to_float_vec(k16_gpu),
      parity::fp16_to_float_vec(k16_cpu), std::ldexp(1.0, -24) + q_tol, std::ldexp(1.0, -10));
  EXPECT_PARITY(rk, "rope_k16", shape);
  int64_t k_diff = 0;
  for (size_t i = 0; i < k16_gpu.size(); ++i) k_diff += k16_gpu[i] != k16_cpu[i];
  EXPECT_LE(k_diff, static_cast<int64_t>(k16_gpu.size() / 1000) + 1)
      << shape << ": too many k16 elements differ from the CPU rounding";

  const parity::ParityResult rv = parity::compare_exact("v16_" + tag, shape, v16_gpu, v16_cpu);
  EXPECT_PARITY(rv, "v16", shape);

  if (!c.append) return;
  // Expected pools: the initial bytes plus the CPU's quantization of the GPU's fp16 rows.
  std::vector<uint8_t> k_want = k_pool0, v_want = v_pool0;
  const quant::KvPageLayout layout =
      quant::make_kv_layout(fmt == KvFormat::kv4 ? quant::KvBits::k4 : quant::KvBits::k8, hkv, d);
  if (fmt != KvFormat::kv16) {
    ASSERT_EQ(layout.page_bytes(), page_bytes);
  }
  for (int64_t s = 0, row = 0; s < S; ++s) {
    const auto [ctx, n] = c.seqs[static_cast<size_t>(s)];
    for (int64_t j = 0; j < n; ++j, ++row) {
      const int64_t pos = ctx + j, slot = pos % 64;
      const int64_t page = bt[static_cast<size_t>(s * max_pages + pos / 64)];
      uint8_t* kp = k_want.data() + page * page_bytes;
      uint8_t* vp = v_want.data() + page * page_bytes;
      const uint16_t* kr = k16_gpu.data() + row * kvd;
      const uint16_t* vr = v16_gpu.data() + row * kvd;
      if (fmt == KvFormat::kv16) {
        for (int64_t h = 0; h < hkv; ++h) {
          std::memcpy(kp + 2 * (h * 64 + slot) * d, kr + h * d, static_cast<size_t>(2 * d));
          std::memcpy(vp + 2 * (h * 64 + slot) * d, vr + h * d, static_cast<size_t>(2 * d));
        }
      } else {
        quant::kv_page_write(layout, kp, slot, kr);
        quant::kv_page_write(layout, vp, slot, vr);
      }
    }
  }
  const std::vector<uint8_t> k_got = cuda::to_host(d_kp), v_got = cuda::to_host(d_vp);
  const parity::ParityResult pk =
      parity::compare_exact("kv_append_k_pages_" + tag, shape, k_got, k_want);
  EXPECT_PARITY(pk, "kv_append_k_pages", shape);
  const parity::ParityResult pv =
      parity::compare_exact("kv_append_v_pages_" + tag, shape, v_got, v_want);
  EXPECT_PARITY(pv, "kv_append_v_pages", shape);
}

const KvFormat kFormats[] = {KvFormat::kv4, KvFormat::kv8, KvFormat::kv16};

TEST(ParityRopeKv, Llama3Geometry) {
  QSERVE_PARITY_REQUIRE_GPU();
  // Llama-3.1-8B: 32 q heads, 8 KV heads, head_dim 128, theta 5e5 with llama3 scaling; prompts
  // of odd lengths, chunks that cross page boundaries, a decode deep into a sequence.
  RopeCase c{"llama3-8b",
             32,
             8,
             128,
             {{0, 1}, {0, 63}, {1, 65}, {64, 64}, {1000, 1}, {5, 130}, {70000, 2}}};
  c.theta = 500000.0;
  c.llama3 = true;
  for (KvFormat f : kFormats) run_case(c, f);
}

// The batch sizes the dispatch distinguishes (the token's task blocks spread over blocks while
// the batch fits one wave, one block per token beyond): 256, 1024 and 4096 tokens and odd counts,
// Llama-3-8B geometry, fp16 input, KV4 (the engine's format) and KV8.
TEST(ParityRopeKv, Llama3BatchSizes) {
  QSERVE_PARITY_REQUIRE_GPU();
  const std::vector<std::pair<std::string, std::vector<std::pair<int64_t, int64_t>>>> batches = {
      {"T256", {{0, 256}}},
      {"T1024", {{0, 256}, {0, 256}, {0, 256}, {0, 256}}},
      {"T4096", std::vector<std::pair<int64_t, int64_t>>(16, {0, 256})},
      {"T255-odd", {{3, 127}, {0, 1}, {200, 127}}},
      {"T1031-odd", {{0, 1000}, {64, 31}}},
      {"T1", {{77, 1}}},
      {"T7", {{0, 7}}},
      {"T7-decode", {{5, 1}, {300, 1}, {0, 1}, {63, 1}, {64, 1}, {1000, 1}, {9, 1}}},
      // Ragged: 1024 and 1100 tokens in sequences of different lengths (grids with empty
      // slots). The dispatch counts grid slots (max_num_tokens x sequences: 2800 and 1650 here),
      // spreading up to 1408 on a 132-SM H200 (4 x 8 x 132 blocks of a token's 3), so both run
      // the one-block-per-token form there; the forced runs cover the spread form.
      {"T1024-ragged", {{0, 700}, {10, 200}, {0, 1}, {500, 123}}},
      {"T1100-ragged", {{0, 550}, {64, 549}, {3, 1}}}};
  uint64_t seed = 20;
  for (const auto& [name, seqs] : batches) {
    RopeCase c{"llama3-8b-" + name, 32, 8, 128, seqs};
    c.fp16_input = true;
    c.theta = 500000.0;
    c.llama3 = true;
    c.seed = seed++;
    run_case(c, KvFormat::kv4);
    if (name == "T256" || name == "T255-odd") run_case(c, KvFormat::kv8);
  }
}

TEST(ParityRopeKv, HeadDim64Fp16Input) {
  QSERVE_PARITY_REQUIRE_GPU();
  RopeCase c{"hd64-mha", 8, 8, 64, {{0, 100}, {63, 2}, {127, 1}}};
  c.fp16_input = true;
  c.seed = 2;
  for (KvFormat f : kFormats) run_case(c, f);
  RopeCase g{"hd64-gqa", 14, 2, 64, {{3, 61}, {200, 1}}};
  g.seed = 3;
  for (KvFormat f : kFormats) run_case(g, f);
}

TEST(ParityRopeKv, LargeMagnitudes) {
  QSERVE_PARITY_REQUIRE_GPU();
  // |x| up to 4.5e4: the rotated values reach 6.4e4, just inside fp16's range (65504), so the
  // KV ranges (up to ~1.3e5) and scales are as large as real fp16 K/V allow.
  RopeCase c{"large", 8, 2, 128, {{0, 70}, {64, 1}}};
  c.uniform = true;
  c.magnitude = 4.5e4f;
  c.seed = 4;
  for (KvFormat f : kFormats) run_case(c, f);
  c.fp16_input = true;
  c.seed = 5;
  for (KvFormat f : kFormats) run_case(c, f);
}

TEST(ParityRopeKv, TinyRangesAndNoAppend) {
  QSERVE_PARITY_REQUIRE_GPU();
  // Small values: KV4/KV8 scales land in fp16's subnormal range, where codes can wrap (KV4).
  RopeCase tiny{"tiny", 8, 2, 128, {{0, 40}, {10, 3}}};
  tiny.magnitude = 2e-5f;
  tiny.seed = 6;
  for (KvFormat f : kFormats) run_case(tiny, f);
  RopeCase plain{"no-append", 32, 8, 128, {{0, 17}, {90, 1}}};
  plain.append = false;
  plain.seed = 7;
  run_case(plain, KvFormat::kv4);
}

// The RoPE table's API rejects what it cannot use, with an error, before any launch.
TEST(ParityRopeKv, TableRejectsBadInput) {
  QSERVE_PARITY_REQUIRE_GPU();
  cuda::VarlenBatchDevice b;
  b.num_seqs = 1;
  b.max_num_tokens = 1;
  b.max_total_len = 1;
  DeviceBuffer<float> cs(64 * 8);
  DeviceBuffer<uint8_t> info(8 * cuda::kRopeRowInfoBytes);
  DeviceBuffer<float> inv(32);
  const cuda::RopeTableDevice ok{cs.data(), info.data(), 8};
  EXPECT_THROW(cuda::rope_cos_sin_table(b, 63, inv.data(), ok, nullptr), Error);  // odd head_dim
  EXPECT_THROW(cuda::rope_cos_sin_table(b, 64, inv.data(), {cs.data(), info.data(), -1}, nullptr),
               Error);
  EXPECT_THROW(cuda::rope_cos_sin_table(b, 64, inv.data(), {nullptr, info.data(), 8}, nullptr),
               Error);
  EXPECT_THROW(cuda::rope_cos_sin_table(b, 64, nullptr, ok, nullptr), Error);
  // rope_kv_append with a table that is incomplete or misaligned.
  DeviceBuffer<uint16_t> qkv(3 * 64);
  DeviceBuffer<float> q(64);
  DeviceBuffer<uint16_t> k16(64), v16(64);
  const cuda::PagedKvDevice no_cache;
  const auto append = [&](const cuda::RopeTableDevice& t) {
    cuda::rope_kv_append_f16(qkv.data(), 3 * 64, b, 1, 1, 64, inv.data(), no_cache, q.data(),
                             k16.data(), v16.data(), nullptr, &t);
  };
  EXPECT_THROW(append({cs.data(), nullptr, 8}), Error);
  EXPECT_THROW(append({cs.data() + 1, info.data(), 8}), Error);
  EXPECT_THROW(append({cs.data(), info.data() + 4, 8}), Error);
}

}  // namespace
}  // namespace qserve
