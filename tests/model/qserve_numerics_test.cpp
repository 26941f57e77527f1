// QServe numerics (LoadOptions::qserve_numerics): the fp16 elementwise ops of
// model/qserve_numerics.h, the decode-kernel emulation of quant/qserve_decode_attention.h, and
// the forward in that mode. Agreement with the independent PyTorch emulation of the same
// numerics is tests/model/zoo_checkpoint_test.cpp (needs the generator's output).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "core/half.h"
#include "model/qserve_numerics.h"
#include "model/synthetic_configs.h"
#include "precision_test_util.h"
#include "quant/attention_ref.h"
#include "quant/kv_cache.h"
#include "quant/qserve_decode_attention.h"
#include "quant/silu_mul_quant.h"

namespace qserve {
namespace {

bool is_fp16_value(float x) {
  return fp16_to_float(float_to_fp16(x)) == x;
}

int64_t count_non_fp16(const std::vector<float>& v) {
  int64_t n = 0;
  for (float x : v) n += !is_fp16_value(x);
  return n;
}

// n fp16 values from N(0, sigma).
std::vector<float> random_fp16(std::mt19937& rng, int64_t n, float sigma) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> out(static_cast<size_t>(n));
  for (float& x : out) x = fp16_to_float(float_to_fp16(dist(rng)));
  return out;
}

std::vector<uint16_t> bits_of(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_fp16(v[i]);
  return out;
}

// A KV pool holding `cached` random tokens, plus the current token's K/V and the queries.
struct DecodeCase {
  quant::KvPagePool pool;
  std::vector<int64_t> table;
  std::vector<float> q, cur_k, cur_v;
  int64_t heads, context_len;
};

DecodeCase make_decode_case(quant::KvBits bits, int64_t heads, int64_t kv_heads,
                            int64_t context_len, uint32_t seed) {
  constexpr int64_t d = quant::kQServeDecodeHeadDim;
  std::mt19937 rng(seed);
  const int64_t pages = (context_len + quant::kKvPageTokens - 1) / quant::kKvPageTokens;
  DecodeCase c{quant::KvPagePool(quant::make_kv_layout(bits, kv_heads, d), pages),
               {},
               random_fp16(rng, heads * d, 1.0f),
               random_fp16(rng, kv_heads * d, 1.0f),
               random_fp16(rng, kv_heads * d, 1.0f),
               heads,
               context_len};
  for (int64_t p = 0; p < pages; ++p) c.table.push_back(p);
  for (int64_t pos = 0; pos + 1 < context_len; ++pos) {
    const std::vector<uint16_t> k = bits_of(random_fp16(rng, kv_heads * d, 1.0f));
    const std::vector<uint16_t> v = bits_of(random_fp16(rng, kv_heads * d, 1.0f));
    quant::kv_append(c.pool, c.table, pos, k.data(), v.data());
  }
  return c;
}

class QServeDecodeAttention : public ::testing::TestWithParam<quant::KvBits> {};

// With no cached token the probability is fp16(1 / (1 + 1e-6)) = 1 and the output the value.
TEST_P(QServeDecodeAttention, FirstTokenReturnsItsValue) {
  DecodeCase c = make_decode_case(GetParam(), 4, 2, 1, 7);
  std::vector<float> out(c.q.size());
  quant::decode_attention_qserve(c.pool.view(), c.table, 1, c.q.data(), c.heads, c.cur_k.data(),
                                 c.cur_v.data(), out.data());
  for (int64_t h = 0; h < c.heads; ++h) {
    for (int64_t i = 0; i < 128; ++i) {
      EXPECT_EQ(out[static_cast<size_t>(h * 128 + i)],
                c.cur_v[static_cast<size_t>(h / 2 * 128 + i)]);
    }
  }
}

// The fp16 rounding points move the result by about an fp16 ulp of the scores and the output,
// not more: compared with the fp32 reference over the same pages (100 tokens, two pages).
TEST_P(QServeDecodeAttention, CloseToFp32ReferenceAndFp16Valued) {
  DecodeCase c = make_decode_case(GetParam(), 4, 2, 100, 11);
  std::vector<float> got(c.q.size()), want(c.q.size());
  quant::decode_attention_qserve(c.pool.view(), c.table, c.context_len, c.q.data(), c.heads,
                                 c.cur_k.data(), c.cur_v.data(), got.data());
  quant::decode_attention_paged(c.pool.view(), c.table, c.context_len, c.q.data(), c.heads,
                                c.cur_k.data(), c.cur_v.data(), want.data());
  EXPECT_EQ(count_non_fp16(got), 0);
  double max_diff = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  // Outputs are O(0.3); scores O(1) with fp16 partials of ~2e-3 relative error.
  EXPECT_LT(max_diff, 5e-3);
  EXPECT_GT(max_diff, 0.0);  // the emulation is not the fp32 reference
}

TEST_P(QServeDecodeAttention, RejectsOtherHeadDims) {
  quant::KvPagePool pool(quant::make_kv_layout(GetParam(), 1, 64), 1);
  std::vector<int64_t> table = {0};
  std::vector<float> q(64), k(64), v(64), out(64);
  EXPECT_THROW(quant::decode_attention_qserve(pool.view(), table, 1, q.data(), 1, k.data(),
                                              v.data(), out.data()),
               Error);
}

INSTANTIATE_TEST_SUITE_P(Kv, QServeDecodeAttention,
                         ::testing::Values(quant::KvBits::k4, quant::KvBits::k8),
                         [](const auto& param_info) {
                           return std::string(param_info.param == quant::KvBits::k4 ? "kv4"
                                                                                    : "kv8");
                         });

TEST(QServeNumericsOps, RopeIsFp16AndCloseToFp32Rope) {
  ModelConfig cfg;
  cfg.head_dim = 128;
  cfg.rope_theta = 500000.0;
  std::mt19937 rng(3);
  const int64_t t = 6, heads = 2, d = 128;
  const std::vector<int64_t> pos = {0, 1, 7, 63, 1000, 4095};
  const std::vector<float> x = random_fp16(rng, t * heads * d, 1.0f);
  std::vector<float> got = x, want = x;
  qserve_rope(got.data(), pos.data(), t, heads, d, qserve_rope_inv_freq(cfg));
  cpu::rope(want.data(), pos.data(), t, heads, d, cpu::rope_inv_freq(cfg));
  EXPECT_EQ(count_non_fp16(got), 0);
  for (int64_t i = 0; i < heads * d; ++i) EXPECT_EQ(got[i], x[i]);  // position 0: identity
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t i = 0; i < heads * d; ++i) {
      // One fp16 rounding (<= 2^-11 of the pair's magnitude) plus the angle: the frequencies
      // differ by an fp32 ulp (double pow vs fp32 pow), which position p scales up.
      const int64_t j = i % d, pair = i - j + (j + d / 2) % d, at = r * heads * d;
      const float mag = std::fabs(x[at + i]) + std::fabs(x[at + pair]);
      const float tol =
          (std::ldexp(1.0f, -11) + static_cast<float>(pos[r]) * std::ldexp(1.0f, -21)) * mag;
      EXPECT_LE(std::fabs(got[at + i] - want[at + i]), tol) << "position " << pos[r] << ", " << i;
    }
  }
}

