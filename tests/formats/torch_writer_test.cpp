// The torch.save writer (formats/torch_writer.h) against our reader: every dtype, 0-d and empty
// tensors, integer encodings, ZIP64, batching of many tensors, the records torch expects, the
// errors; and, when a Python with torch is available ($QSERVE_TORCH_PYTHON, else python3), real
// torch.load(weights_only=True) on the same files (tests/formats/torch_writer_check.py).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/formats_test_util.h"
#include "formats/torch_checkpoint.h"
#include "formats/torch_pickle.h"
#include "formats/torch_test_util.h"
#include "formats/torch_writer.h"
#include "formats/torch_zip.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;
using test::checkpoint_from;

struct Owned {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Deterministic bytes for a tensor (every byte pattern, including NaN payloads, round-trips).
Owned make(std::string name, DType dt, std::vector<int64_t> shape, uint32_t seed = 1) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::string b(static_cast<size_t>(numel) * dtype_size(dt), '\0');
  uint32_t x = seed * 2654435761u + 12345u;
  for (char& c : b) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  if (dt == DType::BOOL) {
    for (char& c : b) c = static_cast<char>(c & 1);
  }
  return {std::move(name), dt, std::move(shape), std::move(b)};
}

// prefix + i, built by appending (GCC 12 misreports "x" + std::to_string(i) as an overlapping
// memcpy).
std::string numbered(const char* prefix, size_t i) {
  std::string s = prefix;
  s += std::to_string(i);
  return s;
}

std::vector<TorchWriteItem> items_of(const std::vector<Owned>& v) {
  std::vector<TorchWriteItem> out;
  for (const Owned& o : v) out.push_back({o.name, o.dtype, o.shape, o.bytes});
  return out;
}

// Every dtype; 0-d, empty, 1-d..5-d shapes (tuples of 0, 1, 2, 3 and MARK-ed >3 ints); a name
// with dots and one with non-ASCII UTF-8.
std::vector<Owned> sample() {
  return {
      make("model.embed_tokens.weight", DType::F16, {8, 4}, 1),
      make("f32", DType::F32, {3, 5}, 2),
      make("bf16", DType::BF16, {7}, 3),
      make("i8", DType::I8, {2, 3, 4}, 4),
      make("u8", DType::U8, {2, 2, 2, 2}, 5),
      make("i16", DType::I16, {1, 2, 1, 2, 3}, 6),
      make("i32", DType::I32, {4, 1}, 7),
      make("i64", DType::I64, {3}, 8),
      make("bool", DType::BOOL, {5}, 9),
      make("scalar_f32", DType::F32, {}, 10),
      make("scalar_i64", DType::I64, {}, 11),
      make("empty_f16", DType::F16, {0}, 12),
      make("empty_i8", DType::I8, {2, 0, 3}, 13),
      make("caf\xc3\xa9.\xe2\x82\xac", DType::U8, {2}, 14),
  };
}

void expect_round_trip(const TorchCheckpoint& ck, const std::vector<Owned>& want) {
  ASSERT_EQ(ck.names().size(), want.size());
  EXPECT_TRUE(ck.scalars().empty());
  EXPECT_TRUE(ck.unsupported().empty());
  for (const Owned& o : want) {
    SCOPED_TRACE(o.name);
    ASSERT_TRUE(ck.has(o.name));
    EXPECT_TRUE(ck.info(o.name).contiguous);
    const Tensor t = ck.get(o.name);
    EXPECT_EQ(t.dtype(), o.dtype);
    EXPECT_EQ(t.shape(), o.shape);
    ASSERT_EQ(t.nbytes(), o.bytes.size());
    if (!o.bytes.empty()) {
      EXPECT_EQ(std::memcmp(t.raw(), o.bytes.data(), o.bytes.size()), 0);
    }
  }
}

TEST(TorchWriter, RoundTripsEveryDTypeAndShape) {
  const std::vector<Owned> v = sample();
  const std::string bytes = torch_checkpoint_bytes(items_of(v));
  expect_round_trip(checkpoint_from(bytes), v);
  // Each tensor has its own storage, keyed by position as torch.save numbers them.
  const TorchCheckpoint ck = checkpoint_from(bytes);
  EXPECT_EQ(ck.info("model.embed_tokens.weight").storage_key, "0");
  EXPECT_EQ(ck.info("caf\xc3\xa9.\xe2\x82\xac").storage_key, std::to_string(v.size() - 1));
}

