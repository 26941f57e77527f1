// Streaming writer of our quantized checkpoint (model/qserve_checkpoint.h: QServe's tensor names
// and layouts, metadata format/scheme/group_size/layout_version). The header is written first
// from the list of every tensor's name, dtype and shape (known from config.json and the scheme),
// then each tensor is written at its offset as soon as the pipeline produces it, so the quantizer
// never holds more than one layer of output. The layout (data ordered by dtype alignment, then
// name) is the one write_safetensors produces.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "formats/hf_config.h"
#include "qoq/weight_quantization.h"

namespace qserve::qoq {

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// Every tensor of a quantized checkpoint of `cfg` at `scheme`: embeddings and lm_head (fp16),
// norm weights (fp16, all ones after folding), per decoder linear the tensors of its scheme, and
// fp16 biases where the config has them (W4A8 only; QServe's W8A8 has no bias).
std::vector<TensorSpec> checkpoint_tensor_specs(const ModelConfig& cfg, WeightScheme scheme);
// The metadata `scheme` value ("w4a8-g128", "w4a8-per-channel", "w8a8") and group size.
std::string scheme_metadata_name(WeightScheme scheme);

class StreamingCheckpointWriter {
 public:
  // Creates `path`.tmp with the header and room for all data. Throws qserve::Error on I/O failure.
  StreamingCheckpointWriter(std::string path, const std::vector<TensorSpec>& specs,
                            const std::map<std::string, std::string>& metadata);
  ~StreamingCheckpointWriter();
  StreamingCheckpointWriter(const StreamingCheckpointWriter&) = delete;
  StreamingCheckpointWriter& operator=(const StreamingCheckpointWriter&) = delete;

  // Writes one declared tensor; its size must match the spec and it may be written only once.
  void write(const std::string& name, const void* data, size_t bytes);
  // fp32 values written as an F16 tensor.
  void write_f16(const std::string& name, const std::vector<float>& values);
  // The quantized tensors of linear `prefix` (e.g. "model.layers.0.self_attn.q_proj").
  void write_linear(const std::string& prefix, const QuantizedLinear& q);
  // Checks every tensor was written, syncs, and renames the file into place.
  void finish();

 private:
  struct Slot {
    uint64_t offset;
    uint64_t bytes;
    bool written = false;
  };
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::map<std::string, Slot> slots_;
  bool finished_ = false;
};

}  // namespace qserve::qoq
