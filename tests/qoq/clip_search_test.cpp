// Per-channel clipping search: a row with one outlier input weight and inputs that rarely touch it
// gets a range ratio below 1; every chosen ratio is on the 81-point grid and its output error is
// no larger than the unclipped one.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>

#include "qoq/weight_quantization.h"
#include "quant/rtn_quantizers.h"

namespace qserve::qoq {
namespace {

double row_error(const cpu::LinearF32& lin, int64_t r, float ratio, const std::vector<float>& x,
                 int64_t rows) {
  const float* w = &lin.w[static_cast<size_t>(r * lin.k)];
  const std::array<float, 2> range{ratio * *std::min_element(w, w + lin.k),
                                   ratio * *std::max_element(w, w + lin.k)};
  const quant::ChannelGrid4 g = quant::channel_grid4(range, quant::ZeroPointMode::kPostScale);
  double e = 0;
  for (int64_t t = 0; t < rows; ++t) {
    double d = 0;
    for (int64_t c = 0; c < lin.k; ++c)
      d += double(x[t * lin.k + c]) * (g.dequant(g.code(w[c])) - w[c]);
    e += d * d;
  }
  return e;
}

TEST(ClipSearch, ClipsOutlierRowsAndNeverIncreasesTheError) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd;
  cpu::LinearF32 lin;
  lin.n = 6;
  lin.k = 64;
  lin.w.resize(static_cast<size_t>(lin.n * lin.k));
  for (float& v : lin.w) v = 0.05f * nd(rng);
  lin.w[3] = 1.5f;  // row 0: one large outlier weight on an input that is nearly always 0
  const int64_t rows = 128;
  std::vector<float> x(static_cast<size_t>(rows * lin.k));
  for (float& v : x) v = nd(rng);
  for (int64_t t = 0; t < rows; ++t) x[t * lin.k + 3] = 1e-3f * nd(rng);
  const std::vector<float> ratio = search_clip_ratios(lin, x.data(), rows);
  EXPECT_LT(ratio[0], 0.9f);
  for (int64_t r = 0; r < lin.n; ++r) {
    const double k = (1.0 - ratio[r]) * 80.0 / 0.8;
    EXPECT_NEAR(k, std::nearbyint(k), 1e-3) << "ratio " << ratio[r] << " is not on the grid";
    EXPECT_LE(row_error(lin, r, ratio[r], x, rows), row_error(lin, r, 1.0f, x, rows) * (1 + 1e-6));
  }
}

}  // namespace
}  // namespace qserve::qoq
