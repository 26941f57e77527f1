// The contiguous fp32 KV cache and the append of a step's K/V rows. Every index that comes from
// a request (layer, slot, positions) is checked here so attention can trust the spans.
#include <cstring>
#include <limits>
#include <string>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"

namespace qserve::cpu {

void KVCacheF32::allocate(int64_t layers_, int64_t slots_, int64_t max_len_, int64_t kv_heads_,
                          int64_t head_dim_) {
  check(layers_ > 0 && slots_ > 0 && max_len_ > 0 && kv_heads_ > 0 && head_dim_ > 0,
        "KVCacheF32::allocate: every dimension must be positive, got layers=" +
            std::to_string(layers_) + " slots=" + std::to_string(slots_) +
            " max_len=" + std::to_string(max_len_) + " kv_heads=" + std::to_string(kv_heads_) +
            " head_dim=" + std::to_string(head_dim_));
  // Guard the size product against overflow before multiplying it out.
  const int64_t row = kv_heads_ * head_dim_;
  const int64_t limit = std::numeric_limits<int64_t>::max() / 4;
  check(row <= limit / max_len_ && row * max_len_ <= limit / slots_ &&
            row * max_len_ * slots_ <= limit / layers_,
        "KVCacheF32::allocate: cache size overflows");
  layers = layers_;
  slots = slots_;
  max_len = max_len_;
  kv_heads = kv_heads_;
  head_dim = head_dim_;
  const size_t n = static_cast<size_t>(layers * slots * max_len * row);
  k.assign(n, 0.0f);
  v.assign(n, 0.0f);
}

size_t KVCacheF32::offset(int64_t layer, int64_t slot, int64_t pos) const {
  check(layer >= 0 && layer < layers && slot >= 0 && slot < slots && pos >= 0 && pos < max_len,
        "KVCacheF32: (layer " + std::to_string(layer) + ", slot " + std::to_string(slot) +
            ", pos " + std::to_string(pos) + ") is outside the cache of " + std::to_string(layers) +
            " layers x " + std::to_string(slots) + " slots x " + std::to_string(max_len) +
            " positions");
  return static_cast<size_t>(((layer * slots + slot) * max_len + pos) * kv_heads * head_dim);
}

float* KVCacheF32::k_at(int64_t layer, int64_t slot, int64_t pos) {
  return k.data() + offset(layer, slot, pos);
}
float* KVCacheF32::v_at(int64_t layer, int64_t slot, int64_t pos) {
  return v.data() + offset(layer, slot, pos);
}
const float* KVCacheF32::k_at(int64_t layer, int64_t slot, int64_t pos) const {
  return k.data() + offset(layer, slot, pos);
}
const float* KVCacheF32::v_at(int64_t layer, int64_t slot, int64_t pos) const {
  return v.data() + offset(layer, slot, pos);
}

void validate_spans(const KVCacheF32& cache, int64_t layer, std::span<const SeqSpan> seqs,
                    const char* op) {
  const std::string name(op);
  check(layer >= 0 && layer < cache.layers, name + ": layer " + std::to_string(layer) +
                                                " outside the cache's " +
                                                std::to_string(cache.layers) + " layers");
  for (const SeqSpan& s : seqs) {
    check(s.kv_slot >= 0 && s.kv_slot < cache.slots,
          name + ": kv_slot " + std::to_string(s.kv_slot) + " outside the cache's " +
              std::to_string(cache.slots) + " slots");
    check(s.token_offset >= 0 && s.num_tokens >= 0 && s.context_len >= 0,
          name + ": negative token_offset, num_tokens or context_len");
    check(s.context_len + s.num_tokens <= cache.max_len,
          name + ": sequence in slot " + std::to_string(s.kv_slot) + " reaches " +
              std::to_string(s.context_len + s.num_tokens) + " tokens, more than the cache's " +
              std::to_string(cache.max_len));
  }
}

void kv_append(KVCacheF32& cache, int64_t layer, std::span<const SeqSpan> seqs, const float* k,
               const float* v) {
  // Validate all spans first so a bad request leaves the cache untouched.
  validate_spans(cache, layer, seqs, "kv_append");
  const int64_t row = cache.kv_heads * cache.head_dim;
  for (const SeqSpan& s : seqs) {
    if (s.num_tokens == 0) continue;
    // A sequence's positions are contiguous in the cache, so its chunk is one copy.
    const size_t bytes = static_cast<size_t>(s.num_tokens * row) * sizeof(float);
    std::memcpy(cache.k_at(layer, s.kv_slot, s.context_len), k + s.token_offset * row, bytes);
    std::memcpy(cache.v_at(layer, s.kv_slot, s.context_len), v + s.token_offset * row, bytes);
  }
}

}  // namespace qserve::cpu
