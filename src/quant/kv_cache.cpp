#include "quant/kv_cache.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/fp16_math.h"
#include "quant/no_fp_contract.h"

namespace qserve::quant {

namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

void store_u16(uint8_t* p, uint16_t v) {
  std::memcpy(p, &v, 2);
}

void check_pages(std::span<const int64_t> page_table, int64_t n_tokens, int64_t num_pages,
                 const char* op) {
  const int64_t needed = (n_tokens + kKvPageTokens - 1) / kKvPageTokens;
  check(n_tokens >= 0 && needed <= static_cast<int64_t>(page_table.size()),
        std::string(op) + ": " + std::to_string(n_tokens) + " tokens need " +
            std::to_string(needed) + " pages, the page table has " +
            std::to_string(page_table.size()));
  for (int64_t i = 0; i < needed; ++i) {
    const int64_t p = page_table[static_cast<size_t>(i)];
    check(p >= 0 && p < num_pages,
          std::string(op) + ": page " + std::to_string(p) + " is outside the pool");
  }
}

void check_slot(const KvPageLayout& layout, int64_t slot, int64_t head) {
  check(slot >= 0 && slot < kKvPageTokens && head >= 0 && head < layout.kv_heads,
        "kv page: slot " + std::to_string(slot) + " / head " + std::to_string(head) +
            " out of range");
}

}  // namespace

KvPageLayout make_kv_layout(KvBits bits, int64_t kv_heads, int64_t head_dim) {
  check(kv_heads > 0 && head_dim > 0, "kv layout: kv_heads and head_dim must be positive");
  check(bits != KvBits::k4 || head_dim % 2 == 0,
        "kv layout: KV4 needs an even head_dim, got " + std::to_string(head_dim));
  return KvPageLayout{bits, kv_heads, head_dim};
}

KvQuantParams kv_quantize(KvBits bits, const uint16_t* x, int64_t d, uint8_t* codes) {
  float mx = f16_to_f32(x[0]);
  float mn = mx;
  for (int64_t c = 1; c < d; ++c) {
    const float v = f16_to_f32(x[c]);
    mx = std::fmax(mx, v);
    mn = std::fmin(mn, v);
  }
  const float levels = bits == KvBits::k4 ? 15.0f : 255.0f;
  const float range = mx - mn;
  KvQuantParams p;
  // Division by the literal compiles to a multiply by its fp32 reciprocal under fast-math.
  p.scale = f32_to_f16(range * (1.0f / levels));
  p.zero = f32_to_f16((-levels * mn) * (1.0f / range));
  const float inv = 1.0f / f16_to_f32(p.scale);
  const float z = f16_to_f32(p.zero);
  if (bits == KvBits::k8) {
    for (int64_t c = 0; c < d; ++c) codes[c] = cvt_rni_sat_u8(std::fma(f16_to_f32(x[c]), inv, z));
  } else {
    for (int64_t c = 0; c < d; c += 2) {
      const uint8_t lo = cvt_rni_sat_u8(std::fma(f16_to_f32(x[c]), inv, z)) & 0x0f;
      const uint8_t hi = cvt_rni_sat_u8(std::fma(f16_to_f32(x[c + 1]), inv, z)) & 0x0f;
      codes[c / 2] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
  return p;
}

void kv_dequantize(KvBits bits, const uint8_t* codes, int64_t d, KvQuantParams p, uint16_t* out) {
  const float s = f16_to_f32(p.scale);
  const float z = f16_to_f32(p.zero);
  if (bits == KvBits::k8) {
    for (int64_t c = 0; c < d; ++c) {
      out[c] = f32_to_f16(s * (static_cast<float>(codes[c]) - z));
    }
  } else {
    const uint16_t neg_sz = f32_to_f16(-(s * z));
    for (int64_t c = 0; c < d; ++c) {
      const uint8_t byte = codes[c / 2];
      const uint8_t q = (c % 2 == 0) ? byte & 0x0f : byte >> 4;
      out[c] = f16_fma(f32_to_f16(static_cast<float>(q)), p.scale, neg_sz);
    }
  }
}

void kv_page_write(const KvPageLayout& layout, uint8_t* page, int64_t slot, const uint16_t* x) {
  check_slot(layout, slot, 0);
  for (int64_t h = 0; h < layout.kv_heads; ++h) {
    const KvQuantParams p = kv_quantize(layout.bits, x + h * layout.head_dim, layout.head_dim,
                                        page + layout.data_offset(h, slot));
    const int64_t idx = h * kKvPageTokens + slot;
    store_u16(page + layout.scales_offset() + 2 * idx, p.scale);
    store_u16(page + layout.zeros_offset() + 2 * idx, p.zero);
  }
}

KvQuantParams kv_page_params(const KvPageLayout& layout, const uint8_t* page, int64_t slot,
                             int64_t head) {
  check_slot(layout, slot, head);
  const int64_t idx = head * kKvPageTokens + slot;
  return {load_u16(page + layout.scales_offset() + 2 * idx),
          load_u16(page + layout.zeros_offset() + 2 * idx)};
}

void kv_page_read(const KvPageLayout& layout, const uint8_t* page, int64_t slot, int64_t head,
                  uint16_t* out) {
  const KvQuantParams p = kv_page_params(layout, page, slot, head);
  kv_dequantize(layout.bits, page + layout.data_offset(head, slot), layout.head_dim, p, out);
}

KvPagePool::KvPagePool(const KvPageLayout& l, int64_t pages)
    : layout(make_kv_layout(l.bits, l.kv_heads, l.head_dim)), num_pages(pages) {
  check(pages > 0, "KvPagePool: need at least one page");
  k.assign(static_cast<size_t>(pages * layout.page_bytes()), 0);
  v.assign(static_cast<size_t>(pages * layout.page_bytes()), 0);
}

void kv_append(KvPagePool& pool, std::span<const int64_t> page_table, int64_t pos,
               const uint16_t* k, const uint16_t* v) {
  check(pos >= 0, "kv_append: negative position");
  check_pages(page_table, pos + 1, pool.num_pages, "kv_append");
  const int64_t page = page_table[static_cast<size_t>(pos / kKvPageTokens)];
  kv_page_write(pool.layout, pool.k_page(page), pos % kKvPageTokens, k);
  kv_page_write(pool.layout, pool.v_page(page), pos % kKvPageTokens, v);
}

void kv_gather(const KvPagesView& kv, std::span<const int64_t> page_table, int64_t n_tokens,
               float* k, float* v) {
  check_pages(page_table, n_tokens, kv.num_pages, "kv_gather");
  const KvPageLayout& L = kv.layout;
  std::vector<uint16_t> row(static_cast<size_t>(L.head_dim));
  for (int64_t pos = 0; pos < n_tokens; ++pos) {
    const int64_t offset = page_table[static_cast<size_t>(pos / kKvPageTokens)] * L.page_bytes();
    for (int64_t h = 0; h < L.kv_heads; ++h) {
      float* kd = k + (pos * L.kv_heads + h) * L.head_dim;
      float* vd = v + (pos * L.kv_heads + h) * L.head_dim;
      kv_page_read(L, kv.k_pool + offset, pos % kKvPageTokens, h, row.data());
      for (int64_t c = 0; c < L.head_dim; ++c) kd[c] = f16_to_f32(row[static_cast<size_t>(c)]);
      kv_page_read(L, kv.v_pool + offset, pos % kKvPageTokens, h, row.data());
      for (int64_t c = 0; c < L.head_dim; ++c) vd[c] = f16_to_f32(row[static_cast<size_t>(c)]);
    }
  }
}

}  // namespace qserve::quant
