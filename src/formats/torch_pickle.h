// A restricted unpickler for the data.pkl of torch checkpoints. It interprets the pickle opcodes
// that torch.save emits (protocols 2-5) into a graph of plain values and tensor descriptions; it
// never imports or calls anything. Like torch.load(weights_only=True), it knows a fixed list of
// globals (tensor/parameter rebuild functions, storage classes, dtypes, OrderedDict) and refuses
// every other one by name, so a malicious checkpoint cannot run code, only fail to load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace qserve {

enum class PyKind : uint8_t {
  None,
  Bool,
  Int,
  Float,
  Str,
  Bytes,
  Tuple,
  List,
  Dict,
  Global,   // one of the allowed globals (a class or function that was named, not called)
  Storage,  // a persistent-id storage reference: ('storage', type, key, location, numel)
  Tensor,   // the result of torch._utils._rebuild_tensor_v2/_v3 (or _rebuild_parameter)
};
std::string_view py_kind_name(PyKind k);

// The globals the unpickler accepts; everything else is refused.
enum class TorchGlobal : uint8_t {
  OrderedDict,                // collections.OrderedDict
  RebuildTensorV2,            // torch._utils._rebuild_tensor_v2
  RebuildTensorV3,            // torch._utils._rebuild_tensor_v3 (dtype passed explicitly)
  RebuildParameter,           // torch._utils._rebuild_parameter
  RebuildParameterWithState,  // torch._utils._rebuild_parameter_with_state
  CodecsEncode,               // _codecs.encode (protocol 2 spells bytes objects this way)
  TorchSize,                  // torch.Size
  StorageType,                // torch.HalfStorage, ... (dtype in PyNode::dtype)
  UntypedStorage,             // torch.UntypedStorage (bytes; the tensor says its dtype)
  DTypeObject,                // torch.float16, ... (dtype in PyNode::dtype)
};

// The description of a tensor: where its elements live and how they are laid out. Not validated
// against the storage's bytes yet (the unpickler has no access to them), only against the
// storage's declared size.
struct TorchTensorRef {
  uint32_t storage = 0;  // node index of the Storage
  int64_t offset = 0;    // storage_offset, in elements of the tensor's dtype (PyNode::dtype)
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;  // in elements
};

// One value. A flat struct rather than a variant: the graph is small (a few nodes per tensor).
struct PyNode {
  PyKind kind = PyKind::None;
  int64_t i = 0;                // Bool (0/1), Int
  double f = 0;                 // Float
  std::string s;                // Str (UTF-8), Bytes; Storage: key
  std::string location;         // Storage: device location string ("cpu", "cuda:0")
  std::vector<uint32_t> items;  // Tuple, List
  std::vector<std::pair<uint32_t, uint32_t>> entries;  // Dict: (key, value), insertion order
  TorchGlobal global = TorchGlobal::OrderedDict;       // Global
  DType dtype = DType::U8;  // Global StorageType/DTypeObject, Storage, Tensor
  int64_t elem_size = 1;    // Global StorageType/DTypeObject, Storage: bytes per element
  int64_t numel = 0;        // Storage: elements (bytes when untyped)
  // Global StorageType/DTypeObject, Storage, Tensor: non-empty (e.g. "float64") when the dtype is
  // one torch has but qserve does not; `dtype` is then meaningless. Such tensors are described
  // (so that one stray float64 buffer does not make a whole checkpoint unreadable) but cannot be
  // read.
  std::string unsupported_dtype;
  TorchTensorRef tensor;  // Tensor
};

// Upper bounds on what one pickle may make us do. The input size bounds most things already; these
// stop amplification (one memo get repeated to copy a big object many times) and absurd nesting.
struct PickleLimits {
  size_t max_mark_depth = 1000;  // nested MARKs (tuples/lists/dicts under construction)
  size_t max_ndim = 64;          // tensor dimensions (torch's own limit)
  size_t max_extra_bytes = size_t{256} << 20;  // allocations beyond what the input itself spells
};

// The unpickled object graph. Nodes refer to each other by index, so the shared (and even cyclic)
// references that pickle allows need no ownership cycles. Stored in a deque: string_views into
// nodes stay valid while nodes are added.
class PickleGraph {
 public:
  uint32_t root() const { return root_; }
  const PyNode& node(uint32_t i) const { return nodes_.at(i); }
  size_t size() const { return nodes_.size(); }
  // The value stored under string key `key` in Dict node `dict`, if any.
  std::optional<uint32_t> dict_get(uint32_t dict, std::string_view key) const;

 private:
  friend class TorchUnpickler;
  std::deque<PyNode> nodes_;
  uint32_t root_ = 0;
};

// Unpickles bytes[0, size). `source` (e.g. "model.bin: data.pkl") starts every error message,
// which also gives the byte offset of the offending opcode. Throws qserve::Error for anything
// malformed, truncated, over the limits, or outside the allowed globals and opcodes.
PickleGraph unpickle_torch(const uint8_t* bytes, size_t size, const std::string& source,
                           const PickleLimits& limits = {});

}  // namespace qserve
