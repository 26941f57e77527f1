// KV-cache page accounting for the engine: a fixed pool of 64-token pages, a free list, reference
// counts and an admission watermark. Pure bookkeeping - no device memory lives here; the model
// executor maps the page ids it hands out onto its cache (model/kv_cache.h, the CUDA cache).
//
// QServe's rules (qserve-runtime.md §2.2): admitting a sequence needs
// free - needed >= watermark (1% of the pool by default), so decodes of running sequences keep
// some room; growing a running sequence by a page needs only one free page. A sequence whose
// pages can never fit (total - needed < watermark) must be rejected, not queued forever.
#pragma once

#include <cstdint>
#include <vector>

namespace qserve {

inline constexpr int64_t kPageTokens = 64;

// Pages needed to hold `tokens` positions.
inline int64_t pages_for_tokens(int64_t tokens) {
  return tokens <= 0 ? 0 : (tokens + kPageTokens - 1) / kPageTokens;
}

// A sequence's block table: logical page i (positions 64 i .. 64 i + 63) lives in page table[i].
using PageTable = std::vector<int32_t>;

class BlockManager {
 public:
  // num_pages > 0; watermark_fraction in [0, 1).
  explicit BlockManager(int64_t num_pages, double watermark_fraction = 0.01);

  int64_t num_pages() const { return static_cast<int64_t>(refs_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return num_pages() - num_free(); }
  int64_t watermark() const { return watermark_; }

  // Whether a sequence of `tokens` positions could ever be admitted (into an empty pool).
  bool can_ever_fit(int64_t tokens) const;
  // Whether `table` can be grown to `tokens` positions now while keeping the watermark free
  // (admission of a waiting sequence).
  bool can_admit(const PageTable& table, int64_t tokens) const;
  // Grows `table` to cover `tokens` positions from the free list. All or nothing: returns false
  // and changes nothing when there are not enough free pages.
  bool grow(PageTable& table, int64_t tokens);
  // Drops one reference to each page of `table` (pages reaching zero return to the free list)
  // and clears it.
  void release(PageTable& table);
  // Adds a reference to each page of `table` (a second owner, e.g. a forked sequence) and
  // returns the shared copy.
  PageTable share(const PageTable& table);

  int32_t refcount(int32_t page) const;

 private:
  std::vector<int32_t> refs_;  // [num_pages] reference counts
  std::vector<int32_t> free_;  // free page ids, popped from the back (low ids first)
  int64_t watermark_;
};

}  // namespace qserve
