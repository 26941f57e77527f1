#include "engine_cuda/memory_plan.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gemm_w4a8_fast.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "engine/block_manager.h"
#include "quant/weights.h"

namespace qserve::cuda {

namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

struct Tally {
  WeightFootprint f;
  void add(size_t bytes) {
    if (bytes == 0) return;
    f.bytes += bytes;
    f.allocated += DeviceAllocator::bucket_size(bytes);
  }
};

// The buffers of one linear, as synthesize_llama / upload() allocate them.
void add_linear(Tally& t, int64_t n, int64_t k, bool bias, WeightPrecision wp) {
  const size_t nk = static_cast<size_t>(n * k), rows = static_cast<size_t>(n);
  const bool packable = w4a8_packable(n, k);
  switch (wp) {
    case WeightPrecision::kW16A16:
      t.add(nk * 4);
      if (bias) t.add(rows * 4);
      return;
    case WeightPrecision::kW8A8:
      t.add(nk);
      t.add(rows * 2);
      break;
    case WeightPrecision::kW4A8PerChannel:
      t.add(nk);                    // q, one code per byte (large-M wgmma path)
      t.add(rows * 2);              // s1_scales
      t.add(rows * 2);              // s1_szeros
      if (packable) t.add(nk / 2);  // q_packed (small-M path)
      break;
    case WeightPrecision::kW4A8G128: {
      const size_t groups = static_cast<size_t>(k / quant::kGroupSize);
      t.add(nk);
      t.add(rows * 2);
      t.add(rows * groups);  // s2_scales
      t.add(rows * groups);  // s2_zeros
      if (packable) t.add(nk / 2);
      if (k % quant::kGroupSize == 0) t.add(nk);  // w8, expanded once (large-M path)
      break;
    }
  }
  if (bias) t.add(rows * 2);  // fp16 bias of a quantized linear
}

KvFormat kv_format(KvPrecision kv) {
  return kv == KvPrecision::kKv4   ? KvFormat::kv4
         : kv == KvPrecision::kKv8 ? KvFormat::kv8
                                   : KvFormat::kv16;
}

int64_t bucket(int64_t bytes) {
  return bytes <= 0
             ? 0
             : static_cast<int64_t>(DeviceAllocator::bucket_size(static_cast<size_t>(bytes)));
}

}  // namespace

WeightFootprint weight_footprint(const ModelConfig& cfg, WeightPrecision wp) {
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  const size_t h4 = static_cast<size_t>(H) * 4;
  Tally t;
  t.add(static_cast<size_t>(V * H) * 4);             // embed (fp32)
  t.add(h4);                                         // final norm
  t.add(static_cast<size_t>(cfg.head_dim / 2) * 4);  // inv_freq
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    t.add(h4);
    t.add(h4);
    add_linear(t, cfg.q_dim() + 2 * cfg.kv_dim(), H, cfg.qkv_bias, wp);
    add_linear(t, H, cfg.q_dim(), cfg.o_bias, wp);
    add_linear(t, 2 * I, H, cfg.mlp_bias, wp);
    add_linear(t, H, I, cfg.mlp_bias, wp);
  }
  // lm_head: fp16 for quantized models, fp32 for W16A16 (upload_llama).
  t.add(static_cast<size_t>(V * H) * (wp == WeightPrecision::kW16A16 ? 4 : 2));
  return t.f;
}

size_t step_row_bytes(const ModelConfig& cfg, bool quantized) {
  const size_t H = static_cast<size_t>(cfg.hidden_size);
  const size_t I = static_cast<size_t>(cfg.intermediate_size);
  const size_t qd = static_cast<size_t>(cfg.q_dim()), kvd = static_cast<size_t>(cfg.kv_dim());
  // Residual stream, q, attention output (fp32), current K/V rows (fp16), the RoPE table.
  size_t b = 4 * H + 4 * qd + 4 * qd + 2 * kvd + 2 * kvd + rope_table_row_bytes(cfg.head_dim);
  if (quantized) {
    // int8 activations of the widest input, scale and sum, fp16 outputs of the four GEMMs.
    b += std::max({H, qd, I}) + 4 + 2 * (qd + 2 * kvd) + 2 * H + 4 * I + 2 * H;
  } else {
    b += 4 * H + 4 * (qd + 2 * kvd) + 4 * H + 8 * I + 4 * I;
  }
  return b;
}

