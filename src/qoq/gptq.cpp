// GPTQ: Cholesky of the damped, permuted Hessian and the per-row error-feedback sweep.
#include "qoq/gptq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qserve::qoq {

namespace {

// Lower Cholesky factor of a [k, k] (in place, lower triangle); false if not positive definite.
bool cholesky_lower(std::vector<double>& a, int64_t k) {
  for (int64_t j = 0; j < k; ++j) {
    double d = a[j * k + j];
    const double* lj = &a[j * k];
    for (int64_t m = 0; m < j; ++m) d -= lj[m] * lj[m];
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    a[j * k + j] = ljj;
    ThreadPool::global().parallel_for(k - j - 1, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = j + 1 + b; i < j + 1 + e; ++i) {
        double s = a[i * k + j];
        const double* li = &a[i * k];
        for (int64_t m = 0; m < j; ++m) s -= li[m] * lj[m];
        a[i * k + j] = s / ljj;
      }
    });
  }
  return true;
}

// Inverse of a lower-triangular L [k, k] (lower triangle of `l`), returned lower-triangular.
std::vector<double> invert_lower(const std::vector<double>& l, int64_t k) {
  std::vector<double> inv(static_cast<size_t>(k * k), 0.0);
  ThreadPool::global().parallel_for(k, 8, [&](int64_t b, int64_t e) {
    std::vector<double> x(static_cast<size_t>(k));
    for (int64_t j = b; j < e; ++j) {
      // Column j of L^-1: solve L x = e_j (x_i = 0 for i < j).
      x[j] = 1.0 / l[j * k + j];
      for (int64_t i = j + 1; i < k; ++i) {
        double s = 0.0;
        for (int64_t m = j; m < i; ++m) s += l[i * k + m] * x[m];
        x[i] = -s / l[i * k + i];
      }
      for (int64_t i = j; i < k; ++i) inv[i * k + j] = x[i];
    }
  });
  return inv;
}

}  // namespace

void rtn_quantize(float* w, int64_t n, int64_t k, const ColumnQuantizer& quant) {
  ThreadPool::global().parallel_for(n, 4, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      for (int64_t c = 0; c < k; ++c) w[r * k + c] = quant(r, c, w[r * k + c]);
    }
  });
}

GptqInfo gptq_quantize(float* w, int64_t n, int64_t k, std::vector<double> h,
                       const ColumnQuantizer& quant, const GptqOptions& opts) {
  check(static_cast<int64_t>(h.size()) == k * k, "gptq: Hessian size does not match the weight");
  GptqInfo info;
  // Dead inputs: H_jj = 1 and the column zeroed (its grid value is then that of 0).
  for (int64_t j = 0; j < k; ++j) {
    if (h[j * k + j] == 0.0) {
      h[j * k + j] = 1.0;
      for (int64_t r = 0; r < n; ++r) w[r * k + j] = 0.0f;
      ++info.dead_columns;
    }
  }
  std::vector<int64_t> perm(static_cast<size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  if (opts.act_order) {
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return h[a * k + a] > h[b * k + b]; });
  }
  double mean_diag = 0.0;
  for (int64_t j = 0; j < k; ++j) mean_diag += h[j * k + j];
  mean_diag /= static_cast<double>(k);

  // U, the upper Cholesky factor of H^-1 (H^-1 = U^T U), in permuted order: with J the reversal,
  // J H J = L L^T gives H = M M^T for the upper-triangular M = J L J, so U = M^-1 = J L^-1 J.
  std::vector<double> a(static_cast<size_t>(k * k));
  std::vector<double> linv;
  for (int attempt = 0;; ++attempt) {
    const double damp = mean_diag * (opts.damp + 0.001 * attempt);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        // Reversed permuted order: index i of J P H P J is permuted index k-1-i.
        const int64_t pi = perm[k - 1 - i], pj = perm[k - 1 - j];
        a[i * k + j] = h[pi * k + pj] + (i == j ? damp : 0.0);
      }
    }
    if (cholesky_lower(a, k)) {
      linv = invert_lower(a, k);
      info.retries = attempt;
      break;
    }
    check(attempt < opts.max_retries, "gptq: the Hessian is not positive definite after " +
                                          std::to_string(opts.max_retries) + " damping retries");
  }
  std::vector<float> u(static_cast<size_t>(k * k), 0.0f);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = i; j < k; ++j)
      u[i * k + j] = static_cast<float>(linv[(k - 1 - i) * k + (k - 1 - j)]);
  }
  linv.clear();

  constexpr int64_t kTile = 8;
  ThreadPool::global().parallel_for((n + kTile - 1) / kTile, 1, [&](int64_t b, int64_t e) {
    std::vector<float> row(static_cast<size_t>(kTile * k));
    for (int64_t t = b; t < e; ++t) {
      const int64_t r0 = t * kTile, rows = std::min(kTile, n - r0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < k; ++i) row[r * k + i] = w[(r0 + r) * k + perm[i]];
      }
      for (int64_t i = 0; i < k; ++i) {
        const float* ui = &u[i * k];
        for (int64_t r = 0; r < rows; ++r) {
          float* x = &row[r * k];
          const float v = x[i];
          const float qv = quant(r0 + r, perm[i], v);
          const float err = (v - qv) / ui[i];
          x[i] = qv;
          for (int64_t j = i + 1; j < k; ++j) x[j] -= err * ui[j];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < k; ++i) w[(r0 + r) * k + perm[i]] = row[r * k + i];
      }
    }
  });
  return info;
}

}  // namespace qserve::qoq
