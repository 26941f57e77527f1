// One varlen forward step of the Llama family on the CPU reference ops.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "model/llama_model.h"

namespace qserve {

LlamaModel::LlamaModel(ModelConfig cfg, LlamaWeights w)
    : cfg_(std::move(cfg)), w_(std::move(w)), inv_freq_(cpu::rope_inv_freq(cfg_)) {}

int64_t LlamaModel::parameter_count() const {
  int64_t n = static_cast<int64_t>(w_.embed.size() + w_.final_norm.size());
  auto lin = [](const cpu::LinearF32& l) { return static_cast<int64_t>(l.w.size() + l.bias.size()); };
  for (const auto& L : w_.layers) {
    n += static_cast<int64_t>(L.input_norm.size() + L.post_norm.size());
    n += lin(L.qkv) + lin(L.o) + lin(L.gate_up) + lin(L.down);
  }
  if (!cfg_.tie_word_embeddings) n += lin(w_.lm_head);
  return n;
}

cpu::KVCacheF32 LlamaModel::make_cache(int64_t slots, int64_t max_len) const {
  cpu::KVCacheF32 c;
  c.allocate(cfg_.num_layers, slots, max_len, cfg_.num_kv_heads, cfg_.head_dim);
  return c;
}

std::vector<float> LlamaModel::forward(std::span<const int32_t> tokens,
                                       std::span<const SeqSpan> seqs, cpu::KVCacheF32& cache,
                                       LogitsMode mode) const {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, V = cfg_.vocab_size;
  const int64_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim(), hd = cfg_.head_dim;

  // Validate the batch layout before touching anything.
  int64_t expect_offset = 0;
  for (const SeqSpan& s : seqs) {
    check(s.token_offset == expect_offset && s.num_tokens > 0,
          "forward: sequence spans must be contiguous, in order and non-empty");
    check(s.kv_slot >= 0 && s.kv_slot < cache.slots, "forward: kv_slot out of range");
    check(s.context_len >= 0 && s.context_len + s.num_tokens <= cache.max_len,
          "forward: sequence of " + std::to_string(s.context_len + s.num_tokens) +
              " tokens exceeds the cache length " + std::to_string(cache.max_len));
    expect_offset += s.num_tokens;
  }
  check(expect_offset == T, "forward: token count does not match the sequence spans");
  for (int32_t t : tokens) {
    check(t >= 0 && t < V, "forward: token id " + std::to_string(t) + " outside the vocabulary");
  }

  std::vector<int64_t> positions(static_cast<size_t>(T));
  for (const SeqSpan& s : seqs) {
    for (int64_t j = 0; j < s.num_tokens; ++j) positions[s.token_offset + j] = s.context_len + j;
  }

  std::vector<float> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(&x[t * H], &w_.embed[static_cast<size_t>(tokens[t]) * H], H * sizeof(float));
  }

  std::vector<float> h(x.size()), qkv(static_cast<size_t>(T * (qd + 2 * kvd)));
  std::vector<float> q(static_cast<size_t>(T * qd)), k(static_cast<size_t>(T * kvd)),
      v(static_cast<size_t>(T * kvd)), attn(static_cast<size_t>(T * qd));
  std::vector<float> proj(x.size()), gu(static_cast<size_t>(T * 2 * I)), act(static_cast<size_t>(T * I));
  const int64_t window = cfg_.sliding_window.value_or(0);
  const float eps = static_cast<float>(cfg_.rms_norm_eps);

  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    const LayerWeights& L = w_.layers[static_cast<size_t>(l)];
    // Attention block.
    cpu::rms_norm(x.data(), L.input_norm.data(), eps, T, H, h.data());
    cpu::linear(h.data(), T, L.qkv, qkv.data());
    for (int64_t t = 0; t < T; ++t) {
      const float* row = &qkv[t * (qd + 2 * kvd)];
      std::memcpy(&q[t * qd], row, qd * sizeof(float));
      std::memcpy(&k[t * kvd], row + qd, kvd * sizeof(float));
      std::memcpy(&v[t * kvd], row + qd + kvd, kvd * sizeof(float));
    }
    cpu::rope(q.data(), positions.data(), T, cfg_.num_heads, hd, inv_freq_);
    cpu::rope(k.data(), positions.data(), T, cfg_.num_kv_heads, hd, inv_freq_);
    cpu::kv_append(cache, l, seqs, k.data(), v.data());
    cpu::attention(q.data(), cache, l, seqs, cfg_.num_heads, window, attn.data());
    cpu::linear(attn.data(), T, L.o, proj.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
    // MLP block.
    cpu::rms_norm(x.data(), L.post_norm.data(), eps, T, H, h.data());
    cpu::linear(h.data(), T, L.gate_up, gu.data());
    cpu::silu_mul(gu.data(), T, I, act.data());
    cpu::linear(act.data(), T, L.down, proj.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
  }

  // Final norm and lm_head on the rows whose logits are wanted.
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
    cpu::rms_norm(&x[rows[r] * H], w_.final_norm.data(), eps, 1, H, &hr[r * H]);
  }
  std::vector<float> logits(static_cast<size_t>(R * V));
  cpu::linear(hr.data(), R, w_.lm_head, logits.data());
  return logits;
}

}  // namespace qserve
