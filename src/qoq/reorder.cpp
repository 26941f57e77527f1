// Activation-aware channel reordering of the o_proj and down_proj inputs (qoq-algorithm.md §1.3):
// channels of similar magnitude land in the same 128-wide weight group. Only permutations that
// fold into the neighbouring weights are used, so nothing changes at runtime.
#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "qoq/transforms.h"

namespace qserve::qoq {

namespace {

void permute_rows(cpu::LinearF32& l, const std::vector<int64_t>& perm, int64_t row0) {
  const int64_t n = static_cast<int64_t>(perm.size());
  std::vector<float> w(static_cast<size_t>(n * l.k));
  for (int64_t i = 0; i < n; ++i) {
    std::copy_n(&l.w[static_cast<size_t>((row0 + perm[i]) * l.k)], l.k,
                &w[static_cast<size_t>(i * l.k)]);
  }
  std::copy(w.begin(), w.end(), l.w.begin() + row0 * l.k);
  if (!l.bias.empty()) {
    std::vector<float> b(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) b[i] = l.bias[static_cast<size_t>(row0 + perm[i])];
    std::copy(b.begin(), b.end(), l.bias.begin() + row0);
  }
}

void permute_columns(cpu::LinearF32& l, const std::vector<int64_t>& perm) {
  std::vector<float> row(static_cast<size_t>(l.k));
  for (int64_t r = 0; r < l.n; ++r) {
    float* w = &l.w[static_cast<size_t>(r * l.k)];
    for (int64_t c = 0; c < l.k; ++c) row[c] = w[perm[c]];
    std::copy(row.begin(), row.end(), w);
  }
}

}  // namespace

std::vector<int64_t> ascending_order(std::span<const float> m) {
  std::vector<int64_t> idx(m.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return m[a] < m[b]; });
  return idx;
}

void reorder_down(FpLayer& l, const std::vector<int64_t>& perm) {
  check(static_cast<int64_t>(perm.size()) == l.down.k, "reorder_down: permutation size");
  permute_columns(l.down, perm);
  permute_rows(l.gate, perm, 0);
  permute_rows(l.up, perm, 0);
}

std::vector<int64_t> o_proj_order(std::span<const float> m, const HeadShape& hs,
                                  std::vector<int64_t>& v_perm) {
  const int64_t d = hs.head_dim, r = hs.group();
  check(static_cast<int64_t>(m.size()) == hs.heads * d, "o_proj_order: statistics size");
  std::vector<int64_t> perm(static_cast<size_t>(hs.heads * d));
  v_perm.assign(static_cast<size_t>(hs.kv_heads * d), 0);
  std::vector<float> gm(static_cast<size_t>(d));
  for (int64_t g = 0; g < hs.kv_heads; ++g) {
    std::fill(gm.begin(), gm.end(), 0.0f);
    for (int64_t h = g * r; h < (g + 1) * r; ++h) {
      for (int64_t c = 0; c < d; ++c) gm[c] = std::max(gm[c], m[static_cast<size_t>(h * d + c)]);
    }
    const std::vector<int64_t> order = ascending_order(gm);
    for (int64_t c = 0; c < d; ++c) {
      v_perm[static_cast<size_t>(g * d + c)] = g * d + order[c];
      for (int64_t h = g * r; h < (g + 1) * r; ++h)
        perm[static_cast<size_t>(h * d + c)] = h * d + order[c];
    }
  }
  return perm;
}

void reorder_o(FpLayer& l, const std::vector<int64_t>& o_perm, const std::vector<int64_t>& v_perm) {
  check(
      static_cast<int64_t>(o_perm.size()) == l.o.k && static_cast<int64_t>(v_perm.size()) == l.v.n,
      "reorder_o: permutation sizes");
  permute_columns(l.o, o_perm);
  permute_rows(l.v, v_perm, 0);
}

}  // namespace qserve::qoq
