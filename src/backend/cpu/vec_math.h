// Internal to the CPU backend: the exp-heavy row loops of softmax and SwiGLU, vectorised with
// AVX2/FMA when gemm's use_avx2() says so, else plain loops over std::exp.
//
// The AVX2 exp is Cephes' expf (range reduction by ln 2 in two parts plus a degree-5
// polynomial), within 1 ulp of the exact result over the normal range (tests/backend checks
// it); PyTorch's CPU softmax and silu also use a vectorised 1-ulp exp (Sleef), so this costs
// the reference nothing in fidelity. Results below FLT_MIN may differ from libm by a denormal.
#pragma once

#include <cstdint>

namespace qserve::cpu::detail {

// Softmax of one attention row in place: s[i] = s[i] * scale for i in [lo, hi], then
// p[i] = exp(s[i] - max) / sum over [lo, hi]; entries outside [lo, hi] of [0, n) become 0.
void softmax_row(float* s, int64_t n, int64_t lo, int64_t hi, float scale);
// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i].
void silu_mul_row(const float* gate, const float* up, int64_t n, float* out);

// The kernels behind them, for tests.
void softmax_row_avx2(float* s, int64_t n, int64_t lo, int64_t hi, float scale);
void softmax_row_portable(float* s, int64_t n, int64_t lo, int64_t hi, float scale);
void silu_mul_row_avx2(const float* gate, const float* up, int64_t n, float* out);
void silu_mul_row_portable(const float* gate, const float* up, int64_t n, float* out);
// out[i] = exp(x[i]) with the AVX2 exp (only on CPUs with AVX2/FMA).
void exp_avx2(const float* x, int64_t n, float* out);

}  // namespace qserve::cpu::detail
