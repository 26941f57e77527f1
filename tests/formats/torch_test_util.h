// Helpers for the torch checkpoint tests: a pickle writer (opcode by opcode, so tests can write
// exactly the malformed or hostile pickles they want), a zip writer laid out like torch's, and
// paths of the fixtures in tests/data/torch/.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "formats/torch_checkpoint.h"
#include "formats/torch_zip.h"
#include "test_paths.h"

namespace qserve::test {

inline std::string torch_fixture(const std::string& name) {
  return source_dir() + "/tests/data/torch/" + name;
}

inline void put_le(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Writes pickle opcodes. Every method appends one opcode (with its argument) and returns *this.
class Pickle {
 public:
  Pickle& raw(std::string_view bytes) {
    s_ += bytes;
    return *this;
  }
  Pickle& op(uint8_t code) {
    s_.push_back(static_cast<char>(code));
    return *this;
  }
  Pickle& proto(int v) { return op(0x80).op(static_cast<uint8_t>(v)); }
  Pickle& mark() { return op('('); }
  Pickle& stop() { return op('.'); }
  Pickle& none() { return op('N'); }
  Pickle& boolean(bool b) { return op(b ? 0x88 : 0x89); }
  Pickle& int32(int32_t v) {
    op('J');
    put_le(s_, static_cast<uint32_t>(v), 4);
    return *this;
  }
  Pickle& long1(std::string_view le_bytes) {
    op(0x8a).op(static_cast<uint8_t>(le_bytes.size()));
    return raw(le_bytes);
  }
  Pickle& float64(double d) {
    uint64_t bits;
    static_assert(sizeof bits == sizeof d);
    std::memcpy(&bits, &d, 8);
    op('G');
    for (int i = 7; i >= 0; --i) s_.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
    return *this;
  }
  Pickle& str(std::string_view v) {  // BINUNICODE
    op('X');
    put_le(s_, v.size(), 4);
    return raw(v);
  }
  Pickle& short_str(std::string_view v) {  // SHORT_BINUNICODE (protocol 4)
    op(0x8c).op(static_cast<uint8_t>(v.size()));
    return raw(v);
  }
  Pickle& bytes(std::string_view v) {  // SHORT_BINBYTES
    op('C').op(static_cast<uint8_t>(v.size()));
    return raw(v);
  }
  Pickle& global(std::string_view module, std::string_view name) {
    op('c');
    raw(module).raw("\n").raw(name).raw("\n");
    return *this;
  }
  Pickle& stack_global(std::string_view module, std::string_view name) {
    return short_str(module).short_str(name).op(0x93);
  }
  Pickle& put(uint8_t k) { return op('q').op(k); }
  Pickle& get(uint8_t k) { return op('h').op(k); }
  Pickle& memoize() { return op(0x94); }
  Pickle& empty_dict() { return op('}'); }
  Pickle& empty_list() { return op(']'); }
  Pickle& empty_tuple() { return op(')'); }
  Pickle& tuple() { return op('t'); }
  Pickle& tuple1() { return op(0x85); }
  Pickle& tuple2() { return op(0x86); }
  Pickle& tuple3() { return op(0x87); }
  Pickle& setitem() { return op('s'); }
  Pickle& setitems() { return op('u'); }
  Pickle& append() { return op('a'); }
  Pickle& appends() { return op('e'); }
  Pickle& reduce() { return op('R'); }
  Pickle& build() { return op('b'); }
  Pickle& persid() { return op('Q'); }
  Pickle& ints(const std::vector<int64_t>& v) {  // a tuple of ints
    mark();
    for (int64_t x : v) int32(static_cast<int32_t>(x));
    return tuple();
  }
  Pickle& ordered_dict() { return global("collections", "OrderedDict").empty_tuple().reduce(); }
  // The persistent id torch.save writes for a storage.
  Pickle& storage(std::string_view type, std::string_view key, int64_t numel,
                  std::string_view module = "torch") {
    mark()
        .str("storage")
        .global(module, type)
        .str(key)
        .str("cpu")
        .int32(static_cast<int32_t>(numel));
    return tuple().persid();
  }
  // _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()).
  Pickle& tensor(std::string_view type, std::string_view key, int64_t numel, int64_t offset,
                 const std::vector<int64_t>& shape, const std::vector<int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    storage(type, key, numel).int32(static_cast<int32_t>(offset)).ints(shape).ints(stride);
    return boolean(false).ordered_dict().tuple().reduce();
  }
  const std::string& data() const { return s_; }

 private:
  std::string s_;
};

// Writes a zip archive the way torch's writer lays it out: data descriptors, an "FB" extra field
// aligning each record's data to 64 bytes, optionally ZIP64 records everywhere.
struct ZipRecordOptions {
  uint16_t method = 0;
  uint16_t flags = 0x0808;
  bool misalign = false;  // data one byte past a 64-byte boundary (torch never does this)
};

class ZipWriter {
 public:
  using Options = ZipRecordOptions;
  ZipWriter& add(const std::string& name, const std::string& data, Options o = {}) {
    records_.push_back({name, data, o});
    return *this;
  }
  std::string build(bool zip64 = false, const std::string& comment = "") const {
    std::string out, central;
    for (const Record& r : records_) {
      const uint32_t crc =
          zip_crc32(reinterpret_cast<const uint8_t*>(r.data.data()), r.data.size());
      const uint64_t offset = out.size();
      std::string extra;
      if (zip64) {
        put_le(extra, 1, 2), put_le(extra, 16, 2), put_le(extra, r.data.size(), 8);
        put_le(extra, r.data.size(), 8);
      }
      const size_t start = offset + 30 + r.name.size() + extra.size() + 4;
      const size_t pad = (64 - start % 64) % 64 + (r.o.misalign ? 1 : 0);
      put_le(extra, 0x4246, 2), put_le(extra, pad, 2);
      extra.append(pad, 'Z');
      const uint16_t version = zip64 ? 45 : 20;
      put_le(out, 0x04034b50, 4), put_le(out, version, 2), put_le(out, r.o.flags, 2);
      put_le(out, r.o.method, 2), put_le(out, 0, 4), put_le(out, 0, 4);
      put_le(out, zip64 ? 0xffffffffu : 0, 4), put_le(out, zip64 ? 0xffffffffu : 0, 4);
      put_le(out, r.name.size(), 2), put_le(out, extra.size(), 2);
      out += r.name + extra + r.data;
      put_le(out, 0x08074b50, 4), put_le(out, crc, 4);
      put_le(out, r.data.size(), zip64 ? 8 : 4), put_le(out, r.data.size(), zip64 ? 8 : 4);
      std::string cextra;
      if (zip64) {
        put_le(cextra, 1, 2), put_le(cextra, 24, 2), put_le(cextra, r.data.size(), 8);
        put_le(cextra, r.data.size(), 8), put_le(cextra, offset, 8);
      }
      const uint64_t small_size = zip64 ? 0xffffffffu : r.data.size();
      put_le(central, 0x02014b50, 4), put_le(central, 0x031e, 2), put_le(central, version, 2);
      put_le(central, r.o.flags, 2), put_le(central, r.o.method, 2), put_le(central, 0, 4);
      put_le(central, crc, 4), put_le(central, small_size, 4), put_le(central, small_size, 4);
      put_le(central, r.name.size(), 2), put_le(central, cextra.size(), 2), put_le(central, 0, 2);
      put_le(central, 0, 2), put_le(central, 0, 2), put_le(central, 0, 4);
      put_le(central, zip64 ? 0xffffffffu : offset, 4);
      central += r.name + cextra;
    }
    const uint64_t cd_offset = out.size(), n = records_.size();
    out += central;
    if (zip64) {
      const uint64_t eocd64 = out.size();
      put_le(out, 0x06064b50, 4), put_le(out, 44, 8), put_le(out, 45, 2), put_le(out, 45, 2);
      put_le(out, 0, 4), put_le(out, 0, 4), put_le(out, n, 8), put_le(out, n, 8);
      put_le(out, central.size(), 8), put_le(out, cd_offset, 8);
      put_le(out, 0x07064b50, 4), put_le(out, 0, 4), put_le(out, eocd64, 8), put_le(out, 1, 4);
      put_le(out, 0x06054b50, 4), put_le(out, 0, 4), put_le(out, 0xffff, 2);
      put_le(out, 0xffff, 2), put_le(out, 0xffffffffu, 4), put_le(out, 0xffffffffu, 4);
    } else {
      put_le(out, 0x06054b50, 4), put_le(out, 0, 4), put_le(out, n, 2), put_le(out, n, 2);
      put_le(out, central.size(), 4), put_le(out, cd_offset, 4);
    }
    put_le(out, comment.size(), 2);
    return out + comment;
  }

 private:
  struct Record {
    std::string name, data;
    Options o;
  };
  std::vector<Record> records_;
};

// A torch-like archive "ck": data.pkl, byteorder, the given storages (key -> bytes), version.
inline std::string torch_archive(const std::string& pickle,
                                 const std::vector<std::pair<std::string, std::string>>& storages,
                                 bool zip64 = false) {
  ZipWriter w;
  w.add("ck/data.pkl", pickle).add("ck/byteorder", "little");
  for (const auto& [key, bytes] : storages) w.add("ck/data/" + key, bytes);
  w.add("ck/version", "3\n");
  return w.build(zip64);
}

// Opens bytes held in memory as a checkpoint called `source`; the tensors keep the bytes alive.
inline TorchCheckpoint checkpoint_from(std::string bytes, const std::string& source = "mem.pt") {
  auto owner = std::make_shared<std::string>(std::move(bytes));
  return TorchCheckpoint::from_bytes(reinterpret_cast<const uint8_t*>(owner->data()), owner->size(),
                                     owner, source);
}

}  // namespace qserve::test
