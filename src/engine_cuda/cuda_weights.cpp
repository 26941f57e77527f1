#include "engine_cuda/cuda_weights.h"

#include <string>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "core/half.h"
#include "core/thread_pool.h"

namespace qserve::cuda {

namespace {

template <typename T>
DeviceBuffer<T> upload_vec(const std::vector<T>& v, cudaStream_t stream, size_t& bytes) {
  DeviceBuffer<T> d(v.size());
  d.copy_from_host(v, stream);
  bytes += d.bytes();
  return d;
}

LinearF32OnDevice upload_f32(const cpu::LinearF32& l, cudaStream_t stream, size_t& bytes) {
  LinearF32OnDevice d;
  d.n = l.n;
  d.k = l.k;
  d.w = upload_vec(l.w, stream, bytes);
  if (!l.bias.empty()) d.bias = upload_vec(l.bias, stream, bytes);
  return d;
}

LinearOnDevice upload_linear(const Linear& l, cudaStream_t stream, size_t& bytes) {
  LinearOnDevice d;
  d.n = l.n();
  d.k = l.k();
  if (const cpu::LinearF32* f = l.f32()) {
    d.w = upload_f32(*f, stream, bytes);
    return d;
  }
  const QuantLinear& q = *l.quant();
  std::visit(
      [&](const auto& w) {
        auto on = upload(w, stream);
        bytes += static_cast<size_t>(d.n * d.k);  // codes, one byte each (scales are small)
        d.w = std::move(on);
      },
      q.w);
  if (!q.bias.empty()) d.bias16 = upload_vec(q.bias, stream, bytes);
  return d;
}

}  // namespace

LlamaOnDevice upload_llama(const LlamaModel& model, cudaStream_t stream) {
  const LlamaWeights& w = model.weights();
  LlamaOnDevice d;
  d.embed = upload_vec(w.embed, stream, d.bytes);
  d.final_norm = upload_vec(w.final_norm, stream, d.bytes);
  d.inv_freq = upload_vec(cpu::rope_inv_freq(model.config()), stream, d.bytes);
  d.layers.reserve(w.layers.size());
  for (const LayerWeights& L : w.layers) {
    LayerOnDevice l;
    l.input_norm = upload_vec(L.input_norm, stream, d.bytes);
    l.post_norm = upload_vec(L.post_norm, stream, d.bytes);
    l.qkv = upload_linear(L.qkv, stream, d.bytes);
    l.o = upload_linear(L.o, stream, d.bytes);
    l.gate_up = upload_linear(L.gate_up, stream, d.bytes);
    l.down = upload_linear(L.down, stream, d.bytes);
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
    d.lm_head16 = upload_vec(h, stream, d.bytes);
  } else {
    d.lm_head = upload_f32(w.lm_head, stream, d.bytes);
  }
  cuda_check(cudaStreamSynchronize(stream), "upload_llama");
  return d;
}

}  // namespace qserve::cuda
