// The attention side of the ops contract on the GPU: RoPE + KV rounding + paged KV append,
// decode and prefill attention over paged KV4/KV8/KV16 caches, logits gather and sampling.
//
// These are first, correct (not yet fast) kernels. Every function takes device pointers and a
// stream, launches asynchronously and throws qserve::Error (naming the op and shape) when the
// arguments are impossible or the launch fails. Nothing here synchronizes the host.
//
// Semantics follow the CPU specification exactly where it is integer/fp16 (KV page bytes) and
// within the tolerances stated per function where it is fp32 (docs/numerics.md §4, §6):
//   - model/paged_attention.cpp (quantized KV): a decode token attends to the dequantized pages
//     for positions 0..p-1 and to its own fp16 K/V unquantized; a prefill chunk attends to the
//     dequantized pages of its earlier context and to its own fp16 K/V unquantized.
//   - backend/cpu attention (KV16): the same structure over an fp16 paged cache (the CPU keeps
//     fp32; the GPU keeps fp16, so KV16 on the GPU equals the CPU fed fp16-rounded K/V).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace qserve::cuda {

inline constexpr int64_t kKvPageTokensCuda = 64;  // tokens per page (QServe's block size)

enum class KvFormat : int32_t { kv4 = 4, kv8 = 8, kv16 = 16 };

// Bytes of one K (or V) page of one layer.
//   KV4/KV8: QServe's layout, identical to quant::KvPageLayout::page_bytes() (quant/kv_cache.h):
//            [H][64][DB] code bytes, then [H][64] fp16 scales, then [H][64] fp16 zeros.
//   KV16:    our own layout: [H][64][D] fp16, element ((h * 64 + slot) * D + c); no scales.
// H = kv_heads, D = head_dim, DB = D (KV8) or D / 2 (KV4). Throws on a non-positive or odd D.
int64_t kv_page_bytes(KvFormat format, int64_t kv_heads, int64_t head_dim);

// One layer's paged K and V pools, [num_pages, page_bytes] each (device). Token at position p
// of sequence s lives in page block_table[s * block_stride + p / 64], slot p % 64, of both pools
// (one page index for K and V, as quant::KvPagePool).
struct PagedKvDevice {
  KvFormat format = KvFormat::kv4;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  uint8_t* k_pool = nullptr;
  uint8_t* v_pool = nullptr;
  int64_t num_pages = 0;  // pages in each pool (not checked on the device)
};

// A varlen batch on the device, the GPU form of std::span<const SeqSpan> plus page tables.
// All arrays are int32 on the device. Rows of [T, ...] activations belong to sequences through
// token_offset/num_tokens; sequence s's new tokens sit at positions context_len[s] + j.
// max_num_tokens and max_total_len are host-side bounds used only to size grids and workspace
// (they must be >= the true maxima; larger is correct, just wasteful).
struct VarlenBatchDevice {
  int32_t num_seqs = 0;
  const int32_t* token_offset = nullptr;  // [S] first row of sequence s in [T, ...]
  const int32_t* num_tokens = nullptr;    // [S] new tokens this step
  const int32_t* context_len = nullptr;   // [S] tokens already in the cache before this step
  const int32_t* block_table = nullptr;   // [S, block_stride] page indices
  int32_t block_stride = 0;
  int32_t max_num_tokens = 0;  // >= max_s num_tokens[s]
  int32_t max_total_len = 0;   // >= max_s context_len[s] + num_tokens[s]
};

// The step's RoPE table (rope_cos_sin_table below).
constexpr size_t kRopeRowInfoBytes = 16;  // one row info (page, slot, valid)
struct RopeTableDevice {
  float* cos_sin = nullptr;  // [rows, head_dim] fp32, 16-byte aligned
  void* row_info = nullptr;  // [rows] kRopeRowInfoBytes each, 16-byte aligned
  int64_t rows = 0;
};

