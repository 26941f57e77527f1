// The elementwise ops of the forward's QServe-numerics mode (LoadOptions::qserve_numerics,
// docs/checkpoints.md, "QServe numerics"): the fp16 versions of RoPE, the final RMSNorm and
// SiLU·mul exactly as qserve-compat.md defines them, with correctly rounded exp / cos / sin / pow
// where QServe uses fast-math approximations that no CPU library reproduces. Both this engine and
// the reference generator (tools/qserve_reference) use the correctly rounded values, so they agree
// bit for bit (a single ulp difference in one activation flips A8 codes downstream and cascades).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "formats/hf_config.h"

namespace qserve {

// Rounds x[0..n) to fp16 values in place (fp32 storage, one RN rounding each).
void round_to_fp16_values(float* x, int64_t n);

// inv_j = fl32(rope_theta^(-2j/D)) computed in double (QServe: theta = p * base^(-2j/D), §7.1).
// With rope_scaling (which QServe ignores) the model's scaled frequencies (cpu::rope_inv_freq).
std::vector<float> qserve_rope_inv_freq(const ModelConfig& cfg);

// NeoX RoPE in place on x [t, heads, head_dim] (fp16 values), QServe's formula (§7.1):
// angle = fl32(p * inv_j), c/s = cos/sin(angle) correctly rounded to fp32,
// x'_j = fma(c, x_j, -(s * x_{j+D/2})), x'_{j+D/2} = fma(c, x_{j+D/2}, s * x_j), each rounded
// to fp16.
void qserve_rope(float* x, const int64_t* positions, int64_t t, int64_t heads, int64_t head_dim,
                 std::span<const float> inv_freq);

// True RMSNorm as QServe's rms_norm kernel (§5.4): blockDim B = min(dim, 1024), per-thread
// S = fma(x_i, x_i, S) over x_t, x_{t+B}, ..., block sum (§5.5); rho = 1 / sqrt(S / dim + eps);
// out_i = fp16(fp16(x_i * rho) * gamma_i). x, out [rows, dim].
void qserve_rms_norm(const float* x, const float* gamma, float eps, int64_t rows, int64_t dim,
                     float* out);

// QServe's silu_and_mul (§5.3): silu_i = fp16(g_i / (1 + exp(-g_i))),
// out_i = fp16(silu_i * up_i), with gate_up [t, 2 * inter] (gate first). out: fp16 bits.
void qserve_silu_mul(const float* gate_up, int64_t t, int64_t inter, uint16_t* out);

}  // namespace qserve
