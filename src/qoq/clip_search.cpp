// Per-channel clipping search for W4 per-channel weights (qoq-algorithm.md §1.5, "gchn" GridSearch
// with max_shrink 0.2, 80 grids): each output row keeps the range ratio with the smallest output
// error over the calibration subsample (first-seen wins ties). Errors are computed as one GEMM per
// candidate ratio: E = X_s (W^(r) - W)^T.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "core/thread_pool.h"
#include "qoq/weight_quantization.h"
#include "quant/rtn_quantizers.h"

namespace qserve::qoq {

std::vector<float> search_clip_ratios(const cpu::LinearF32& lin, const float* xs, int64_t rows) {
  const int64_t n = lin.n, k = lin.k;
  std::vector<float> best_ratio(static_cast<size_t>(n), 1.0f);
  if (rows == 0) return best_ratio;
  std::vector<float> vmin(static_cast<size_t>(n)), vmax(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    const float* w = &lin.w[static_cast<size_t>(r * k)];
    vmin[r] = *std::min_element(w, w + k);
    vmax[r] = *std::max_element(w, w + k);
  }
  std::vector<double> best_err(static_cast<size_t>(n), std::numeric_limits<double>::infinity());
  std::vector<float> d(static_cast<size_t>(n * k)), e(static_cast<size_t>(rows * n));
  constexpr int kGrids = 80;
  for (int g = 0; g <= kGrids; ++g) {
    const float ratio = g == 0 ? 1.0f : static_cast<float>(1.0 - 0.8 * g / kGrids);
    ThreadPool::global().parallel_for(n, 8, [&](int64_t b, int64_t en) {
      for (int64_t r = b; r < en; ++r) {
        const std::array<float, 2> range{ratio * vmin[r], ratio * vmax[r]};
        const quant::ChannelGrid4 grid =
            quant::channel_grid4(range, quant::ZeroPointMode::kPostScale);
        const float* w = &lin.w[static_cast<size_t>(r * k)];
        for (int64_t c = 0; c < k; ++c) d[r * k + c] = grid.dequant(grid.code(w[c])) - w[c];
      }
    });
    cpu::gemm_nt(xs, d.data(), e.data(), rows, n, k);
    for (int64_t r = 0; r < n; ++r) {
      double err = 0.0;
      for (int64_t t = 0; t < rows; ++t) err += static_cast<double>(e[t * n + r]) * e[t * n + r];
      if (err < best_err[r]) {
        best_err[r] = err;
        best_ratio[r] = ratio;
      }
    }
  }
  return best_ratio;
}

}  // namespace qserve::qoq
