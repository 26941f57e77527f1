// Writing PyTorch checkpoints: what torch.save(OrderedDict of tensors) writes, so that QServe (and
// anything else that calls torch.load, including torch.load(weights_only=True)) and our own reader
// (torch_checkpoint.h) load it. We need it for the QServe model-zoo pytorch_model.bin that
// `qserve convert --layout qserve` writes, and for building LMQuant / DeepCompressor dumps
// (model.pt, scale.pt) in tests without PyTorch.
//
// The file is torch's zip container (torch_zip_writer.h): stored records <archive>/data.pkl,
// <archive>/byteorder ("little"), <archive>/data/<i> (the raw bytes of tensor i, 64-byte aligned),
// <archive>/version ("3\n"), ZIP64 records once a size or offset passes 4 GiB. data.pkl is a
// protocol-2 pickle of collections.OrderedDict() filled with
// torch._utils._rebuild_tensor_v2(<persistent id ('storage', torch.<T>Storage, '<i>', 'cpu',
// numel)>, 0, size, stride, False, collections.OrderedDict()) per tensor, in the order given:
// the objects, globals and opcodes that torch.save itself emits. Each tensor owns one contiguous
// storage. docs/torch-format.md describes the format.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace qserve {

// A tensor to write: name (the state-dict key, UTF-8), dtype, shape (empty for a 0-d tensor) and
// its raw little-endian row-major bytes (dtype_size x numel long).
struct TorchWriteItem {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string_view bytes;
};

struct TorchWriteOptions {
  // Record prefix. torch.save uses the file's base name when given a path and "archive" for a
  // stream; readers take whatever prefix data.pkl has.
  std::string archive = "archive";
  // Sizes and offsets from this value up get ZIP64 fields (the zip format's 32-bit fields top out
  // at 0xffffffff). Tests lower it to exercise the > 4 GiB layout on small files: 0 puts ZIP64
  // fields everywhere, a few hundred bytes mixes plain and ZIP64 entries.
  uint64_t zip64_from = 0xffffffffu;
};

// Writes the checkpoint to `path` through a temporary file renamed into place, so a failure never
// leaves a partial file. Throws qserve::Error naming the path (and the tensor, for a name that is
// not UTF-8, a duplicate name, a negative or overflowing shape or a size mismatch; or the archive
// name, when it is empty or holds a '/') before writing anything.
void write_torch_checkpoint(const std::string& path, const std::vector<TorchWriteItem>& tensors,
                            const TorchWriteOptions& opts = {});

// The same file's bytes in memory (tests, small files). `what` names the output in errors.
std::string torch_checkpoint_bytes(const std::vector<TorchWriteItem>& tensors,
                                   const TorchWriteOptions& opts = {},
                                   const std::string& what = "torch checkpoint");

// data.pkl alone: the pickle described above (storage keys "0", "1", ... in order). No
// validation beyond the pickle's own needs; write_torch_checkpoint validates first.
std::string torch_state_dict_pickle(const std::vector<TorchWriteItem>& tensors);

}  // namespace qserve