// ---------------------------------------------------------------------------------------------
// RoPE + fp16 rounding + paged KV append (rope_kv.cu)
//
// qkv: [T, qkv_stride] row-major (the fused QKV GEMM output; fp32 or fp16), with q at columns
// [0, Hq*D), k at [Hq*D, (Hq+Hkv)*D), v at [(Hq+Hkv)*D, (Hq+2Hkv)*D). Each row's position is
// context_len[s] + j (derived from the batch). inv_freq: device [D/2] fp32, exactly
// cpu::rope_inv_freq(cfg) (the host owns llama3/linear scaling).
// Writes:
//   q_out [T, Hq, D] fp32   RoPE(q) (NeoX pairing, angle = fp32(pos) * inv_freq[i] in fp32,
//                           x1*cos - x2*sin and x2*cos + x1*sin without FMA, as cpu::rope)
//   k16   [T, Hkv, D] fp16  fp16_RN(RoPE(k))        (model/paged_attention.h round_to_fp16)
//   v16   [T, Hkv, D] fp16  fp16_RN(v)
//   cache pages at every new position: KV4/KV8 quantized exactly as quant::kv_page_write of
//   (k16, v16) — same code bytes, same fp16 scale/zero bits; KV16: the k16/v16 values.
//   With cache.k_pool == nullptr nothing is appended (plain RoPE + rounding).
// Tolerances vs cpu::rope: cos/sin are computed in double and rounded to fp32 (glibc's cosf/sinf
// may differ by 1 ulp), so q_out is within 2^-22 * (|x1| + |x2|) of the CPU; k16 equals the
// CPU's fp16 rounding except where that 1-ulp difference crosses an fp16 rounding boundary
// (rare; then 1 fp16 ulp). v16 and the page bytes of given k16/v16 are bit-exact.
// table: the step's table from rope_cos_sin_table for this batch (the same bits as without it;
// read instead of computed, and the kernel is indexed by row: the engine builds it once per
// step for all layers), or nullptr (each block computes its token's cos/sin).
void rope_kv_append(const float* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                    int64_t num_heads, int64_t kv_heads, int64_t head_dim, const float* inv_freq,
                    const PagedKvDevice& cache, float* q_out, uint16_t* k16, uint16_t* v16,
                    cudaStream_t stream, const RopeTableDevice* table = nullptr);
// The same with fp16 qkv (QServe's GEMMs emit fp16); values are widened exactly to fp32 first.
void rope_kv_append_f16(const uint16_t* qkv, int64_t qkv_stride, const VarlenBatchDevice& batch,
                        int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                        const float* inv_freq, const PagedKvDevice& cache, float* q_out,
                        uint16_t* k16, uint16_t* v16, cudaStream_t stream,
                        const RopeTableDevice* table = nullptr);
// The RoPE table of a batch's new tokens, built once per step (rope_cos_sin_table) and read by
// every layer's rope_kv_append. Row r = token_offset[s] + j holds [cos(a_i) for i < D/2,
// sin(a_i) for i < D/2], a_i = fp32(context_len[s] + j) * inv_freq[i] (cos/sin in double,
// rounded to fp32: what rope_kv_append computes per token) in cos_sin [rows, head_dim] fp32, and
// the row's page and slot in row_info [rows] (16 bytes each; rows of no token are marked so).
// rows must be the row count of the step's qkv / q / k16 / v16 buffers (every row of the batch
// is < rows): rope_kv_append with a table runs over rows 0..rows-1, loading each row's qkv and
// skipping rows of no token, so a token at a row >= rows would not be processed.
void rope_cos_sin_table(const VarlenBatchDevice& batch, int64_t head_dim, const float* inv_freq,
                        const RopeTableDevice& table, cudaStream_t stream);
// Bytes of one table row (cos_sin row + row info): the step buffers' per-row share.
size_t rope_table_row_bytes(int64_t head_dim);
// Whether rope_kv_append reads a table for a step of `rows` rows at this geometry (the
// row-indexed kernel serves decode-sized steps; larger ones compute their cos/sin per block), so
// that a caller builds it only then.
bool rope_table_applies(int64_t rows, int64_t num_heads, int64_t kv_heads, int64_t head_dim);

// ---------------------------------------------------------------------------------------------
// Attention (attention_decode.cu, attention_prefill.cu)
//
// Common: q [T, Hq, D] fp32 (post-RoPE, q_out above); k16, v16 [T, Hkv, D] fp16 of this step's
// tokens (k16/v16 above); out [T, Hq, D] fp32. GQA: query head h reads KV head h / (Hq/Hkv);
// Hq/Hkv <= 16, D even and <= 256. Scores are fp32 dot products times fl32(1/sqrt(D)); softmax
// in fp32 with max subtraction (online, per 64-key tile), P·V accumulated in fp32. Positions
// < context_len[s] are read from the pages (dequantized exactly as quant::kv_page_read for
// KV4/KV8); positions >= context_len[s] from k16/v16 (unquantized). window > 0: query at
// position p sees only positions max(0, p - window + 1) .. p; window <= 0: all.
// Tolerance vs the CPU reference on the same inputs (same pages, same fp16 k16/v16, same q):
//   |out - ref| <= max|V| * (3e-5 + 2^-21 * B),  B = scale * D * max|q| * max|K|
// (B bounds |score|; summation order and expf vs std::exp are the only differences).

