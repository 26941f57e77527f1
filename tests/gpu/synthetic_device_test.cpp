// Synthetic weights generated on the GPU (engine_cuda/synthetic_device.h) against the upload of
// a host-synthetic model of the same shapes (upload_llama of LlamaModel::synthetic): the same
// tensors, layouts, sizes and fast-path copies, and value statistics within sampling noise; a
// device-synthetic model through the engine: finite, deterministic for a seed, logits of the
// host model's magnitude. Plus the memory plan of `qserve bench --batch auto|max`
// (engine_cuda/memory_plan.h), whose footprint part needs no GPU. Report lines start with
// "GPU-SYNTH".
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include "backend/cuda/cuda_device.h"
#include "backend/cuda/device_buffer.h"
#include "core/half.h"
#include "engine/block_manager.h"
#include "engine/engine.h"
#include "engine_cuda/cuda_executor.h"
#include "engine_cuda/cuda_weights.h"
#include "engine_cuda/memory_plan.h"
#include "engine_cuda/synthetic_device.h"
#include "model/llama_model.h"
#include "model/synthetic_configs.h"
#include "quant/weights.h"

namespace qserve {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::device_summary()

constexpr uint64_t kSeed = 1234;

LoadOptions at(const std::string& precision) {
  LoadOptions o;
  o.precision = Precision::parse(precision);
  return o;
}

// Mean and standard deviation of any numeric device buffer.
struct Moments {
  double mean = 0.0, sd = 0.0, lo = 0.0, hi = 0.0;
};
template <typename T, typename F>
Moments moments(const cuda::DeviceBuffer<T>& d, F value) {
  const std::vector<T> h = cuda::to_host(d);
  Moments m;
  if (h.empty()) return m;
  double s = 0.0, s2 = 0.0;
  m.lo = m.hi = value(h[0]);
  for (const T& x : h) {
    const double v = value(x);
    s += v;
    s2 += v * v;
    m.lo = std::min(m.lo, v);
    m.hi = std::max(m.hi, v);
  }
  const double n = static_cast<double>(h.size());
  m.mean = s / n;
  m.sd = std::sqrt(std::max(0.0, s2 / n - m.mean * m.mean));
  return m;
}
double as_f32(float x) {
  return x;
}
double as_f16(uint16_t x) {
  return fp16_to_float(x);
}
template <typename T>
double as_int(T x) {
  return static_cast<double>(x);
}

// Two samples of one distribution, with tolerances for how many independent values they hold.
enum class Sample {
  kMany,    // >= 64k independent values (weights, embeddings): means within 5% of the spread
  kFew,     // >= 256 independent values (biases)
  kCodes,   // quantized codes, >= 64k values over >= 256 rows that share a grid per row
  kPerRow,  // one value per output row (scales, zeros), >= 256 rows: a skewed distribution
};
void expect_same_distribution(const Moments& dev, const Moments& ref, Sample kind,
                              const std::string& what) {
  double mean_tol = 0.0, sd_rel = 0.0;
  switch (kind) {
    case Sample::kMany:
      mean_tol = 0.05 * ref.sd;
      sd_rel = 0.05;
      break;
    case Sample::kFew:
      mean_tol = 0.35 * ref.sd;
      sd_rel = 0.25;
      break;
    case Sample::kCodes:
      mean_tol = 0.05 * ref.sd + 0.2;
      sd_rel = 0.08;
      break;
    case Sample::kPerRow:
      mean_tol = 0.05 * std::fabs(ref.mean);
      sd_rel = 0.6;
      break;
  }
  EXPECT_NEAR(dev.mean, ref.mean, mean_tol + 1e-12) << what << " mean";
  EXPECT_NEAR(dev.sd, ref.sd, sd_rel * ref.sd + 1e-12) << what << " spread";
}

template <typename T>
void expect_same_size(const cuda::DeviceBuffer<T>& a, const cuda::DeviceBuffer<T>& b,
                      const std::string& what) {
  EXPECT_EQ(a.size(), b.size()) << what;
}

void compare_linear(const cuda::LinearOnDevice& dev, const cuda::LinearOnDevice& up,
                    const std::string& what) {
  ASSERT_EQ(dev.w.index(), up.w.index()) << what << ": another kind of linear";
  EXPECT_EQ(dev.n, up.n) << what;
  EXPECT_EQ(dev.k, up.k) << what;
  expect_same_size(dev.bias16, up.bias16, what + " bias16");
  if (!up.bias16.empty()) {
    expect_same_distribution(moments(dev.bias16, as_f16), moments(up.bias16, as_f16), Sample::kFew,
                             what + " bias16");
  }
  if (const auto* f = std::get_if<cuda::LinearF32OnDevice>(&up.w)) {
    const auto& d = std::get<cuda::LinearF32OnDevice>(dev.w);
    EXPECT_EQ(d.n, f->n);
    EXPECT_EQ(d.k, f->k);
    expect_same_size(d.w, f->w, what + " w");
    expect_same_size(d.bias, f->bias, what + " bias");
    expect_same_distribution(moments(d.w, as_f32), moments(f->w, as_f32), Sample::kMany,
                             what + " w");
  } else if (const auto* u = std::get_if<cuda::W4PerChannelOnDevice>(&up.w)) {
    const auto& d = std::get<cuda::W4PerChannelOnDevice>(dev.w);
    EXPECT_EQ(d.n, u->n);
    EXPECT_EQ(d.k, u->k);
    expect_same_size(d.q, u->q, what + " q");
    expect_same_size(d.s1_scales, u->s1_scales, what + " s1_scales");
    expect_same_size(d.s1_szeros, u->s1_szeros, what + " s1_szeros");
    expect_same_size(d.q_packed, u->q_packed, what + " q_packed");
    const Moments q = moments(d.q, as_int<uint8_t>);
    EXPECT_GE(q.lo, 0.0);
    EXPECT_LE(q.hi, 15.0) << what;
    expect_same_distribution(q, moments(u->q, as_int<uint8_t>), Sample::kCodes, what + " codes");
    expect_same_distribution(moments(d.s1_scales, as_f16), moments(u->s1_scales, as_f16),
                             Sample::kPerRow, what + " s1_scales");
    expect_same_distribution(moments(d.s1_szeros, as_f16), moments(u->s1_szeros, as_f16),
                             Sample::kPerRow, what + " s1_szeros");
  } else if (const auto* g = std::get_if<cuda::W4G128OnDevice>(&up.w)) {
    const auto& d = std::get<cuda::W4G128OnDevice>(dev.w);
    expect_same_size(d.q, g->q, what + " q");
    expect_same_size(d.s1_scales, g->s1_scales, what + " s1_scales");
    expect_same_size(d.s2_scales, g->s2_scales, what + " s2_scales");
    expect_same_size(d.s2_zeros, g->s2_zeros, what + " s2_zeros");
    expect_same_size(d.q_packed, g->q_packed, what + " q_packed");
    expect_same_size(d.w8, g->w8, what + " w8");
    // The host's checks on the downloaded tensors (codes <= 15, s2 >= 0, q * s2 <= 255), and
    // w8 is exactly their expansion.
    quant::W4G128 h;
    h.n = d.n;
    h.k = d.k;
    h.q = cuda::to_host(d.q);
    h.s1_scales = cuda::to_host(d.s1_scales);
    h.s2_scales = cuda::to_host(d.s2_scales);
    h.s2_zeros = cuda::to_host(d.s2_zeros);
    EXPECT_NO_THROW(quant::validate(h)) << what;
    const std::vector<int8_t> w8 = cuda::to_host(d.w8);
    std::vector<int8_t> row(static_cast<size_t>(h.k));
    for (int64_t r = 0; r < h.n; r += 37) {
      quant::g128_int8_row(h, r, row.data());
      for (int64_t c = 0; c < h.k; ++c) {
        ASSERT_EQ(w8[static_cast<size_t>(r * h.k + c)], row[static_cast<size_t>(c)])
            << what << " w8 row " << r;
      }
    }
    expect_same_distribution(moments(d.q, as_int<uint8_t>), moments(g->q, as_int<uint8_t>),
                             Sample::kCodes, what + " codes");
    expect_same_distribution(moments(d.w8, as_int<int8_t>), moments(g->w8, as_int<int8_t>),
                             Sample::kCodes, what + " w8");
    expect_same_distribution(moments(d.s1_scales, as_f16), moments(g->s1_scales, as_f16),
                             Sample::kPerRow, what + " s1_scales");
  } else {
    const auto& u8 = std::get<cuda::W8PerChannelOnDevice>(up.w);
    const auto& d = std::get<cuda::W8PerChannelOnDevice>(dev.w);
    expect_same_size(d.w, u8.w, what + " w");
    expect_same_size(d.dequant_scale, u8.dequant_scale, what + " dequant_scale");
    const Moments w = moments(d.w, as_int<int8_t>);
    EXPECT_GE(w.lo, -127.0) << what;
    EXPECT_LE(w.hi, 127.0) << what;
    expect_same_distribution(w, moments(u8.w, as_int<int8_t>), Sample::kCodes, what + " w");
    expect_same_distribution(moments(d.dequant_scale, as_f16), moments(u8.dequant_scale, as_f16),
                             Sample::kPerRow, what + " dequant_scale");
  }
}

struct Case {
  std::string precision;
  bool qkv_bias;
};
std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  std::string s = i.param.precision + (i.param.qkv_bias ? "_bias" : "");
  for (char& c : s) {
    if (c == '-') c = '_';
  }
  return s;
}

