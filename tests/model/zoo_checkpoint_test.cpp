// QServe zoo checkpoints written by tools/qserve_reference (docs/reference-generator.md) against
// the generator's reference logits. Needs QSERVE_REFERENCE_DIR (the generator's output folder,
// e.g. .carry/qserve_reference_out); skipped without it.
//
// Our forward runs with decode semantics at every position, as the reference does: the first
// token is a 1-token prefill, every later position a decode step reading the KV4 cache, with
// the model's default (true RMSNorm) norms and the norm weights at 1.0 (the generator folded
// them into the linears). Reported: top-1 agreement and relative L2 error of the logits.
//
// Thresholds are the measured values (2026-11-29) with margin, NOT the project's acceptance
// target (>= 99% top-1, <= 2e-2 rel L2), which only g128 KV8 meets on rel L2:
//   per-channel kv4  92.2% top-1, rel L2 0.066   (generator's noise floor: 92.2%, 0.061)
//   per-channel kv8  95.7%,       0.046          (noise floor 97.3%, 0.048)
//   g128 kv4         96.1%,       0.036          (noise floor 98.8%, 0.022)
//   g128 kv8         98.8%,       0.014          (noise floor 98.8%, 0.009)
// Position 0 (no KV read at all) already differs by 0.049 (per-channel) / 0.015 (g128), so the
// gap is in the linear/A8 path, not the KV cache; not yet located (docs/checkpoints.md).
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

namespace qserve {
namespace {

std::string reference_dir() {
  const char* d = std::getenv("QSERVE_REFERENCE_DIR");
  return d ? std::string(d) : std::string();
}

struct Case {
  const char* zoo;     // folder under QSERVE_REFERENCE_DIR
  const char* logits;  // reference logits file
  WeightPrecision wp;  // expected detected precision
  KvPrecision kv;      // KV4: the default for W4A8; KV8: requested through LoadOptions
  double min_top1;     // thresholds: measured values with margin (docs/checkpoints.md)
  double max_rel_l2;
};

class ZooCheckpoint : public ::testing::TestWithParam<Case> {};

TEST_P(ZooCheckpoint, LogitsMatchReference) {
  const std::string ref = reference_dir();
  if (ref.empty()) GTEST_SKIP() << "set QSERVE_REFERENCE_DIR to the qserve_reference output";
  const Case c = GetParam();
  const std::string dir = ref + "/" + c.zoo;
  ASSERT_EQ(detect_qserve_checkpoint(dir), c.wp);
  LoadOptions opts;  // weights W16A16 = "as stored"; a quantized KV part overrides the default
  if (c.kv != KvPrecision::kKv4) opts.precision.kv = c.kv;
  auto m = LlamaModel::load(dir, opts);
  EXPECT_EQ(m->precision().weights, c.wp);
  EXPECT_EQ(m->precision().kv, c.kv);

  auto f = SafetensorsFile::open(ref + "/" + c.logits);
  const Tensor ids = f->get("input_ids");
  const Tensor want = f->get("logits");
  const int64_t B = ids.dim(0), T = ids.dim(1), V = want.dim(2);
  ASSERT_EQ(V, m->config().vocab_size);
  int64_t agree = 0;
  double num = 0.0, den = 0.0, num0 = 0.0, den0 = 0.0;  // *0: position 0 only (no KV read)
  for (int64_t b = 0; b < B; ++b) {
    const int32_t* row = ids.data<int32_t>() + b * T;
    KvCache cache = m->make_cache(1, T);
    for (int64_t t = 0; t < T; ++t) {
      SeqSpan s{0, 1, t, 0};
      const std::vector<float> got = m->forward(std::span<const int32_t>(row + t, 1), {&s, 1},
                                                cache, LogitsMode::LastPerSequence);
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
      agree += ag == ar;
    }
  }
  const double top1 = static_cast<double>(agree) / static_cast<double>(B * T);
  const double rel = std::sqrt(num / den);
  std::printf("[zoo %s kv%d] top-1 agreement %.4f (%lld/%lld), rel L2 %.5f (position 0: %.5f)\n",
              c.zoo, static_cast<int>(c.kv), top1, static_cast<long long>(agree),
              static_cast<long long>(B * T), rel, std::sqrt(num0 / den0));
  EXPECT_GE(top1, c.min_top1);
  EXPECT_LE(rel, c.max_rel_l2);
}

INSTANTIATE_TEST_SUITE_P(
    Reference, ZooCheckpoint,
    ::testing::Values(Case{"w4a8-per-channel", "reference_logits_per-channel_w4a8kv4.safetensors",
                           WeightPrecision::kW4A8PerChannel, KvPrecision::kKv4, 0.88, 0.09},
                      Case{"w4a8-per-channel", "reference_logits_per-channel_w4a8kv8.safetensors",
                           WeightPrecision::kW4A8PerChannel, KvPrecision::kKv8, 0.92, 0.07},
                      Case{"w4a8-g128", "reference_logits_g128_w4a8kv4.safetensors",
                           WeightPrecision::kW4A8G128, KvPrecision::kKv4, 0.93, 0.05},
                      Case{"w4a8-g128", "reference_logits_g128_w4a8kv8.safetensors",
                           WeightPrecision::kW4A8G128, KvPrecision::kKv8, 0.96, 0.025}),
    [](const auto& param_info) {
      return std::string(param_info.param.wp == WeightPrecision::kW4A8G128 ? "g128_kv"
                                                                           : "per_channel_kv") +
             std::to_string(static_cast<int>(param_info.param.kv));
    });

}  // namespace
}  // namespace qserve
