#include "quant/qserve_decode_attention.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/block_reduce.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

constexpr int64_t kD = kQServeDecodeHeadDim;
constexpr int64_t kBlockThreads = 256;      // QServe always launches 256 threads (§7.3)
constexpr int64_t kThreadsPerKey = kD / 8;  // 16 threads of 8 channels per cached key
constexpr int64_t kCurThreads = kD / 4;     // 32 threads of 4 channels for the current token
constexpr int64_t kGroups = kBlockThreads / kThreadsPerKey;  // 16 P*V time groups

// XOR butterfly over n lanes (a power of two): lane 0's total, the pairing of qserve-compat §5.5.
template <size_t N>
float butterfly(std::array<float, N> v) {
  for (size_t m = N / 2; m >= 1; m /= 2) {
    for (size_t i = 0; i < m; ++i) v[i] = v[i] + v[i + m];
  }
  return v[0];
}

// exp correctly rounded to fp32 (see the header: the kernel's __expf is not reproducible).
float exp_rn(float x) {
  return static_cast<float>(std::exp(static_cast<double>(x)));
}

// Score of one cached key: fp16 partial dots per thread, fp32 butterfly over 16 threads.
float cached_dot(const uint16_t* q, const uint16_t* k, KvBits bits) {
  std::array<float, kThreadsPerKey> part{};
  for (int64_t i = 0; i < kThreadsPerKey; ++i) {
    const uint16_t* qi = q + 8 * i;
    const uint16_t* ki = k + 8 * i;
    std::array<uint16_t, 2> lane{};
    for (int l = 0; l < 2; ++l) {
      // KV4: lane l = channels 4l .. 4l+3; KV8: lane l = channels l, l+2, l+4, l+6.
      auto ch = [&](int step) { return bits == KvBits::k4 ? 4 * l + step : l + 2 * step; };
      uint16_t acc = f16_mul(qi[ch(0)], ki[ch(0)]);
      for (int step = 1; step < 4; ++step) acc = f16_fma(qi[ch(step)], ki[ch(step)], acc);
      lane[static_cast<size_t>(l)] = acc;
    }
    part[static_cast<size_t>(i)] = f16_to_f32(f16_add(lane[0], lane[1]));
  }
  return butterfly(part);
}

// Score of the current token: fp32 per-thread dots of 4 channels, butterfly over 32 threads.
float current_dot(const float* q, const float* k) {
  std::array<float, kCurThreads> part{};
  for (int64_t j = 0; j < kCurThreads; ++j) {
    float acc = q[4 * j] * k[4 * j];
    for (int64_t c = 1; c < 4; ++c) acc = std::fma(q[4 * j + c], k[4 * j + c], acc);
    part[static_cast<size_t>(j)] = acc;
  }
  return butterfly(part);
}

}  // namespace

