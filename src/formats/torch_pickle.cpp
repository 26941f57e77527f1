// The restricted unpickler: a stack machine over the binary pickle opcodes (protocols 2-5), with
// Python 3's semantics for MARK frames and the memo, and torch.load(weights_only=True)'s idea of
// which globals may be named. Calls (REDUCE) are interpreted by us for the few allowed callables.
#include "formats/torch_pickle.h"

#include <bit>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "core/error.h"
#include "formats/json_util.h"
#include "formats/torch_globals.h"

namespace qserve {

std::string_view py_kind_name(PyKind k) {
  switch (k) {
    case PyKind::None: return "None";
    case PyKind::Bool: return "bool";
    case PyKind::Int: return "int";
    case PyKind::Float: return "float";
    case PyKind::Str: return "str";
    case PyKind::Bytes: return "bytes";
    case PyKind::Tuple: return "tuple";
    case PyKind::List: return "list";
    case PyKind::Dict: return "dict";
    case PyKind::Global: return "global";
    case PyKind::Storage: return "storage";
    case PyKind::Tensor: return "tensor";
  }
  return "?";
}

std::optional<uint32_t> PickleGraph::dict_get(uint32_t dict, std::string_view key) const {
  for (const auto& [k, v] : node(dict).entries) {
    const PyNode& kn = node(k);
    if (kn.kind == PyKind::Str && kn.s == key) return v;
  }
  return std::nullopt;
}

namespace {

// Opcodes (CPython Lib/pickle.py names).
enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', BININT = 'J', BININT1 = 'K',
  BININT2 = 'M', NONE = 'N', BINPERSID = 'Q', REDUCE = 'R', BINUNICODE = 'X', EMPTY_LIST = ']',
  APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e',
  BINGET = 'h', LONG_BINGET = 'j', LIST = 'l', BINPUT = 'q', LONG_BINPUT = 'r', SETITEM = 's',
  TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G', BINBYTES = 'B',
  SHORT_BINBYTES = 'C', PROTO = 0x80, TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87,
  NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b, SHORT_BINUNICODE = 0x8c,
  BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  BYTEARRAY8 = 0x96,
};

// Names of opcodes we refuse on purpose, for the error message.
const char* refused_opcode_name(uint8_t op) {
  switch (op) {
    case 'I': return "INT (protocol 0)";
    case 'L': return "LONG (protocol 0)";
    case 'F': return "FLOAT (protocol 0)";
    case 'S': return "STRING (protocol 0)";
    case 'V': return "UNICODE (protocol 0)";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'P': return "PERSID (protocol 0)";
    case 'g': return "GET (protocol 0)";
    case 'p': return "PUT (protocol 0)";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 0x82: case 0x83: case 0x84: return "EXT (extension registry)";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x97: return "NEXT_BUFFER (out-of-band buffers)";
    case 0x98: return "READONLY_BUFFER (out-of-band buffers)";
    default: return nullptr;
  }
}

std::string hex_byte(uint8_t b) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[b >> 4] + digits[b & 15];
}

// Python decodes BINUNICODE as UTF-8 with 'surrogatepass'; accept the same set.
bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min_cp || cp > 0x10ffff) return false;  // overlong or out of range
    i += len;
  }
  return true;
}

// A dict key, compared by value the way Python's dict would (bool keys equal int keys).
struct DictKey {
  uint8_t tag;  // 0 None, 1 int/bool, 2 str, 3 bytes
  int64_t i;
  std::string_view s;
  bool operator<(const DictKey& o) const {
    if (tag != o.tag) return tag < o.tag;
    if (i != o.i) return i < o.i;
    return s < o.s;
  }
};

bool mul_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }

}  // namespace

class TorchUnpickler {
 public:
  TorchUnpickler(const uint8_t* bytes, size_t size, const std::string& source,
                 const PickleLimits& limits)
      : p_(bytes), n_(size), source_(source), limits_(limits) {}

