#include "engine_cuda/step_buffers.h"

#include "backend/cuda/ops_cuda_attention.h"

#include <algorithm>

namespace qserve::cuda {

namespace {

constexpr size_t kAlign = 256;

// Hands out 256-byte aligned pieces of `base` in order; with base == nullptr it only counts,
// so the same layout code sizes the block and then carves it.
struct Carver {
  uint8_t* base = nullptr;
  size_t off = 0;
  template <typename T>
  T* take(size_t count) {
    const size_t bytes = count * sizeof(T);
    T* p = base != nullptr && bytes > 0 ? reinterpret_cast<T*>(base + off) : nullptr;
    off += (bytes + kAlign - 1) / kAlign * kAlign;
    return p;
  }
};

}  // namespace

StepBuffers::StepBuffers(const ModelConfig& cfg, bool quantized, const StepDims& d) : dims(d) {
  const size_t T = static_cast<size_t>(d.rows), S = static_cast<size_t>(d.out_rows);
  const size_t H = static_cast<size_t>(cfg.hidden_size);
  const size_t I = static_cast<size_t>(cfg.intermediate_size);
  const size_t V = static_cast<size_t>(cfg.vocab_size);
  const size_t qd = static_cast<size_t>(cfg.q_dim()), kvd = static_cast<size_t>(cfg.kv_dim());
  const size_t widest = std::max({H, qd, I});

  const auto layout = [&](Carver& c) {
    inputs = c.take<uint8_t>(d.input_bytes);
    x = c.take<float>(T * H);
    q = c.take<float>(T * qd);
    attn = c.take<float>(T * qd);
    k16 = c.take<uint16_t>(T * kvd);
    v16 = c.take<uint16_t>(T * kvd);
    rope_cs = c.take<float>(T * static_cast<size_t>(cfg.head_dim));
    rope_info = c.take<uint8_t>(T * kRopeRowInfoBytes);
    if (quantized) {
      aq = c.take<int8_t>(T * widest);
      ascale = c.take<uint16_t>(T);
      asum = c.take<uint16_t>(T);
      qkv16 = c.take<uint16_t>(T * (qd + 2 * kvd));
      o16 = c.take<uint16_t>(T * H);
      gu16 = c.take<uint16_t>(T * 2 * I);
      d16 = c.take<uint16_t>(T * H);
    } else {
      h = c.take<float>(T * H);
      qkv = c.take<float>(T * (qd + 2 * kvd));
      proj = c.take<float>(T * H);
      gu = c.take<float>(T * 2 * I);
      act = c.take<float>(T * I);
    }
    xr = c.take<float>(S * H);
    hr = c.take<float>(S * H);
    h16 = c.take<uint16_t>(S * H);
    logits = c.take<float>(S * V);
    ids = c.take<int32_t>(S);
    attn_ws = c.take<uint8_t>(d.attn_ws_bytes);
    attn_ws_bytes = d.attn_ws_bytes;
    gemm_ws = {c.take<uint8_t>(d.gemm_ws_bytes), d.gemm_ws_bytes};
  };
  Carver count;
  layout(count);
  block_ = DeviceBuffer<uint8_t>(std::max(count.off, kAlign));
  Carver carve{block_.data(), 0};
  layout(carve);
}

}  // namespace qserve::cuda