void decode_attention_qserve(const KvPagesView& kv, std::span<const int64_t> page_table,
                             int64_t context_len, const float* q, int64_t num_heads,
                             const float* cur_k, const float* cur_v, float* out) {
  const KvPageLayout& L = kv.layout;
  const int64_t hkv = L.kv_heads;
  check(L.head_dim == kD, "decode_attention_qserve: QServe's decode kernel needs head_dim " +
                              std::to_string(kD) + ", got " + std::to_string(L.head_dim));
  check(num_heads > 0 && num_heads % hkv == 0,
        "decode_attention_qserve: num_heads " + std::to_string(num_heads) +
            " is not a positive multiple of kv_heads " + std::to_string(hkv));
  check(context_len >= 1, "decode_attention_qserve: context_len must be >= 1");
  const int64_t cached = context_len - 1;
  const int64_t pages_needed = (cached + kKvPageTokens - 1) / kKvPageTokens;
  check(pages_needed <= static_cast<int64_t>(page_table.size()),
        "decode_attention_qserve: " + std::to_string(cached) + " cached tokens need " +
            std::to_string(pages_needed) + " pages, the page table has " +
            std::to_string(page_table.size()));
  for (int64_t i = 0; i < pages_needed; ++i) {
    const int64_t p = page_table[static_cast<size_t>(i)];
    check(p >= 0 && p < kv.num_pages,
          "decode_attention_qserve: page " + std::to_string(p) + " is outside the pool");
  }
  const int64_t group = num_heads / hkv;
  // The host computes 1/sqrt(D) in fp32 and passes it to the kernel.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(kD)));

  ThreadPool::global().parallel_for(hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> keys(static_cast<size_t>(cached * kD));
    std::vector<uint16_t> vals(static_cast<size_t>(cached * kD));
    std::vector<float> scores(static_cast<size_t>(context_len));
    std::vector<float> probs(static_cast<size_t>(context_len));
    std::vector<float> acc(static_cast<size_t>(kGroups * kD));
    std::array<float, kBlockThreads> partials{};
    std::array<uint16_t, kD> q16{};
    for (int64_t h = begin; h < end; ++h) {
      for (int64_t pos = 0; pos < cached; ++pos) {
        const int64_t page = page_table[static_cast<size_t>(pos / kKvPageTokens)];
        const int64_t slot = pos % kKvPageTokens;
        kv_page_read(L, kv.k_pool + page * L.page_bytes(), slot, h, keys.data() + pos * kD);
        kv_page_read(L, kv.v_pool + page * L.page_bytes(), slot, h, vals.data() + pos * kD);
      }
      const float* ck = cur_k + h * kD;
      const float* cv = cur_v + h * kD;
      for (int64_t qh = h * group; qh < (h + 1) * group; ++qh) {
        const float* qv = q + qh * kD;
        for (int64_t c = 0; c < kD; ++c) q16[static_cast<size_t>(c)] = f32_to_f16(qv[c]);
        // Scores: cached positions, then the current token at index `cached`.
        float m = -INFINITY;
        for (int64_t t = 0; t <= cached; ++t) {
          const float s = t < cached ? cached_dot(q16.data(), keys.data() + t * kD, L.bits) * scale
                                     : current_dot(qv, ck) * scale;
          scores[static_cast<size_t>(t)] = s;
          m = std::max(m, s);
        }
        partials.fill(0.0f);
        for (int64_t t = 0; t <= cached; ++t) {
          const float e = exp_rn(scores[static_cast<size_t>(t)] - m);
          scores[static_cast<size_t>(t)] = e;
          partials[static_cast<size_t>(t % kBlockThreads)] += e;
        }
        const float r = 1.0f / (block_reduce_sum(partials) + 1e-6f);
        for (int64_t t = 0; t <= cached; ++t) {
          probs[static_cast<size_t>(t)] =
              f16_to_f32(f32_to_f16(scores[static_cast<size_t>(t)] * r));
        }
        // P*V per time group, then the fp16 halving tree.
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t t = 0; t <= cached; ++t) {
          float* o = acc.data() + (t % kGroups) * kD;
          const float p = probs[static_cast<size_t>(t)];
          if (t < cached) {
            const uint16_t* v = vals.data() + t * kD;
            for (int64_t c = 0; c < kD; ++c) o[c] = std::fma(p, f16_to_f32(v[c]), o[c]);
          } else {
            for (int64_t c = 0; c < kD; ++c) o[c] = std::fma(p, cv[c], o[c]);
          }
        }
        for (int64_t active = kGroups; active > 1; active /= 2) {
          const int64_t mid = active / 2;
          for (int64_t g = 0; g < mid; ++g) {
            float* lo = acc.data() + g * kD;
            const float* hi = acc.data() + (g + mid) * kD;
            for (int64_t c = 0; c < kD; ++c) lo[c] = lo[c] + f16_to_f32(f32_to_f16(hi[c]));
          }
        }
        float* o = out + qh * kD;
        for (int64_t c = 0; c < kD; ++c) o[c] = f16_to_f32(f32_to_f16(acc[static_cast<size_t>(c)]));
      }
    }
  });
}

}  // namespace qserve::quant
