// The restricted unpickler: a stack machine over the binary pickle opcodes (protocols 2-5), with
// Python 3's semantics for MARK frames and the memo, and torch.load(weights_only=True)'s idea of
// which globals may be named. What the allowed globals, calls (REDUCE) and persistent ids mean is
// in torch_pickle_reduce.cpp.
#include "formats/torch_pickle.h"

#include <bit>
#include <iterator>
#include <utility>

#include "core/error.h"
#include "formats/json_util.h"
#include "formats/torch_unpickler.h"

namespace qserve {

std::string_view py_kind_name(PyKind k) {
  static constexpr std::string_view kNames[] = {"None", "bool",   "int",     "float",
                                                "str",  "bytes",  "tuple",   "list",
                                                "dict", "global", "storage", "tensor"};
  const size_t i = static_cast<size_t>(k);
  return i < std::size(kNames) ? kNames[i] : "?";
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
// clang-format off
enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', NONE = 'N', BININT = 'J',
  BININT1 = 'K', BININT2 = 'M', BINFLOAT = 'G', BINUNICODE = 'X', BINBYTES = 'B',
  SHORT_BINBYTES = 'C', EMPTY_TUPLE = ')', TUPLE = 't', EMPTY_LIST = ']', LIST = 'l', APPEND = 'a',
  APPENDS = 'e', EMPTY_DICT = '}', DICT = 'd', SETITEM = 's', SETITEMS = 'u', GLOBAL = 'c',
  REDUCE = 'R', BUILD = 'b', BINPERSID = 'Q', BINGET = 'h', LONG_BINGET = 'j', BINPUT = 'q',
  LONG_BINPUT = 'r',
  // protocol 2
  PROTO = 0x80, TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89,
  LONG1 = 0x8a, LONG4 = 0x8b,
  // protocols 4 and 5
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94, FRAME = 0x95, BYTEARRAY8 = 0x96,
};

// Opcodes we refuse on purpose, named in the error message.
constexpr std::pair<uint8_t, const char*> kRefused[] = {
  {'I', "INT (protocol 0)"}, {'L', "LONG (protocol 0)"}, {'F', "FLOAT (protocol 0)"},
  {'S', "STRING (protocol 0)"}, {'V', "UNICODE (protocol 0)"}, {'T', "BINSTRING"},
  {'U', "SHORT_BINSTRING"}, {'P', "PERSID (protocol 0)"}, {'g', "GET (protocol 0)"},
  {'p', "PUT (protocol 0)"}, {'i', "INST"}, {'o', "OBJ"}, {0x81, "NEWOBJ"}, {0x92, "NEWOBJ_EX"},
  {0x82, "EXT (extension registry)"}, {0x83, "EXT (extension registry)"},
  {0x84, "EXT (extension registry)"}, {0x8f, "EMPTY_SET"}, {0x90, "ADDITEMS"},
  {0x91, "FROZENSET"}, {0x97, "NEXT_BUFFER (out-of-band buffers)"},
  {0x98, "READONLY_BUFFER (out-of-band buffers)"},
};
// clang-format on

const char* refused_opcode_name(uint8_t op) {
  for (const auto& [code, name] : kRefused) {
    if (code == op) return name;
  }
  return nullptr;
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

}  // namespace

PickleGraph TorchUnpickler::run() {
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

void TorchUnpickler::dict_set(uint32_t dict, uint32_t key, uint32_t value) {
  const PyNode& k = at(key);
  PickleDictKey dk{0, 0, {}};
  switch (k.kind) {
    case PyKind::None:
      break;
    case PyKind::Bool:
    case PyKind::Int:
      dk.tag = 1, dk.i = k.i;
      break;
    case PyKind::Str:  // a view into the key's node: nodes_ is a deque, so it stays put
      dk.tag = 2, dk.s = k.s;
      break;
    case PyKind::Bytes:
      dk.tag = 3, dk.s = k.s;
      break;
    default:
      fail("unsupported dict key type " + std::string(py_kind_name(k.kind)));
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

void TorchUnpickler::set_items(uint32_t dict, const std::vector<uint32_t>& kv) {
  if (kv.size() % 2 != 0) fail("odd number of items for a dict");
  expect(dict, PyKind::Dict, "SETITEMS target");
  for (size_t k = 0; k < kv.size(); k += 2) dict_set(dict, kv[k], kv[k + 1]);
}

uint32_t TorchUnpickler::new_seq(PyKind kind, std::vector<uint32_t> items) {
  PyNode n;
  n.kind = kind;
  n.items = std::move(items);
  return add(std::move(n));
}

uint32_t TorchUnpickler::memo_get(uint64_t key) {
  auto it = memo_.find(static_cast<uint32_t>(key));
  if (it == memo_.end()) fail("memo key " + std::to_string(key) + " is not defined");
  return it->second;
}

void TorchUnpickler::memo_put(uint64_t key) {
  const uint32_t v = top();
  memo_[static_cast<uint32_t>(key)] = v;
}

void TorchUnpickler::push_string(PyKind kind, uint64_t len) {
  const uint8_t* b = take(len);
  if (kind == PyKind::Str && !valid_utf8(b, static_cast<size_t>(len)))
    fail("string is not valid UTF-8");
  PyNode n;
  n.kind = kind;
  n.s.assign(reinterpret_cast<const char*>(b), static_cast<size_t>(len));
  push_new(std::move(n));
}

void TorchUnpickler::push_long(uint64_t len) {
  if (len > 8) fail("integer wider than 64 bits");
  const uint8_t* b = take(len);
  uint64_t v = 0;
  for (size_t k = 0; k < len; ++k) v |= static_cast<uint64_t>(b[k]) << (8 * k);
  if (len > 0 && len < 8 && (b[len - 1] & 0x80)) v |= ~uint64_t{0} << (8 * len);  // sign-extend
  push_new(scalar(PyKind::Int, static_cast<int64_t>(v)));
}

void TorchUnpickler::step(uint8_t op) {
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
    case POP_MARK:
      pop_mark();
      break;
    case DUP:
      stack_.push_back(top());
      break;
    case NONE:
      push_new(scalar(PyKind::None));
      break;
    case NEWTRUE:
      push_new(scalar(PyKind::Bool, 1));
      break;
    case NEWFALSE:
      push_new(scalar(PyKind::Bool, 0));
      break;
    case BININT:
      push_new(scalar(PyKind::Int, static_cast<int32_t>(le(4))));
      break;
    case BININT1:
      push_new(scalar(PyKind::Int, static_cast<int64_t>(le(1))));
      break;
    case BININT2:
      push_new(scalar(PyKind::Int, static_cast<int64_t>(le(2))));
      break;
    case LONG1:
      push_long(le(1));
      break;
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
    case SHORT_BINUNICODE:
      push_string(PyKind::Str, le(1));
      break;
    case BINUNICODE:
      push_string(PyKind::Str, le(4));
      break;
    case BINUNICODE8:
      push_string(PyKind::Str, le(8));
      break;
    case SHORT_BINBYTES:
      push_string(PyKind::Bytes, le(1));
      break;
    case BINBYTES:
      push_string(PyKind::Bytes, le(4));
      break;
    case BINBYTES8:
    case BYTEARRAY8:
      push_string(PyKind::Bytes, le(8));
      break;
    case EMPTY_TUPLE:
      stack_.push_back(new_seq(PyKind::Tuple, {}));
      break;
    case TUPLE:
      stack_.push_back(new_seq(PyKind::Tuple, pop_mark()));
      break;
    case TUPLE1:
    case TUPLE2:
    case TUPLE3: {
      std::vector<uint32_t> items(op - TUPLE1 + 1);
      for (size_t k = items.size(); k-- > 0;) items[k] = pop();
      stack_.push_back(new_seq(PyKind::Tuple, std::move(items)));
      break;
    }
    case EMPTY_LIST:
      stack_.push_back(new_seq(PyKind::List, {}));
      break;
    case LIST:
      stack_.push_back(new_seq(PyKind::List, pop_mark()));
      break;
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
      if (target.kind != PyKind::Dict)
        fail("BUILD on a " + std::string(py_kind_name(target.kind)) + " is not supported");
      break;
    }
    case BINPERSID: {
      const uint32_t pid = pop();
      stack_.push_back(persistent_load(pid));
      break;
    }
    case BINGET:
      stack_.push_back(memo_get(le(1)));
      break;
    case LONG_BINGET:
      stack_.push_back(memo_get(le(4)));
      break;
    case BINPUT:
      memo_put(le(1));
      break;
    case LONG_BINPUT:
      memo_put(le(4));
      break;
    case MEMOIZE:
      memo_put(memo_.size());
      break;
    default: {
      const char* name = refused_opcode_name(op);
      fail(std::string("unsupported pickle opcode ") + hex_byte(op) +
           (name ? std::string(" (") + name + ")" : std::string()) +
           "; torch.save does not write it");
    }
  }
}

PickleGraph unpickle_torch(const uint8_t* bytes, size_t size, const std::string& source,
                           const PickleLimits& limits) {
  return TorchUnpickler(bytes, size, source, limits).run();
}

}  // namespace qserve