TEST(QServeNumericsOps, RmsNormIsFp16AndCloseToFp32) {
  std::mt19937 rng(5);
  const int64_t rows = 3, dim = 512;
  const std::vector<float> x = random_fp16(rng, rows * dim, 2.0f);
  const std::vector<float> gamma = random_fp16(rng, dim, 1.0f);
  std::vector<float> got(x.size()), want(x.size());
  qserve_rms_norm(x.data(), gamma.data(), 1e-5f, rows, dim, got.data());
  cpu::rms_norm(x.data(), gamma.data(), 1e-5f, rows, dim, want.data());
  EXPECT_EQ(count_non_fp16(got), 0);
  for (size_t i = 0; i < got.size(); ++i) {
    // Two fp16 roundings: fp16(x * rho), then the product with gamma.
    EXPECT_LE(std::fabs(got[i] - want[i]), std::ldexp(std::fabs(want[i]), -10) + 1e-6f) << i;
  }
}

// Same formula as quant::silu_mul with the correctly rounded exp: equal, except where the
// library's fp32 exp is off by an ulp and that moves an fp16 rounding (at most one fp16 ulp).
TEST(QServeNumericsOps, SiluMulMatchesQuantSiluMul) {
  std::mt19937 rng(9);
  const int64_t t = 4, inter = 1024;
  const std::vector<float> gu = random_fp16(rng, t * 2 * inter, 3.0f);
  std::vector<uint16_t> got(static_cast<size_t>(t * inter)), want(got.size());
  qserve_silu_mul(gu.data(), t, inter, got.data());
  quant::silu_mul(gu.data(), t, inter, want.data());
  int64_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    differ += got[i] != want[i];
    EXPECT_LE(std::abs(static_cast<int>(got[i]) - static_cast<int>(want[i])), 1) << i;
  }
  EXPECT_LE(differ, 4);
}

TEST(QServeNumericsForward, DefaultIsOffForHfFolders) {
  EXPECT_FALSE(LoadOptions{}.qserve_numerics.has_value());
  EXPECT_FALSE(test::load_doc_model("w4a8kv4")->qserve_numerics());
}

