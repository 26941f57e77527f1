// Internal to src/formats: the restricted unpickler's state and operations, shared by
// torch_pickle.cpp (the opcode machine) and torch_pickle_reduce.cpp (what torch's globals, calls
// and persistent ids mean). Use unpickle_torch() from torch_pickle.h instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "formats/torch_pickle.h"

namespace qserve {

// A dict key, compared by value the way Python's dict would (bool keys equal int keys).
struct PickleDictKey {
  uint8_t tag;  // 0 None, 1 int/bool, 2 str, 3 bytes
  int64_t i;
  std::string_view s;
  bool operator<(const PickleDictKey& o) const {
    if (tag != o.tag) return tag < o.tag;
    if (i != o.i) return i < o.i;
    return s < o.s;
  }
};

class TorchUnpickler {
 public:
  TorchUnpickler(const uint8_t* bytes, size_t size, const std::string& source,
                 const PickleLimits& limits)
      : p_(bytes), n_(size), source_(source), limits_(limits) {}

  PickleGraph run();

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
  std::unordered_map<uint32_t, std::map<PickleDictKey, size_t>> dict_index_;  // dict node -> entry
  std::map<std::string, uint32_t, std::less<>> storages_;                     // storage key -> node
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

  // ---- opcodes and containers (torch_pickle.cpp) ----
  void step(uint8_t op);
  uint32_t memo_get(uint64_t key);
  void memo_put(uint64_t key);
  void push_string(PyKind kind, uint64_t len);
  void push_long(uint64_t len);
  void dict_set(uint32_t dict, uint32_t key, uint32_t value);
  void set_items(uint32_t dict, const std::vector<uint32_t>& kv);
  uint32_t new_seq(PyKind kind, std::vector<uint32_t> items);

  // ---- globals, calls and persistent ids: what torch's objects mean (torch_pickle_reduce.cpp)
  // ----
  uint32_t global(std::string_view module, std::string_view name);
  uint32_t call(uint32_t fn, uint32_t args_node);
  uint32_t rebuild_tensor(const std::vector<uint32_t>& a, bool v3);
  uint32_t codecs_encode(const std::vector<uint32_t>& a);
  uint32_t persistent_load(uint32_t pid);
  int64_t as_int(uint32_t i, const char* what);
  std::vector<int64_t> int_tuple(uint32_t i, const char* what);
};

}  // namespace qserve