class SyntheticDevice : public ::testing::TestWithParam<Case> {};

// Every tensor of synthesize_llama has the kind, shape and buffers upload_llama gives the host
// model, and values from the same distribution.
TEST_P(SyntheticDevice, SameLayoutsAndStatisticsAsUpload) {
  SKIP_WITHOUT_GPU();
  ModelConfig cfg = synthetic_config("tiny");
  cfg.qkv_bias = GetParam().qkv_bias;
  const LoadOptions opts = at(GetParam().precision);
  cuda::Stream stream;
  auto host = LlamaModel::synthetic(cfg, kSeed, opts);
  const cuda::LlamaOnDevice up = cuda::upload_llama(*host, stream);
  const cuda::LlamaOnDevice dev =
      cuda::synthesize_llama(cfg, opts.precision.weights, kSeed, stream);

  EXPECT_EQ(dev.quantized, up.quantized);
  EXPECT_EQ(dev.bytes, up.bytes);
  EXPECT_EQ(dev.bytes, cuda::weight_footprint(cfg, opts.precision.weights).bytes);
  EXPECT_EQ(cuda::to_host(dev.inv_freq), cuda::to_host(up.inv_freq));
  expect_same_size(dev.embed, up.embed, "embed");
  expect_same_distribution(moments(dev.embed, as_f32), moments(up.embed, as_f32), Sample::kMany,
                           "embed");
  expect_same_size(dev.final_norm, up.final_norm, "final_norm");
  EXPECT_EQ(cuda::to_host(dev.final_norm), cuda::to_host(up.final_norm));
  expect_same_size(dev.lm_head.w, up.lm_head.w, "lm_head");
  expect_same_size(dev.lm_head16, up.lm_head16, "lm_head16");
  EXPECT_EQ(dev.lm_head.n, up.lm_head.n);
  EXPECT_EQ(dev.lm_head.k, up.lm_head.k);
  if (dev.quantized) {
    expect_same_distribution(moments(dev.lm_head16, as_f16), moments(up.lm_head16, as_f16),
                             Sample::kMany, "lm_head16");
  } else {
    expect_same_distribution(moments(dev.lm_head.w, as_f32), moments(up.lm_head.w, as_f32),
                             Sample::kMany, "lm_head");
  }
  ASSERT_EQ(dev.layers.size(), up.layers.size());
  for (size_t l = 0; l < dev.layers.size(); ++l) {
    const std::string p = "layer " + std::to_string(l);
    EXPECT_EQ(cuda::to_host(dev.layers[l].input_norm), cuda::to_host(up.layers[l].input_norm));
    EXPECT_EQ(cuda::to_host(dev.layers[l].post_norm), cuda::to_host(up.layers[l].post_norm));
    compare_linear(dev.layers[l].qkv, up.layers[l].qkv, p + " qkv");
    compare_linear(dev.layers[l].o, up.layers[l].o, p + " o");
    compare_linear(dev.layers[l].gate_up, up.layers[l].gate_up, p + " gate_up");
    compare_linear(dev.layers[l].down, up.layers[l].down, p + " down");
  }
  std::printf("GPU-SYNTH layouts tiny %s%s: %zu bytes, same as upload_llama\n",
              GetParam().precision.c_str(), GetParam().qkv_bias ? " (qkv bias)" : "", dev.bytes);
}

