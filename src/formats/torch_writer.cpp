// torch.save of an OrderedDict of tensors (torch_writer.h): validation, the protocol-2 pickle
// that Python's pickler emits for it (with torch's persistent ids for storages), and the records
// of the zip container (torch_zip_writer.h).
#include "formats/torch_writer.h"

#include <algorithm>
#include <bit>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/tensor.h"
#include "formats/json_util.h"
#include "formats/torch_zip_writer.h"

namespace qserve {

static_assert(std::endian::native == std::endian::little,
              "torch checkpoints are written little-endian; a big-endian host would need swapping");

namespace {

// torch's legacy storage class per dtype: what torch.save names in each persistent id.
const char* storage_class(DType t) {
  switch (t) {
    case DType::F32:
      return "FloatStorage";
    case DType::F16:
      return "HalfStorage";
    case DType::BF16:
      return "BFloat16Storage";
    case DType::I8:
      return "CharStorage";
    case DType::U8:
      return "ByteStorage";
    case DType::I16:
      return "ShortStorage";
    case DType::I32:
      return "IntStorage";
    case DType::I64:
      return "LongStorage";
    case DType::BOOL:
      return "BoolStorage";
  }
  return "";
}

// Appends pickle opcodes as CPython's protocol-2 pickler writes them for these objects. Globals
// are memoized on first use and fetched from the memo afterwards, as the pickler does.
class PickleOut {
 public:
  std::string& bytes() { return s_; }
  void op(uint8_t code) { s_.push_back(static_cast<char>(code)); }

  void global(const std::string& module, const std::string& name) {
    const std::string key = module + "\n" + name;
    if (auto it = memo_.find(key); it != memo_.end()) {
      memo_get(it->second);
      return;
    }
    op('c');  // GLOBAL
    s_ += key + "\n";
    memo_.emplace(key, next_memo_);
    memoize();
  }

  // Stores the object on top of the stack in the next memo slot. There are at most 12 (the dict,
  // OrderedDict, _rebuild_tensor_v2 and 9 storage classes), so BINPUT's one-byte index suffices.
  void memoize() { op('q'), le(next_memo_++, 1); }

  // CPython's save_long for protocol 2: BININT1 / BININT2 / BININT, else LONG1 with the minimal
  // two's-complement little-endian encoding.
  void integer(int64_t v) {
    if (v >= 0 && v <= 0xff) {
      op('K'), le(static_cast<uint64_t>(v), 1);
    } else if (v >= 0 && v <= 0xffff) {
      op('M'), le(static_cast<uint64_t>(v), 2);
    } else if (v >= -0x80000000LL && v <= 0x7fffffffLL) {
      op('J'), le(static_cast<uint64_t>(v) & 0xffffffffu, 4);
    } else {
      std::string b;
      for (int i = 0; i < 8; ++i)
        b.push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff));
      // Drop a top byte that only repeats the sign of the one below it.
      while (b.size() > 1) {
        const uint8_t top = static_cast<uint8_t>(b.back());
        const bool below_negative = (static_cast<uint8_t>(b[b.size() - 2]) & 0x80) != 0;
        if ((top == 0x00 && !below_negative) || (top == 0xff && below_negative)) {
          b.pop_back();
        } else {
          break;
        }
      }
      op(0x8a), le(b.size(), 1);  // LONG1
      s_ += b;
    }
  }

  void str(std::string_view v) {  // BINUNICODE (protocol 2 has no shorter form)
    op('X'), le(v.size(), 4);
    s_.append(v);
  }

  // A tuple of ints: EMPTY_TUPLE, TUPLE1..3, or MARK ... TUPLE.
  void int_tuple(const std::vector<int64_t>& v) {
    if (v.empty()) return op(')');
    if (v.size() > 3) op('(');
    for (int64_t x : v) integer(x);
    static const uint8_t kSmall[] = {0x85, 0x86, 0x87};
    op(v.size() > 3 ? 't' : kSmall[v.size() - 1]);
  }

  void ordered_dict() {  // collections.OrderedDict()
    global("collections", "OrderedDict");
    op(')'), op('R');
  }

 private:
  void le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void memo_get(uint32_t i) { op('h'), le(i, 1); }  // BINGET
  std::string s_;
  std::map<std::string, uint32_t> memo_;  // global "module\nname" -> memo slot
  uint32_t next_memo_ = 0;
};

// _rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict()) over storage `key`.
void pickle_tensor(PickleOut& p, const TorchWriteItem& t, const std::string& key) {
  // Row-major strides as torch computes them for a contiguous tensor: a size-0 dimension counts
  // as 1, so torch.empty(5, 0, 3) has strides (3, 3, 1).
  // (Unsigned arithmetic: this is also reachable through torch_state_dict_pickle unvalidated.)
  std::vector<int64_t> stride(t.shape.size());
  uint64_t numel = 1, step = 1;
  for (size_t d = t.shape.size(); d-- > 0;) {
    stride[d] = static_cast<int64_t>(step);
    step *= static_cast<uint64_t>(std::max<int64_t>(t.shape[d], 1));
    numel *= static_cast<uint64_t>(t.shape[d]);
  }
  p.global("torch._utils", "_rebuild_tensor_v2");
  p.op('(');  // MARK: the six arguments
  p.op('(');  // MARK: the persistent id ('storage', type, key, location, numel)
  p.str("storage");
  p.global("torch", storage_class(t.dtype));
  p.str(key);
  p.str("cpu");
  p.integer(static_cast<int64_t>(numel));
  p.op('t');     // TUPLE
  p.op('Q');     // BINPERSID
  p.integer(0);  // storage_offset
  p.int_tuple(t.shape);
  p.int_tuple(stride);
  p.op(0x89);        // NEWFALSE: requires_grad
  p.ordered_dict();  // backward_hooks
  p.op('t');
  p.op('R');  // REDUCE
}

