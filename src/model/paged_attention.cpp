// Paged KV4/KV8 append and attention for one layer of a varlen batch, on the quant references.
#include "model/paged_attention.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/attention_ref.h"

namespace qserve {

void round_to_fp16(float* x, int64_t n, uint16_t* bits) {
  for (int64_t i = 0; i < n; ++i) {
    bits[i] = float_to_fp16(x[i]);
    x[i] = fp16_to_float(bits[i]);
  }
}

void paged_attention_step(const float* q, const float* k, const float* v, const uint16_t* k16,
                          const uint16_t* v16, PagedKvCache& cache, int64_t layer,
                          std::span<const SeqSpan> seqs, int64_t heads, int64_t head_dim,
                          int64_t window, float* out) {
  quant::KvPagePool& pool = cache.pool(layer);
  const int64_t kvh = pool.layout.kv_heads, d = head_dim;
  check(pool.layout.head_dim == d, "paged attention: head_dim does not match the cache");
  const int64_t kvd = kvh * d, qd = heads * d;

  std::vector<float> keys, vals;
  for (const SeqSpan& s : seqs) {
    const std::span<const int64_t> table = cache.page_table(s.kv_slot);
    const int64_t ctx = s.context_len, n = s.num_tokens, total = ctx + n;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t row = s.token_offset + j;
      quant::kv_append(pool, table, ctx + j, k16 + row * kvd, v16 + row * kvd);
    }
    const float* qs = q + s.token_offset * qd;
    float* os = out + s.token_offset * qd;
    // The window binds when the last query cannot see position 0.
    const bool windowed = window > 0 && total > window;

    if (n == 1 && ctx > 0 && !windowed) {
      // Decode: the past from the pages, the current token from registers (QServe §7.3).
      quant::decode_attention_paged(pool.view(), table, total, qs, heads, k + s.token_offset * kvd,
                                    v + s.token_offset * kvd, os);
      continue;
    }
    // Prefill chunk (or a windowed decode): dequantized context, then this chunk unquantized.
    keys.resize(static_cast<size_t>(total * kvd));
    vals.resize(static_cast<size_t>(total * kvd));
    if (ctx > 0) quant::kv_gather(pool.view(), table, ctx, keys.data(), vals.data());
    std::memcpy(keys.data() + ctx * kvd, k + s.token_offset * kvd, n * kvd * sizeof(float));
    std::memcpy(vals.data() + ctx * kvd, v + s.token_offset * kvd, n * kvd * sizeof(float));
    if (!windowed) {
      quant::attention_unquantized(qs, n, keys.data(), vals.data(), total, heads, kvh, d, ctx, os);
      continue;
    }
    // Sliding window: query j (position p) sees positions max(0, p - window + 1) .. p, so give
    // it the K/V from its first visible position on.
    for (int64_t j = 0; j < n; ++j) {
      const int64_t p = ctx + j, lo = std::max<int64_t>(0, p - window + 1);
      quant::attention_unquantized(qs + j * qd, 1, keys.data() + lo * kvd, vals.data() + lo * kvd,
                                   p - lo + 1, heads, kvh, d, p - lo, os + j * qd);
    }
  }
}

}  // namespace qserve