INSTANTIATE_TEST_SUITE_P(Precisions, SyntheticDevice,
                         ::testing::Values(Case{"w16a16kv16", false}, Case{"w8a8kv8", false},
                                           Case{"w4a8kv4", false}, Case{"w4a8kv4-g128", false},
                                           Case{"w4a8kv4", true}, Case{"w16a16kv16", true}),
                         case_name);

// The same seed gives the same bytes; another seed other ones.
TEST(SyntheticDeviceGen, DeterministicForASeed) {
  SKIP_WITHOUT_GPU();
  const ModelConfig cfg = synthetic_config("tiny");
  cuda::Stream stream;
  const auto a = cuda::synthesize_llama(cfg, WeightPrecision::kW4A8PerChannel, kSeed, stream);
  const auto b = cuda::synthesize_llama(cfg, WeightPrecision::kW4A8PerChannel, kSeed, stream);
  const auto c = cuda::synthesize_llama(cfg, WeightPrecision::kW4A8PerChannel, kSeed + 1, stream);
  const auto& qa = std::get<cuda::W4PerChannelOnDevice>(a.layers[1].down.w);
  const auto& qb = std::get<cuda::W4PerChannelOnDevice>(b.layers[1].down.w);
  const auto& qc = std::get<cuda::W4PerChannelOnDevice>(c.layers[1].down.w);
  EXPECT_EQ(cuda::to_host(qa.q), cuda::to_host(qb.q));
  EXPECT_EQ(cuda::to_host(qa.q_packed), cuda::to_host(qb.q_packed));
  EXPECT_EQ(cuda::to_host(qa.s1_scales), cuda::to_host(qb.s1_scales));
  EXPECT_EQ(cuda::to_host(a.embed), cuda::to_host(b.embed));
  EXPECT_EQ(cuda::to_host(a.lm_head16), cuda::to_host(b.lm_head16));
  EXPECT_NE(cuda::to_host(qa.q), cuda::to_host(qc.q));
  EXPECT_NE(cuda::to_host(a.embed), cuda::to_host(c.embed));
}

