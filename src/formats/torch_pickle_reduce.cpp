// What the allowed globals mean: naming one (GLOBAL/STACK_GLOBAL), calling one (REDUCE: tensor
// and parameter rebuilds, OrderedDict, torch.Size, _codecs.encode) and torch's persistent ids for
// storages. Tensor descriptions are bounds-checked here against their storage's declared size.
#include <optional>

#include "formats/json_util.h"
#include "formats/torch_globals.h"
#include "formats/torch_unpickler.h"

namespace qserve {

namespace {

bool mul_overflows(int64_t a, int64_t b, int64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
bool add_overflows(int64_t a, int64_t b, int64_t* out) {
  return __builtin_add_overflow(a, b, out);
}

std::string shape_str(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + std::to_string(v[k]);
  return s + ")";
}

}  // namespace

uint32_t TorchUnpickler::global(std::string_view module, std::string_view name) {
  const std::optional<TorchGlobalInfo> g = find_torch_global(module, name);
  if (!g) {
    fail("refusing to load pickle global " + formats_detail::printable(module, 100) + "." +
         formats_detail::printable(name, 100) +
         ": only torch tensor rebuilds are allowed (is this file a plain state dict?)");
  }
  PyNode n;
  n.kind = PyKind::Global;
  n.global = g->global;
  n.dtype = g->dtype;
  n.elem_size = g->elem_size;
  n.unsupported_dtype = g->unsupported_dtype;
  n.s = std::string(module) + "." + std::string(name);
  return add(std::move(n));
}

int64_t TorchUnpickler::as_int(uint32_t i, const char* what) {
  const PyNode& n = at(i);
  if (n.kind != PyKind::Int && n.kind != PyKind::Bool) {
    fail(std::string(what) + ": expected int, got " + std::string(py_kind_name(n.kind)));
  }
  return n.i;
}

std::vector<int64_t> TorchUnpickler::int_tuple(uint32_t i, const char* what) {
  const PyNode& n = at(i);
  if (n.kind != PyKind::Tuple && n.kind != PyKind::List) {
    fail(std::string(what) + ": expected a tuple of ints, got " +
         std::string(py_kind_name(n.kind)));
  }
  if (n.items.size() > limits_.max_ndim) {
    fail(std::string(what) + ": " + std::to_string(n.items.size()) + " dimensions (limit " +
         std::to_string(limits_.max_ndim) + ")");
  }
  charge(n.items.size() * sizeof(int64_t) + 32);
  std::vector<int64_t> v;
  for (uint32_t item : n.items) {
    const int64_t x = as_int(item, what);
    if (x < 0) fail(std::string(what) + " has a negative entry " + std::to_string(x));
    v.push_back(x);
  }
  return v;
}

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
// backward_hooks[, metadata]) and _v3(..., backward_hooks, dtype[, metadata]).
uint32_t TorchUnpickler::rebuild_tensor(const std::vector<uint32_t>& a, bool v3) {
  const size_t min_args = v3 ? 7 : 6;
  if (a.size() != min_args && a.size() != min_args + 1)
    fail(std::string(v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2") + " takes " +
         std::to_string(min_args) + " or " + std::to_string(min_args + 1) + " arguments, got " +
         std::to_string(a.size()));
  const PyNode& st = expect(a[0], PyKind::Storage, "tensor storage");
  PyNode t;
  t.kind = PyKind::Tensor;
  t.tensor.storage = a[0];
  t.tensor.offset = as_int(a[1], "tensor storage_offset");
  if (t.tensor.offset < 0) fail("negative tensor storage_offset");
  t.tensor.shape = int_tuple(a[2], "tensor size");
  t.tensor.stride = int_tuple(a[3], "tensor stride");
  if (t.tensor.shape.size() != t.tensor.stride.size())
    fail("tensor size and stride differ in length");
  as_int(a[4], "tensor requires_grad");
  const PyKind hooks = at(a[5]).kind;
  if (hooks != PyKind::Dict && hooks != PyKind::None)
    fail("tensor backward_hooks: expected a dict");
  int64_t elem_size = st.elem_size;
  t.unsupported_dtype = st.unsupported_dtype;
  t.dtype = st.dtype;
  if (v3) {
    const PyNode& dt = expect(a[6], PyKind::Global, "tensor dtype");
    if (dt.global != TorchGlobal::DTypeObject)
      fail("tensor dtype: expected a torch dtype, got " + dt.s);
    elem_size = dt.elem_size;
    t.unsupported_dtype = dt.unsupported_dtype;
    t.dtype = dt.dtype;
  }
  // The tensor's last element must lie inside the storage's declared bytes. Whether those
  // bytes exist in the archive is checked when the storage is resolved.
  int64_t numel = 1, last = t.tensor.offset, storage_bytes = 0, end = 0;
  for (size_t d = 0; d < t.tensor.shape.size(); ++d) {
    const int64_t n = t.tensor.shape[d];
    int64_t step = 0;
    if (mul_overflows(numel, n, &numel) ||
        (n > 0 &&
         (mul_overflows(n - 1, t.tensor.stride[d], &step) || add_overflows(last, step, &last)))) {
      fail("tensor size/stride overflow");
    }
  }
  if (mul_overflows(st.numel, st.elem_size, &storage_bytes) ||
      mul_overflows(numel == 0 ? t.tensor.offset : last + 1, elem_size, &end) ||
      end > storage_bytes) {
    fail("tensor of size " + shape_str(t.tensor.shape) + ", stride " + shape_str(t.tensor.stride) +
         " and storage_offset " + std::to_string(t.tensor.offset) +
         " reaches past the end of its storage '" + formats_detail::printable(st.s) + "' (" +
         std::to_string(st.numel) + " elements)");
  }
  return add(std::move(t));
}

// _codecs.encode(str, 'latin1'): how protocol 2 spells a bytes object.
uint32_t TorchUnpickler::codecs_encode(const std::vector<uint32_t>& a) {
  if (a.size() != 2) fail("_codecs.encode takes 2 arguments");
  const std::string& text = expect(a[0], PyKind::Str, "_codecs.encode argument").s;
  const std::string& enc = expect(a[1], PyKind::Str, "_codecs.encode encoding").s;
  if (enc != "latin1" && enc != "latin-1") fail("_codecs.encode: only latin1 is supported");
  charge(text.size());
  PyNode out;
  out.kind = PyKind::Bytes;
  for (size_t k = 0; k < text.size(); ++k) {  // text is valid UTF-8 (checked when read)
    const uint8_t c = static_cast<uint8_t>(text[k]);
    if (c < 0x80) {
      out.s.push_back(static_cast<char>(c));
    } else if ((c & 0xe0) == 0xc0 && c <= 0xc3) {
      out.s.push_back(static_cast<char>(((c & 0x03) << 6) | (text[++k] & 0x3f)));
    } else {
      fail("_codecs.encode: character outside latin1");
    }
  }
  return add(std::move(out));
}

uint32_t TorchUnpickler::call(uint32_t fn, uint32_t args_node) {
  const PyNode& f = at(fn);
  if (f.kind != PyKind::Global)
    fail("REDUCE on a " + std::string(py_kind_name(f.kind)) + ", not a callable");
  // A reference is safe: nodes_ is a deque, so adding nodes does not move this one.
  const std::vector<uint32_t>& a = expect(args_node, PyKind::Tuple, "REDUCE arguments").items;
  switch (f.global) {
    case TorchGlobal::OrderedDict: {
      if (!a.empty()) fail("collections.OrderedDict with arguments is not supported");
      PyNode d;
      d.kind = PyKind::Dict;
      return add(std::move(d));
    }
    case TorchGlobal::RebuildTensorV2:
      return rebuild_tensor(a, false);
    case TorchGlobal::RebuildTensorV3:
      return rebuild_tensor(a, true);
    case TorchGlobal::RebuildParameter:
    case TorchGlobal::RebuildParameterWithState: {
      const size_t want = f.global == TorchGlobal::RebuildParameter ? 3 : 4;
      if (a.size() != want) fail(f.s + " takes " + std::to_string(want) + " arguments");
      expect(a[0], PyKind::Tensor, "parameter data");
      return a[0];  // a Parameter is its tensor; requires_grad, hooks and state do not matter
    }
    case TorchGlobal::CodecsEncode:
      return codecs_encode(a);
    case TorchGlobal::TorchSize: {
      if (a.size() != 1) fail("torch.Size takes 1 argument");
      const PyKind k = at(a[0]).kind;
      if (k != PyKind::Tuple && k != PyKind::List) fail("torch.Size: expected a tuple");
      if (k == PyKind::Tuple) return a[0];
      charge(at(a[0]).items.size() * sizeof(uint32_t));
      return new_seq(PyKind::Tuple, at(a[0]).items);
    }
    default:
      fail("refusing to call " + f.s + ": it is not a function");
  }
}

// The persistent id ('storage', storage_type, key, location, numel) that torch.save writes
// in place of every storage.
uint32_t TorchUnpickler::persistent_load(uint32_t pid) {
  const PyNode& t = expect(pid, PyKind::Tuple, "persistent id");
  if (t.items.size() != 5 || at(t.items[0]).kind != PyKind::Str || at(t.items[0]).s != "storage")
    fail("persistent id is not a ('storage', type, key, location, numel) tuple");
  const PyNode& type = expect(t.items[1], PyKind::Global, "storage type");
  if (type.global != TorchGlobal::StorageType && type.global != TorchGlobal::UntypedStorage)
    fail("storage type: " + type.s + " is not a storage class");
  const std::string& key = expect(t.items[2], PyKind::Str, "storage key").s;
  const std::string& location = expect(t.items[3], PyKind::Str, "storage location").s;
  const int64_t numel = as_int(t.items[4], "storage numel");
  if (key.empty() || key.size() > 256 || location.size() > 256)
    fail("storage key or location is empty or too long");
  int64_t bytes = 0;
  if (numel < 0 || mul_overflows(numel, type.elem_size, &bytes)) fail("bad storage numel");
  auto it = storages_.find(key);
  if (it != storages_.end()) {
    // Tensors sharing a storage repeat its persistent id; torch refuses to save one storage
    // under two dtypes, so a mismatch means a corrupt or crafted file.
    const PyNode& s = at(it->second);
    if (s.dtype != type.dtype || s.elem_size != type.elem_size || s.numel != numel ||
        s.unsupported_dtype != type.unsupported_dtype) {
      fail("storage '" + formats_detail::printable(key) +
           "' is declared twice with different "
           "types or sizes");
    }
    return it->second;
  }
  PyNode s;
  s.kind = PyKind::Storage;
  s.s = key;
  s.location = location;
  s.dtype = type.dtype;
  s.elem_size = type.elem_size;
  s.unsupported_dtype = type.unsupported_dtype;
  s.numel = numel;
  const uint32_t idx = add(std::move(s));
  storages_.emplace(key, idx);
  return idx;
}

}  // namespace qserve
