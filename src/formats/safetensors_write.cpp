// Writing safetensors files. The output is byte-for-byte what the reference implementation
// writes: the header lists __metadata__ first (keys sorted), then the tensors in data order; the
// data is ordered by decreasing dtype alignment, then by name, so that every tensor is naturally
// aligned (the data section starts at a multiple of 8) and zero-copy views of it can be read as
// typed arrays.
#include <algorithm>
#include <bit>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/atomic_file.h"
#include "formats/json_util.h"
#include "formats/safetensors.h"

namespace qserve {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swapping");

namespace {

std::string json_string(const std::string& s, const std::string& path, const char* what) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception&) {
    throw Error(path + ": " + what + " '" + formats_detail::printable(s) + "' is not valid UTF-8");
  }
}

// The reference implementation orders data by its dtype enum, which lists types by increasing
// alignment (BOOL, U8, I8, I16, F16, BF16, I32, F32, I64 among ours), largest first. Using the same
// rank makes our files byte-identical to its output.
int reference_rank(DType t) {
  switch (t) {
    case DType::BOOL:
      return 0;
    case DType::U8:
      return 1;
    case DType::I8:
      return 2;
    case DType::I16:
      return 3;
    case DType::F16:
      return 4;
    case DType::BF16:
      return 5;
    case DType::I32:
      return 6;
    case DType::F32:
      return 7;
    case DType::I64:
      return 8;
  }
  return 0;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& what) {
    return Error(path + ": cannot write safetensors file: " + what);
  };
  // Validate everything before touching the file system.
  std::vector<const SafetensorsWriteItem*> order;
  std::set<std::string> seen;
  for (const SafetensorsWriteItem& t : tensors) {
    const std::string who = "tensor '" + formats_detail::printable(t.name) + "'";
    if (t.name == "__metadata__") throw fail("a tensor cannot be named __metadata__");
    if (!seen.insert(t.name).second) throw fail("duplicate " + who);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw fail(who + " has a negative dimension in shape " + shape_to_string(t.shape));
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
        throw fail(who + " has an overflowing shape " + shape_to_string(t.shape));
      }
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes) || nbytes != t.bytes.size()) {
      throw fail(who + " has " + std::to_string(t.bytes.size()) + " bytes but dtype " +
                 std::string(dtype_name(t.dtype)) + " x shape " + shape_to_string(t.shape) +
                 " needs " + std::to_string(nbytes) + " (size mismatch)");
    }
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    const int ra = reference_rank(a->dtype), rb = reference_rank(b->dtype);
    return ra != rb ? ra > rb : a->name < b->name;
  });

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ",";
      first = false;
      header += json_string(k, path, "metadata key") + ":" + json_string(v, path, "metadata value");
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const SafetensorsWriteItem* t : order) {
    if (header.size() > 1) header += ",";
    header += json_string(t->name, path, "tensor name");
    header += ":{\"dtype\":\"" + std::string(dtype_name(t->dtype)) + "\",\"shape\":[";
    for (size_t i = 0; i < t->shape.size(); ++i) {
      if (i) header += ",";
      header += std::to_string(t->shape[i]);
    }
    const uint64_t end = offset + t->bytes.size();
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
  }
  header += "}";
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  header.append((8 - header.size() % 8) % 8, ' ');
  // Readers (ours and the reference) refuse headers over 100 MB.
  if (header.size() > 100'000'000)
    throw fail("the header would exceed the 100 MB limit of readers");

  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) len[i] = static_cast<uint8_t>(n & 0xff);

  AtomicFileWriter out(path, "safetensors file");
  out.write(len, sizeof(len));
  out.write(header.data(), header.size());
  for (const SafetensorsWriteItem* t : order) out.write(t->bytes.data(), t->bytes.size());
  out.commit();
}

}  // namespace qserve
