// Causal GQA attention over the KV cache for a varlen batch, in the order HF's eager attention
// computes it: S = (Q K^T) * scale, softmax(S) in fp32 with max subtraction, O = P V.
//
// Work items are (sequence, query head, block of up to kRowBlock query rows). An item computes
// the rectangle of scores between its rows and the union of their key ranges with the blocked
// GEMM kernels, then zeroes the probabilities outside each row's own causal / sliding window
// range before P V, so masked keys contribute exactly nothing.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backend/cpu/gemm_kernels.h"
#include "backend/cpu/ops_cpu.h"
#include "backend/cpu/vec_math.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace qserve::cpu {

namespace {

// Query rows per work item: enough to amortise streaming the keys and values through L2, few
// enough that a 512-token prefill still gives every core dozens of items. A multiple of the
// AVX2 microkernels' 4 (Q K^T) and 6 (P V) rows, so no partial row panels inside a block.
constexpr int64_t kRowBlock = 24;

struct Item {
  int64_t seq;
  int64_t head;
  int64_t row0;  // first query row within the sequence's new tokens
  int64_t rows;
  int64_t key_lo;  // first key position any of the rows sees
  int64_t keys;    // key_lo .. key_lo + keys - 1
};

// First key position visible from query position `pos`.
int64_t first_key(int64_t pos, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
}

void validate(const KVCacheF32& cache, int64_t layer, std::span<const SeqSpan> seqs,
              int64_t heads) {
  validate_spans(cache, layer, seqs, "attention");
  check(heads > 0 && cache.kv_heads > 0 && heads % cache.kv_heads == 0,
        "attention: " + std::to_string(heads) + " query heads are not a multiple of the cache's " +
            std::to_string(cache.kv_heads) + " KV heads");
}

}  // namespace

void attention(const float* q, const KVCacheF32& cache, int64_t layer,
               std::span<const SeqSpan> seqs, int64_t heads, int64_t window, float* out) {
  validate(cache, layer, seqs, heads);
  const int64_t hd = cache.head_dim;
  const int64_t kvh = cache.kv_heads;
  const int64_t group = heads / kvh;
  const int64_t q_stride = heads * hd;  // between tokens in q and out
  const int64_t kv_stride = kvh * hd;   // between positions in the cache
  // HF multiplies by head_dim ** -0.5, a Python double rounded to fp32.
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));

  std::vector<Item> items;
  for (int64_t si = 0; si < static_cast<int64_t>(seqs.size()); ++si) {
    const SeqSpan& s = seqs[static_cast<size_t>(si)];
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t r0 = 0; r0 < s.num_tokens; r0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, s.num_tokens - r0);
        const int64_t lo = first_key(s.context_len + r0, window);
        const int64_t hi = s.context_len + r0 + rows - 1;
        items.push_back({si, h, r0, rows, lo, hi - lo + 1});
      }
    }
  }
  // Longest first, so the chunks handed out last are the cheap ones.
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.keys > b.keys; });

  ThreadPool::global().parallel_for(
      static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> scores;
        for (int64_t it = begin; it < end; ++it) {
          const Item& w = items[static_cast<size_t>(it)];
          const SeqSpan& s = seqs[static_cast<size_t>(w.seq)];
          const int64_t g = w.head / group;
          const float* qi = q + (s.token_offset + w.row0) * q_stride + w.head * hd;
          float* oi = out + (s.token_offset + w.row0) * q_stride + w.head * hd;
          const float* k = cache.k_at(layer, s.kv_slot, w.key_lo) + g * hd;
          const float* v = cache.v_at(layer, s.kv_slot, w.key_lo) + g * hd;
          scores.resize(static_cast<size_t>(w.rows * w.keys));
          float* p = scores.data();

          detail::gemm_nt_serial(qi, q_stride, k, kv_stride, p, w.keys, w.rows, w.keys, hd, false);
          for (int64_t r = 0; r < w.rows; ++r) {
            const int64_t pos = s.context_len + w.row0 + r;
            detail::softmax_row(p + r * w.keys, w.keys, first_key(pos, window) - w.key_lo,
                                pos - w.key_lo, scale);
          }
          detail::gemm_nn_serial(p, w.keys, v, kv_stride, oi, q_stride, w.rows, hd, w.keys, false);
        }
      });
}

}  // namespace qserve::cpu
