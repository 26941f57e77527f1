// Validation of safetensors headers. The header is the only untrusted structure we interpret
// before handing out pointers into the mapping, so every offset and size is checked here with
// overflow-safe arithmetic; after this, get() can trust begin/end without further checks.
#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/json_util.h"
#include "formats/safetensors.h"

namespace qserve {

namespace {

using formats_detail::describe_json;
using formats_detail::printable;
using nlohmann::json;

// Same limit as the reference implementation: real headers are kilobytes, and anything larger is
// either corrupt or an attempt to make us allocate.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Root object (0) -> entry object (1) -> shape / data_offsets array (2) -> number (3).
constexpr int kMaxJsonDepth = 3;

std::string quoted(const std::string& name) {
  // Built with append: `"'" + std::string` trips a GCC 12 -Wrestrict false positive at -O3.
  std::string s = "'";
  s.append(printable(name, 100)).append("'");
  return s;
}

std::string supported_dtypes() {
  return "F32, F16, BF16, I8, U8, I16, I32, I64, BOOL";
}

// A JSON number that is an integer in [0, INT64_MAX] (shape dimensions) or [0, UINT64_MAX]
// (offsets). Floats (even integral ones), booleans and negatives are rejected.
bool as_u64(const json& v, uint64_t max, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = static_cast<uint64_t>(i);
  } else {
    return false;
  }
  return *out <= max;
}

class HeaderParser {
 public:
  HeaderParser(const std::string& source, uint64_t data_size)
      : source_(source), data_size_(data_size) {}

  Error fail(const std::string& what) const {
    return Error(source_ + ": invalid safetensors header: " + what);
  }

  json parse(const char* begin, const char* end) {
    // Strictness beyond what nlohmann checks by default: duplicate keys (it keeps the last one
    // silently, which would let two readers disagree about a file) and nesting deeper than the
    // format needs (bounds memory and work on hostile input).
    std::vector<std::set<std::string>> keys;
    auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
      if (depth > kMaxJsonDepth) throw fail("JSON nested deeper than a safetensors header can be");
      switch (ev) {
        case json::parse_event_t::object_start:
          keys.emplace_back();
          break;
        case json::parse_event_t::object_end:
          keys.pop_back();
          break;
        case json::parse_event_t::key:
          if (!keys.back().insert(parsed.get<std::string>()).second) {
            throw fail("duplicate key " + quoted(parsed.get<std::string>()));
          }
          break;
        default:
          break;
      }
      return true;
    };
    try {
      return json::parse(begin, end, cb);
    } catch (const json::exception& e) {
      throw fail("not valid JSON: " + formats_detail::json_error_text(e));
    }
  }

  std::map<std::string, std::string> metadata(const json& v) const {
    std::map<std::string, std::string> out;
    if (v.is_null()) return out;  // the reference reader takes null as "no metadata"
    if (!v.is_object()) throw fail("__metadata__ must be an object, got " + describe_json(v));
    for (const auto& [k, val] : v.items()) {
      if (!val.is_string()) {
        throw fail("__metadata__ value for key " + quoted(k) + " must be a string, got " +
                   describe_json(val));
      }
      out.emplace(k, val.get<std::string>());
    }
    return out;
  }

  SafetensorsEntry entry(const std::string& name, const json& v) const {
    const std::string who = "tensor " + quoted(name);
    if (!v.is_object()) throw fail(who + " must be an object, got " + describe_json(v));
    // Unknown extra keys are ignored, as the reference implementation does.
    auto field = [&](const char* key) -> const json& {
      auto it = v.find(key);
      if (it == v.end()) throw fail(who + " is missing \"" + key + "\"");
      return *it;
    };
    SafetensorsEntry e{};

    const json& dt = field("dtype");
    if (!dt.is_string()) throw fail(who + ": dtype must be a string, got " + describe_json(dt));
    const auto parsed = dtype_from_name(dt.get<std::string>());
    if (!parsed) {
      throw fail(who + " has unknown or unsupported dtype " + quoted(dt.get<std::string>()) +
                 " (supported: " + supported_dtypes() + ")");
    }
    e.dtype = *parsed;

    const json& shape = field("shape");
    if (!shape.is_array())
      throw fail(who + ": shape must be an array, got " + describe_json(shape));
    // numel and byte size must fit in int64 (Tensor::numel) and must not wrap; a wrapped product
    // could otherwise match a small data_offsets span.
    uint64_t numel = 1;
    for (const json& d : shape) {
      uint64_t dim = 0;
      if (!as_u64(d, std::numeric_limits<int64_t>::max(), &dim)) {
        throw fail(who + ": shape entries must be non-negative integers, got " + describe_json(d));
      }
      e.shape.push_back(static_cast<int64_t>(dim));
      if (__builtin_mul_overflow(numel, dim, &numel)) {
        throw fail(who + ": shape " + shape_to_string(e.shape) + " overflows the element count");
      }
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, dtype_size(e.dtype), &nbytes) ||
        nbytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw fail(who + ": shape " + shape_to_string(e.shape) + " overflows the byte size");
    }

