// Emulation of the CUDA block reductions QServe's per-token kernels use (vLLM /
// FasterTransformer style, qserve-compat.md §5.5), so the CPU reference sums in the same order
// and gets the same fp32 result bit for bit.
//
// A "block" of B threads: thread t first accumulates its elements t, t+B, t+2B, ...
// sequentially (the caller does that and passes the per-thread partials); then each warp of 32
// does an XOR butterfly (masks 16, 8, 4, 2, 1), lane 0 of every warp publishes its total, and
// the first warp butterflies those totals again (missing lanes contribute 0).
#pragma once

#include <cstdint>
#include <span>

namespace qserve::quant {

// The fp32 block sum of per-thread partials (partials.size() = blockDim).
float block_reduce_sum(std::span<const float> partials);

// Number of threads QServe launches for one token's row of `cols` elements.
// Fused norm+quant (§5.1): 32 * ceil(min(cols, 1024) / 32).
int64_t norm_quant_block_dim(int64_t cols);
// Standalone quant (§5.2): min(cols, 1024).
int64_t quant_block_dim(int64_t cols);

}  // namespace qserve::quant