  PickleGraph run() {
    while (pos_ < n_) {
      op_pos_ = pos_;
      const uint8_t op = p_[pos_++];
      if (op == STOP) {
        g_.root_ = pop();
        return std::move(g_);
      }
      step(op);
    }
    fail("truncated: the pickle ends without a STOP opcode");
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  const std::string& source_;
  PickleLimits limits_;
  PickleGraph g_;
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;  // stack_ sizes at each open MARK
  std::unordered_map<uint32_t, uint32_t> memo_;
  std::unordered_map<uint32_t, std::map<DictKey, size_t>> dict_index_;  // dict node -> entry
  std::map<std::string, uint32_t, std::less<>> storages_;              // storage key -> node
  size_t extra_bytes_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(source_ + ": " + what + " (at byte " + std::to_string(op_pos_) + ")");
  }

  // Accounts for memory that the input does not pay for byte by byte (copies of memoized
  // objects), so that a small pickle cannot make us allocate without bound.
  void charge(size_t bytes) {
    extra_bytes_ += bytes;
    if (extra_bytes_ > limits_.max_extra_bytes) fail("pickle expands beyond the memory limit");
  }

  // ---- input ----
  const uint8_t* take(uint64_t len) {
    if (len > n_ - pos_) {
      fail("truncated: opcode needs " + std::to_string(len) + " more bytes, " +
           std::to_string(n_ - pos_) + " left");
    }
    const uint8_t* r = p_ + pos_;
    pos_ += static_cast<size_t>(len);
    return r;
  }
  uint64_t le(size_t len) {
    const uint8_t* b = take(len);
    uint64_t v = 0;
    for (size_t k = 0; k < len; ++k) v |= static_cast<uint64_t>(b[k]) << (8 * k);
    return v;
  }
  std::string_view line() {
    const uint8_t* start = p_ + pos_;
    const void* nl = std::memchr(start, '\n', n_ - pos_);
    if (nl == nullptr) fail("truncated: GLOBAL name without a newline");
    const size_t len = static_cast<size_t>(static_cast<const uint8_t*>(nl) - start);
    pos_ += len + 1;
    return {reinterpret_cast<const char*>(start), len};
  }