TEST(TorchWriter, FileRoundTripIsZeroCopyAndAligned) {
  test::TempDir dir;
  const std::vector<Owned> v = sample();
  const std::string path = dir.file("pytorch_model.bin");
  write_torch_checkpoint(path, items_of(v), {.archive = "pytorch_model"});
  const TorchCheckpoint ck = TorchCheckpoint::open(path);
  expect_round_trip(ck, v);
  // Records in torch's order, data 64-byte aligned (so tensors are views into the mapping).
  const std::string file = test::read_file(path);
  const ZipArchive zip =
      ZipArchive::parse(reinterpret_cast<const uint8_t*>(file.data()), file.size(), path);
  std::vector<std::string> names;
  for (const ZipEntry& e : zip.entries()) {
    names.push_back(e.name);
    EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
    EXPECT_EQ(e.method, 0);
    const std::span<const uint8_t> d = zip.checked_data(e);  // CRC-32 right for every record
    EXPECT_EQ(d.size(), e.size);
  }
  ASSERT_EQ(names.size(), v.size() + 3);
  EXPECT_EQ(names.front(), "pytorch_model/data.pkl");
  EXPECT_EQ(names[1], "pytorch_model/byteorder");
  EXPECT_EQ(names[2], "pytorch_model/data/0");
  EXPECT_EQ(names.back(), "pytorch_model/version");
  auto text = [&](const char* n) {
    const std::span<const uint8_t> d = zip.data(*zip.find(n));
    return std::string(d.begin(), d.end());
  };
  EXPECT_EQ(text("pytorch_model/byteorder"), "little");
  EXPECT_EQ(text("pytorch_model/version"), "3\n");
  EXPECT_EQ(fs::file_size(path), file.size());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1)
      << "the temporary file was left behind";
}

TEST(TorchWriter, Zip64RecordsReadBack) {
  const std::vector<Owned> v = sample();
  // ZIP64 fields everywhere, and mixed (early records plain; later offsets, the larger records'
  // sizes and the end records ZIP64), as in a checkpoint that crosses 4 GiB part way.
  for (uint64_t from : {uint64_t{0}, uint64_t{300}}) {
    SCOPED_TRACE(from);
    const std::string bytes = torch_checkpoint_bytes(items_of(v), {.zip64_from = from});
    expect_round_trip(checkpoint_from(bytes), v);
    // The end of the archive is a ZIP64 locator + an EOCD with saturated fields.
    ASSERT_GT(bytes.size(), 42u);
    const uint8_t* end = reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size();
    EXPECT_EQ(end[-42] | end[-41] << 8 | end[-40] << 16 | end[-39] << 24, 0x07064b50);
    EXPECT_EQ(end[-12] | end[-11] << 8 | end[-10] << 16 | end[-9] << 24, 0xffffffff);
  }
  // Mixed really is mixed: the first records have plain 32-bit central directory fields.
  const std::string mixed = torch_checkpoint_bytes(items_of(v), {.zip64_from = 300});
  EXPECT_NE(mixed, torch_checkpoint_bytes(items_of(v), {.zip64_from = 0}));
  EXPECT_NE(mixed, torch_checkpoint_bytes(items_of(v)));
}

TEST(TorchWriter, IntegerEncodingsOfEveryWidth) {
  // Empty tensors hold no bytes, so their shapes and strides can exercise BININT1 (< 256),
  // BININT2 (< 65536), BININT (< 2^31) and LONG1 (beyond) without allocating anything.
  std::vector<Owned> v;
  const std::vector<int64_t> dims = {
      255, 256, 65535, 65536, 2147483647LL, 2147483648LL, int64_t{1} << 40, (int64_t{1} << 62) - 1};
  for (size_t i = 0; i < dims.size(); ++i) {
    v.push_back({numbered("e", i), DType::F32, {0, dims[i]}, ""});
    v.push_back({numbered("f", i), DType::I8, {dims[i], 0, 1}, ""});
  }
  expect_round_trip(checkpoint_from(torch_checkpoint_bytes(items_of(v))), v);
  // The pickle spells a stride of 2^40 as LONG1 with 6 bytes (minimal two's complement).
  const std::string pkl = torch_state_dict_pickle(items_of({v[12]}));
  EXPECT_NE(pkl.find(std::string("\x8a\x06\x00\x00\x00\x00\x00\x01", 8)), std::string::npos);
}

