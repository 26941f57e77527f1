// Rotary embeddings, numerically following HF Llama: inv_freq in fp32 from
// _compute_default_rope_parameters (plus linear / llama3 scaling), the angle pos * inv_freq as
// one fp32 product, cos/sin in fp32, and the rotate_half (NeoX) pairing of i with i + d/2.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "core/thread_pool.h"

// HF computes q*cos + rotate_half(q)*sin as separately rounded products and a sum; keep the
// compiler from fusing them into FMAs when built for an FMA target (-march=native).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace qserve::cpu {

namespace {

// HF _compute_llama3_parameters, step by step in fp32 as torch evaluates it (python scalars
// meeting a float32 tensor are rounded to float32; `s / t` is reciprocal(t) * s).
float llama3_scale(float inv, const RopeScaling& rs) {
  const float factor = static_cast<float>(rs.factor);
  const float low = static_cast<float>(rs.low_freq_factor);
  const float high = static_cast<float>(rs.high_freq_factor);
  const float old_ctx = static_cast<float>(rs.original_max_position_embeddings);
  const float low_freq_wavelen = static_cast<float>(
      static_cast<double>(rs.original_max_position_embeddings) / rs.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(
      static_cast<double>(rs.original_max_position_embeddings) / rs.high_freq_factor);

  const float wavelen = (1.0f / inv) * static_cast<float>(2.0 * std::numbers::pi);
  if (wavelen < high_freq_wavelen) return inv;          // high frequency: unchanged
  if (wavelen > low_freq_wavelen) return inv / factor;  // low frequency: fully interpolated
  // Medium: blend linearly in 1/wavelen between the two.
  const float smooth = ((1.0f / wavelen) * old_ctx - low) / (high - low);
  return (1.0f - smooth) * inv / factor + smooth * inv;
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int64_t d = cfg.head_dim;
  check(d > 0 && d % 2 == 0,
        "rope_inv_freq: head_dim must be positive and even, got " + std::to_string(d));
  check(cfg.rope_theta > 0.0, "rope_inv_freq: rope_theta must be positive");
  const RopeScaling& rs = cfg.rope_scaling;
  if (rs.type != RopeScaling::Type::None) {
    check(rs.factor > 0.0, "rope_inv_freq: rope_scaling factor must be positive");
  }
  if (rs.type == RopeScaling::Type::Llama3) {
    check(rs.high_freq_factor > rs.low_freq_factor && rs.low_freq_factor > 0.0 &&
              rs.original_max_position_embeddings > 0,
          "rope_inv_freq: llama3 rope_scaling needs high_freq_factor > low_freq_factor > 0 and "
          "original_max_position_embeddings > 0");
  }

  const float base = static_cast<float>(cfg.rope_theta);
  std::vector<float> inv(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    // 1 / base^(arange(0, d, 2) / d), each step in fp32.
    const float e = static_cast<float>(2 * i) / static_cast<float>(d);
    float f = 1.0f / std::pow(base, e);
    switch (rs.type) {
      case RopeScaling::Type::None:
        break;
      case RopeScaling::Type::Linear:
        f = f / static_cast<float>(rs.factor);
        break;
      case RopeScaling::Type::Llama3:
        f = llama3_scale(f, rs);
        break;
    }
    inv[static_cast<size_t>(i)] = f;
  }
  return inv;
}

void rope(float* x, const int64_t* positions, int64_t t, int64_t heads, int64_t head_dim,
          std::span<const float> inv_freq) {
  check(head_dim > 0 && head_dim % 2 == 0,
        "rope: head_dim must be positive and even, got " + std::to_string(head_dim));
  const int64_t half = head_dim / 2;
  check(static_cast<int64_t>(inv_freq.size()) == half,
        "rope: " + std::to_string(inv_freq.size()) + " inverse frequencies for head_dim " +
            std::to_string(head_dim) + " (expected " + std::to_string(half) + ")");
  if (t <= 0 || heads <= 0) return;

  // cos/sin are computed once per token and shared by all its heads.
  const int64_t grain = std::max<int64_t>(1, 256 / half);
  ThreadPool::global().parallel_for(t, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> cs(static_cast<size_t>(2 * half));
    float* cosv = cs.data();
    float* sinv = cs.data() + half;
    for (int64_t r = begin; r < end; ++r) {
      const float pos = static_cast<float>(positions[r]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = pos * inv_freq[static_cast<size_t>(i)];
        cosv[i] = std::cos(angle);
        sinv[i] = std::sin(angle);
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x + (r * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = v[i];
          const float x2 = v[i + half];
          v[i] = x1 * cosv[i] - x2 * sinv[i];
          v[i + half] = x2 * cosv[i] + x1 * sinv[i];
        }
      }
    }
  });
}

}  // namespace qserve::cpu