// Greedy tokens of a few requests through the GPU engine.
std::vector<std::vector<int32_t>> greedy_tokens(const LlamaModel& model) {
  EngineConfig cfg;
  cfg.max_num_seqs = 4;
  cfg.max_num_batched_tokens = 512;
  cfg.max_model_len = 256;
  cfg.num_pages = 32;
  auto engine = create_cuda_engine(model, nullptr, cfg);
  std::mt19937_64 rng(7);
  std::vector<std::vector<int32_t>> out(4);
  for (size_t i = 0; i < out.size(); ++i) {
    std::vector<int32_t> prompt(static_cast<size_t>(40 + 30 * i));
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % model.config().vocab_size);
    SamplingParams p;
    p.max_tokens = 12;
    p.temperature = 0.0f;
    p.ignore_eos = true;
    engine->add_request(std::move(prompt), p, [&out, i](const RequestOutput& o) {
      out[i].insert(out[i].end(), o.token_ids.begin(), o.token_ids.end());
    });
  }
  while (engine->has_unfinished()) engine->step();
  return out;
}

// Logits of one prompt, scored in one prefill.
std::vector<float> score(const LlamaModel& model, int64_t n) {
  std::mt19937_64 rng(11);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& t : ids) t = static_cast<int32_t>(rng() % model.config().vocab_size);
  auto ex = make_cuda_executor(model, pages_for_tokens(n), 1, n);
  std::vector<float> logits;
  ex->score(ids, logits);
  return logits;
}

