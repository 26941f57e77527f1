// Norm folding and Hadamard rotations (qoq/transforms.h).
#include "core/error.h"
#include "qoq/transforms.h"

namespace qserve::qoq {

HeadShape head_shape(const ModelConfig& cfg) {
  return {cfg.num_heads, cfg.num_kv_heads, cfg.head_dim};
}

namespace {

void scale_columns(cpu::LinearF32& l, const std::vector<float>& g) {
  for (int64_t r = 0; r < l.n; ++r) {
    float* w = &l.w[static_cast<size_t>(r * l.k)];
    for (int64_t c = 0; c < l.k; ++c) w[c] *= g[static_cast<size_t>(c)];
  }
}

void rotate_producer(cpu::LinearF32& l, const HadamardRotation& r) {
  r.apply_left_transposed(l.w.data(), l.k);
  if (!l.bias.empty()) r.apply_left_transposed(l.bias.data(), 1);
}

}  // namespace

void fold_norms(FpLayer& l) {
  for (cpu::LinearF32* c : {&l.q, &l.k, &l.v}) scale_columns(*c, l.input_norm);
  for (cpu::LinearF32* c : {&l.gate, &l.up}) scale_columns(*c, l.post_norm);
  std::fill(l.input_norm.begin(), l.input_norm.end(), 1.0f);
  std::fill(l.post_norm.begin(), l.post_norm.end(), 1.0f);
}

void fold_final_norm(std::vector<float>& lm_head, int64_t hidden, std::vector<float>& final_norm) {
  const int64_t rows = static_cast<int64_t>(lm_head.size()) / hidden;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < hidden; ++c) {
      lm_head[static_cast<size_t>(r * hidden + c)] *= final_norm[static_cast<size_t>(c)];
    }
  }
  std::fill(final_norm.begin(), final_norm.end(), 1.0f);
}

void rotate_residual(FpLayer& l, const HadamardRotation& r) {
  for (cpu::LinearF32* c : {&l.q, &l.k, &l.v, &l.gate, &l.up}) r.apply_right(c->w.data(), c->n);
  rotate_producer(l.o, r);
  rotate_producer(l.down, r);
}

void rotate_rows(std::vector<float>& w, const HadamardRotation& r) {
  r.apply_right(w.data(), static_cast<int64_t>(w.size()) / r.size());
}

void rotate_value_output(FpLayer& l, const HadamardRotation& rd, const HeadShape& hs) {
  const int64_t d = hs.head_dim, H = l.v.k;
  check(rd.size() == d, "rotate_value_output: rotation order differs from head_dim");
  for (int64_t g = 0; g < hs.kv_heads; ++g) {
    rd.apply_left_transposed(&l.v.w[static_cast<size_t>(g * d * H)], H);
    if (!l.v.bias.empty()) rd.apply_left_transposed(&l.v.bias[static_cast<size_t>(g * d)], 1);
  }
  // o is [H, heads * d] row-major = [H * heads, d]: every head's column block of every row is
  // one contiguous d-vector.
  rd.apply_right(l.o.w.data(), l.o.n * hs.heads);
}

}  // namespace qserve::qoq