// Bytes of the split-KV workspace decode_attention needs.
size_t decode_attention_workspace_bytes(int64_t num_seqs, int64_t num_heads, int64_t head_dim,
                                        int64_t max_total_len);

// Decode: every sequence of `batch` has exactly one new token (num_tokens[s] == 1, not read),
// at row token_offset[s] and position context_len[s]; it attends to pages 0..context_len-1 and
// its own k16/v16 row (quant::decode_attention_paged with cur_k/cur_v; with a window, the
// windowed path of paged_attention_step, which reads the same K/V). Split-KV over 256-key
// chunks combined in a second kernel; any context up to max_total_len.
void decode_attention(const float* q, const uint16_t* k16, const uint16_t* v16,
                      const PagedKvDevice& cache, const VarlenBatchDevice& batch, int64_t num_heads,
                      int64_t window, float* out, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream);

// decode_attention dispatches (all pointers 16-byte aligned) to decode_attention_mma, then
// decode_attention_tc, then decode_attention_fast, by their *_supported(); otherwise to
// decode_attention_baseline (the first, reference kernel), which keeps the fp32 tolerance above
// and stays the oracle for tests and benchmarks. Same workspace for all. NOTE: through the
// dispatch, decode_attention therefore meets decode_attention_mma's fp16-operand bound below
// wherever that kernel applies (KV4/KV8, head_dim 64/128, GQA group <= 8), not the fp32 one.
void decode_attention_baseline(const float* q, const uint16_t* k16, const uint16_t* v16,
                               const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                               int64_t num_heads, int64_t window, float* out, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream);

// The fast decode kernel (attention_decode_fast.cu): KV4/KV8, head_dim 64 or 128,
// Hq/Hkv in {1, 2, 4, 8}. One CTA per (sequence, KV head, KV split) shares every page read
// across the GQA group; 16-byte loads; dequantization bit-identical to the baseline; fp32
// online softmax; split-KV with a merge kernel. Throws on an unsupported geometry, on pointers
// that are not 16-byte aligned, or on a workspace smaller than
// decode_attention_workspace_bytes().
bool decode_attention_fast_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                     int64_t head_dim);
void decode_attention_fast(const float* q, const uint16_t* k16, const uint16_t* v16,
                           const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                           int64_t num_heads, int64_t window, float* out, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);
// Keys per split the fast kernel uses (a multiple of 64, at least 256) for a batch of
// num_seqs sequences on a GPU with num_sms SMs. Exposed so tests can force several splits.
int64_t decode_attention_fast_split_keys(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                         int64_t num_sms);

// The tensor-core decode kernel (attention_decode_tc.cu): KV4/KV8, head_dim 64 or 128,
// Hq/Hkv in 1..8. Q.K^T and P.V on mma.sync m16n8k16 (fp16 operands, fp32 accumulate): the
// dequantized K/V are the reference's fp16 values bit for bit; q and P are scaled by powers of
// two and split into fp16 hi + lo parts (rows 0..7 / 8..15 of the MMA's A operand), so the
// result stays within the same documented tolerance. cp.async-pipelined page streaming per
// warp, split-KV with a merge kernel. Since issue 8 decode_attention dispatches here first
// (when supported and 16-byte aligned). Same contract, workspace and throws as
// decode_attention_fast.
bool decode_attention_tc_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                   int64_t head_dim);
void decode_attention_tc(const float* q, const uint16_t* k16, const uint16_t* v16,
                         const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                         int64_t num_heads, int64_t window, float* out, void* workspace,
                         size_t workspace_bytes, cudaStream_t stream);
// Keys per split the tensor-core kernel uses (a multiple of 64, at least 256).
int64_t decode_attention_tc_split_keys(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                       int64_t num_sms);

