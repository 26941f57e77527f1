// LlamaWeights on the device, in the layouts the backend/cuda ops take (model-internal).
#pragma once

#include <cstdint>
#include <variant>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda.h"
#include "model/llama_model.h"

namespace qserve::cuda {

// One linear layer: fp32 (cuBLASLt, the W16A16 reference) or one of the quantized GEMMs.
struct LinearF32OnDevice {
  int64_t n = 0, k = 0;
  DeviceBuffer<float> w;     // [n, k]
  DeviceBuffer<float> bias;  // [n] or empty
};
struct LinearOnDevice {
  std::variant<LinearF32OnDevice, W4PerChannelOnDevice, W4G128OnDevice, W8PerChannelOnDevice> w;
  DeviceBuffer<uint16_t> bias16;  // fp16 [n] bias of a quantized linear, or empty
  int64_t n = 0, k = 0;
  bool quantized() const { return !std::holds_alternative<LinearF32OnDevice>(w); }
  bool needs_act_sum() const { return std::holds_alternative<W4PerChannelOnDevice>(w); }
};

struct LayerOnDevice {
  DeviceBuffer<float> input_norm, post_norm;
  LinearOnDevice qkv, o, gate_up, down;
};

struct LlamaOnDevice {
  DeviceBuffer<float> embed;  // [V, H]
  std::vector<LayerOnDevice> layers;
  DeviceBuffer<float> final_norm;
  LinearF32OnDevice lm_head;         // fp32 (W16A16 models; w empty when lm_head16 is used)
  DeviceBuffer<uint16_t> lm_head16;  // [V, H] fp16: quantized models, as QServe serves them
  DeviceBuffer<float> inv_freq;      // [head_dim / 2]
  bool quantized = false;            // the decoder linears take int8 activations
  size_t bytes = 0;                  // device bytes of all of the above (device_bytes())
};

// Uploads the model's weights. A model made by LlamaModel::synthetic_on_device has none on the
// host: its weights are generated on the GPU instead (synthetic_device.h), in the same layouts.
LlamaOnDevice upload_llama(const LlamaModel& model, cudaStream_t stream);

// Bytes of every device buffer held: codes, the fast paths' packed/expanded copies, scales,
// biases (what the buffers hold, before the caching allocator rounds them to its buckets).
size_t device_bytes(const LinearOnDevice& l);
size_t device_bytes(const LlamaOnDevice& w);

}  // namespace qserve::cuda