  // ---- nodes and stack ----
  uint32_t add(PyNode&& n) {
    if (g_.nodes_.size() >= std::numeric_limits<uint32_t>::max()) fail("too many objects");
    g_.nodes_.push_back(std::move(n));
    return static_cast<uint32_t>(g_.nodes_.size() - 1);
  }
  PyNode& at(uint32_t i) { return g_.nodes_[i]; }
  uint32_t push_new(PyNode&& n) {
    const uint32_t i = add(std::move(n));
    stack_.push_back(i);
    return i;
  }
  PyNode scalar(PyKind k, int64_t v = 0) {
    PyNode n;
    n.kind = k;
    n.i = v;
    return n;
  }
  size_t frame_base() const { return marks_.empty() ? 0 : marks_.back(); }
  uint32_t pop() {
    if (stack_.size() <= frame_base()) fail("pickle stack underflow");
    const uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  uint32_t top() const {
    if (stack_.size() <= frame_base()) fail("pickle stack underflow");
    return stack_.back();
  }
  std::vector<uint32_t> pop_mark() {
    if (marks_.empty()) fail("pickle has no MARK to pop to");
    std::vector<uint32_t> items(stack_.begin() + static_cast<ptrdiff_t>(marks_.back()),
                                stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  PyNode& expect(uint32_t i, PyKind k, const char* what) {
    PyNode& n = at(i);
    if (n.kind != k) {
      fail(std::string(what) + ": expected " + std::string(py_kind_name(k)) + ", got " +
           std::string(py_kind_name(n.kind)));
    }
    return n;
  }

  // ---- containers ----
  void dict_set(uint32_t dict, uint32_t key, uint32_t value) {
    const PyNode& k = at(key);
    DictKey dk{0, 0, {}};
    switch (k.kind) {
      case PyKind::None: break;
      case PyKind::Bool:
      case PyKind::Int: dk.tag = 1, dk.i = k.i; break;
      case PyKind::Str: dk.tag = 2, dk.s = k.s; break;  // nodes_ is a deque: s stays put
      case PyKind::Bytes: dk.tag = 3, dk.s = k.s; break;
      default: fail("unsupported dict key type " + std::string(py_kind_name(k.kind)));
    }
    charge(k.s.size() + 32);  // comparisons and index entries scale with the key
    auto& index = dict_index_[dict];
    PyNode& d = at(dict);
    auto [it, inserted] = index.emplace(dk, d.entries.size());
    if (inserted) {
      d.entries.emplace_back(key, value);
    } else {
      d.entries[it->second].second = value;  // Python keeps the first key, takes the new value
    }
  }
  void set_items(uint32_t dict, const std::vector<uint32_t>& kv) {
    if (kv.size() % 2 != 0) fail("odd number of items for a dict");
    expect(dict, PyKind::Dict, "SETITEMS target");
    for (size_t k = 0; k < kv.size(); k += 2) dict_set(dict, kv[k], kv[k + 1]);
  }
  uint32_t new_seq(PyKind kind, std::vector<uint32_t> items) {
    PyNode n;
    n.kind = kind;
    n.items = std::move(items);
    return add(std::move(n));
  }

  // ---- globals and calls ----
  uint32_t global(std::string_view module, std::string_view name) {
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

  int64_t as_int(uint32_t i, const char* what) {
    const PyNode& n = at(i);
    if (n.kind != PyKind::Int && n.kind != PyKind::Bool) {
      fail(std::string(what) + ": expected int, got " + std::string(py_kind_name(n.kind)));
    }
    return n.i;
  }
  std::vector<int64_t> int_tuple(uint32_t i, const char* what) {
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
  uint32_t rebuild_tensor(const std::vector<uint32_t>& a, bool v3) {
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
    if (t.tensor.shape.size() != t.tensor.stride.size()) fail("tensor size and stride differ in length");
    as_int(a[4], "tensor requires_grad");
    const PyKind hooks = at(a[5]).kind;
    if (hooks != PyKind::Dict && hooks != PyKind::None) fail("tensor backward_hooks: expected a dict");
    int64_t elem_size = st.elem_size;
    t.unsupported_dtype = st.unsupported_dtype;
    t.dtype = st.dtype;
    if (v3) {
      const PyNode& dt = expect(a[6], PyKind::Global, "tensor dtype");
      if (dt.global != TorchGlobal::DTypeObject) fail("tensor dtype: expected a torch dtype, got " + dt.s);
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
          (n > 0 && (mul_overflows(n - 1, t.tensor.stride[d], &step) ||
                     add_overflows(last, step, &last)))) {
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

  static std::string shape_str(const std::vector<int64_t>& v) {
    std::string s = "(";
    for (size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + std::to_string(v[k]);
    return s + ")";
  }

  // _codecs.encode(str, 'latin1'): how protocol 2 spells a bytes object.
  uint32_t codecs_encode(const std::vector<uint32_t>& a) {
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

  uint32_t call(uint32_t fn, uint32_t args_node) {
    const PyNode& f = at(fn);
    if (f.kind != PyKind::Global) fail("REDUCE on a " + std::string(py_kind_name(f.kind)) + ", not a callable");
    const std::vector<uint32_t> a = expect(args_node, PyKind::Tuple, "REDUCE arguments").items;
    switch (f.global) {
      case TorchGlobal::OrderedDict: {
        if (!a.empty()) fail("collections.OrderedDict with arguments is not supported");
        PyNode d;
        d.kind = PyKind::Dict;
        return add(std::move(d));
      }
      case TorchGlobal::RebuildTensorV2: return rebuild_tensor(a, false);
      case TorchGlobal::RebuildTensorV3: return rebuild_tensor(a, true);
      case TorchGlobal::RebuildParameter:
      case TorchGlobal::RebuildParameterWithState: {
        const size_t want = f.global == TorchGlobal::RebuildParameter ? 3 : 4;
        if (a.size() != want) fail(f.s + " takes " + std::to_string(want) + " arguments");
        expect(a[0], PyKind::Tensor, "parameter data");
        return a[0];  // a Parameter is its tensor; requires_grad, hooks and state do not matter
      }
      case TorchGlobal::CodecsEncode: return codecs_encode(a);
      case TorchGlobal::TorchSize: {
        if (a.size() != 1) fail("torch.Size takes 1 argument");
        const PyKind k = at(a[0]).kind;
        if (k != PyKind::Tuple && k != PyKind::List) fail("torch.Size: expected a tuple");
        if (k == PyKind::Tuple) return a[0];
        charge(at(a[0]).items.size() * sizeof(uint32_t));
        return new_seq(PyKind::Tuple, at(a[0]).items);
      }
      default: fail("refusing to call " + f.s + ": it is not a function");
    }
  }

  // The persistent id ('storage', storage_type, key, location, numel) that torch.save writes
  // in place of every storage.
  uint32_t persistent_load(uint32_t pid) {
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
        fail("storage '" + formats_detail::printable(key) + "' is declared twice with different "
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

  // ---- the opcodes ----
  uint32_t memo_get(uint64_t key) {
    auto it = memo_.find(static_cast<uint32_t>(key));
    if (it == memo_.end()) fail("memo key " + std::to_string(key) + " is not defined");
    return it->second;
  }
  void memo_put(uint64_t key) {
    const uint32_t v = top();
    memo_[static_cast<uint32_t>(key)] = v;
  }
  void push_string(PyKind kind, uint64_t len) {
    const uint8_t* b = take(len);
    if (kind == PyKind::Str && !valid_utf8(b, static_cast<size_t>(len))) fail("string is not valid UTF-8");
    PyNode n;
    n.kind = kind;
    n.s.assign(reinterpret_cast<const char*>(b), static_cast<size_t>(len));
    push_new(std::move(n));
  }
  void push_long(uint64_t len) {
    if (len > 8) fail("integer wider than 64 bits");
    const uint8_t* b = take(len);
    uint64_t v = 0;
    for (size_t k = 0; k < len; ++k) v |= static_cast<uint64_t>(b[k]) << (8 * k);
    if (len > 0 && len < 8 && (b[len - 1] & 0x80)) v |= ~uint64_t{0} << (8 * len);  // sign-extend
    push_new(scalar(PyKind::Int, static_cast<int64_t>(v)));
  }

  void step(uint8_t op) {
    switch (op) {
      case PROTO: {
        const uint64_t v = le(1);
        if (v > 5) fail("unsupported pickle protocol " + std::to_string(v));
        break;
      }
      case FRAME: {
        const uint64_t len = le(8);
        if (len > n_ - pos_) fail("truncated: frame of " + std::to_string(len) + " bytes");
        break;
      }
      case MARK:
        if (marks_.size() >= limits_.max_mark_depth) fail("MARKs nested too deeply");
        marks_.push_back(stack_.size());
        break;
      case POP:
        if (stack_.size() > frame_base()) {
          stack_.pop_back();
        } else {
          pop_mark();  // Python 3: POP on an empty frame discards the frame
        }
        break;
      case POP_MARK: pop_mark(); break;
      case DUP: stack_.push_back(top()); break;
      case NONE: push_new(scalar(PyKind::None)); break;
      case NEWTRUE: push_new(scalar(PyKind::Bool, 1)); break;
      case NEWFALSE: push_new(scalar(PyKind::Bool, 0)); break;
      case BININT: push_new(scalar(PyKind::Int, static_cast<int32_t>(le(4)))); break;
      case BININT1: push_new(scalar(PyKind::Int, static_cast<int64_t>(le(1)))); break;
      case BININT2: push_new(scalar(PyKind::Int, static_cast<int64_t>(le(2)))); break;
      case LONG1: push_long(le(1)); break;
      case LONG4: {
        const int32_t len = static_cast<int32_t>(le(4));
        if (len < 0) fail("negative LONG4 length");
        push_long(static_cast<uint64_t>(len));
        break;
      }
      case BINFLOAT: {
        const uint8_t* b = take(8);
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];  // big-endian
        PyNode n = scalar(PyKind::Float);
        n.f = std::bit_cast<double>(bits);
        push_new(std::move(n));
        break;
      }
      case SHORT_BINUNICODE: push_string(PyKind::Str, le(1)); break;
      case BINUNICODE: push_string(PyKind::Str, le(4)); break;
      case BINUNICODE8: push_string(PyKind::Str, le(8)); break;
      case SHORT_BINBYTES: push_string(PyKind::Bytes, le(1)); break;
      case BINBYTES: push_string(PyKind::Bytes, le(4)); break;
      case BINBYTES8:
      case BYTEARRAY8: push_string(PyKind::Bytes, le(8)); break;
      case EMPTY_TUPLE: stack_.push_back(new_seq(PyKind::Tuple, {})); break;
      case TUPLE: stack_.push_back(new_seq(PyKind::Tuple, pop_mark())); break;
      case TUPLE1:
      case TUPLE2:
      case TUPLE3: {
        std::vector<uint32_t> items(op - TUPLE1 + 1);
        for (size_t k = items.size(); k-- > 0;) items[k] = pop();
        stack_.push_back(new_seq(PyKind::Tuple, std::move(items)));
        break;
      }
      case EMPTY_LIST: stack_.push_back(new_seq(PyKind::List, {})); break;
      case LIST: stack_.push_back(new_seq(PyKind::List, pop_mark())); break;
      case APPEND: {
        const uint32_t v = pop();
        expect(top(), PyKind::List, "APPEND target").items.push_back(v);
        break;
      }
      case APPENDS: {
        const std::vector<uint32_t> items = pop_mark();
        auto& list = expect(top(), PyKind::List, "APPENDS target").items;
        list.insert(list.end(), items.begin(), items.end());
        break;
      }
      case EMPTY_DICT:
      case DICT: {
        PyNode d;
        d.kind = PyKind::Dict;
        const uint32_t idx = add(std::move(d));
        if (op == DICT) set_items(idx, pop_mark());
        stack_.push_back(idx);
        break;
      }
      case SETITEM: {
        const uint32_t v = pop(), k = pop();
        const uint32_t d = top();
        expect(d, PyKind::Dict, "SETITEM target");
        dict_set(d, k, v);
        break;
      }
      case SETITEMS: {
        const std::vector<uint32_t> kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case GLOBAL: {
        const std::string_view module = line();
        const std::string_view name = line();
        stack_.push_back(global(module, name));
        break;
      }
      case STACK_GLOBAL: {
        const uint32_t name = pop(), module = pop();
        const std::string& m = expect(module, PyKind::Str, "STACK_GLOBAL module").s;
        const std::string& n = expect(name, PyKind::Str, "STACK_GLOBAL name").s;
        stack_.push_back(global(m, n));
        break;
      }
      case REDUCE: {
        const uint32_t args = pop(), fn = pop();
        stack_.push_back(call(fn, args));
        break;
      }
      case BUILD: {
        pop();  // the state: for an OrderedDict, its __dict__ (state_dict's _metadata)
        const PyNode& target = at(top());
        if (target.kind != PyKind::Dict) fail("BUILD on a " + std::string(py_kind_name(target.kind)) + " is not supported");
        break;
      }
      case BINPERSID: {
        const uint32_t pid = pop();
        stack_.push_back(persistent_load(pid));
        break;
      }
      case BINGET: stack_.push_back(memo_get(le(1))); break;
      case LONG_BINGET: stack_.push_back(memo_get(le(4))); break;
      case BINPUT: memo_put(le(1)); break;
      case LONG_BINPUT: memo_put(le(4)); break;
      case MEMOIZE: memo_put(memo_.size()); break;
      default: {
        const char* name = refused_opcode_name(op);
        fail(std::string("unsupported pickle opcode ") + hex_byte(op) +
             (name ? std::string(" (") + name + ")" : std::string()) +
             "; torch.save does not write it");
      }
    }
  }
};

PickleGraph unpickle_torch(const uint8_t* bytes, size_t size, const std::string& source,
                           const PickleLimits& limits) {
  return TorchUnpickler(bytes, size, source, limits).run();
}

}  // namespace qserve
