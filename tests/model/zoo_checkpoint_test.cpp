// QServe zoo checkpoints written by tools/qserve_reference (docs/reference-generator.md), and our
// conversions of its LMQuant dumps, against the generator's fake-quant reference logits. Needs
// QSERVE_REFERENCE_DIR (the generator's output folder, e.g. .carry/qserve_reference_out, made by
// generator version 3); skipped without it.
//
// Our forward runs with decode semantics at every position, as the reference does: the first
// token is a 1-token prefill, every later position a decode step reading the KV4/KV8 cache, with
// the model's default (true RMSNorm) norms, the norm weights at 1.0 (the generator folded them
// into the linears) and QServe numerics (LoadOptions::qserve_numerics; the reference rounds at
// the same fp16 points and emulates the same decode kernel). Reported: top-1 agreement and
// relative L2 error of the logits, overall and at position 0 (no KV read).
//
// Thresholds: see kCases. The project's acceptance target is >= 99% top-1 and <= 2e-2 rel L2.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/half.h"
#include "formats/safetensors.h"
#include "model/llama_model.h"
#include "model/qserve_checkpoint.h"
#include "model/qserve_convert.h"
#include "test_paths.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;

std::string reference_dir() {
  const char* d = std::getenv("QSERVE_REFERENCE_DIR");
  return d ? std::string(d) : std::string();
}

struct Case {
  const char* name;
  const char* zoo;     // zoo folder under QSERVE_REFERENCE_DIR (also the HF folder to convert)
  const char* dump;    // LMQuant dump to convert with `qserve convert`, or null: load the zoo
  const char* logits;  // reference logits file
  WeightPrecision wp;  // expected detected precision
  KvPrecision kv;      // KV4: the default for W4A8; KV8: requested through LoadOptions
  double min_top1;
  double max_rel_l2;
};

struct Agreement {
  double top1 = 0.0, rel_l2 = 0.0, rel_l2_pos0 = 0.0;
  int64_t agree = 0, positions = 0;
};

// Our logits (decode at every position) against the reference's.
Agreement compare_with_reference(const LlamaModel& m, const std::string& logits_file) {
  auto f = SafetensorsFile::open(logits_file);
  const std::string gen = f->header().metadata.count("generator") != 0
                              ? f->header().metadata.at("generator")
                              : std::string();
  EXPECT_NE(gen.find(" v3"), std::string::npos)
      << logits_file << " was written by '" << gen
      << "'; regenerate it with tools/qserve_reference/gen_reference.py (version 3 rounds at "
         "QServe's fp16 points, which our QServe numerics follow)";
  const Tensor ids = f->get("input_ids");
  const Tensor want = f->get("logits");
  const int64_t B = ids.dim(0), T = ids.dim(1), V = want.dim(2);
  EXPECT_EQ(V, m.config().vocab_size);
  Agreement a;
  double num = 0.0, den = 0.0, num0 = 0.0, den0 = 0.0;  // *0: position 0 only (no KV read)
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* row = ids.data<int32_t>() + b * T;
    KvCache cache = m.make_cache(1, T);
    for (int64_t t = 0; t < T; ++t) {
      SeqSpan s{0, 1, t, 0};
      const std::vector<float> got = m.forward(std::span<const int32_t>(row + t, 1), {&s, 1}, cache,
                                               LogitsMode::LastPerSequence);
      const uint16_t* r = want.data<uint16_t>() + (b * T + t) * V;
      int64_t ag = 0, ar = 0;
      for (int64_t v = 0; v < V; ++v) {
        const double x = got[static_cast<size_t>(v)], y = fp16_to_float(r[v]);
        num += (x - y) * (x - y);
        den += y * y;
        if (t == 0) {
          num0 += (x - y) * (x - y);
          den0 += y * y;
        }
        if (got[static_cast<size_t>(v)] > got[static_cast<size_t>(ag)]) ag = v;
        if (fp16_to_float(r[v]) > fp16_to_float(r[ar])) ar = v;
      }
      a.agree += ag == ar;
    }
  }
  a.positions = B * T;
  a.top1 = static_cast<double>(a.agree) / static_cast<double>(a.positions);
  a.rel_l2 = std::sqrt(num / den);
  a.rel_l2_pos0 = std::sqrt(num0 / den0);
  return a;
}

class ZooCheckpoint : public ::testing::TestWithParam<Case> {};

