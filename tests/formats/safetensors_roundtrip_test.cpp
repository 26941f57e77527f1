// write_safetensors -> SafetensorsFile round trips, byte compatibility with the reference writer,
// zero-copy views, and writer errors.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "formats/formats_test_util.h"
#include "formats/safetensors.h"
#include "test_paths.h"

namespace qserve {
namespace {

using test::TempDir;

constexpr DType kAllDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::I8,  DType::U8,
                                DType::I16, DType::I32, DType::I64,  DType::BOOL};

struct Owned {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<SafetensorsWriteItem> items(const std::vector<Owned>& ts) {
  std::vector<SafetensorsWriteItem> out;
  for (const Owned& t : ts) out.push_back({t.name, t.dtype, t.shape, t.bytes});
  return out;
}

std::string random_bytes(size_t n, std::mt19937& rng) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

size_t nbytes_of(DType t, const std::vector<int64_t>& shape) {
  size_t n = dtype_size(t);
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

bool no_temp_files_in(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().find(".tmp.") != std::string::npos) return false;
  }
  return true;
}

TEST(SafetensorsRoundTrip, EveryDtypeAndShapeIncludingEmpty) {
  TempDir dir;
  std::mt19937 rng(1234);
  const std::vector<std::vector<int64_t>> shapes = {{3, 5}, {}, {0}, {2, 0, 3}, {7}, {1, 1, 1, 3}};
  std::vector<Owned> ts;
  for (DType t : kAllDtypes) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      const std::string name = "t." + std::string(dtype_name(t)) + "." + std::to_string(i);
      ts.push_back({name, t, shapes[i], random_bytes(nbytes_of(t, shapes[i]), rng)});
    }
  }
  const std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"note", "quotes \" backslash \\ newline \n unicode \xc3\xa9\xe2\x82\xac"}};
  const std::string path = dir.file("all.safetensors");
  write_safetensors(path, items(ts), meta);
  EXPECT_TRUE(no_temp_files_in(dir.path()));

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->header().metadata, meta);
  EXPECT_EQ(f->header().tensors.size(), ts.size());
  EXPECT_EQ(f->header().data_offset % 8, 0u) << "header must be padded to a multiple of 8";
  for (const Owned& o : ts) {
    SCOPED_TRACE(o.name);
    ASSERT_TRUE(f->has(o.name));
    const Tensor t = f->get(o.name);
    EXPECT_EQ(t.dtype(), o.dtype);
    EXPECT_EQ(t.shape(), o.shape);
    ASSERT_EQ(t.nbytes(), o.bytes.size());
    EXPECT_EQ(std::memcmp(t.raw(), o.bytes.data(), o.bytes.size()), 0);
    // Natural alignment, so typed access to the zero-copy view is well defined.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % dtype_size(o.dtype), 0u);
  }
  // Views are read-only and keep the mapping alive after the file object is gone.
  Tensor v = f->get("t.F32.0");
  EXPECT_THROW(v.raw_mut(), Error);
  f.reset();
  EXPECT_EQ(std::memcmp(v.raw(), ts[0].bytes.data(), ts[0].bytes.size()), 0);
}

TEST(SafetensorsRoundTrip, ViewsPointIntoTheMapping) {
  TempDir dir;
  const std::string path = dir.file("v.safetensors");
  const std::string a(64, 'a'), b(32, 'b');
  write_safetensors(path, {{"a", DType::F32, {16}, a}, {"b", DType::F16, {16}, b}});
  auto f = SafetensorsFile::open(path);
  const Tensor ta = f->get("a"), tb = f->get("b");
  // Same mapping, consecutive in the data section: no copies were made.
  const auto* pa = static_cast<const uint8_t*>(ta.raw());
  const auto* pb = static_cast<const uint8_t*>(tb.raw());
  EXPECT_EQ(pb - pa, 64);
  EXPECT_EQ(f->header().tensors.at("a").begin, 0u);
  EXPECT_EQ(f->header().tensors.at("b").begin, 64u);
}

TEST(SafetensorsRoundTrip, NoTensors) {
  TempDir dir;
  const std::string path = dir.file("empty.safetensors");
  write_safetensors(path, {});
  // Exactly what the reference writer produces: "{}" padded to 8 bytes.
  EXPECT_EQ(test::read_file(path), test::length_prefix(8) + "{}      ");
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(f->header().tensors.empty());
  EXPECT_TRUE(f->header().metadata.empty());

  write_safetensors(path, {}, {{"framework", "pt"}});
  EXPECT_EQ(test::read_file(path),
            test::length_prefix(40) + "{\"__metadata__\":{\"framework\":\"pt\"}}     ");
}