// Prefill 40 tokens, decode 4: every traced activation and the logits are fp16 values, and the
// model is as close to the fp32 reference as the fp32-activation one (quantized_forward_test).
TEST(QServeNumericsForward, ActivationsAreFp16) {
  LoadOptions o;
  o.precision = Precision::parse("w4a8kv4-g128");
  o.qserve_numerics = true;
  auto m = LlamaModel::load(test::doc_model_dir(), o);
  ASSERT_TRUE(m->qserve_numerics());
  const std::vector<int32_t> ids = test::doc_prompt(44);
  KvCache cache = m->make_cache(1, 44);
  ForwardTrace tr;
  tr.layer = 2;
  SeqSpan s{0, 40, 0, 0};
  std::vector<float> logits = m->forward(std::span<const int32_t>(ids).first(40), {&s, 1}, cache,
                                         LogitsMode::AllTokens, &tr);
  for (const std::vector<float>* v : {&tr.q, &tr.k, &tr.v, &tr.attn, &tr.hidden, &logits}) {
    EXPECT_EQ(count_non_fp16(*v), 0);
  }
  for (int64_t p = 40; p < 44; ++p) {
    SeqSpan d{0, 1, p, 0};
    logits = m->forward(std::span<const int32_t>(ids).subspan(static_cast<size_t>(p), 1), {&d, 1},
                        cache, LogitsMode::LastPerSequence, &tr);
    for (const std::vector<float>* v : {&tr.q, &tr.k, &tr.v, &tr.attn, &tr.hidden, &logits}) {
      EXPECT_EQ(count_non_fp16(*v), 0) << "decode position " << p;
    }
  }
}

struct AccuracyBound {
  const char* precision;
  double max_rel_l2;  // prefill logits of 64 tokens against the fp32 forward
  double min_top1;
};

class QServeNumericsAccuracy : public ::testing::TestWithParam<AccuracyBound> {};

TEST_P(QServeNumericsAccuracy, AsCloseToFp32AsFp32Activations) {
  const AccuracyBound b = GetParam();
  const std::vector<int32_t> ids = test::doc_prompt(64);
  const std::vector<float> ref = test::prefill_logits(*test::load_doc_model("w16a16kv16"), ids);
  LoadOptions o;
  o.precision = Precision::parse(b.precision);
  o.qserve_numerics = true;
  auto m = LlamaModel::load(test::doc_model_dir(), o);
  const std::vector<float> out = test::prefill_logits(*m, ids);
  const double err = test::relative_l2(out, ref);
  const double top1 = test::top1_agreement(out, ref, m->config().vocab_size);
  std::printf("[ measure  ] %-14s qserve numerics: prefill rel L2 %.3g  top-1 %.3f\n", b.precision,
              err, top1);
  EXPECT_LE(err, b.max_rel_l2);
  EXPECT_GE(top1, b.min_top1);
}

INSTANTIATE_TEST_SUITE_P(
    DocLlama22m, QServeNumericsAccuracy,
    // Measured rel L2 / top-1 (fp32 activations, quantized_forward_test):
    ::testing::Values(AccuracyBound{"w16a16kv16", 2e-3, 0.98},     // 6.0e-4 / 1.000 (0 / 1)
                      AccuracyBound{"w8a8kv8", 0.03, 0.95},        // 0.0168 / 1.000 (0.0167 / 1)
                      AccuracyBound{"w4a8kv4", 0.16, 0.70},        // 0.104 / 0.828 (0.105 / 0.781)
                      AccuracyBound{"w4a8kv4-g128", 0.13, 0.90}),  // 0.0855 / 0.953 (0.086 / 0.953)
    [](const auto& param_info) {
      std::string s = param_info.param.precision;
      for (char& ch : s) {
        if (ch == '-') ch = '_';
      }
      return s;
    });

// QServe's decode kernel exists for head_dim 128 only; other sizes decode with the fp32
// reference attention (rounded to fp16) instead of throwing.
TEST(QServeNumericsForward, OtherHeadDimsDecode) {
  ModelConfig cfg = synthetic_config("tiny");
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.head_dim = 64;
  LoadOptions o;
  o.precision = Precision::parse("w4a8kv4");
  o.qserve_numerics = true;
  auto m = LlamaModel::synthetic(cfg, 1, o);
  KvCache cache = m->make_cache(1, 8);
  const std::vector<int32_t> ids = {1, 2, 3, 4};
  SeqSpan s{0, 3, 0, 0};
  m->forward(std::span<const int32_t>(ids).first(3), {&s, 1}, cache, LogitsMode::LastPerSequence);
  SeqSpan d{0, 1, 3, 0};
  const std::vector<float> logits = m->forward(std::span<const int32_t>(ids).subspan(3, 1), {&d, 1},
                                               cache, LogitsMode::LastPerSequence);
  EXPECT_EQ(count_non_fp16(logits), 0);
}

}  // namespace
}  // namespace qserve