// The deferred-dequantization tensor-core decode kernel (attention_decode_mma.cu): KV4/KV8,
// head_dim 64 or 128, Hq/Hkv in 1..8. Keys are the M side of both mma.sync m16n8k16 products
// (S^T = K q^T, O^T = V^T P'^T), the MMAs read the integer codes as exact fp16 and the
// per-token scales and zeros are applied per key outside them. Since issue 8's second pass
// decode_attention dispatches here first (when supported and 16-byte aligned); same
// workspace and throws as decode_attention_tc.
//
// Accuracy (fp16-operand contract, like prefill_attention_tc and QServe's fp16 kernels):
//   (1) q is rounded once to fp16 after an exact power-of-two scaling (11 significant bits);
//   (2) K and V are s (c - z) in fp32, where the reference rounds s c + fp16(-s z) to fp16
//       (|diff| <= 2^-10 |x| + 2^-11 s z per element);
//   (3) P' = p s_v is rounded to fp16 (2^-11 relative) as the B operand; the normalizer and
//       the zero term sum fp32 p.
// With A = scale * max over visible keys of sum_c |q_c| |k_c| (<= B above) and
// delta = 2^-9 A, |out - ref| <= max|V| * (e^(2 delta) - 1 + 2^-9 + 3e-5).
bool decode_attention_mma_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                    int64_t head_dim);
void decode_attention_mma(const float* q, const uint16_t* k16, const uint16_t* v16,
                          const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                          int64_t num_heads, int64_t window, float* out, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);
// The same with the keys per split given (a positive multiple of 64, at least 256; for
// bench_attention's split sweep). Throws on other values.
void decode_attention_mma_split(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream, int64_t split_keys);
// Keys per split the kernel uses (a multiple of 64, at least 256): the split count whose
// (sequence, KV head, split) CTAs fill num_sms * slots_per_sm resident slots best.
int64_t decode_attention_mma_split_keys(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                        int64_t num_sms, int64_t slots_per_sm = 4);
// What decode_attention_mma runs: CTAs of 4 warps at decode_attention_mma_split_keys' split
// (slots_w4 resident CTAs per SM), or - KV4 only, slots_w8 > 0 - CTAs of 8 warps when those
// need fewer splits for at least the same fill of the slots_w8 resident 8-warp CTAs per SM
// (32 x 8192: one split of 8-warp CTAs instead of two of 4-warp ones and their merge kernel).
struct DecodeMmaPlan {
  int64_t split_keys;
  int warps;
};
DecodeMmaPlan decode_attention_mma_plan(int64_t num_seqs, int64_t kv_heads, int64_t max_total_len,
                                        int64_t num_sms, int64_t slots_w4, int64_t slots_w8);
// QSERVE_DECODE_MMA_WARPS (A/B switch, read once): "4" or "8" forces the plan's CTA size (8 only
// for KV4 caches), "auto" or unset keeps the plan. The parser: 4, 8, or 0 for auto; throws
// qserve::Error otherwise (the variable's name is added to the message).
int parse_decode_mma_warps(const std::string& text);
// decode_attention_mma with the warps per CTA given (4, or 8 with a KV4 cache; the split is the
// picker's for that CTA size): bench_attention's A/B rows and the parity tests. Throws on
// other values.
void decode_attention_mma_warps(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream, int warps);

// Prefill (varlen, causal; chunked prefill with cached context; also correct for decode rows):
// token j of sequence s (row token_offset[s] + j, position context_len[s] + j) attends to
// positions lo .. context_len[s] + j: cached ones from the pages, the chunk's own from
// k16/v16 (quant::kv_gather + quant::attention_unquantized; cpu::attention for KV16).
void prefill_attention(const float* q, const uint16_t* k16, const uint16_t* v16,
                       const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                       int64_t num_heads, int64_t window, float* out, cudaStream_t stream);

// Since issue 8 prefill_attention dispatches to prefill_attention_tc (or, for chunks of >= 1024
// tokens on sm_90, prefill_attention_wgmma: the same bound) when
// prefill_attention_tc_supported(), the row-tile count fits (max_num_tokens * Hq/Hkv <=
// 65535 * 128) and q, k16, v16, out and both pools are 16-byte aligned; otherwise to the first,
// fp32 CUDA-core kernel, which prefill_attention_baseline always runs: it keeps the fp32
// tolerance above and stays the oracle for tests and benchmarks. NOTE: through the dispatch,
// prefill_attention therefore meets the tensor-core kernel's looser bound below, not the fp32 one.
void prefill_attention_baseline(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out, cudaStream_t stream);

