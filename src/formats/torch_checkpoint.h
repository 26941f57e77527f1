// PyTorch checkpoints (torch.save, zip format of torch >= 1.6, e.g. QServe's pytorch_model.bin),
// read without executing anything: the zip container is parsed from an mmap (torch_zip.h), data.pkl
// goes through a restricted unpickler (torch_pickle.h), and tensors come back as zero-copy views
// into the mapping. See docs/torch-format.md for what is accepted and refused.
//
// Names: the pickled object must be a dict (state_dict() is an OrderedDict). Its entries are
// exposed under their keys; a value that is itself a dict, list or tuple is flattened one level
// with '.'
// ({"model": {"w": t}} gives "model.w", {"s": [t0, t1]} gives "s.0", "s.1"). Deeper values are not
// exposed. Keys must be strings or ints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace qserve {

// A non-tensor value stored beside tensors (None, bool, int, float, str).
using TorchScalar = std::variant<std::monostate, bool, int64_t, double, std::string>;

struct TorchTensorInfo {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  bool contiguous = true;   // false: get() returns a contiguous copy
  std::string storage_key;  // the zip entry <archive>/data/<key> holding its storage
};

class TorchCheckpoint {
 public:
  // Maps `path` and validates the archive, the pickle and every exposed tensor against its
  // storage. Throws qserve::Error naming `path` and the problem (including for the legacy
  // pre-1.6 format, which is not supported).
  static TorchCheckpoint open(const std::string& path);
  // The same over bytes already in memory; `owner` (may be null) keeps them alive for the views
  // that get() returns. `source` names the input in errors. Used by tests and the fuzzer.
  static TorchCheckpoint from_bytes(const uint8_t* bytes, size_t size,
                                    std::shared_ptr<const void> owner, const std::string& source);

  const std::string& source() const { return source_; }

  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // A read-only view into the file when the tensor is contiguous and aligned, else a contiguous
  // copy. Throws naming the tensor and the file if there is no such tensor or its dtype is one
  // qserve does not support.
  Tensor get(const std::string& name) const;
  const TorchTensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;  // readable tensors, sorted

  bool has_scalar(const std::string& name) const { return scalars_.count(name) != 0; }
  const TorchScalar& scalar(const std::string& name) const;
  const std::map<std::string, TorchScalar>& scalars() const { return scalars_; }

  // Tensors whose torch dtype qserve has no DType for (name -> torch dtype, e.g. "float64").
  // They are not in names(); get() on them throws saying so.
  const std::map<std::string, std::string>& unsupported() const { return unsupported_; }

 private:
  struct Slot {
    TorchTensorInfo info;
    const uint8_t* data = nullptr;  // first element (storage + offset)
    std::vector<int64_t> stride;    // elements
  };
  std::shared_ptr<const void> owner_;
  std::string source_;
  std::map<std::string, Slot> tensors_;
  std::map<std::string, TorchScalar> scalars_;
  std::map<std::string, std::string> unsupported_;

  friend class TorchCheckpointBuilder;
};

// Every tensor of the checkpoint at `path`, by name (views into the mapped file where possible).
std::map<std::string, Tensor> load_torch_state_dict(const std::string& path);

}  // namespace qserve
