// One varlen forward step of the Llama family on the CPU reference ops, at any precision: each
// linear runs at its own precision (model/linear.h), the KV cache at its own (model/kv_cache.h).
// With fp32 linears and the fp32 cache this is exactly the reference forward. With
// LoadOptions::qserve_numerics the activations are rounded to fp16 where QServe rounds them.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "model/llama_model.h"
#include "model/paged_attention.h"
#include "model/qserve_numerics.h"
#include "quant/act_quant.h"
#include "quant/norm_quant.h"
#include "quant/qserve_decode_attention.h"
#include "quant/silu_mul_quant.h"

namespace qserve {

namespace {

// y = lin(norm(x)). A quantized linear gets its int8 input from QServe's fused norm + per-token
// quant (quant/norm_quant.h, fp32 input, gamma applied); an fp32 linear gets fp32 RMSNorm, or
// with QServe numerics QServe's fp16 RMSNorm and an fp16 output (its W16A16 model, §8.2).
void norm_linear(const float* x, const std::vector<float>& gamma, float eps, int64_t t, int64_t dim,
                 quant::NormKind kind, bool qserve_numerics, const Linear& lin, float* h,
                 QuantizedActivations& qa, float* y) {
  if (!lin.quantized()) {
    if (qserve_numerics) {
      qserve_rms_norm(x, gamma.data(), eps, t, dim, h);
      lin.apply(h, t, y);
      round_to_fp16_values(y, t * lin.n());
      return;
    }
    cpu::rms_norm(x, gamma.data(), eps, t, dim, h);
    lin.apply(h, t, y);
    return;
  }
  qa.resize(t, dim, lin.needs_act_sum());
  quant::norm_quantize_per_token(
      x, gamma.data(), eps, t, dim, kind,
      {.q = qa.q.data(), .scale = qa.scale.data(), .sum = qa.sum_or_null()});
  lin.apply(qa, y);
}

// y = down(silu(gate) * up). A quantized down_proj gets QServe's SiLU·mul (fp16 output) fused
// with per-token quant; an fp32 one the fp32 SiLU·mul. With QServe numerics SiLU uses the
// correctly rounded exp (model/qserve_numerics.h) and an fp32 down_proj's output is fp16.
void silu_mul_linear(const float* gu, int64_t t, int64_t inter, bool qserve_numerics,
                     const Linear& down, float* act, QuantizedActivations& qa, float* y) {
  if (qserve_numerics) {
    std::vector<uint16_t> act16(static_cast<size_t>(t * inter));
    qserve_silu_mul(gu, t, inter, act16.data());
    if (down.quantized()) {
      qa.resize(t, inter, down.needs_act_sum());
      quant::quantize_per_token(act16.data(), t, inter, qa.q.data(), qa.scale.data(),
                                qa.sum_or_null());
      down.apply(qa, y);
      return;
    }
    for (size_t i = 0; i < act16.size(); ++i) act[i] = fp16_to_float(act16[i]);
    down.apply(act, t, y);
    round_to_fp16_values(y, t * down.n());
    return;
  }
  if (!down.quantized()) {
    cpu::silu_mul(gu, t, inter, act);
    down.apply(act, t, y);
    return;
  }
  qa.resize(t, inter, down.needs_act_sum());
  quant::silu_mul_quantize_per_token(gu, t, inter, qa.q.data(), qa.scale.data(), qa.sum_or_null(),
                                     nullptr);
  down.apply(qa, y);
}

// One layer's KV append and attention over the paged cache with QServe numerics: decode tokens
// (one new token with earlier context, no binding window) go through QServe's decode kernel
// (quant/qserve_decode_attention.h) when head_dim is 128; every other sequence through
// paged_attention_step (fp32 reference attention). q, k, v hold fp16 values.
void paged_attention_qserve(const float* q, const float* k, const float* v, const uint16_t* k16,
                            const uint16_t* v16, PagedKvCache& cache, int64_t layer,
                            std::span<const SeqSpan> seqs, int64_t heads, int64_t head_dim,
                            int64_t window, float* out) {
  quant::KvPagePool& pool = cache.pool(layer);
  const int64_t kvd = pool.layout.kv_heads * head_dim, qd = heads * head_dim;
  for (const SeqSpan& s : seqs) {
    const int64_t total = s.context_len + s.num_tokens;
    const bool decode = s.num_tokens == 1 && s.context_len > 0 && !(window > 0 && total > window);
    if (!decode || head_dim != quant::kQServeDecodeHeadDim) {
      paged_attention_step(q, k, v, k16, v16, cache, layer, {&s, 1}, heads, head_dim, window, out);
      continue;
    }
    const std::span<const int64_t> table = cache.page_table(s.kv_slot);
    const int64_t row = s.token_offset;
    quant::kv_append(pool, table, s.context_len, k16 + row * kvd, v16 + row * kvd);
    quant::decode_attention_qserve(pool.view(), table, total, q + row * qd, heads, k + row * kvd,
                                   v + row * kvd, out + row * qd);
  }
}

// x += proj; with QServe numerics an fp16 add (both operands are fp16 values, one rounding).
void add_residual(std::vector<float>& x, const std::vector<float>& proj, bool qserve_numerics) {
  for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
  if (qserve_numerics) round_to_fp16_values(x.data(), static_cast<int64_t>(x.size()));
}

void check_cache(const KvCache& cache, const ModelConfig& cfg) {
  if (const cpu::KVCacheF32* c = cache.f32()) {
    check(c->layers == cfg.num_layers && c->kv_heads == cfg.num_kv_heads &&
              c->head_dim == cfg.head_dim,
          "forward: the KV cache was not made for this model");
    return;
  }
  const PagedKvCache& p = *cache.paged();
  check(p.layers() == cfg.num_layers && p.pool(0).layout.kv_heads == cfg.num_kv_heads &&
            p.pool(0).layout.head_dim == cfg.head_dim,
        "forward: the KV cache was not made for this model");
}

}  // namespace

LlamaModel::LlamaModel(ModelConfig cfg, LlamaWeights w, LoadOptions opts)
    : cfg_(std::move(cfg)),
      w_(std::move(w)),
      opts_(opts),
      inv_freq_(cpu::rope_inv_freq(cfg_)),
      qserve_inv_freq_(qserve_numerics() ? qserve_rope_inv_freq(cfg_) : std::vector<float>{}) {
  // Refuse a KV precision the shapes cannot take (KV4 packs channel pairs) at load, not at the
  // first forward.
  if (opts_.precision.quantized_kv()) {
    quant::make_kv_layout(
        opts_.precision.kv == KvPrecision::kKv8 ? quant::KvBits::k8 : quant::KvBits::k4,
        cfg_.num_kv_heads, cfg_.head_dim);
  }
}

int64_t LlamaModel::parameter_count() const {
  int64_t n = static_cast<int64_t>(w_.embed.size() + w_.final_norm.size());
  for (const auto& L : w_.layers) {
    n += static_cast<int64_t>(L.input_norm.size() + L.post_norm.size());
    n += L.qkv.parameter_count() + L.o.parameter_count() + L.gate_up.parameter_count() +
         L.down.parameter_count();
  }
  if (!cfg_.tie_word_embeddings) {
    n += static_cast<int64_t>(w_.lm_head.w.size() + w_.lm_head.bias.size());
  }
  return n;
}

KvCache LlamaModel::make_cache(int64_t slots, int64_t max_len) const {
  const KvPrecision kv = opts_.precision.kv;
  if (kv == KvPrecision::kKv16) {
    cpu::KVCacheF32 c;
    c.allocate(cfg_.num_layers, slots, max_len, cfg_.num_kv_heads, cfg_.head_dim);
    return KvCache(std::move(c));
  }
  const quant::KvBits bits = kv == KvPrecision::kKv8 ? quant::KvBits::k8 : quant::KvBits::k4;
  return KvCache(
      PagedKvCache(bits, cfg_.num_layers, slots, max_len, cfg_.num_kv_heads, cfg_.head_dim));
}

std::vector<float> LlamaModel::forward(std::span<const int32_t> tokens,
                                       std::span<const SeqSpan> seqs, KvCache& cache,
                                       LogitsMode mode, ForwardTrace* trace) const {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, V = cfg_.vocab_size;
  const int64_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim(), hd = cfg_.head_dim;

  // Validate the model and the batch layout before touching anything.
  check(!w_.device_seed.has_value(),
        "forward: this synthetic model's weights exist only on the GPU (generated there by the "
        "CUDA executor); the CPU backend needs host weights: run it with --device cuda, or use "
        "LlamaModel::synthetic for a host copy");
  check_cache(cache, cfg_);
  int64_t expect_offset = 0;
  for (const SeqSpan& s : seqs) {
    check(s.token_offset == expect_offset && s.num_tokens > 0,
          "forward: sequence spans must be contiguous, in order and non-empty");
    check(s.kv_slot >= 0 && s.kv_slot < cache.slots(), "forward: kv_slot out of range");
    check(s.context_len >= 0 && s.context_len + s.num_tokens <= cache.max_len(),
          "forward: sequence of " + std::to_string(s.context_len + s.num_tokens) +
              " tokens exceeds the cache length " + std::to_string(cache.max_len()));
    expect_offset += s.num_tokens;
  }
  check(expect_offset == T, "forward: token count does not match the sequence spans");
  for (int32_t t : tokens) {
    check(t >= 0 && t < V, "forward: token id " + std::to_string(t) + " outside the vocabulary");
  }
  if (trace != nullptr) {
    check(trace->layer >= 0 && trace->layer < cfg_.num_layers, "forward: trace layer out of range");
  }
  PagedKvCache* paged = cache.paged();
  if (paged != nullptr) {
    for (const SeqSpan& s : seqs) paged->reserve(s.kv_slot, s.context_len + s.num_tokens);
  }

  std::vector<int64_t> positions(static_cast<size_t>(T));
  for (const SeqSpan& s : seqs) {
    for (int64_t j = 0; j < s.num_tokens; ++j) positions[s.token_offset + j] = s.context_len + j;
  }

  const bool qn = qserve_numerics();
  std::vector<float> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(&x[t * H], &w_.embed[static_cast<size_t>(tokens[t]) * H], H * sizeof(float));
  }
  // QServe gathers fp16 embedding rows; a no-op for the fp16 embeddings of QServe checkpoints.
  if (qn) round_to_fp16_values(x.data(), T * H);

