#include "engine_cuda/synthetic_device.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "backend/cpu/ops_cpu.h"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"
#include "quant/weights.h"

namespace qserve::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr float kProtectiveRange = 119.0f;  // quant::kProtectiveRange (g128 level 1)
constexpr uint16_t kFp16One = 0x3c00;

// ---- the counter-based generator ----

__host__ __device__ inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Element i of stream `key` is SplitMix64's output i from state `key`: a hash of the counter,
// so any thread can draw any element, as often as it needs, in any order.
__device__ inline float normal_at(uint64_t key, uint64_t i) {
  const uint64_t h = mix64(key + (i + 1) * 0x9e3779b97f4a7c15ULL);
  // Box-Muller on two disjoint 24-bit fields: u1 in (0, 1] (log finite), u2 in [0, 1).
  const float u1 = static_cast<float>(static_cast<uint32_t>(h >> 40) + 1u) * 0x1p-24f;
  const float u2 = static_cast<float>(static_cast<uint32_t>(h >> 16) & 0xffffffu) * 0x1p-24f;
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

// Weight (row, i) of an [n, k] matrix with standard deviation `stddev`.
__device__ inline float weight_at(uint64_t key, int64_t row, int64_t k, int64_t i, float stddev) {
  return __fmul_rn(stddev, normal_at(key, static_cast<uint64_t>(row * k + i)));
}

__device__ inline uint16_t f32_to_f16_bits(float f) {
  return __half_as_ushort(__float2half_rn(f));
}
__device__ inline float f16_bits_to_f32(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}
// quant's nonzero_scale: fp16 RN of s, with a zero scale replaced by 1.
__device__ inline uint16_t nonzero_scale(float s) {
  const uint16_t h = f32_to_f16_bits(s);
  return (h & 0x7fffu) == 0 ? kFp16One : h;
}

__device__ inline void warp_minmax(float& lo, float& hi) {
  for (int o = 16; o > 0; o >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
}

// Min and max over the block; every thread gets both. Once per kernel (no barrier after).
__device__ inline void block_minmax(float& lo, float& hi) {
  __shared__ float s_lo[kWarps], s_hi[kWarps];
  warp_minmax(lo, hi);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (lane == 0) {
    s_lo[warp] = lo;
    s_hi[warp] = hi;
  }
  __syncthreads();
  lo = s_lo[0];
  hi = s_hi[0];
  for (int w = 1; w < kWarps; ++w) {
    lo = fminf(lo, s_lo[w]);
    hi = fmaxf(hi, s_hi[w]);
  }
}

// Max of |weight| over row r (every thread gets it).
__device__ inline float row_absmax(uint64_t key, int64_t r, int64_t k, float stddev) {
  float lo = 0.0f, amax = 0.0f;  // lo: unused
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    amax = fmaxf(amax, fabsf(weight_at(key, r, k, i, stddev)));
  }
  block_minmax(lo, amax);
  return amax;
}

unsigned fill_blocks(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 132 * 32));
}

// ---- fp tensors ----

__global__ void normal_f32_kernel(float* out, int64_t n, uint64_t key, float stddev) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    out[i] = __fmul_rn(stddev, normal_at(key, static_cast<uint64_t>(i)));
  }
}

// fp16 RN of the fp32 value normal_f32_kernel would write (upload_llama's fp16 lm_head, the
// fp16 bias of a quantized linear).
__global__ void normal_f16_kernel(uint16_t* out, int64_t n, uint64_t key, float stddev) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    out[i] = f32_to_f16_bits(__fmul_rn(stddev, normal_at(key, static_cast<uint64_t>(i))));
  }
}

__global__ void fill_f32_kernel(float* out, int64_t n, float v) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    out[i] = v;
  }
}

// ---- RTN quantizers, one block per output row; each pass regenerates the row ----

