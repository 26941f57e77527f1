// Random-weight models with real shapes, so benchmarks and tests run without a download.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/llama_model.h"
#include "quant/weights.h"

namespace qserve {

namespace {

uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// n normal values drawn in 64Ki-element chunks, each from its own generator seeded by
// (seed, chunk), on the thread pool: an 8B model's weights are ~8e9 draws, minutes on one core.
// The values depend only on seed and n, never on the thread count.
std::vector<float> random_vec(uint64_t seed, int64_t n, float stddev) {
  constexpr int64_t kChunk = 1 << 16;
  std::vector<float> v(static_cast<size_t>(n));
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  ThreadPool::global().parallel_for(chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      std::mt19937_64 rng(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(c))));
      std::normal_distribution<float> dist(0.0f, stddev);
      const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
      for (int64_t i = lo; i < hi; ++i) v[static_cast<size_t>(i)] = dist(rng);
    }
  });
  return v;
}

// Each tensor gets its own seed from the model's generator, in a fixed order.
cpu::LinearF32 random_linear(std::mt19937_64& rng, int64_t n, int64_t k, bool bias) {
  cpu::LinearF32 l;
  l.n = n;
  l.k = k;
  // 1/sqrt(k) keeps activations at unit scale through the residual stream.
  l.w = random_vec(rng(), n * k, 1.0f / std::sqrt(static_cast<float>(k)));
  if (bias) l.bias = random_vec(rng(), n, 0.02f);
  return l;
}

}  // namespace

std::unique_ptr<LlamaModel> LlamaModel::synthetic(const ModelConfig& cfg, uint64_t seed,
                                                  const LoadOptions& opts) {
  std::mt19937_64 rng(seed);
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  LlamaWeights w;
  w.embed = random_vec(rng(), V * H, 1.0f);
  w.layers.resize(static_cast<size_t>(cfg.num_layers));
  // Each linear is quantized right after it is drawn, so the fp32 copy of only one exists at a
  // time. The random stream does not depend on the precision: every precision of one seed
  // quantizes the same fp32 weights.
  const WeightPrecision wp = opts.precision.weights;
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& L = w.layers[l];
    const std::string p = "synthetic layer " + std::to_string(l);
    L.input_norm.assign(static_cast<size_t>(H), 1.0f);
    L.post_norm.assign(static_cast<size_t>(H), 1.0f);
    L.qkv = Linear::quantize(random_linear(rng, cfg.q_dim() + 2 * cfg.kv_dim(), H, cfg.qkv_bias),
                             wp, p + " qkv_proj");
    L.o = Linear::quantize(random_linear(rng, H, cfg.q_dim(), cfg.o_bias), wp, p + " o_proj");
    L.gate_up =
        Linear::quantize(random_linear(rng, 2 * I, H, cfg.mlp_bias), wp, p + " gate_up_proj");
    L.down = Linear::quantize(random_linear(rng, H, I, cfg.mlp_bias), wp, p + " down_proj");
  }
  w.final_norm.assign(static_cast<size_t>(H), 1.0f);
  if (cfg.tie_word_embeddings) {
    w.lm_head.n = V;
    w.lm_head.k = H;
    w.lm_head.w = w.embed;
  } else {
    w.lm_head = random_linear(rng, V, H, false);
  }
  return std::unique_ptr<LlamaModel>(new LlamaModel(cfg, std::move(w), opts));
}

std::unique_ptr<LlamaModel> LlamaModel::synthetic_on_device(const ModelConfig& cfg, uint64_t seed,
                                                            const LoadOptions& opts) {
  // Refuse here what synthetic() would refuse while quantizing, not later on the device.
  if (opts.precision.weights == WeightPrecision::kW4A8G128) {
    for (const int64_t k : {cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size}) {
      check(k % quant::kGroupSize == 0,
            "synthetic model: W4A8 g128 needs in_features divisible by " +
                std::to_string(quant::kGroupSize) + ", got " + std::to_string(k) +
                " (use per-channel W4A8, e.g. w4a8kv4)");
    }
  }
  LlamaWeights w;
  w.device_seed = seed;
  return std::unique_ptr<LlamaModel>(new LlamaModel(cfg, std::move(w), opts));
}

}  // namespace qserve