  std::vector<float> h(x.size()), qkv(static_cast<size_t>(T * (qd + 2 * kvd)));
  std::vector<float> q(static_cast<size_t>(T * qd)), k(static_cast<size_t>(T * kvd)),
      v(static_cast<size_t>(T * kvd)), attn(static_cast<size_t>(T * qd));
  std::vector<float> proj(x.size()), gu(static_cast<size_t>(T * 2 * I)),
      act(static_cast<size_t>(T * I));
  std::vector<uint16_t> k16, v16;  // fp16 K/V for a quantized cache
  if (paged != nullptr) {
    k16.resize(k.size());
    v16.resize(v.size());
  }
  QuantizedActivations qa;
  const int64_t window = cfg_.sliding_window.value_or(0);
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const quant::NormKind norm_kind =
      opts_.qserve_norm ? quant::NormKind::kQServeLayerNorm : quant::NormKind::kRmsNorm;

  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const LayerWeights& L = w_.layers[static_cast<size_t>(l)];
    // Attention block.
    norm_linear(x.data(), L.input_norm, eps, T, H, norm_kind, qn, L.qkv, h.data(), qa, qkv.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* row = &qkv[t * (qd + 2 * kvd)];
      std::memcpy(&q[t * qd], row, qd * sizeof(float));
      std::memcpy(&k[t * kvd], row + qd, kvd * sizeof(float));
      std::memcpy(&v[t * kvd], row + qd + kvd, kvd * sizeof(float));
    }
    if (qn) {
      // QServe's RoPE writes fp16 q and k (§7.1); v is a linear output, already fp16.
      qserve_rope(q.data(), positions.data(), T, cfg_.num_heads, hd, qserve_inv_freq_);
      qserve_rope(k.data(), positions.data(), T, cfg_.num_kv_heads, hd, qserve_inv_freq_);
    } else {
      cpu::rope(q.data(), positions.data(), T, cfg_.num_heads, hd, inv_freq_);
      cpu::rope(k.data(), positions.data(), T, cfg_.num_kv_heads, hd, inv_freq_);
    }
    if (paged != nullptr) {
      // QServe's K/V are fp16: the cache quantizes those values and attention reads them.
      round_to_fp16(k.data(), T * kvd, k16.data());
      round_to_fp16(v.data(), T * kvd, v16.data());
    }
    const bool traced = trace != nullptr && trace->layer == l;
    if (traced) {
      trace->q = q;
      trace->k = k;
      trace->v = v;
    }
    if (paged != nullptr && qn) {
      paged_attention_qserve(q.data(), k.data(), v.data(), k16.data(), v16.data(), *paged, l, seqs,
                             cfg_.num_heads, hd, window, attn.data());
    } else if (paged != nullptr) {
      paged_attention_step(q.data(), k.data(), v.data(), k16.data(), v16.data(), *paged, l, seqs,
                           cfg_.num_heads, hd, window, attn.data());
    } else {
      cpu::KVCacheF32& c = *cache.f32();
      cpu::kv_append(c, l, seqs, k.data(), v.data());
      cpu::attention(q.data(), c, l, seqs, cfg_.num_heads, window, attn.data());
    }
    // QServe's attention writes fp16 (the decode kernel's output already is).
    if (qn) round_to_fp16_values(attn.data(), T * qd);
    if (traced) trace->attn = attn;
    L.o.apply(attn.data(), T, proj.data());  // a quantized o_proj quantizes its input plainly
    if (qn && !L.o.quantized()) round_to_fp16_values(proj.data(), T * H);
    add_residual(x, proj, qn);
    // MLP block.
    norm_linear(x.data(), L.post_norm, eps, T, H, norm_kind, qn, L.gate_up, h.data(), qa,
                gu.data());
    silu_mul_linear(gu.data(), T, I, qn, L.down, act.data(), qa, proj.data());
    add_residual(x, proj, qn);
    if (traced) trace->hidden = x;
  }

  // Final norm and lm_head on the rows whose logits are wanted (fp32 at every precision; rounded
  // as QServe does with QServe numerics).
  std::vector<int64_t> rows;
  if (mode == LogitsMode::AllTokens) {
    rows.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) rows[t] = t;
  } else {
    for (const SeqSpan& s : seqs) rows.push_back(s.token_offset + s.num_tokens - 1);
  }
  const int64_t R = static_cast<int64_t>(rows.size());
  std::vector<float> hr(static_cast<size_t>(R * H));
  for (int64_t r = 0; r < R; ++r) {
    if (qn) {
      qserve_rms_norm(&x[rows[r] * H], w_.final_norm.data(), eps, 1, H, &hr[r * H]);
    } else {
      cpu::rms_norm(&x[rows[r] * H], w_.final_norm.data(), eps, 1, H, &hr[r * H]);
    }
  }
  std::vector<float> logits(static_cast<size_t>(R * V));
  cpu::linear(hr.data(), R, w_.lm_head, logits.data());
  // QServe's lm_head (an fp16 nn.Linear) writes fp16 logits.
  if (qn) round_to_fp16_values(logits.data(), R * V);
  return logits;
}

}  // namespace qserve
