// Synthetic model weights made directly on the GPU, for `--model synthetic:NAME --device cuda`:
// the LlamaOnDevice that upload_llama builds from LlamaModel::synthetic (same tensors, layouts,
// fast-path copies and statistics), with no host copy. The host generator draws ~1e9 normals
// per second on 16 cores and then RTN-quantizes them: ~20 s for an 8B model, minutes and
// ~4 bytes of host RAM per parameter for a 70B one. Here every element is a pure function of
// (seed, tensor, index) - a counter-based hash - so thousands of threads draw them in any order,
// and each quantizer regenerates a row instead of storing it: a 70B model takes about a second.
//
// Statistics (model/llama_synthetic.cpp): embeddings N(0, 1); decoder linears N(0, 1/k),
// quantized row by row with the RTN recipes of quant/rtn_quantizers.h (per-channel uint4 with a
// post-scale zero, progressive g128, symmetric int8; the same formulas and fp16 roundings);
// biases N(0, 0.02^2); norms 1; lm_head N(0, 1/H) (the embedding when tied), fp16 for quantized
// models and fp32 for W16A16, as upload_llama stores it. The values differ from the host
// generator's (another random stream), so device- and host-synthetic models of one seed are two
// draws of the same distribution. The tensor streams do not depend on the precision: every
// precision of one seed quantizes the same underlying fp32 weights.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine_cuda/cuda_weights.h"
#include "formats/hf_config.h"
#include "model/precision.h"

namespace qserve::cuda {

// The device weights of a synthetic model of shape `cfg` at weight precision `wp`, generated
// from `seed` on `stream` (synchronized before returning). Deterministic: the same arguments
// give the same bytes on any launch configuration. Throws qserve::Error where the host path
// would (g128 with in_features not a multiple of 128) and on out-of-memory.
LlamaOnDevice synthesize_llama(const ModelConfig& cfg, WeightPrecision wp, uint64_t seed,
                               cudaStream_t stream);

}  // namespace qserve::cuda