size_t step_out_row_bytes(const ModelConfig& cfg) {
  const size_t H = static_cast<size_t>(cfg.hidden_size);
  // xr, hr (fp32), h16, fp32 logits (counted twice: the sampler's scratch), id.
  return 4 * H + 4 * H + 2 * H + 8 * static_cast<size_t>(cfg.vocab_size) + 4;
}

DeviceMemory device_memory() {
  DeviceAllocator::global().trim();
  size_t free_b = 0, total_b = 0;
  cuda_check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  return {static_cast<int64_t>(free_b), static_cast<int64_t>(total_b)};
}

int64_t BatchPlan::need(int64_t batch) const {
  if (batch <= 0) return weights + reserve;
  const bool quantized = precision.quantized_activations();
  const int64_t row = static_cast<int64_t>(step_row_bytes(cfg, quantized));
  const int64_t out_row = static_cast<int64_t>(step_out_row_bytes(cfg));
  const int64_t attn_ws = static_cast<int64_t>(
      decode_attention_workspace_bytes(batch, cfg.num_heads, cfg.head_dim, seq_len));
  // The executor's pools: per layer, K and V apart, (pages + 1 scratch page) each.
  const int64_t page = kv_page_bytes(kv_format(precision.kv), cfg.num_kv_heads, cfg.head_dim);
  const int64_t pages = batch * pages_for_tokens(seq_len) + 1;
  const int64_t kv = 2 * cfg.num_layers * bucket(pages * page);
  // A prefill (or mixed) step: its rows, an output row per running sequence. The decode
  // buffers (largest bucket = batch) live beside it once decoding has started.
  const int64_t prefill = bucket(prefill_tokens * row + batch * out_row + attn_ws);
  const int64_t decode = bucket(batch * (row + out_row) + attn_ws);
  return weights + kv + prefill + decode + reserve;
}

BatchPlan plan_batch(const ModelConfig& cfg, const Precision& precision, int64_t seq_len,
                     int64_t prefill_tokens, const DeviceMemory& mem) {
  BatchPlan p;
  p.cfg = cfg;
  p.precision = precision;
  p.seq_len = seq_len;
  p.free = mem.free;
  p.total = mem.total;
  p.weights = static_cast<int64_t>(weight_footprint(cfg, precision.weights).allocated);
  const int64_t page = kv_page_bytes(kv_format(precision.kv), cfg.num_kv_heads, cfg.head_dim);
  p.kv_per_seq = 2 * cfg.num_layers * pages_for_tokens(seq_len) * page;
  p.prefill_tokens = prefill_tokens;
  // cuBLASLt and CUTLASS workspaces, CUDA graphs, the sampler, page tables, fragmentation of
  // the caching allocator between rounds: 2 GiB plus 2% of the device.
  p.reserve = 2 * kGiB + mem.total / 50;
  // need() is monotone in the batch: bisect for the largest batch that fits.
  int64_t lo = 0, hi = std::max<int64_t>(1, mem.free / std::max<int64_t>(p.kv_per_seq, 1)) + 1;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (p.need(mid) <= mem.free ? lo : hi) = mid;
  }
  p.max_batch = lo;
  return p;
}

int64_t default_prefill_tokens(const ModelConfig& cfg, const Precision& precision,
                               int64_t input_len, int64_t seq_len, const DeviceMemory& mem) {
  const int64_t weights = static_cast<int64_t>(weight_footprint(cfg, precision.weights).allocated);
  const int64_t row = static_cast<int64_t>(step_row_bytes(cfg, precision.quantized_activations()));
  const int64_t cap = std::max<int64_t>(0, mem.free - weights) / 10 / row;
  const int64_t rows = std::min<int64_t>(int64_t{1} << 16, cap);
  const int64_t prompts = std::max<int64_t>(1, rows / std::max<int64_t>(input_len, 1));
  return std::max(prompts * input_len, seq_len);
}

}  // namespace qserve::cuda
