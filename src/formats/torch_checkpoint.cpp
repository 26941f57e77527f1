// TorchCheckpoint: container checks (zip vs. legacy formats), archive layout, flattening the
// unpickled dict into names, and resolving each tensor against its storage record.
#include "formats/torch_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <span>

#include "core/error.h"
#include "core/mmap_file.h"
#include "formats/json_util.h"
#include "formats/torch_pickle.h"
#include "formats/torch_zip.h"

namespace qserve {

namespace {

using formats_detail::printable;

constexpr int64_t kMaxExpandedCopy = int64_t{64} << 20;

constexpr char kConvertHint[] =
    "convert it with torch >= 1.6: python -c \"import torch; "
    "torch.save(torch.load('IN', weights_only=True), 'OUT')\" (or save it as safetensors)";

// torch.save wrote a zip since 1.6; before that, a sequence of pickles starting with a magic
// number (or, before 0.4, a tar file). Recognise those to say what they are instead of
// "not a zip".
void check_container(const uint8_t* b, size_t n, const std::string& source) {
  static const uint8_t kZip[] = {'P', 'K', 3, 4};
  // Protocol-2 pickle of the legacy magic number 0x1950a86a20f9469cfc6c (a 10-byte LONG1).
  static const uint8_t kLegacy[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c,
                                    0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  if (n >= sizeof(kZip) && std::memcmp(b, kZip, sizeof(kZip)) == 0) return;
  if (n >= sizeof(kLegacy) && std::memcmp(b, kLegacy, sizeof(kLegacy)) == 0) {
    throw Error(source +
                ": legacy (torch < 1.6, or _use_new_zipfile_serialization=False) "
                "torch.save format is not supported; " +
                kConvertHint);
  }
  if (n >= 262 && std::memcmp(b + 257, "ustar", 5) == 0) {
    throw Error(source + ": legacy tar-based torch.save format (torch < 0.4) is not supported; " +
                kConvertHint);
  }
  if (n >= 1 && b[0] == 0x80) {
    throw Error(source +
                ": a bare pickle, not a torch.save zip archive; only torch.save "
                "checkpoints (torch >= 1.6) are supported");
  }
  throw Error(source + ": not a PyTorch checkpoint (torch.save zip archive expected; file is " +
              (n == 0 ? std::string("empty") : "missing the zip signature") + ")");
}

// torch names every record "<archive>/<record>", <archive> being the file's base name (or
// "archive"); data.pkl holds the pickle.
std::string archive_prefix(const ZipArchive& z) {
  std::string prefix;
  bool torchscript = false;
  for (const ZipEntry& e : z.entries()) {
    const size_t slash = e.name.find('/');
    if (slash == std::string::npos || slash == 0) continue;
    const std::string_view rest = std::string_view(e.name).substr(slash + 1);
    if (rest == "data.pkl") {
      if (!prefix.empty()) throw Error(z.source() + ": the archive holds more than one data.pkl");
      prefix = e.name.substr(0, slash + 1);
    }
    if (rest == "constants.pkl" || rest.starts_with("code/")) torchscript = true;
  }
  if (torchscript) {
    throw Error(z.source() +
                ": a TorchScript archive (torch.jit.save), not a torch.save "
                "checkpoint; save the model's state_dict() with torch.save instead");
  }
  if (prefix.empty())
    throw Error(z.source() +
                ": zip archive without <archive>/data.pkl: not a "
                "torch.save checkpoint");
  return prefix;
}

bool is_contiguous(const std::vector<int64_t>& shape, const std::vector<int64_t>& stride) {
  int64_t expected = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 0) return true;  // empty tensors have no layout
    if (shape[d] != 1 && stride[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

// Copies a strided tensor into contiguous storage, one innermost row at a time.
Tensor strided_copy(DType dtype, const std::vector<int64_t>& shape,
                    const std::vector<int64_t>& stride, const uint8_t* src) {
  Tensor out(dtype, shape);
  const size_t es = dtype_size(dtype);
  uint8_t* dst = static_cast<uint8_t*>(out.raw_mut());
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const size_t nd = shape.size();
  const int64_t inner = nd ? shape[nd - 1] : 1;
  const int64_t inner_stride = nd ? stride[nd - 1] : 0;
  std::vector<int64_t> idx(nd, 0);
  for (int64_t done = 0; done < numel; done += inner) {
    int64_t base = 0;
    for (size_t d = 0; d + 1 < nd; ++d) base += idx[d] * stride[d];
    if (inner_stride == 1) {
      std::memcpy(dst, src + base * static_cast<int64_t>(es), static_cast<size_t>(inner) * es);
      dst += inner * static_cast<int64_t>(es);
    } else {
      for (int64_t k = 0; k < inner; ++k, dst += es)
        std::memcpy(dst, src + (base + k * inner_stride) * static_cast<int64_t>(es), es);
    }
    for (size_t d = nd > 0 ? nd - 1 : 0;
         d-- > 0;) {  // odometer over all but the innermost dimension
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

}  // namespace

class TorchCheckpointBuilder {
 public:
  TorchCheckpointBuilder(TorchCheckpoint& ck, const ZipArchive& zip, const PickleGraph& g,
                         std::string prefix)
      : ck_(ck), zip_(zip), g_(g), prefix_(std::move(prefix)) {}

  void build() {
    const PyNode& root = g_.node(g_.root());
    if (root.kind != PyKind::Dict) {
      throw Error(ck_.source_ + ": the checkpoint holds a " + std::string(py_kind_name(root.kind)) +
                  ", not a dict of tensors (a state_dict)");
    }
    for (const auto& [k, v] : root.entries) {
      if (auto name = key_name(k)) add(*name, v, 0);
    }
  }

 private:
  TorchCheckpoint& ck_;
  const ZipArchive& zip_;
  const PickleGraph& g_;
  std::string prefix_;
  std::map<uint32_t, const uint8_t*> storage_data_;  // storage node -> its bytes

  std::optional<std::string> key_name(uint32_t k) const {
    const PyNode& n = g_.node(k);
    if (n.kind == PyKind::Str) return n.s;
    if (n.kind == PyKind::Int) return std::to_string(n.i);
    return std::nullopt;
  }

  void claim(const std::string& name) const {
    if (ck_.tensors_.count(name) || ck_.scalars_.count(name) || ck_.unsupported_.count(name)) {
      throw Error(ck_.source_ + ": name '" + printable(name) +
                  "' occurs twice after flattening "
                  "nested dicts with '.'");
    }
  }

  void add(const std::string& name, uint32_t v, int depth) {
    const PyNode& n = g_.node(v);
    switch (n.kind) {
      case PyKind::Tensor:
        claim(name), add_tensor(name, n);
        break;
      case PyKind::None:
        claim(name), ck_.scalars_.emplace(name, std::monostate{});
        break;
      case PyKind::Bool:
        claim(name), ck_.scalars_.emplace(name, n.i != 0);
        break;
      case PyKind::Int:
        claim(name), ck_.scalars_.emplace(name, n.i);
        break;
      case PyKind::Float:
        claim(name), ck_.scalars_.emplace(name, n.f);
        break;
      case PyKind::Str:
        claim(name), ck_.scalars_.emplace(name, n.s);
        break;
      case PyKind::Dict:
        if (depth > 0) break;  // one level of nesting only
        for (const auto& [k, x] : n.entries) {
          if (auto sub = key_name(k)) add(name + "." + *sub, x, depth + 1);
        }
        break;
      case PyKind::List:
      case PyKind::Tuple:
        if (depth > 0) break;
        for (size_t i = 0; i < n.items.size(); ++i)
          add(name + "." + std::to_string(i), n.items[i], depth + 1);
        break;
      default:
        break;  // bytes, globals, bare storages: nothing a model loader wants
    }
  }

  // The bytes of a storage: the record <archive>/data/<key>, exactly numel x element size long.
  const uint8_t* storage_bytes(uint32_t storage) {
    if (auto it = storage_data_.find(storage); it != storage_data_.end()) return it->second;
    const PyNode& s = g_.node(storage);
    const std::string record = prefix_ + "data/" + s.s;
    const ZipEntry* e = zip_.find(record);
    if (e == nullptr) {
      throw Error(ck_.source_ + ": storage '" + printable(s.s) +
                  "' is missing from the archive (no "
                  "record '" +
                  printable(record) + "')");
    }
    const std::span<const uint8_t> bytes = zip_.data(*e);
    // numel * elem_size was overflow-checked by the unpickler.
    if (bytes.size() != static_cast<uint64_t>(s.numel * s.elem_size)) {
      throw Error(ck_.source_ + ": storage '" + printable(s.s) + "' holds " +
                  std::to_string(bytes.size()) + " bytes, but the pickle declares " +
                  std::to_string(s.numel) + " elements of " + std::to_string(s.elem_size) +
                  " bytes");
    }
    storage_data_.emplace(storage, bytes.data());
    return bytes.data();
  }

  // get() copies a strided tensor. With stride 0 (torch keeps expand()ed tensors that way) a tiny
  // storage can describe an enormous tensor; cap the copy so that a hostile file cannot make us
  // allocate without bound, while transposed weights (copy no bigger than their storage) and
  // modest broadcasts still load.
  void check_copy_size(const std::string& name, const PyNode& n) const {
    const PyNode& s = g_.node(n.tensor.storage);
    int64_t bytes = static_cast<int64_t>(dtype_size(n.dtype));
    bool overflow = false;
    for (int64_t d : n.tensor.shape)
      overflow = overflow || __builtin_mul_overflow(bytes, d, &bytes);
    const int64_t limit = std::max<int64_t>(s.numel * s.elem_size, kMaxExpandedCopy);
    if (overflow || bytes > limit) {
      throw Error(ck_.source_ + ": tensor '" + printable(name) +
                  "' is a strided view of storage '" + printable(s.s) +
                  "' whose contiguous copy would take " +
                  (overflow ? std::string("more than 2^63") : std::to_string(bytes)) +
                  " bytes; refusing copies larger than the storage or " +
                  std::to_string(kMaxExpandedCopy >> 20) + " MiB");
    }
  }

  void add_tensor(const std::string& name, const PyNode& n) {
    const TorchTensorRef& t = n.tensor;
    if (!n.unsupported_dtype.empty()) {
      ck_.unsupported_.emplace(name, n.unsupported_dtype);
      return;
    }
    TorchCheckpoint::Slot slot;
    slot.info.dtype = n.dtype;
    slot.info.shape = t.shape;
    slot.info.contiguous = is_contiguous(t.shape, t.stride);
    slot.info.storage_key = g_.node(t.storage).s;
    slot.stride = t.stride;
    if (!slot.info.contiguous) check_copy_size(name, n);
    // The unpickler checked that offset and every strided element lie inside the declared
    // storage size, and storage_bytes() that the record has exactly that size.
    slot.data = storage_bytes(t.storage) + t.offset * static_cast<int64_t>(dtype_size(n.dtype));
    ck_.tensors_.emplace(name, std::move(slot));
  }
};

TorchCheckpoint TorchCheckpoint::from_bytes(const uint8_t* bytes, size_t size,
                                            std::shared_ptr<const void> owner,
                                            const std::string& source) {
  check_container(bytes, size, source);
  const ZipArchive zip = ZipArchive::parse(bytes, size, source);
  const std::string prefix = archive_prefix(zip);
  if (const ZipEntry* bo = zip.find(prefix + "byteorder")) {
    const std::span<const uint8_t> d = zip.checked_data(*bo);
    const std::string order(d.begin(), d.end());
    if (order != "little") {
      throw Error(source + ": byte order '" + printable(order) +
                  "' is not supported (only "
                  "little-endian checkpoints are)");
    }
  }
  const ZipEntry* pkl = zip.find(prefix + "data.pkl");
  const std::span<const uint8_t> pickle = zip.checked_data(*pkl);
  const PickleGraph graph = unpickle_torch(pickle.data(), pickle.size(), source + ": data.pkl");

  TorchCheckpoint ck;
  ck.owner_ = std::move(owner);
  ck.source_ = source;
  TorchCheckpointBuilder(ck, zip, graph, prefix).build();
  return ck;
}

TorchCheckpoint TorchCheckpoint::open(const std::string& path) {
  const std::shared_ptr<MappedFile> f = MappedFile::open(path);
  return from_bytes(f->data(), f->size(), f, path);
}

const TorchTensorInfo& TorchCheckpoint::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it != tensors_.end()) return it->second.info;
  if (auto u = unsupported_.find(name); u != unsupported_.end()) {
    throw Error(source_ + ": tensor '" + printable(name) + "' has dtype torch." + u->second +
                ", which qserve does not support");
  }
  throw Error(source_ + ": no tensor named '" + printable(name) + "'");
}

Tensor TorchCheckpoint::get(const std::string& name) const {
  const TorchTensorInfo& i = info(name);
  const Slot& s = tensors_.at(name);
  int64_t numel = 1;
  for (int64_t d : i.shape) numel *= d;
  if (numel == 0) return Tensor(i.dtype, i.shape);
  const bool aligned = reinterpret_cast<uintptr_t>(s.data) % dtype_size(i.dtype) == 0;
  if (i.contiguous && aligned) return Tensor::view(i.dtype, i.shape, s.data, owner_);
  // Typed access through a misaligned pointer is undefined, and a strided tensor is not a
  // Tensor (always row-major contiguous): both are copied.
  return strided_copy(i.dtype, i.shape, s.stride, s.data);
}

std::vector<std::string> TorchCheckpoint::names() const {
  std::vector<std::string> v;
  v.reserve(tensors_.size());
  for (const auto& [name, slot] : tensors_) v.push_back(name);
  return v;
}

const TorchScalar& TorchCheckpoint::scalar(const std::string& name) const {
  auto it = scalars_.find(name);
  if (it == scalars_.end())
    throw Error(source_ + ": no scalar value named '" + printable(name) + "'");
  return it->second;
}

std::map<std::string, Tensor> load_torch_state_dict(const std::string& path) {
  const TorchCheckpoint ck = TorchCheckpoint::open(path);
  std::map<std::string, Tensor> out;
  for (const std::string& name : ck.names()) out.emplace(name, ck.get(name));
  return out;
}

}  // namespace qserve