TEST(TorchWriter, PickleIsAProtocol2OrderedDict) {
  const std::vector<Owned> v = {make("a", DType::F16, {2, 3})};
  const std::string pkl = torch_state_dict_pickle(items_of(v));
  // PROTO 2, then collections.OrderedDict() memoized, as CPython's pickler starts it.
  const std::string head(
      "\x80\x02"
      "ccollections\nOrderedDict\nq\x00)Rq\x01",
      33);
  EXPECT_EQ(pkl.compare(0, head.size(), head), 0);
  EXPECT_NE(pkl.find("ctorch._utils\n_rebuild_tensor_v2\n"), std::string::npos);
  EXPECT_NE(pkl.find("ctorch\nHalfStorage\n"), std::string::npos);
  EXPECT_EQ(pkl.back(), '.');
  const PickleGraph g =
      unpickle_torch(reinterpret_cast<const uint8_t*>(pkl.data()), pkl.size(), "data.pkl");
  const PyNode& root = g.node(g.root());
  ASSERT_EQ(root.kind, PyKind::Dict);
  ASSERT_EQ(root.entries.size(), 1u);
  const PyNode& t = g.node(root.entries[0].second);
  ASSERT_EQ(t.kind, PyKind::Tensor);
  EXPECT_EQ(t.tensor.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.tensor.stride, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(t.tensor.offset, 0);
  EXPECT_EQ(g.node(t.tensor.storage).location, "cpu");
}

TEST(TorchWriter, EmptySingleAndBatchedDicts) {
  // CPython writes a lone item with SETITEM, others in MARK ... SETITEMS batches of 1000.
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{1000}, size_t{1001}, size_t{2500}}) {
    SCOPED_TRACE(n);
    std::vector<Owned> v;
    for (size_t i = 0; i < n; ++i) v.push_back(make(numbered("t", i), DType::I32, {2}, 7));
    expect_round_trip(checkpoint_from(torch_checkpoint_bytes(items_of(v))), v);
  }
}

TEST(TorchWriter, RefusesBadInputBeforeWriting) {
  test::TempDir dir;
  const std::string path = dir.file("out.pt");
  const std::string two(2, '\0');
  auto write = [&](std::vector<TorchWriteItem> items) { write_torch_checkpoint(path, items); };
  EXPECT_QSERVE_ERROR(write({{"a", DType::F16, {1}, two}, {"a", DType::F16, {1}, two}}), path,
                      "duplicate tensor 'a'");
  EXPECT_QSERVE_ERROR(write({{"w", DType::F32, {1}, two}}), path, "tensor 'w'", "size mismatch");
  EXPECT_QSERVE_ERROR(write({{"w", DType::F16, {-1}, ""}}), "tensor 'w'", "negative dimension");
  EXPECT_QSERVE_ERROR(write({{"w", DType::I8, {int64_t{1} << 40, int64_t{1} << 40}, ""}}),
                      "tensor 'w'", "overflowing shape");
  EXPECT_QSERVE_ERROR(write({{"bad\xff", DType::F16, {1}, two}}), "not valid UTF-8");
  EXPECT_QSERVE_ERROR(write_torch_checkpoint(path, {}, {.archive = "a/b"}), "archive name 'a/b'");
  EXPECT_QSERVE_ERROR(write_torch_checkpoint(path, {}, {.archive = ""}), "archive name ''");
  EXPECT_FALSE(fs::exists(path));
  EXPECT_QSERVE_ERROR(
      write_torch_checkpoint(dir.file("missing/out.pt"), {{"a", DType::F16, {1}, two}}),
      dir.file("missing/out.pt"), "cannot write torch checkpoint");
  // Overwriting an existing file replaces it whole.
  test::write_file(path, "old contents");
  write({{"a", DType::F16, {1}, two}});
  EXPECT_TRUE(TorchCheckpoint::open(path).has("a"));
}

// Real torch, when available: torch.load(weights_only=True) of files we wrote gives the same
// names (in order), dtypes, shapes and bytes.
TEST(TorchWriter, RealTorchLoadsWhatWeWrite) {
  const char* env = std::getenv("QSERVE_TORCH_PYTHON");
  const std::string py = env && *env ? env : "python3";
  if (std::system((py + " -c 'import torch' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << py << " cannot import torch (set QSERVE_TORCH_PYTHON to a Python with torch)";
  }
  const char* keep = std::getenv("QSERVE_TORCH_WRITER_OUT");  // keep the files (to check elsewhere)
  test::TempDir tmp;
  const std::string dir = keep && *keep ? keep : tmp.path();
  fs::create_directories(dir);
  const std::vector<Owned> v = sample();
  nlohmann::ordered_json want = nlohmann::ordered_json::object();
  for (const Owned& o : v) {
    std::string hex;
    for (unsigned char c : o.bytes) {
      static const char* kHex = "0123456789abcdef";
      hex += kHex[c >> 4];
      hex += kHex[c & 15];
    }
    want[o.name] = {{"dtype", std::string(dtype_name(o.dtype))}, {"shape", o.shape}, {"hex", hex}};
  }
  write_torch_checkpoint(dir + "/plain.pt", items_of(v));
  write_torch_checkpoint(dir + "/zip64.pt", items_of(v), {.zip64_from = 0});
  write_torch_checkpoint(dir + "/zip64_mixed.pt", items_of(v), {.zip64_from = 300});
  test::write_file(dir + "/expected.json", want.dump());
  const std::string script = test::source_dir() + "/tests/formats/torch_writer_check.py";
  for (const char* f : {"plain.pt", "zip64.pt", "zip64_mixed.pt"}) {
    SCOPED_TRACE(f);
    const std::string cmd =
        py + " '" + script + "' '" + dir + "/" + f + "' '" + dir + "/expected.json'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
}

}  // namespace
}  // namespace qserve
