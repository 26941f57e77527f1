#include "engine_cuda/cuda_weights.h"

#include <optional>
#include <string>
#include <type_traits>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "core/half.h"
#include "core/thread_pool.h"
#include "engine_cuda/synthetic_device.h"

namespace qserve::cuda {

namespace {

template <typename T>
DeviceBuffer<T> upload_vec(const std::vector<T>& v, cudaStream_t stream) {
  DeviceBuffer<T> d(v.size());
  d.copy_from_host(v, stream);
  return d;
}

LinearF32OnDevice upload_f32(const cpu::LinearF32& l, cudaStream_t stream) {
  LinearF32OnDevice d;
  d.n = l.n;
  d.k = l.k;
  d.w = upload_vec(l.w, stream);
  if (!l.bias.empty()) d.bias = upload_vec(l.bias, stream);
  return d;
}

LinearOnDevice upload_linear(const Linear& l, cudaStream_t stream) {
  LinearOnDevice d;
  d.n = l.n();
  d.k = l.k();
  if (const cpu::LinearF32* f = l.f32()) {
    d.w = upload_f32(*f, stream);
    return d;
  }
  const QuantLinear& q = *l.quant();
  std::visit([&](const auto& w) { d.w = upload(w, stream); }, q.w);
  if (!q.bias.empty()) d.bias16 = upload_vec(q.bias, stream);
  return d;
}

template <typename... B>
size_t sum_bytes(const B&... b) {
  return (b.bytes() + ...);
}

}  // namespace

size_t device_bytes(const LinearOnDevice& l) {
  const size_t w = std::visit(
      [](const auto& v) -> size_t {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, LinearF32OnDevice>) {
          return sum_bytes(v.w, v.bias);
        } else if constexpr (std::is_same_v<T, W4PerChannelOnDevice>) {
          return sum_bytes(v.q, v.s1_scales, v.s1_szeros, v.q_packed);
        } else if constexpr (std::is_same_v<T, W4G128OnDevice>) {
          return sum_bytes(v.q, v.s1_scales, v.s2_scales, v.s2_zeros, v.q_packed, v.w8);
        } else {
          return sum_bytes(v.w, v.dequant_scale);
        }
      },
      l.w);
  return w + l.bias16.bytes();
}

size_t device_bytes(const LlamaOnDevice& w) {
  size_t b = sum_bytes(w.embed, w.final_norm, w.lm_head.w, w.lm_head.bias, w.lm_head16, w.inv_freq);
  for (const LayerOnDevice& l : w.layers) {
    b += sum_bytes(l.input_norm, l.post_norm) + device_bytes(l.qkv) + device_bytes(l.o) +
         device_bytes(l.gate_up) + device_bytes(l.down);
  }
  return b;
}

LlamaOnDevice upload_llama(const LlamaModel& model, cudaStream_t stream) {
  if (const std::optional<uint64_t> seed = model.device_synthetic_seed()) {
    return synthesize_llama(model.config(), model.precision().weights, *seed, stream);
  }
  const LlamaWeights& w = model.weights();
  LlamaOnDevice d;
  d.embed = upload_vec(w.embed, stream);
  d.final_norm = upload_vec(w.final_norm, stream);
  d.inv_freq = upload_vec(cpu::rope_inv_freq(model.config()), stream);
  d.layers.reserve(w.layers.size());
  for (const LayerWeights& L : w.layers) {
    LayerOnDevice l;
    l.input_norm = upload_vec(L.input_norm, stream);
    l.post_norm = upload_vec(L.post_norm, stream);
    l.qkv = upload_linear(L.qkv, stream);
    l.o = upload_linear(L.o, stream);
    l.gate_up = upload_linear(L.gate_up, stream);
    l.down = upload_linear(L.down, stream);
    d.layers.push_back(std::move(l));
  }
  if (!d.layers.empty()) {
    const LayerOnDevice& l0 = d.layers.front();
    d.quantized = l0.qkv.quantized();
    for (const LayerOnDevice& l : d.layers) {
      check(l.qkv.quantized() == d.quantized && l.o.quantized() == d.quantized &&
                l.gate_up.quantized() == d.quantized && l.down.quantized() == d.quantized,
            "cuda: every decoder linear must have the same kind of precision (all quantized or "
            "all fp32)");
    }
  }
  // The lm_head: fp32 for W16A16 (the parity path); for quantized models fp16 weights, as in
  // QServe (its checkpoints keep lm_head in fp16), which halves the largest read of a decode
  // step and runs on the fp16 tensor cores instead of fp32 math.
  if (d.quantized && w.lm_head.bias.empty()) {
    d.lm_head.n = w.lm_head.n;
    d.lm_head.k = w.lm_head.k;
    std::vector<uint16_t> h(w.lm_head.w.size());
    ThreadPool::global().parallel_for(
        static_cast<int64_t>(h.size()), 1 << 16, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            h[static_cast<size_t>(i)] = float_to_fp16(w.lm_head.w[static_cast<size_t>(i)]);
          }
        });
    d.lm_head16 = upload_vec(h, stream);
  } else {
    d.lm_head = upload_f32(w.lm_head, stream);
  }
  cuda_check(cudaStreamSynchronize(stream), "upload_llama");
  d.bytes = device_bytes(d);  // also the fast paths' copies that upload() makes
  return d;
}

}  // namespace qserve::cuda
