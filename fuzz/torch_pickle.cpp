// libFuzzer target for the torch checkpoint reader. The first input byte picks what the rest is:
//   0: a pickle, for unpickle_torch (the restricted unpickler alone);
//   1: a zip archive, for ZipArchive::parse;
//   2: a whole checkpoint, for TorchCheckpoint::from_bytes, reading every tensor;
//   3: a pickle, wrapped here into a torch-like archive with a few storages, so that mutated
//      pickles reach name flattening and storage resolution (in mode 2 the CRC of data.pkl stops
//      almost every mutation of the pickle).
// Any outcome other than success or qserve::Error (a crash, a sanitizer report, another exception
// type) is a bug. Seeds: tests/data/torch/*, prefixed with the mode byte.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "formats/torch_checkpoint.h"
#include "formats/torch_pickle.h"
#include "formats/torch_zip.h"

namespace {

__extension__ typedef __int128 i128;  // wide enough that the re-check below cannot overflow

volatile uint8_t sink = 0;

void touch(const uint8_t* p, size_t n) {
  if (n > 0) sink = sink ^ p[0] ^ p[n - 1];
}

// A tensor the unpickler accepted must fit the storage size it declared.
void check_graph(const qserve::PickleGraph& g) {
  for (size_t i = 0; i < g.size(); ++i) {
    const qserve::PyNode& n = g.node(static_cast<uint32_t>(i));
    if (n.kind != qserve::PyKind::Tensor || !n.unsupported_dtype.empty()) continue;
    const qserve::PyNode& s = g.node(n.tensor.storage);
    i128 numel = 1, last = n.tensor.offset;
    for (size_t d = 0; d < n.tensor.shape.size(); ++d) {
      numel *= n.tensor.shape[d];
      if (n.tensor.shape[d] > 0)
        last += static_cast<i128>(n.tensor.shape[d] - 1) * n.tensor.stride[d];
    }
    const i128 end =
        (numel == 0 ? n.tensor.offset : last + 1) * static_cast<i128>(qserve::dtype_size(n.dtype));
    if (end > static_cast<i128>(s.numel) * s.elem_size) std::abort();
  }
}

void put_le(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A stored zip of `records`, without alignment padding (so misaligned storages occur too).
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& records) {
  std::string out, central;
  for (const auto& [name, data] : records) {
    const uint32_t crc =
        qserve::zip_crc32(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    const uint64_t offset = out.size();
    for (std::string* h : {&out, &central}) {
      put_le(*h, h == &out ? 0x04034b50 : 0x02014b50, 4);
      if (h == &central) put_le(*h, 20, 2);
      put_le(*h, 20, 2), put_le(*h, 0, 2), put_le(*h, 0, 2), put_le(*h, 0, 4);
      put_le(*h, crc, 4), put_le(*h, data.size(), 4), put_le(*h, data.size(), 4);
      put_le(*h, name.size(), 2), put_le(*h, 0, 2);
      if (h == &central)
        put_le(*h, 0, 6), put_le(*h, 0, 4), put_le(*h, offset, 4);  // comment len, disk, attributes
      *h += name;
    }
    out += data;
  }
  const uint64_t cd = out.size();
  out += central;
  put_le(out, 0x06054b50, 4), put_le(out, 0, 4), put_le(out, records.size(), 2);
  put_le(out, records.size(), 2), put_le(out, central.size(), 4), put_le(out, cd, 4);
  put_le(out, 0, 2);
  return out;
}

void read_checkpoint(const uint8_t* p, size_t n) {
  const qserve::TorchCheckpoint ck = qserve::TorchCheckpoint::from_bytes(p, n, nullptr, "fuzz.pt");
  for (const std::string& name : ck.names()) {
    const qserve::Tensor t = ck.get(name);
    const uint8_t* b = static_cast<const uint8_t*>(t.raw());
    for (size_t i = 0; i < t.nbytes(); ++i) sink = sink ^ b[i];
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 4;
  const uint8_t* p = data + 1;
  const size_t n = size - 1;
  try {
    if (mode == 0) {
      check_graph(qserve::unpickle_torch(p, n, "fuzz.pkl"));
    } else if (mode == 1) {
      const qserve::ZipArchive z = qserve::ZipArchive::parse(p, n, "fuzz.zip");
      for (const qserve::ZipEntry& e : z.entries()) {
        if (e.method == 0 && (e.flags & 1) == 0) {
          const auto d = z.data(e);
          touch(d.data(), d.size());
        }
      }
    } else if (mode == 2) {
      read_checkpoint(p, n);
    } else {
      const std::string zip = make_zip({{"f/data.pkl", std::string(p, p + n)},
                                        {"f/byteorder", "little"},
                                        {"f/data/0", std::string(64, '\x11')},
                                        {"f/data/1", std::string(256, '\x22')},
                                        {"f/data/2", std::string(7, '\x33')},
                                        {"f/data/3", std::string()},
                                        {"f/data/4", std::string(4, '\x44')},
                                        {"f/data/5", std::string(8, '\x55')}});
      read_checkpoint(reinterpret_cast<const uint8_t*>(zip.data()), zip.size());
    }
  } catch (const qserve::Error&) {
  }
  return 0;
}
