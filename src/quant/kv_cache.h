// QServe's quantized KV cache (qserve-compat.md §6): per-(token, KV head) asymmetric KV4/KV8
// quantization with fp16 scale and zero, applied to K after RoPE (and to V), stored in
// 64-token pages with the scales and zeros at the end of each page.
//
// Quantization of one (token, head) vector x[0..D) of fp16 values (§6.2), fp32 math:
//   mx, mn = max_c x_c, min_c x_c                       (exact)
//   s   = fp16_RN((mx - mn) * fl32(1/Q))                Q = 15 (KV4) or 255 (KV8)
//   z   = fp16_RN((-Q * mn) * (1 / (mx - mn)))          a real zero point, not an integer
//   q_c = cvt_rni_sat_u8( fma(x_c, 1 / float(s), float(z)) )      RN-even, saturate to [0, 255]
//   KV8 stores q_c; KV4 stores q_c & 0xF, so a value that rounds to 16 wraps to 0 (QServe does
//   not clamp to 15; with fp16 rounding of s this only happens for tiny ranges, s near 2^-24).
//   mx == mn gives s = 0 and z = NaN/inf: codes are 0 and the dequantized values NaN, exactly
//   as on the GPU ("garbage but deterministic").
// Dequantization (§6.3):
//   KV8: x^_c = fp16_RN( float(s) * (float(q_c) - float(z)) )
//   KV4: x^_c = fp16 FMA(q_c, s, Z) (one rounding), Z = fp16_RN(-(float(s) * float(z)))
//
// Bit-exactness: QServe computes both reciprocals with MUFU.RCP; here they are IEEE (<= 1 ulp
// apart), so z can differ by one fp16 ulp and a code by 1 at a rounding boundary. s matches
// exactly; the dequantization formulas are exact emulations (the fp16 FMA has one rounding).
// Round trip (tested): |x^ - x| <= s/2 + ulp16(Z)/2 + ulp16(x^)/2 (+ 2^-20 relative slack).
//
// Page layout (§6.1), H = KV heads, D = head_dim, DB = D (KV8) or D/2 (KV4) bytes per
// token-head, t = position & 63 (slot), one page per 64 tokens of one sequence and one layer,
// identical for K and V pages:
//   [0, H*64*DB)                 data   byte h*64*DB + t*DB + (c for KV8, c/2 for KV4);
//                                       KV4: even c in the low nibble, odd c in the high nibble
//   [H*64*DB, +H*64*2)           scales fp16 element h*64 + t
//   [H*64*DB + H*128, +H*64*2)   zeros  fp16 element h*64 + t
// (fp16 values little-endian, as on the GPU.)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace qserve::quant {

enum class KvBits : uint8_t { k4 = 4, k8 = 8 };

inline constexpr int64_t kKvPageTokens = 64;

struct KvPageLayout {
  KvBits bits = KvBits::k4;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;

  int64_t bytes_per_token_head() const { return bits == KvBits::k8 ? head_dim : head_dim / 2; }
  int64_t data_bytes() const { return kv_heads * kKvPageTokens * bytes_per_token_head(); }
  int64_t scales_offset() const { return data_bytes(); }
  int64_t zeros_offset() const { return data_bytes() + kv_heads * kKvPageTokens * 2; }
  int64_t page_bytes() const { return data_bytes() + kv_heads * kKvPageTokens * 4; }
  int64_t data_offset(int64_t head, int64_t slot) const {
    return (head * kKvPageTokens + slot) * bytes_per_token_head();
  }
};

// Validates (heads > 0, head_dim > 0, even head_dim for KV4); throws qserve::Error.
KvPageLayout make_kv_layout(KvBits bits, int64_t kv_heads, int64_t head_dim);

struct KvQuantParams {
  uint16_t scale = 0;  // fp16
  uint16_t zero = 0;   // fp16
};

// One (token, head): x [d] fp16 -> codes (d bytes for KV8, d/2 for KV4) and scale/zero.
KvQuantParams kv_quantize(KvBits bits, const uint16_t* x, int64_t d, uint8_t* codes);
// codes -> out [d] fp16.
void kv_dequantize(KvBits bits, const uint8_t* codes, int64_t d, KvQuantParams p, uint16_t* out);

// Quantizes all heads of one token (x [H, D] fp16) into slot 0..63 of a page.
void kv_page_write(const KvPageLayout& layout, uint8_t* page, int64_t slot, const uint16_t* x);
KvQuantParams kv_page_params(const KvPageLayout& layout, const uint8_t* page, int64_t slot,
                             int64_t head);
// Dequantizes one (slot, head) of a page into out [D] fp16.
void kv_page_read(const KvPageLayout& layout, const uint8_t* page, int64_t slot, int64_t head,
                  uint16_t* out);

// Read-only view of one layer's K and V pools ([num_pages, page_bytes] each). A sequence's
// page table lists page indices; token at position p lives in page page_table[p / 64], slot
// p % 64, of both pools (QServe passes separate K/V page pointers; we use one index for both).
struct KvPagesView {
  KvPageLayout layout;
  const uint8_t* k_pool = nullptr;
  const uint8_t* v_pool = nullptr;
  int64_t num_pages = 0;
};

// An owning pair of pools for one layer.
struct KvPagePool {
  KvPageLayout layout;
  int64_t num_pages = 0;
  std::vector<uint8_t> k, v;

  KvPagePool(const KvPageLayout& l, int64_t pages);
  uint8_t* k_page(int64_t p) { return k.data() + p * layout.page_bytes(); }
  uint8_t* v_page(int64_t p) { return v.data() + p * layout.page_bytes(); }
  KvPagesView view() const { return {layout, k.data(), v.data(), num_pages}; }
};

// Quantizes and stores token `pos` of a sequence: k, v are [H, D] fp16 (K after RoPE).
// Throws qserve::Error if the page table does not cover pos or names a page outside the pool.
void kv_append(KvPagePool& pool, std::span<const int64_t> page_table, int64_t pos,
               const uint16_t* k, const uint16_t* v);

// Dequantizes positions 0 .. n_tokens-1 of a sequence into k, v [n_tokens, H, D] (fp32 values
// of the fp16 results), e.g. to attend over cached pages with attention_unquantized during a
// chunked prefill. Throws qserve::Error like kv_append.
void kv_gather(const KvPagesView& kv, std::span<const int64_t> page_table, int64_t n_tokens,
               float* k, float* v);

}  // namespace qserve::quant