TEST(SafetensorsWriter, MatchesReferenceLayout) {
  TempDir dir;
  const std::string path = dir.file("ref.safetensors");
  std::string data(24, '\0');
  const float vals[6] = {0, 1, 2, 3, 4, 5};
  std::memcpy(data.data(), vals, 24);
  write_safetensors(path, {{"attn.0", DType::F32, {1, 2, 3}, data}});
  const std::string header =
      "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
  ASSERT_EQ(header.size(), 64u);  // already a multiple of 8: no padding
  EXPECT_EQ(test::read_file(path), test::length_prefix(64) + header + data);

  // Data is ordered by decreasing alignment, then by name; the header lists tensors in data order.
  write_safetensors(path, {{"a", DType::U8, {1}, "x"},
                           {"c", DType::F32, {1}, std::string(4, 'c')},
                           {"b", DType::F32, {1}, std::string(4, 'b')},
                           {"d", DType::I64, {1}, std::string(8, 'd')}});
  const std::string h2 =
      "{\"d\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
      "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]},"
      "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[16,17]}}";
  const std::string padded = h2 + std::string((8 - h2.size() % 8) % 8, ' ');
  EXPECT_EQ(test::read_file(path),
            test::length_prefix(padded.size()) + padded + std::string(8, 'd') + "bbbbcccc" + "x");
}

// Files written by HuggingFace's safetensors (the shared test models) come out byte-identical
// when their tensors and metadata are written again by us.
TEST(SafetensorsWriter, RewritesReferenceFilesByteForByte) {
  const std::vector<std::string> files = {
      "doc-llama-22m/golden_logits.safetensors", "doc-llama-22m/model-00005-of-00006.safetensors",
      "tiny-qwen2-bias/model.safetensors", "tiny-mistral/model.safetensors",
      "tiny-llama2-mha/golden_logits.safetensors"};
  TempDir dir;
  for (const std::string& rel : files) {
    const std::string src = test::shared_dir() + "/models/" + rel;
    if (!std::filesystem::exists(src)) GTEST_SKIP() << "shared models not found: " << src;
    SCOPED_TRACE(rel);
    auto f = SafetensorsFile::open(src);
    std::vector<SafetensorsWriteItem> out;
    std::vector<Tensor> keep;
    for (const auto& [name, e] : f->header().tensors) {
      keep.push_back(f->get(name));
      out.push_back(
          {name, e.dtype, e.shape,
           std::string_view(static_cast<const char*>(keep.back().raw()), keep.back().nbytes())});
    }
    const std::string dst = dir.file("rewrite.safetensors");
    write_safetensors(dst, out, f->header().metadata);
    EXPECT_TRUE(test::read_file(dst) == test::read_file(src));
  }
}

TEST(SafetensorsRoundTrip, MisalignedTensorsAreCopiedToAlignedStorage) {
  // Legal but unusual layout: a 1-byte tensor first puts the F32 one at an odd address.
  TempDir dir;
  std::string h =
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}}";
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string data = "z";
  const float vals[2] = {1.5f, -2.25f};
  data.append(reinterpret_cast<const char*>(vals), 8);
  const std::string path = dir.file("odd.safetensors");
  test::write_file(path, test::raw_safetensors(h, data));
  auto f = SafetensorsFile::open(path);
  const Tensor b = f->get("b");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % 4, 0u);
  EXPECT_EQ(b.data<float>()[0], 1.5f);
  EXPECT_EQ(b.data<float>()[1], -2.25f);
  EXPECT_EQ(f->get("a").data<uint8_t>()[0], 'z');
}

TEST(SafetensorsWriter, ReplacesAnExistingFileAtomically) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  write_safetensors(path, {{"a", DType::U8, {3}, "abc"}});
  write_safetensors(path, {{"b", DType::U8, {2}, "de"}});
  auto f = SafetensorsFile::open(path);
  EXPECT_FALSE(f->has("a"));
  EXPECT_TRUE(f->has("b"));
  EXPECT_TRUE(no_temp_files_in(dir.path()));
}

TEST(SafetensorsWriter, Errors) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  EXPECT_QSERVE_ERROR(write_safetensors(path, {{"a", DType::F32, {3}, "abcd"}}), path,
                      "size mismatch", "'a'");
  EXPECT_QSERVE_ERROR(
      write_safetensors(path, {{"a", DType::U8, {1}, "x"}, {"a", DType::U8, {1}, "y"}}), path,
      "duplicate");
  EXPECT_QSERVE_ERROR(write_safetensors(path, {{"__metadata__", DType::U8, {1}, "x"}}), path,
                      "__metadata__");
  EXPECT_QSERVE_ERROR(write_safetensors(path, {{"a", DType::U8, {-1}, ""}}), path, "negative");
  EXPECT_QSERVE_ERROR(
      write_safetensors(path, {{"a", DType::U8, {int64_t{1} << 40, int64_t{1} << 40}, ""}}), path,
      "overflow");
  EXPECT_QSERVE_ERROR(write_safetensors(path, {{"bad\xff", DType::U8, {1}, "x"}}), path, "UTF-8");
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(no_temp_files_in(dir.path()));

  const std::string nodir = dir.file("no/such/dir/x.safetensors");
  EXPECT_QSERVE_ERROR(write_safetensors(nodir, {{"a", DType::U8, {1}, "x"}}), nodir, "cannot");
}

}  // namespace
}  // namespace qserve