double rms(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s / static_cast<double>(std::max<size_t>(v.size(), 1)));
}

class SyntheticDeviceEngine : public ::testing::TestWithParam<std::string> {};

// A synthetic_on_device model runs through the engine: tokens deterministic for the seed,
// logits finite and of the host-synthetic model's magnitude (activations neither vanish nor
// blow up through the layers).
TEST_P(SyntheticDeviceEngine, RunsDeterministicFinite) {
  SKIP_WITHOUT_GPU();
  const ModelConfig cfg = synthetic_config("tiny");
  const LoadOptions opts = at(GetParam());
  auto dev = LlamaModel::synthetic_on_device(cfg, kSeed, opts);
  ASSERT_TRUE(dev->device_synthetic_seed().has_value());
  EXPECT_TRUE(dev->weights().layers.empty());
  const auto first = greedy_tokens(*dev);
  const auto again = greedy_tokens(*LlamaModel::synthetic_on_device(cfg, kSeed, opts));
  EXPECT_EQ(first, again);
  for (const auto& t : first) EXPECT_EQ(t.size(), 12u);
  const auto other = greedy_tokens(*LlamaModel::synthetic_on_device(cfg, kSeed + 1, opts));
  EXPECT_NE(first, other);

  const std::vector<float> ld = score(*dev, 96);
  for (float x : ld) ASSERT_TRUE(std::isfinite(x));
  auto host = LlamaModel::synthetic(cfg, kSeed, opts);
  const std::vector<float> lh = score(*host, 96);
  const double rd = rms(ld), rh = rms(lh);
  std::printf(
      "GPU-SYNTH engine tiny %s: logits rms device %.4g host %.4g; greedy tokens "
      "identical across runs\n",
      GetParam().c_str(), rd, rh);
  EXPECT_GT(rd, 0.5 * rh);
  EXPECT_LT(rd, 2.0 * rh);
}

INSTANTIATE_TEST_SUITE_P(Precisions, SyntheticDeviceEngine,
                         ::testing::Values("w4a8kv4", "w4a8kv4-g128", "w8a8kv8", "w16a16kv16"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           for (char& c : s) {
                             if (c == '-') c = '_';
                           }
                           return s;
                         });

// An 8B model on the device: how long generation takes (the host path: ~20 s on 16 cores),
// and that its bytes are the footprint the memory plan assumes.
TEST(SyntheticDeviceGen, Llama3_8bInAboutASecond) {
  SKIP_WITHOUT_GPU();
  const ModelConfig cfg = synthetic_config("llama-3-8b");
  cuda::Stream stream;
  const auto t0 = std::chrono::steady_clock::now();
  const auto w = cuda::synthesize_llama(cfg, WeightPrecision::kW4A8PerChannel, kSeed, stream);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("GPU-SYNTH llama-3-8b w4a8kv4: %.2f GiB generated on the GPU in %.2f s\n",
              static_cast<double>(w.bytes) / (1 << 30), s);
  EXPECT_EQ(w.bytes, cuda::weight_footprint(cfg, WeightPrecision::kW4A8PerChannel).bytes);
  EXPECT_LT(s, 10.0);
}

// ---- the memory plan (footprints need no GPU)

