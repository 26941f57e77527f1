// Page bookkeeping of the paged KV cache: one pool per layer, a page list per slot.
#include "model/kv_cache.h"

#include <string>

#include "core/error.h"

namespace qserve {

PagedKvCache::PagedKvCache(quant::KvBits bits, int64_t layers, int64_t slots, int64_t max_len,
                           int64_t kv_heads, int64_t head_dim)
    : bits_(bits), max_len_(max_len) {
  check(layers > 0 && slots > 0 && max_len > 0,
        "PagedKvCache: layers, slots and max_len must be positive, got " + std::to_string(layers) +
            ", " + std::to_string(slots) + ", " + std::to_string(max_len));
  const quant::KvPageLayout layout = quant::make_kv_layout(bits, kv_heads, head_dim);
  const int64_t pages_per_slot = (max_len + quant::kKvPageTokens - 1) / quant::kKvPageTokens;
  const int64_t pages = pages_per_slot * slots;
  pools_.reserve(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) pools_.emplace_back(layout, pages);
  tables_.resize(static_cast<size_t>(slots));
  // Hand out low page indices first (a stack popped from the back).
  free_.reserve(static_cast<size_t>(pages));
  for (int64_t p = pages - 1; p >= 0; --p) free_.push_back(p);
}

PagedKvCache PagedKvCache::with_external_pages(quant::KvBits bits, int64_t layers,
                                               int64_t num_pages, int64_t slots, int64_t max_len,
                                               int64_t kv_heads, int64_t head_dim) {
  check(num_pages > 0, "PagedKvCache: the pool needs at least one page");
  // Build a one-slot cache of the right geometry, then give it the requested pool.
  PagedKvCache c(bits, layers, 1, 1, kv_heads, head_dim);
  const quant::KvPageLayout layout = quant::make_kv_layout(bits, kv_heads, head_dim);
  c.pools_.clear();
  for (int64_t l = 0; l < layers; ++l) c.pools_.emplace_back(layout, num_pages);
  check(slots > 0 && max_len > 0, "PagedKvCache: slots and max_len must be positive");
  c.tables_.assign(static_cast<size_t>(slots), {});
  c.max_len_ = max_len;
  c.free_.clear();
  c.external_ = true;
  return c;
}

int64_t PagedKvCache::num_pages() const { return pools_.front().num_pages; }

void PagedKvCache::set_page_table(int64_t slot, std::span<const int32_t> pages) {
  check(external_, "PagedKvCache: set_page_table needs a cache with external pages");
  check(slot >= 0 && slot < slots(), "PagedKvCache: slot " + std::to_string(slot) +
                                         " outside the cache's " + std::to_string(slots()) +
                                         " slots");
  std::vector<int64_t>& table = tables_[static_cast<size_t>(slot)];
  table.clear();
  for (int32_t p : pages) {
    check(p >= 0 && p < num_pages(), "PagedKvCache: page " + std::to_string(p) +
                                         " outside the pool of " + std::to_string(num_pages()));
    table.push_back(p);
  }
}

void PagedKvCache::reserve(int64_t slot, int64_t n_tokens) {
  check(slot >= 0 && slot < slots(), "PagedKvCache: slot " + std::to_string(slot) +
                                         " outside the cache's " + std::to_string(slots()) +
                                         " slots");
  check(n_tokens <= max_len_, "PagedKvCache: " + std::to_string(n_tokens) +
                                  " tokens exceed the cache length " + std::to_string(max_len_));
  std::vector<int64_t>& table = tables_[static_cast<size_t>(slot)];
  const size_t need =
      static_cast<size_t>((n_tokens + quant::kKvPageTokens - 1) / quant::kKvPageTokens);
  if (external_) {
    check(table.size() >= need, "PagedKvCache: the page table of slot " + std::to_string(slot) +
                                    " covers " + std::to_string(table.size()) + " pages; " +
                                    std::to_string(need) + " are needed");
    return;
  }
  while (table.size() < need) {
    check(!free_.empty(), "PagedKvCache: out of KV pages");
    table.push_back(free_.back());
    free_.pop_back();
  }
}

void PagedKvCache::release(int64_t slot) {
  check(slot >= 0 && slot < slots(), "PagedKvCache: slot " + std::to_string(slot) +
                                         " outside the cache's " + std::to_string(slots()) +
                                         " slots");
  std::vector<int64_t>& table = tables_[static_cast<size_t>(slot)];
  // With external pages the owner (BlockManager) frees them; only forget the table.
  if (!external_) {
    for (auto it = table.rbegin(); it != table.rend(); ++it) free_.push_back(*it);
  }
  table.clear();
}

std::span<const int64_t> PagedKvCache::page_table(int64_t slot) const {
  return tables_.at(static_cast<size_t>(slot));
}

int64_t KvCache::slots() const {
  if (const cpu::KVCacheF32* c = f32()) return c->slots;
  return paged()->slots();
}

int64_t KvCache::max_len() const {
  if (const cpu::KVCacheF32* c = f32()) return c->max_len;
  return paged()->max_len();
}

KvPrecision KvCache::precision() const {
  if (f32() != nullptr) return KvPrecision::kKv16;
  return paged()->bits() == quant::KvBits::k8 ? KvPrecision::kKv8 : KvPrecision::kKv4;
}

}  // namespace qserve
