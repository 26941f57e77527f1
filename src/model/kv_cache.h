// The model's KV cache at any KV precision: the contiguous fp32 cache of the reference forward
// (KV16), or QServe's paged KV8/KV4 cache (quant/kv_cache.h) with 64-token pages.
//
// Paging here is deliberately simple: every layer has one quant::KvPagePool sized for all slots
// at max_len, and each slot owns a list of page indices (the same indices in every layer, as one
// QServe block table row serves all layers) that grows from a free list as its sequence grows.
// The engine's BlockManager will own allocation later; the forward only needs page tables.
#pragma once

#include <cstdint>
#include <span>
#include <variant>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "model/precision.h"
#include "quant/kv_cache.h"

namespace qserve {

class PagedKvCache {
 public:
  PagedKvCache(quant::KvBits bits, int64_t layers, int64_t slots, int64_t max_len, int64_t kv_heads,
               int64_t head_dim);
  // A pool of `num_pages` pages whose page tables are set from outside (the engine's
  // BlockManager) with set_page_table; reserve() then only checks that a table covers the step.
  static PagedKvCache with_external_pages(quant::KvBits bits, int64_t layers, int64_t num_pages,
                                          int64_t slots, int64_t max_len, int64_t kv_heads,
                                          int64_t head_dim);

  int64_t layers() const { return static_cast<int64_t>(pools_.size()); }
  int64_t slots() const { return static_cast<int64_t>(tables_.size()); }
  int64_t max_len() const { return max_len_; }
  quant::KvBits bits() const { return bits_; }

  // Grows `slot`'s page table until it covers positions 0 .. n_tokens - 1. Pages already held
  // are kept (a sequence restarted at context 0 overwrites them). Throws when out of pages.
  void reserve(int64_t slot, int64_t n_tokens);
  // Returns `slot`'s pages to the free list.
  void release(int64_t slot);
  // External-pages mode: `slot` now reads and writes these pages (ids < num_pages()).
  void set_page_table(int64_t slot, std::span<const int32_t> pages);
  int64_t num_pages() const;
  std::span<const int64_t> page_table(int64_t slot) const;
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }

  quant::KvPagePool& pool(int64_t layer) { return pools_.at(static_cast<size_t>(layer)); }
  const quant::KvPagePool& pool(int64_t layer) const {
    return pools_.at(static_cast<size_t>(layer));
  }

 private:
  quant::KvBits bits_;
  int64_t max_len_;
  std::vector<quant::KvPagePool> pools_;      // [layers]
  std::vector<std::vector<int64_t>> tables_;  // [slots] page indices, position p in page p/64
  std::vector<int64_t> free_;                 // free page indices (a stack)
  bool external_ = false;                     // page tables come from set_page_table
};

class KvCache {
 public:
  explicit KvCache(cpu::KVCacheF32 c) : impl_(std::move(c)) {}
  explicit KvCache(PagedKvCache c) : impl_(std::move(c)) {}

  int64_t slots() const;
  int64_t max_len() const;
  KvPrecision precision() const;

  cpu::KVCacheF32* f32() { return std::get_if<cpu::KVCacheF32>(&impl_); }
  const cpu::KVCacheF32* f32() const { return std::get_if<cpu::KVCacheF32>(&impl_); }
  PagedKvCache* paged() { return std::get_if<PagedKvCache>(&impl_); }
  const PagedKvCache* paged() const { return std::get_if<PagedKvCache>(&impl_); }

 private:
  std::variant<cpu::KVCacheF32, PagedKvCache> impl_;
};

}  // namespace qserve