// Weight bytes of the README's model set at W4A8 per-channel (one byte per code for the
// large-M kernel, half a byte more for the small-M kernel's packed copy, scales, fp32
// embedding, fp16 lm_head), printed for the docs; 70B-class models fit a 141 GB H200.
TEST(MemoryPlan, FootprintsOfTheModelSet) {
  for (const char* name : {"llama-3-8b", "llama-2-7b", "mistral-7b", "llama-2-13b", "llama-30b",
                           "yi-34b", "llama-2-70b", "qwen1.5-72b"}) {
    const ModelConfig cfg = synthetic_config(name);
    const auto f = cuda::weight_footprint(cfg, WeightPrecision::kW4A8PerChannel);
    const auto g = cuda::weight_footprint(cfg, WeightPrecision::kW4A8G128);
    const auto w8 = cuda::weight_footprint(cfg, WeightPrecision::kW8A8);
    const auto f32 = cuda::weight_footprint(cfg, WeightPrecision::kW16A16);
    const double params = static_cast<double>(config_parameter_count(cfg));
    std::printf(
        "GPU-SYNTH footprint %-12s %5.1f B params: w4a8 %6.1f GiB (allocated %6.1f), "
        "w4a8-g128 %6.1f GiB, w8a8 %6.1f GiB, w16a16 (fp32) %6.1f GiB; KV4 %.0f KiB/token\n",
        name, params / 1e9, static_cast<double>(f.bytes) / (1 << 30),
        static_cast<double>(f.allocated) / (1 << 30), static_cast<double>(g.bytes) / (1 << 30),
        static_cast<double>(w8.bytes) / (1 << 30), static_cast<double>(f32.bytes) / (1 << 30),
        static_cast<double>(2 * cfg.num_layers * cfg.num_kv_heads * (cfg.head_dim / 2 + 4)) /
            1024.0);
    // What `qserve bench --batch max` plans for 1024 + 512 tokens on an H200 (139.8 GiB, of
    // which the CUDA context takes about half a GiB).
    const cuda::DeviceMemory h200{139LL << 30, 1398LL * (1LL << 30) / 10};
    const Precision p = Precision::parse("w4a8kv4");
    const int64_t rows = cuda::default_prefill_tokens(cfg, p, 1024, 1536, h200);
    std::printf(
        "GPU-SYNTH plan %-12s w4a8kv4 1024+512 on an H200: prefill steps of %lld rows, "
        "max batch %lld\n",
        name, static_cast<long long>(rows),
        static_cast<long long>(cuda::plan_batch(cfg, p, 1536, rows, h200).max_batch));
    EXPECT_GE(f.allocated, f.bytes);
    EXPECT_LE(f.allocated, f.bytes + f.bytes / 4);
    EXPECT_LT(f.allocated, size_t{120} << 30) << name << " would not fit an H200 with a KV cache";
  }
}

// The planned batch fits and one more does not; on the GPU, sized from its free memory.
TEST(MemoryPlan, MaxBatchIsTheLargestThatFits) {
  const ModelConfig cfg = synthetic_config("llama-3-8b");
  const Precision p = Precision::parse("w4a8kv4");
  const cuda::DeviceMemory h200{140LL << 30, 141LL << 30};  // an H200 before any engine
  const cuda::BatchPlan plan = cuda::plan_batch(cfg, p, 1536, 65536, h200);
  ASSERT_GT(plan.max_batch, 0);
  EXPECT_LE(plan.need(plan.max_batch), h200.free);
  EXPECT_GT(plan.need(plan.max_batch + 1), h200.free);
  std::printf(
      "GPU-SYNTH plan llama-3-8b w4a8kv4 1024+512 on 140 GiB free: max batch %lld "
      "(weights %.1f GiB, KV %.1f MiB/seq)\n",
      static_cast<long long>(plan.max_batch), static_cast<double>(plan.weights) / (1 << 30),
      static_cast<double>(plan.kv_per_seq) / (1 << 20));
  // A smaller prefill step leaves room for more sequences.
  EXPECT_GE(cuda::plan_batch(cfg, p, 1536, 16384, h200).max_batch, plan.max_batch);
  if (cuda::device_count() == 0) return;
  const cuda::DeviceMemory mem = cuda::device_memory();
  const int64_t tokens = cuda::default_prefill_tokens(cfg, p, 1024, 1536, mem);
  const cuda::BatchPlan real = cuda::plan_batch(cfg, p, 1536, tokens, mem);
  std::printf(
      "GPU-SYNTH plan on this GPU (%.1f of %.1f GiB free): prefill %lld rows, max batch "
      "%lld\n",
      static_cast<double>(mem.free) / (1 << 30), static_cast<double>(mem.total) / (1 << 30),
      static_cast<long long>(tokens), static_cast<long long>(real.max_batch));
  EXPECT_GT(real.max_batch, 0);
}

}  // namespace
}  // namespace qserve