TEST_P(ZooCheckpoint, LogitsMatchReference) {
  const std::string ref = reference_dir();
  if (ref.empty()) GTEST_SKIP() << "set QSERVE_REFERENCE_DIR to the qserve_reference output";
  const Case c = GetParam();
  std::string dir = ref + "/" + c.zoo;
  if (c.dump != nullptr) {
    const fs::path out = fs::path(test::binary_dir()) / "zoo_checkpoint_test" / c.dump;
    fs::remove_all(out);
    ConvertOptions o;
    o.model_dir = dir;
    o.quant_path = ref + "/" + c.dump;
    o.group_size = c.wp == WeightPrecision::kW4A8G128 ? 128 : -1;
    o.out = out.string();
    convert_dump(o);
    dir = out.string();
  }
  ASSERT_EQ(detect_qserve_checkpoint(dir), c.wp);
  LoadOptions opts;  // weights W16A16 = "as stored"; a quantized KV part overrides the default
  if (c.kv != KvPrecision::kKv4) opts.precision.kv = c.kv;
  // The loader's default for these checkpoints is on (LoadOptions::qserve_numerics); set it here
  // so that this comparison does not depend on that default (QServeNumericsOnByDefault).
  opts.qserve_numerics = true;
  auto m = LlamaModel::load(dir, opts);
  EXPECT_EQ(m->precision().weights, c.wp);
  EXPECT_EQ(m->precision().kv, c.kv);
  ASSERT_TRUE(m->qserve_numerics());

  const Agreement a = compare_with_reference(*m, ref + "/" + c.logits);
  std::printf("[zoo %s] top-1 agreement %.4f (%lld/%lld), rel L2 %.3g (position 0: %.3g)\n", c.name,
              a.top1, static_cast<long long>(a.agree), static_cast<long long>(a.positions),
              a.rel_l2, a.rel_l2_pos0);
  EXPECT_GE(a.top1, c.min_top1);
  EXPECT_LE(a.rel_l2, c.max_rel_l2);
}

// Checkpoints made for QServe run with its numerics unless the caller says otherwise.
// DISABLED until load_qserve_checkpoint sets the default (a one-line change in
// src/model/qserve_checkpoint.cpp, outside this change's files; LoadOptions::qserve_numerics).
TEST(ZooCheckpointDefaults, QServeNumericsOnByDefault) {
  const std::string ref = reference_dir();
  if (ref.empty()) GTEST_SKIP() << "set QSERVE_REFERENCE_DIR to the qserve_reference output";
  EXPECT_TRUE(LlamaModel::load(ref + "/w4a8-g128")->qserve_numerics());
  LoadOptions off;
  off.qserve_numerics = false;
  EXPECT_FALSE(LlamaModel::load(ref + "/w4a8-g128", off)->qserve_numerics());
}

// Measured on doc-llama-22m, 4 x 64 positions, reference generator v3 (docs/checkpoints.md,
// "Agreement with the reference generator"): every case, zoo and converted, agrees bit for bit
// (top-1 256/256, rel L2 0), so the thresholds are the project's acceptance target.
constexpr double kTop1 = 0.99, kRelL2 = 2e-2;

INSTANTIATE_TEST_SUITE_P(
    Reference, ZooCheckpoint,
    ::testing::Values(Case{"per_channel_kv4", "w4a8-per-channel", nullptr,
                           "reference_logits_per-channel_w4a8kv4.safetensors",
                           WeightPrecision::kW4A8PerChannel, KvPrecision::kKv4, kTop1, kRelL2},
                      Case{"per_channel_kv8", "w4a8-per-channel", nullptr,
                           "reference_logits_per-channel_w4a8kv8.safetensors",
                           WeightPrecision::kW4A8PerChannel, KvPrecision::kKv8, kTop1, kRelL2},
                      Case{"g128_kv4", "w4a8-g128", nullptr,
                           "reference_logits_g128_w4a8kv4.safetensors", WeightPrecision::kW4A8G128,
                           KvPrecision::kKv4, kTop1, kRelL2},
                      Case{"g128_kv8", "w4a8-g128", nullptr,
                           "reference_logits_g128_w4a8kv8.safetensors", WeightPrecision::kW4A8G128,
                           KvPrecision::kKv8, kTop1, kRelL2},
                      Case{"lmquant_per_channel_kv4", "w4a8-per-channel", "lmquant-per-channel",
                           "reference_logits_per-channel_w4a8kv4.safetensors",
                           WeightPrecision::kW4A8PerChannel, KvPrecision::kKv4, kTop1, kRelL2},
                      Case{"lmquant_per_channel_kv8", "w4a8-per-channel", "lmquant-per-channel",
                           "reference_logits_per-channel_w4a8kv8.safetensors",
                           WeightPrecision::kW4A8PerChannel, KvPrecision::kKv8, kTop1, kRelL2},
                      Case{"lmquant_g128_kv4", "w4a8-g128", "lmquant-g128",
                           "reference_logits_g128_w4a8kv4.safetensors", WeightPrecision::kW4A8G128,
                           KvPrecision::kKv4, kTop1, kRelL2},
                      Case{"lmquant_g128_kv8", "w4a8-g128", "lmquant-g128",
                           "reference_logits_g128_w4a8kv8.safetensors", WeightPrecision::kW4A8G128,
                           KvPrecision::kKv8, kTop1, kRelL2}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

}  // namespace
}  // namespace qserve