// quant::quantize_w4_per_channel, kPostScale: s = fp16((max - min) / 15) (0 -> 1),
// z~ = fp16(-min), q = clamp(round((w + z~) / s), 0, 15).
__global__ void __launch_bounds__(kThreads)
    w4_per_channel_kernel(uint64_t key, int64_t k, float stddev, uint8_t* q, uint16_t* s1,
                          uint16_t* szero) {
  const int64_t r = blockIdx.x;
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    const float w = weight_at(key, r, k, i, stddev);
    lo = fminf(lo, w);
    hi = fmaxf(hi, w);
  }
  block_minmax(lo, hi);
  const uint16_t scale = nonzero_scale(__fdiv_rn(__fsub_rn(hi, lo), 15.0f));
  const uint16_t zero = f32_to_f16_bits(-lo);
  if (threadIdx.x == 0) {
    s1[r] = scale;
    szero[r] = zero;
  }
  const float s = f16_bits_to_f32(scale), z = f16_bits_to_f32(zero);
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    const float w = weight_at(key, r, k, i, stddev);
    const float c = rintf(__fdiv_rn(__fadd_rn(w, z), s));
    q[r * k + i] = static_cast<uint8_t>(fminf(fmaxf(c, 0.0f), 15.0f));
  }
}

// quant::quantize_w4_g128, kPostScale: s1 = fp16(max|w| / 119) (0 -> 1), x = clamp(w / s1,
// -119, 119); per group of 128: s2 = clamp(round((max - min) / 15), -127, 127) (0 -> 1),
// z~ = clamp(round(-min), -128, 127), q = clamp(round((x + z~) / s2), 0, 15), stored zero
// int8_wrap(-z~). A warp takes one group at a time, four values per lane. With the range 119,
// q * s2 - z~ always fits int8 and q * s2 <= 240 (rtn_quantizers.h), as the host checks.
__global__ void __launch_bounds__(kThreads)
    w4_g128_kernel(uint64_t key, int64_t k, float stddev, uint8_t* q, uint16_t* s1,
                   int8_t* s2_scales, int8_t* s2_zeros) {
  const int64_t r = blockIdx.x;
  const float amax = row_absmax(key, r, k, stddev);
  const uint16_t s1h = nonzero_scale(__fdiv_rn(amax, kProtectiveRange));
  if (threadIdx.x == 0) s1[r] = s1h;
  const float s1f = f16_bits_to_f32(s1h);
  const int64_t groups = k / quant::kGroupSize;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  for (int64_t g = warp; g < groups; g += kWarps) {
    float x[4];
    float glo = INFINITY, ghi = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = g * quant::kGroupSize + lane + 32 * j;
      x[j] = fminf(fmaxf(__fdiv_rn(weight_at(key, r, k, i, stddev), s1f), -kProtectiveRange),
                   kProtectiveRange);
      glo = fminf(glo, x[j]);
      ghi = fmaxf(ghi, x[j]);
    }
    warp_minmax(glo, ghi);
    int s2 = static_cast<int>(
        fminf(fmaxf(rintf(__fdiv_rn(__fsub_rn(ghi, glo), 15.0f)), -127.0f), 127.0f));
    if (s2 == 0) s2 = 1;
    const int zero = static_cast<int>(fminf(fmaxf(rintf(-glo), -128.0f), 127.0f));
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t i = g * quant::kGroupSize + lane + 32 * j;
      const float c =
          rintf(__fdiv_rn(__fadd_rn(x[j], static_cast<float>(zero)), static_cast<float>(s2)));
      q[r * k + i] = static_cast<uint8_t>(fminf(fmaxf(c, 0.0f), 15.0f));
    }
    if (lane == 0) {
      s2_scales[r * groups + g] = static_cast<int8_t>(s2);
      s2_zeros[r * groups + g] =
          static_cast<int8_t>(static_cast<uint8_t>(static_cast<uint32_t>(-zero) & 0xffu));
    }
  }
}

// quant::quantize_w8_per_channel: s = fp16(max|w| / 127) (0 -> 1), w8 = clamp(round(w / s),
// -127, 127).
__global__ void __launch_bounds__(kThreads)
    w8_kernel(uint64_t key, int64_t k, float stddev, int8_t* w8, uint16_t* scale) {
  const int64_t r = blockIdx.x;
  const float amax = row_absmax(key, r, k, stddev);
  const uint16_t sh = nonzero_scale(__fdiv_rn(amax, 127.0f));
  if (threadIdx.x == 0) scale[r] = sh;
  const float s = f16_bits_to_f32(sh);
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    const float c = rintf(__fdiv_rn(weight_at(key, r, k, i, stddev), s));
    w8[r * k + i] = static_cast<int8_t>(fminf(fmaxf(c, -127.0f), 127.0f));
  }
}

// ---- host side ----

// Tensor ids, fixed and independent of the precision; a layer's tensors are kLayerBase +
// 8 * layer + slot.
constexpr uint64_t kEmbedId = 0, kLmHeadId = 1, kLayerBase = 16;
enum Slot : uint64_t { kQkv = 0, kO = 2, kGateUp = 4, kDown = 6 };  // slot + 1: its bias