    const json& off = field("data_offsets");
    if (!off.is_array() || off.size() != 2 ||
        !as_u64(off[0], std::numeric_limits<uint64_t>::max(), &e.begin) ||
        !as_u64(off[1], std::numeric_limits<uint64_t>::max(), &e.end)) {
      throw fail(who + ": data_offsets must be [begin, end] with non-negative integers, got " +
                 describe_json(off));
    }
    const std::string span =
        "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
    if (e.begin > e.end) throw fail(who + ": " + span + " has begin after end");
    if (e.end > data_size_) {
      throw fail(who + ": " + span + " is beyond the end of the data section (" +
                 std::to_string(data_size_) + " bytes; file truncated?)");
    }
    if (e.end - e.begin != nbytes) {
      throw fail(who + ": " + span + " spans " + std::to_string(e.end - e.begin) +
                 " bytes but dtype " + std::string(dtype_name(e.dtype)) + " x shape " +
                 shape_to_string(e.shape) + " needs " + std::to_string(nbytes) +
                 " (size mismatch)");
    }
    return e;
  }

  // The spec requires the tensors to tile the data section exactly: no overlap (two names
  // aliasing the same bytes) and no holes (bytes nobody accounts for).
  void check_coverage(const std::map<std::string, SafetensorsEntry>& tensors) const {
    std::vector<std::tuple<uint64_t, uint64_t, const std::string*>> order;
    order.reserve(tensors.size());
    for (const auto& [name, e] : tensors) order.emplace_back(e.begin, e.end, &name);
    std::sort(order.begin(), order.end());
    uint64_t pos = 0;
    const std::string* prev = nullptr;
    for (const auto& [b, e, name] : order) {
      if (b < pos) {
        throw fail("tensors " + quoted(*prev) + " and " + quoted(*name) + " overlap (" +
                   quoted(*name) + " starts at " + std::to_string(b) + ", before " +
                   std::to_string(pos) + ")");
      }
      if (b > pos) {
        throw fail("hole in the data section: bytes [" + std::to_string(pos) + ", " +
                   std::to_string(b) + ") are not covered by any tensor (before " + quoted(*name) +
                   ")");
      }
      pos = e;
      prev = name;
    }
    if (pos != data_size_) {
      throw fail("the tensors cover " + std::to_string(pos) + " bytes but the data section has " +
                 std::to_string(data_size_) + " (trailing bytes not covered by any tensor)");
    }
  }

 private:
  const std::string& source_;
  uint64_t data_size_;
};

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                                           const std::string& source) {
  auto fail = [&](const std::string& what) {
    return Error(source + ": invalid safetensors file: " + what);
  };
  if (size > file_size) throw fail("more bytes given than the file size");  // caller error
  if (file_size < 8) {
    throw fail("file is " + std::to_string(file_size) +
               " bytes, too short for the 8-byte header length (truncated?)");
  }
  if (size < 8) throw fail("the 8-byte header length was not provided");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian on every host
  if (n < 2)
    throw fail("header length " + std::to_string(n) + " is too small (minimum is 2, \"{}\")");
  if (n > kMaxHeaderBytes) {
    throw fail("header length " + std::to_string(n) + " exceeds the limit of " +
               std::to_string(kMaxHeaderBytes) + " bytes (corrupt or not a safetensors file)");
  }
  if (n > file_size - 8) {
    throw fail("header length " + std::to_string(n) + " is beyond the end of the file (" +
               std::to_string(file_size) + " bytes; truncated or not a safetensors file)");
  }
  if (size - 8 < n) throw fail("only part of the header was provided");  // caller error

  const char* h = reinterpret_cast<const char*>(bytes + 8);
  if (h[0] != '{') throw fail("header does not start with '{' (not a safetensors file?)");
  // The JSON parser stops silently at a NUL byte; valid JSON never contains one (padding is
  // spaces), so anything after it would otherwise be ignored.
  if (std::memchr(h, '\0', n) != nullptr) throw fail("header contains a NUL byte");

  SafetensorsHeader out;
  out.data_offset = 8 + n;
  HeaderParser p(source, file_size - out.data_offset);
  const json root = p.parse(h, h + n);
  if (!root.is_object()) throw p.fail("the header is not a JSON object");
  for (const auto& [name, v] : root.items()) {
    if (name == "__metadata__") {
      out.metadata = p.metadata(v);
    } else {
      out.tensors.emplace(name, p.entry(name, v));
    }
  }
  p.check_coverage(out.tensors);
  return out;
}

}  // namespace qserve
