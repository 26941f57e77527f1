// GPTQ (Frantar et al.; qoq-algorithm.md §1.5) with DeepCompressor's settings: act-order (columns
// by descending Hessian diagonal), damping 1% of the mean diagonal (+0.1% per Cholesky retry, at
// most `max_retries`), static groups (the grid of every column is fixed before GPTQ and looked up
// by the column's original index), error feedback through the upper Cholesky factor of H^-1.
//
// Rows are independent given H, so each row runs the column sweep on its own (rows in parallel);
// this is the same arithmetic as the lazy-batch formulation (block size only changes the order of
// the updates).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace qserve::qoq {

struct GptqOptions {
  double damp = 0.01;
  bool act_order = true;
  int max_retries = 250;
};

struct GptqInfo {
  int retries = 0;           // extra damping rounds the Cholesky factorisation needed
  int64_t dead_columns = 0;  // inputs that were always zero (H_jj = 0)
};

// Grid value of `v` for (row, original column col); also records the code (the caller's job).
using ColumnQuantizer = std::function<float(int64_t row, int64_t col, float v)>;

// w [n, k]: replaced by its quantized values (in the caller's working domain). hessian [k, k]:
// sum of x x^T of the inputs (any positive scale). Throws qserve::Error when H stays
// non-positive-definite after all retries.
GptqInfo gptq_quantize(float* w, int64_t n, int64_t k, std::vector<double> hessian,
                       const ColumnQuantizer& quant, const GptqOptions& opts = {});

// Round-to-nearest with the same quantizer (the --no-gptq path): w[r, c] = quant(r, c, w[r, c]).
void rtn_quantize(float* w, int64_t n, int64_t k, const ColumnQuantizer& quant);

}  // namespace qserve::qoq