// Throws before anything is written: names must be UTF-8 (pickle strings are) and unique,
// shapes non-negative and each tensor's bytes exactly dtype_size x numel.
void validate(const std::vector<TorchWriteItem>& tensors, const TorchWriteOptions& opts,
              const std::string& what) {
  auto fail = [&](const std::string& m) {
    return Error(what + ": cannot write torch checkpoint: " + m);
  };
  // Readers take everything before the first '/' of a record name as the archive's prefix.
  if (opts.archive.empty() || opts.archive.find_first_of("/\\") != std::string::npos ||
      std::any_of(opts.archive.begin(), opts.archive.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20; })) {
    throw fail("archive name '" + formats_detail::printable(opts.archive) +
               "' must be non-empty, without '/', '\\' or control characters");
  }
  std::set<std::string_view> seen;
  for (const TorchWriteItem& t : tensors) {
    const std::string who = "tensor '" + formats_detail::printable(t.name) + "'";
    try {
      (void)nlohmann::json(t.name).dump();  // throws on invalid UTF-8
    } catch (const nlohmann::json::exception&) {
      throw fail(who + ": the name is not valid UTF-8");
    }
    if (!seen.insert(t.name).second) throw fail("duplicate " + who);
    // The strides multiply the sizes with 0 counted as 1 (pickle_tensor); that product bounds
    // numel and must fit an int64, as torch requires.
    uint64_t numel = 1, extent = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw fail(who + " has a negative dimension in shape " + shape_to_string(t.shape));
      numel *= static_cast<uint64_t>(d);
      if (__builtin_mul_overflow(extent, static_cast<uint64_t>(std::max<int64_t>(d, 1)), &extent) ||
          extent > (uint64_t{1} << 62)) {
        throw fail(who + " has an overflowing shape " + shape_to_string(t.shape));
      }
    }
    const uint64_t nbytes = numel * dtype_size(t.dtype);
    if (nbytes != t.bytes.size()) {
      throw fail(who + " has " + std::to_string(t.bytes.size()) + " bytes but dtype " +
                 std::string(dtype_name(t.dtype)) + " x shape " + shape_to_string(t.shape) +
                 " needs " + std::to_string(nbytes) + " (size mismatch)");
    }
  }
}

void write_archive(ByteSink& out, const std::vector<TorchWriteItem>& tensors,
                   const TorchWriteOptions& opts) {
  const std::string a = opts.archive + "/";
  ZipStreamWriter zip(out, opts.zip64_from);
  // torch's record order: the pickle, the byte order, the storages, the version.
  zip.add(a + "data.pkl", torch_state_dict_pickle(tensors));
  zip.add(a + "byteorder", "little");
  for (size_t i = 0; i < tensors.size(); ++i)
    zip.add(a + "data/" + std::to_string(i), tensors[i].bytes);
  zip.add(a + "version", "3\n");  // torch's file format version (required by its reader)
  zip.finish();
}

}  // namespace

std::string torch_state_dict_pickle(const std::vector<TorchWriteItem>& tensors) {
  PickleOut p;
  p.op(0x80), p.op(2);  // PROTO 2
  p.ordered_dict();
  p.memoize();
  // CPython's _batch_setitems: batches of 1000 as MARK k v ... SETITEMS, a lone item as SETITEM.
  constexpr size_t kBatch = 1000;
  for (size_t begin = 0; begin < tensors.size(); begin += kBatch) {
    const size_t end = std::min(tensors.size(), begin + kBatch);
    if (end - begin > 1) p.op('(');
    for (size_t i = begin; i < end; ++i) {
      p.str(tensors[i].name);
      pickle_tensor(p, tensors[i], std::to_string(i));
    }
    p.op(end - begin > 1 ? 'u' : 's');
  }
  p.op('.');  // STOP
  return std::move(p.bytes());
}

void write_torch_checkpoint(const std::string& path, const std::vector<TorchWriteItem>& tensors,
                            const TorchWriteOptions& opts) {
  validate(tensors, opts, path);
  AtomicFileSink out(path);
  write_archive(out, tensors, opts);
  out.commit();
}

std::string torch_checkpoint_bytes(const std::vector<TorchWriteItem>& tensors,
                                   const TorchWriteOptions& opts, const std::string& what) {
  validate(tensors, opts, what);
  StringSink out;
  write_archive(out, tensors, opts);
  return out.take();
}

}  // namespace qserve
