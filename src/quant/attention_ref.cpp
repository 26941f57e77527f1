#include "quant/attention_ref.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

// QServe computes 1/sqrt(D) on the host and passes it as an fp32 constant.
float softmax_scale(int64_t head_dim) {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

// out[D] = softmax(scale * q·k_j) · v_j over the n rows of k/v (row stride `stride` floats).
void attend_one(const float* q, const float* k, const float* v, int64_t n, int64_t stride,
                int64_t d, float scale, std::vector<float>& scores, float* out) {
  scores.resize(static_cast<size_t>(n));
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    float dot = 0.0f;
    for (int64_t c = 0; c < d; ++c) dot += q[c] * k[j * stride + c];
    scores[static_cast<size_t>(j)] = dot * scale;
    m = std::max(m, scores[static_cast<size_t>(j)]);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    float& e = scores[static_cast<size_t>(j)];
    e = std::exp(e - m);
    sum += e;
  }
  const float inv = 1.0f / sum;
  std::fill(out, out + d, 0.0f);
  for (int64_t j = 0; j < n; ++j) {
    const float p = scores[static_cast<size_t>(j)] * inv;
    for (int64_t c = 0; c < d; ++c) out[c] += p * v[j * stride + c];
  }
}

void check_heads(int64_t num_heads, int64_t kv_heads) {
  check(num_heads > 0 && kv_heads > 0 && num_heads % kv_heads == 0,
        "attention: num_heads " + std::to_string(num_heads) +
            " is not a positive multiple of kv_heads " + std::to_string(kv_heads));
}

}  // namespace

void decode_attention_paged(const KvPagesView& kv, std::span<const int64_t> page_table,
                            int64_t context_len, const float* q, int64_t num_heads,
                            const float* cur_k, const float* cur_v, float* out) {
  const KvPageLayout& L = kv.layout;
  const int64_t hkv = L.kv_heads, d = L.head_dim;
  check_heads(num_heads, hkv);
  check((cur_k == nullptr) == (cur_v == nullptr),
        "decode_attention_paged: give both cur_k and cur_v or neither");
  check(context_len >= 1, "decode_attention_paged: context_len must be >= 1");
  const int64_t cached = cur_k != nullptr ? context_len - 1 : context_len;
  const int64_t pages_needed = (cached + kKvPageTokens - 1) / kKvPageTokens;
  check(pages_needed <= static_cast<int64_t>(page_table.size()),
        "decode_attention_paged: " + std::to_string(cached) + " cached tokens need " +
            std::to_string(pages_needed) + " pages, the page table has " +
            std::to_string(page_table.size()));
  for (int64_t i = 0; i < pages_needed; ++i) {
    const int64_t p = page_table[static_cast<size_t>(i)];
    check(p >= 0 && p < kv.num_pages,
          "decode_attention_paged: page " + std::to_string(p) + " is outside the pool");
  }
  const int64_t group = num_heads / hkv;
  const float scale = softmax_scale(d);

  // One task per KV head: dequantize its K/V once, then serve the query heads of its group.
  ThreadPool::global().parallel_for(hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> keys(static_cast<size_t>(context_len * d));
    std::vector<float> vals(static_cast<size_t>(context_len * d));
    std::vector<uint16_t> row(static_cast<size_t>(d));
    std::vector<float> scores;
    for (int64_t h = begin; h < end; ++h) {
      for (int64_t pos = 0; pos < cached; ++pos) {
        const int64_t page = page_table[static_cast<size_t>(pos / kKvPageTokens)];
        const int64_t slot = pos % kKvPageTokens;
        kv_page_read(L, kv.k_pool + page * L.page_bytes(), slot, h, row.data());
        for (int64_t c = 0; c < d; ++c) keys[pos * d + c] = f16_to_f32(row[c]);
        kv_page_read(L, kv.v_pool + page * L.page_bytes(), slot, h, row.data());
        for (int64_t c = 0; c < d; ++c) vals[pos * d + c] = f16_to_f32(row[c]);
      }
      if (cur_k != nullptr) {
        std::copy(cur_k + h * d, cur_k + (h + 1) * d, keys.begin() + cached * d);
        std::copy(cur_v + h * d, cur_v + (h + 1) * d, vals.begin() + cached * d);
      }
      for (int64_t qh = h * group; qh < (h + 1) * group; ++qh) {
        attend_one(q + qh * d, keys.data(), vals.data(), context_len, d, d, scale, scores,
                   out + qh * d);
      }
    }
  });
}

void attention_unquantized(const float* q, int64_t t, const float* k, const float* v, int64_t s,
                           int64_t num_heads, int64_t kv_heads, int64_t head_dim, int64_t q_pos0,
                           float* out) {
  check_heads(num_heads, kv_heads);
  check(t >= 0 && head_dim > 0 && q_pos0 >= 0 && s >= q_pos0 + t,
        "attention_unquantized: need s >= q_pos0 + t keys");
  const int64_t group = num_heads / kv_heads;
  const int64_t d = head_dim;
  const float scale = softmax_scale(d);
  ThreadPool::global().parallel_for(t * num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t i = idx / num_heads, h = idx % num_heads, hk = h / group;
      attend_one(q + (i * num_heads + h) * d, k + hk * d, v + hk * d, q_pos0 + i + 1, kv_heads * d,
                 d, scale, scores, out + (i * num_heads + h) * d);
    }
  });
}

}  // namespace qserve::quant
