#include "engine/block_manager.h"

#include <cmath>
#include <string>

#include "core/error.h"

namespace qserve {

BlockManager::BlockManager(int64_t num_pages, double watermark_fraction) {
  check(num_pages > 0 && num_pages <= INT32_MAX,
        "BlockManager: the KV cache needs at least one page, got " + std::to_string(num_pages));
  check(watermark_fraction >= 0.0 && watermark_fraction < 1.0,
        "BlockManager: watermark fraction must be in [0, 1)");
  refs_.assign(static_cast<size_t>(num_pages), 0);
  free_.reserve(static_cast<size_t>(num_pages));
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
  watermark_ = static_cast<int64_t>(std::floor(watermark_fraction * static_cast<double>(num_pages)));
}

bool BlockManager::can_ever_fit(int64_t tokens) const {
  return num_pages() - pages_for_tokens(tokens) >= watermark_;
}

bool BlockManager::can_admit(const PageTable& table, int64_t tokens) const {
  const int64_t need = pages_for_tokens(tokens) - static_cast<int64_t>(table.size());
  return need <= 0 || num_free() - need >= watermark_;
}

bool BlockManager::grow(PageTable& table, int64_t tokens) {
  const int64_t need = pages_for_tokens(tokens) - static_cast<int64_t>(table.size());
  if (need <= 0) return true;
  if (need > num_free()) return false;
  for (int64_t i = 0; i < need; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    refs_[static_cast<size_t>(p)] = 1;
    table.push_back(p);
  }
  return true;
}

void BlockManager::release(PageTable& table) {
  // Return in reverse so the lowest ids are handed out first again.
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    const int32_t p = *it;
    check(p >= 0 && p < num_pages() && refs_[static_cast<size_t>(p)] > 0,
          "BlockManager: release of page " + std::to_string(p) + " that is not held");
    if (--refs_[static_cast<size_t>(p)] == 0) free_.push_back(p);
  }
  table.clear();
}

PageTable BlockManager::share(const PageTable& table) {
  for (int32_t p : table) {
    check(p >= 0 && p < num_pages() && refs_[static_cast<size_t>(p)] > 0,
          "BlockManager: share of page " + std::to_string(p) + " that is not held");
  }
  for (int32_t p : table) ++refs_[static_cast<size_t>(p)];
  return table;
}

int32_t BlockManager::refcount(int32_t page) const {
  check(page >= 0 && page < num_pages(), "BlockManager: page id out of range");
  return refs_[static_cast<size_t>(page)];
}

}  // namespace qserve