uint64_t tensor_key(uint64_t seed, uint64_t tensor) {
  return mix64(seed ^ mix64(tensor + 0x9e3779b97f4a7c15ULL));
}

struct Gen {
  uint64_t seed;
  cudaStream_t stream;

  uint64_t key(uint64_t tensor) const { return tensor_key(seed, tensor); }

  DeviceBuffer<float> normal_f32(uint64_t tensor, int64_t n, float stddev) {
    DeviceBuffer<float> d(static_cast<size_t>(n));
    normal_f32_kernel<<<fill_blocks(n), kThreads, 0, stream>>>(d.data(), n, key(tensor), stddev);
    check_launch("synthesize_llama normal_f32", "n=" + std::to_string(n));
    return d;
  }
  DeviceBuffer<uint16_t> normal_f16(uint64_t tensor, int64_t n, float stddev) {
    DeviceBuffer<uint16_t> d(static_cast<size_t>(n));
    normal_f16_kernel<<<fill_blocks(n), kThreads, 0, stream>>>(d.data(), n, key(tensor), stddev);
    check_launch("synthesize_llama normal_f16", "n=" + std::to_string(n));
    return d;
  }
  DeviceBuffer<float> ones(int64_t n) {
    DeviceBuffer<float> d(static_cast<size_t>(n));
    fill_f32_kernel<<<fill_blocks(n), kThreads, 0, stream>>>(d.data(), n, 1.0f);
    check_launch("synthesize_llama ones", "n=" + std::to_string(n));
    return d;
  }
};

std::string shape(int64_t n, int64_t k) {
  return "n=" + std::to_string(n) + " k=" + std::to_string(k);
}

W4PerChannelOnDevice w4_per_channel(Gen& g, uint64_t tensor, int64_t n, int64_t k, float sd) {
  W4PerChannelOnDevice d;
  d.n = n;
  d.k = k;
  d.q = DeviceBuffer<uint8_t>(static_cast<size_t>(n * k));
  d.s1_scales = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  d.s1_szeros = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  w4_per_channel_kernel<<<static_cast<unsigned>(n), kThreads, 0, g.stream>>>(
      g.key(tensor), k, sd, d.q.data(), d.s1_scales.data(), d.s1_szeros.data());
  check_launch("synthesize_llama w4 per-channel", shape(n, k));
  make_fast_layouts(d, g.stream);  // as upload() makes them
  return d;
}

W4G128OnDevice w4_g128(Gen& g, uint64_t tensor, int64_t n, int64_t k, float sd) {
  W4G128OnDevice d;
  d.n = n;
  d.k = k;
  const int64_t groups = k / quant::kGroupSize;
  d.q = DeviceBuffer<uint8_t>(static_cast<size_t>(n * k));
  d.s1_scales = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  d.s2_scales = DeviceBuffer<int8_t>(static_cast<size_t>(n * groups));
  d.s2_zeros = DeviceBuffer<int8_t>(static_cast<size_t>(n * groups));
  w4_g128_kernel<<<static_cast<unsigned>(n), kThreads, 0, g.stream>>>(
      g.key(tensor), k, sd, d.q.data(), d.s1_scales.data(), d.s2_scales.data(), d.s2_zeros.data());
  check_launch("synthesize_llama w4 g128", shape(n, k));
  make_fast_layouts(d, g.stream);  // as upload() makes them
  return d;
}

W8PerChannelOnDevice w8_per_channel(Gen& g, uint64_t tensor, int64_t n, int64_t k, float sd) {
  W8PerChannelOnDevice d;
  d.n = n;
  d.k = k;
  d.w = DeviceBuffer<int8_t>(static_cast<size_t>(n * k));
  d.dequant_scale = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  w8_kernel<<<static_cast<unsigned>(n), kThreads, 0, g.stream>>>(g.key(tensor), k, sd, d.w.data(),
                                                                 d.dequant_scale.data());
  check_launch("synthesize_llama w8", shape(n, k));
  return d;
}