// The tensor-core prefill kernel (attention_prefill_tc.cu): FlashAttention-2 style on
// mma.sync m16n8k16 (fp16 operands, fp32 accumulation), KV4/KV8/KV16 cached context, head_dim
// 64 or 128, Hq/Hkv in 1..8, any chunk length, context and window. Same semantics as
// prefill_attention (same masks, same page dequantization bit for bit: the dequantized K/V and
// the fp16 k16/v16 are exact tensor-core operands). Throws on an unsupported geometry, on
// pointers (q, k16, v16, out, pools) that are not 16-byte aligned, or on
// max_num_tokens * Hq/Hkv > 65535 * 128.
//
// Accuracy. Two roundings differ from the fp32 reference, as in QServe's fp16 FlashAttention:
//   (1) q is rounded to 11 significant bits: q^ = fp16_RN(q 2^e) 2^-e with a per-CTA power of
//       two 2^e (no overflow, no subnormals), |q^_c - q_c| <= 2^-11 |q_c|;
//   (2) the softmax numerators are rounded to fp16 (scaled by 2^15 so never subnormal), each
//       |p^ - p| <= 2^-11 p, while the normalizer sums the fp32 p.
// Let B = scale * D * max|q| * max|K| (bounds |score|, as above) and
// A = scale * max over (query row, visible key) of sum_c |q_c| |k_c| (A <= B). Then:
//   (a) against the reference evaluated on q^ (the same kernel inputs with q rounded to 11
//       significant bits), only (2) and the fp32 summation/exp2 differences remain:
//         |out - ref(q^)| <= max|V| * (2^-11 + 3e-5 + 2^-21 * B)
//       [(2): |sum (p^-p) v| / sum p <= 2^-11 max|V|; the rest as the fp32 bound above];
//   (b) against the reference on q itself, (1) perturbs every score by at most
//       d = 2^-11 * A (plus 2^-20 * B for the fp32 exp2 argument), which moves each softmax
//       weight by a factor within [e^-2d, e^2d], so
//         |out - ref(q)| <= max|V| * (2^-11 + 3e-5 + 2^-21 * B + (e^(2d) - 1)).
//       (b) is a worst case (all q_c k_c aligned); for random data the q rounding errors
//       cancel in the dot and the observed error is of the order of (a).
bool prefill_attention_tc_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                    int64_t head_dim);
void prefill_attention_tc(const float* q, const uint16_t* k16, const uint16_t* v16,
                          const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                          int64_t num_heads, int64_t window, float* out, cudaStream_t stream);
// Grid rows of the tensor-core kernel: ceil(max_num_tokens * group / 128) (128 packed
// (token, head) rows per CTA). The dispatch falls back to the baseline above 65535.
int64_t prefill_attention_tc_row_tiles(int64_t max_num_tokens, int64_t group);
// The same kernel with an explicit CTA shape, for tests and benchmarks: warps = 4 (128 rows per
// CTA, 2 CTAs per SM; what prefill_attention_tc uses) or 8 (256 rows per CTA, 1 CTA per SM,
// half the K/V re-reads from L2 per FLOP). Same contract and bound for both; throws on any
// other value.
inline constexpr int kPrefillTcDefaultWarps = 4;
void prefill_attention_tc_warps(const float* q, const uint16_t* k16, const uint16_t* v16,
                                const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                int64_t num_heads, int64_t window, float* out, int warps,
                                cudaStream_t stream);

// The Hopper prefill kernel (attention_prefill_wgmma.cu): FlashAttention-3 ideas on
// wgmma.mma_async (S = Q K^T from shared memory, O += P V with P from registers, a producer
// warpgroup streaming K/V into a multi-stage mbarrier ring). head_dim 128, Hq/Hkv in 1..8,
// compute capability 9.0 only; same semantics, arguments, throws and 65535 * 128 row limit as
// prefill_attention_tc. Fresh prompts are its target; cached context (KV16 pages copied, KV4/KV8
// pages dequantized bit-exactly by the producer) is correct but not optimized.
// prefill_attention_wgmma_supported() is false for any other geometry or device.
// prefill_attention dispatches here for steps whose longest chunk has >= 1024 tokens (shorter
// chunks run prefill_attention_tc; not measured there).
//
// Accuracy: prefill_attention_tc's contract and bounds (a) and (b) above, unchanged. The only
// difference is the granularity of q's power-of-two scale (per 64-row warpgroup instead of per
// 128-row CTA), which does not change the per-element bound |q^_c - q_c| <= 2^-11 |q_c|.
bool prefill_attention_wgmma_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                       int64_t head_dim);
void prefill_attention_wgmma(const float* q, const uint16_t* k16, const uint16_t* v16,
                             const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                             int64_t num_heads, int64_t window, float* out, cudaStream_t stream);