// One decoder linear [n, k] (+ bias), as LlamaModel::synthetic draws it and Linear::quantize
// and upload_llama store it.
LinearOnDevice make_linear(Gen& g, uint64_t tensor, int64_t n, int64_t k, bool bias,
                           WeightPrecision wp, const std::string& what) {
  check(n > 0 && k > 0, "synthesize_llama: " + what + " has an empty shape");
  check(n <= 0x7fffffff, "synthesize_llama: " + what + " has too many rows, " + shape(n, k));
  // 1/sqrt(k) keeps activations at unit scale through the residual stream (as the host does).
  const float sd = 1.0f / std::sqrt(static_cast<float>(k));
  constexpr float kBiasStddev = 0.02f;
  LinearOnDevice d;
  d.n = n;
  d.k = k;
  switch (wp) {
    case WeightPrecision::kW16A16: {
      LinearF32OnDevice f;
      f.n = n;
      f.k = k;
      f.w = g.normal_f32(tensor, n * k, sd);
      if (bias) f.bias = g.normal_f32(tensor + 1, n, kBiasStddev);
      d.w = std::move(f);
      return d;
    }
    case WeightPrecision::kW8A8:
      d.w = w8_per_channel(g, tensor, n, k, sd);
      break;
    case WeightPrecision::kW4A8PerChannel:
      d.w = w4_per_channel(g, tensor, n, k, sd);
      break;
    case WeightPrecision::kW4A8G128:
      check(k % quant::kGroupSize == 0, what + ": W4A8 g128 needs in_features divisible by " +
                                            std::to_string(quant::kGroupSize) + ", got " +
                                            std::to_string(k) +
                                            " (use per-channel W4A8, e.g. w4a8kv4)");
      d.w = w4_g128(g, tensor, n, k, sd);
      break;
  }
  if (bias) d.bias16 = g.normal_f16(tensor + 1, n, kBiasStddev);
  return d;
}

}  // namespace

LlamaOnDevice synthesize_llama(const ModelConfig& cfg, WeightPrecision wp, uint64_t seed,
                               cudaStream_t stream) {
  const int64_t H = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  check(H > 0 && I > 0 && V > 0 && cfg.num_layers > 0 && cfg.head_dim > 0,
        "synthesize_llama: the config has an empty dimension");
  Gen g{seed, stream};
  LlamaOnDevice d;
  d.embed = g.normal_f32(kEmbedId, V * H, 1.0f);
  d.final_norm = g.ones(H);
  {
    const std::vector<float> inv_freq = cpu::rope_inv_freq(cfg);
    d.inv_freq = DeviceBuffer<float>(inv_freq.size());
    d.inv_freq.copy_from_host(inv_freq, stream);  // pageable: synchronous for the host
  }
  d.layers.reserve(static_cast<size_t>(cfg.num_layers));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string p = "synthetic layer " + std::to_string(l);
    const uint64_t base = kLayerBase + 8 * static_cast<uint64_t>(l);
    LayerOnDevice L;
    L.input_norm = g.ones(H);
    L.post_norm = g.ones(H);
    L.qkv = make_linear(g, base + kQkv, cfg.q_dim() + 2 * cfg.kv_dim(), H, cfg.qkv_bias, wp,
                        p + " qkv_proj");
    L.o = make_linear(g, base + kO, H, cfg.q_dim(), cfg.o_bias, wp, p + " o_proj");
    L.gate_up = make_linear(g, base + kGateUp, 2 * I, H, cfg.mlp_bias, wp, p + " gate_up_proj");
    L.down = make_linear(g, base + kDown, H, I, cfg.mlp_bias, wp, p + " down_proj");
    d.layers.push_back(std::move(L));
  }
  d.quantized = wp != WeightPrecision::kW16A16;
  // upload_llama's lm_head: fp16 for quantized models, fp32 for W16A16; a tied head repeats the
  // embedding's stream (std 1), an untied one is N(0, 1/H).
  const uint64_t head = cfg.tie_word_embeddings ? kEmbedId : kLmHeadId;
  const float head_sd = cfg.tie_word_embeddings ? 1.0f : 1.0f / std::sqrt(static_cast<float>(H));
  if (d.quantized) {
    d.lm_head.n = V;
    d.lm_head.k = H;
    d.lm_head16 = g.normal_f16(head, V * H, head_sd);
  } else {
    d.lm_head.n = V;
    d.lm_head.k = H;
    d.lm_head.w = g.normal_f32(head, V * H, head_sd);
  }
  cuda_check(cudaStreamSynchronize(stream), "synthesize_llama",
             "layers=" + std::to_string(cfg.num_layers) + " hidden=" + std::to_string(H));
  d.bytes = device_bytes(d);
  return d;
}

}  // namespace qserve::cuda