// The same kernel with an explicit variant, for tests and benchmarks: block_n = keys per K/V
// tile, stages = depth of the shared-memory ring, pingpong = the two consumer warpgroups take
// turns issuing wgmmas. Accepted: block_n 128 with 2 or 3 stages (pingpong on or off), block_n
// 64 with 4 stages (pingpong off); throws otherwise. prefill_attention_wgmma uses (128, 3, off)
// unless the environment variable QSERVE_PREFILL_WGMMA (read once; for A/B runs) names another
// (parse_prefill_wgmma_variant). Same contract and bound for all.
void prefill_attention_wgmma_variant(const float* q, const uint16_t* k16, const uint16_t* v16,
                                     const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                     int64_t num_heads, int64_t window, float* out, int block_n,
                                     int stages, bool pingpong, cudaStream_t stream);
// A variant by name: bn128s3 (the default), bn128s2, bn128s3pp, bn128s2pp, bn64s4 (keys per
// tile, stages, "pp" = pingpong). Throws qserve::Error listing the names on anything else (an
// unknown QSERVE_PREFILL_WGMMA is an error, not the default). Host code.
struct PrefillWgmmaVariant {
  int block_n = 128;
  int stages = 3;
  bool pingpong = false;
};
PrefillWgmmaVariant parse_prefill_wgmma_variant(const std::string& name);

// ---------------------------------------------------------------------------------------------
// Logits gather and sampling (sampling.cu)

// out[b, :] = logits[rows[b], :] for b < n (rows: device int32, e.g. the last row of each
// sequence, token_offset + num_tokens - 1). logits [T, vocab] fp32, out [n, vocab] fp32.
void gather_rows(const float* logits, const int32_t* rows, int64_t n, int64_t vocab, float* out,
                 cudaStream_t stream);

// out[b] = argmax of row b of logits [n, vocab]: the lowest id wins ties; NaN entries are
// never picked (a row of NaNs gives 0) - exactly engine's argmax.
void argmax_rows(const float* logits, int64_t n, int64_t vocab, int32_t* out, cudaStream_t stream);

// Per-row sampling with host-supplied randomness (reproducible and testable). Device arrays
// [n]: temperature (0 = greedy, argmax_rows semantics), top_k (0 or >= vocab = off), top_p
// ((0, 1], 1 = off), uniform (double in [0, 1)). The algorithm (defined exactly, so a CPU
// implementation reproduces it bit for bit; NaN logits are never sampled):
//   order:  candidates by logit descending, ties by lower id (engine's order);
//   top-k:  keep the first k;
//   weight: w_i = nearbyint(2^40 * exp(double(l_i - l_max) / double(T))) as uint64 (fp32
//           subtraction first, as the engine); tokens with weight 0 (relative probability below
//           2^-41) are never sampled; integer sums are exact, so order does not matter;
//   top-p:  W = sum of kept weights; keep the shortest prefix whose weight C satisfies
//           double(C) >= double(top_p) * double(W);
//   sample: W' = weight of the kept prefix; r = min(uint64(u * double(W')), W' - 1); the token
//           is the first in order whose prefix weight exceeds r.
// The only inexact step is exp in double (GPU exp vs glibc, <= 1 ulp), which can change a
// weight by 1 in 2^40 and the pick only when r lands on that unit.
void sample_rows(const float* logits, int64_t n, int64_t vocab, const float* temperature,
                 const int32_t* top_k, const float* top_p, const double* uniform, int32_t* out,
                 cudaStream_t stream);

// The same contract and the same ids, bit for bit, in two passes over each row (sampling_fast.cu):
// a histogram of the logits' top key bits picks at most 2048 candidates that cover top-k (or
// the largest logits without top-k), which are sorted and prefix-summed in shared memory. Rows
// whose top-p cut or drawn r fall below those candidates (flat distributions without top-k, or
// more than 2048 candidates tied in one bin) are finished by the baseline kernel above, launched
// right after over just those rows. What the engine's CUDA executor calls.
void sample_rows_fast(const float* logits, int64_t n, int64_t vocab, const float* temperature,
                      const int32_t* top_k, const float* top_p, const double* uniform, int32_t* out,
                      cudaStream_t stream);

}  // namespace qserve::cuda
