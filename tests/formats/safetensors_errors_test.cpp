// Malformed safetensors files: every rejection is a qserve::Error naming the file and the problem,
// and no input (truncated, mutated) crashes or reads out of bounds.
#include <gtest/gtest.h>

#include <random>

#include "formats/formats_test_util.h"
#include "formats/safetensors.h"

namespace qserve {
namespace {

using test::raw_safetensors;
using test::TempDir;

// Parses `bytes` as the whole file; the source name "mem.safetensors" must appear in errors.
SafetensorsHeader parse(const std::string& bytes) {
  return parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                  bytes.size(), "mem.safetensors");
}

#define EXPECT_HEADER_ERROR(bytes, ...) \
  EXPECT_QSERVE_ERROR((void)parse(bytes), "mem.safetensors", __VA_ARGS__)

// One valid F32 [2] tensor "a" (8 bytes of data) plus optional extra entries.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

std::string valid_file() {
  std::string h = "{\"__metadata__\":{\"format\":\"pt\"}," + entry("a", "F32", "[2]", "[0,8]") +
                  "," + entry("b", "I16", "[3]", "[8,14]") + "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  return raw_safetensors(h, "01234567abcdef");
}

TEST(SafetensorsHeader, ValidFileParses) {
  const SafetensorsHeader h = parse(valid_file());
  EXPECT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.tensors.at("b").dtype, DType::I16);
  EXPECT_EQ(h.tensors.at("b").shape, std::vector<int64_t>{3});
  EXPECT_EQ(h.tensors.at("b").begin, 8u);
  EXPECT_EQ(h.tensors.at("b").end, 14u);
}

TEST(SafetensorsHeader, AcceptedEdgeCases) {
  // Empty tensors may sit at any boundary, including the end; null metadata is "none"; unknown
  // extra keys in an entry are ignored (as the reference does); trailing whitespace is padding.
  const std::string h =
      "{\"__metadata__\":null," + entry("z0", "F16", "[0]", "[0,0]") + "," +
      entry("a", "U8", "[2]", "[0,2]") + "," + entry("z1", "I64", "[0,5]", "[2,2]") + "," +
      entry("s", "BOOL", "[]", "[2,3]") + "," +
      "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4],\"extra\":[1]}" +
      ",\"z2\":{\"dtype\":\"I8\",\"shape\":[2,0],\"data_offsets\":[4,4]}}  \n\t ";
  const SafetensorsHeader p = parse(raw_safetensors(h, "abcd"));
  EXPECT_EQ(p.tensors.size(), 6u);
  EXPECT_TRUE(p.metadata.empty());
  EXPECT_EQ(p.tensors.at("s").shape, std::vector<int64_t>{});
  // No tensors at all, with and without a data section.
  EXPECT_TRUE(parse(raw_safetensors("{}")).tensors.empty());
}

TEST(SafetensorsHeader, LengthPrefix) {
  EXPECT_HEADER_ERROR("", "too short");
  EXPECT_HEADER_ERROR("\x02\0\0", "too short");
  EXPECT_HEADER_ERROR(test::length_prefix(0), "too small");
  EXPECT_HEADER_ERROR(test::length_prefix(1) + "{", "too small");
  EXPECT_HEADER_ERROR(test::length_prefix(100'000'001) + "{}", "exceeds the limit");
  EXPECT_HEADER_ERROR(test::length_prefix(~uint64_t{0}) + "{}", "exceeds the limit");
  EXPECT_HEADER_ERROR(test::length_prefix(64) + "{}", "beyond the end of the file");
}

TEST(SafetensorsHeader, NotJson) {
  EXPECT_HEADER_ERROR(raw_safetensors("[]"), "does not start with '{'");
  EXPECT_HEADER_ERROR(raw_safetensors(" {}"), "does not start with '{'");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":"), "not valid JSON");
  EXPECT_HEADER_ERROR(raw_safetensors("{} x"), "not valid JSON");
  EXPECT_HEADER_ERROR(raw_safetensors("{}{}"), "not valid JSON");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":\"\xff\xfe\"}"), "not valid JSON");
  // The parser would stop at NUL and ignore the rest.
  EXPECT_HEADER_ERROR(raw_safetensors(std::string("{}\0garbage", 10)), "NUL");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":{\"b\":{\"c\":{\"d\":1}}}}"), "nested");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":{\"shape\":[[1]]}}"), "nested");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[1]", "[0,1]") + "," +
                                          entry("a", "U8", "[1]", "[0,1]") + "}",
                                      "x"),
                      "duplicate key 'a'");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[1],"
                                      "\"data_offsets\":[0,1]}}",
                                      "x"),
                      "duplicate key 'dtype'");
}

TEST(SafetensorsHeader, EntryFields) {
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":5}"), "tensor 'a' must be an object");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", "x"),
                      "'a' is missing \"dtype\"");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", "x"),
                      "missing \"shape\"");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", "x"),
                      "missing \"data_offsets\"");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}"),
                      "dtype must be a string");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "F64", "[1]", "[0,8]") + "}", "12345678"),
                      "unsupported dtype 'F64'", "BF16");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "f32", "[1]", "[0,4]") + "}", "1234"),
                      "'f32'");
}

TEST(SafetensorsHeader, Shapes) {
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[-1]", "[0,1]") + "}", "x"),
                      "non-negative integers");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[1.0]", "[0,1]") + "}", "x"),
                      "non-negative integers");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[true]", "[0,1]") + "}", "x"),
                      "non-negative integers");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[\"1\"]", "[0,1]") + "}", "x"),
                      "non-negative integers");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "3", "[0,3]") + "}", "xyz"),
                      "shape must be an array");
  EXPECT_HEADER_ERROR(
      raw_safetensors("{" + entry("a", "U8", "[9223372036854775808]", "[0,1]") + "}", "x"),
      "non-negative integers");
  // Products that wrap around 2^64 to a small number must not match a small span.
  EXPECT_HEADER_ERROR(
      raw_safetensors("{" + entry("a", "U8", "[4294967296,4294967296,1]", "[0,0]") + "}"),
      "overflows the element count");
  EXPECT_HEADER_ERROR(
      raw_safetensors("{" + entry("a", "F32", "[4611686018427387904]", "[0,0]") + "}"),
      "overflows the byte size");
  EXPECT_HEADER_ERROR(
      raw_safetensors("{" + entry("a", "U8", "[9223372036854775807,2]", "[0,2]") + "}", "xy"),
      "overflows");
}

TEST(SafetensorsHeader, Offsets) {
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[1]", "[0]") + "}", "x"),
                      "data_offsets must be [begin, end]");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[1]", "[0,1,2]") + "}", "x"),
                      "data_offsets must be [begin, end]");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[1]", "[-1,0]") + "}", "x"),
                      "data_offsets must be [begin, end]");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[1]", "{}") + "}", "x"),
                      "data_offsets must be [begin, end]");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[0]", "[1,0]") + "}", "x"),
                      "begin after end");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "U8", "[4]", "[0,4]") + "}", "xy"),
                      "beyond the end of the data section");
  EXPECT_HEADER_ERROR(
      raw_safetensors("{" + entry("a", "U8", "[1]", "[18446744073709551615,18446744073709551615]") +
                      "}"),
      "beyond the end of the data section");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "F32", "[2]", "[0,4]") + "}", "1234"),
                      "size mismatch", "needs 8");
}

TEST(SafetensorsHeader, CoverageOfTheDataSection) {
  // Overlap, including two names for the same bytes.
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                          entry("b", "F32", "[2]", "[4,12]") + "}",
                                      std::string(12, 'x')),
                      "overlap");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                          entry("b", "F32", "[2]", "[0,8]") + "}",
                                      std::string(8, 'x')),
                      "overlap");
  // An empty tensor strictly inside another one is an overlap too.
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                          entry("e", "F32", "[0]", "[4,4]") + "}",
                                      std::string(8, 'x')),
                      "overlap");
  // Holes: before the first tensor, between tensors, after the last.
  EXPECT_HEADER_ERROR(
      raw_safetensors("{" + entry("a", "F32", "[1]", "[4,8]") + "}", std::string(8, 'x')), "hole",
      "[0, 4)");
  EXPECT_HEADER_ERROR(raw_safetensors("{" + entry("a", "F32", "[1]", "[0,4]") + "," +
                                          entry("b", "F32", "[1]", "[8,12]") + "}",
                                      std::string(12, 'x')),
                      "hole", "[4, 8)");
  EXPECT_HEADER_ERROR(
      raw_safetensors("{" + entry("a", "F32", "[1]", "[0,4]") + "}", std::string(8, 'x')), "cover");
  EXPECT_HEADER_ERROR(raw_safetensors("{}", "x"), "cover");
}

TEST(SafetensorsHeader, Metadata) {
  EXPECT_HEADER_ERROR(raw_safetensors("{\"__metadata__\":{\"n\":1}}"), "__metadata__", "'n'",
                      "string");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"__metadata__\":{\"n\":null}}"), "must be a string");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"__metadata__\":[]}"), "__metadata__ must be an object");
  EXPECT_HEADER_ERROR(raw_safetensors("{\"__metadata__\":\"x\"}"),
                      "__metadata__ must be an object");
}

// Files on disk: the path is in every message.
TEST(SafetensorsFileErrors, TruncatedAndCorruptFiles) {
  TempDir dir;
  const std::string good = valid_file();
  const uint64_t header_len = good.size() - 8 - 14;
  const std::string p = dir.file("cut.safetensors");

  test::write_file(p, good.substr(0, 4));
  EXPECT_QSERVE_ERROR(SafetensorsFile::open(p), p, "truncated");
  test::write_file(p, good.substr(0, 8 + header_len / 2));
  EXPECT_QSERVE_ERROR(SafetensorsFile::open(p), p, "beyond the end of the file", "truncated");
  test::write_file(p, good.substr(0, good.size() - 3));
  EXPECT_QSERVE_ERROR(SafetensorsFile::open(p), p, "'b'", "beyond the end of the data section",
                      "truncated");
  test::write_file(p, "");
  EXPECT_QSERVE_ERROR(SafetensorsFile::open(p), p, "too short");

  std::string corrupt = good;
  corrupt[8 + 5] = '#';  // inside "__metadata__"'s opening: no longer JSON
  corrupt[8 + 1] = '!';
  test::write_file(p, corrupt);
  EXPECT_QSERVE_ERROR(SafetensorsFile::open(p), p, "not valid JSON");

  test::write_file(p, test::length_prefix(1000) + "{}");
  EXPECT_QSERVE_ERROR(SafetensorsFile::open(p), p, "header length 1000", "beyond the end");

  EXPECT_QSERVE_ERROR(SafetensorsFile::open(dir.file("absent.safetensors")), "absent.safetensors",
                      "cannot open");
  EXPECT_QSERVE_ERROR(SafetensorsFile::open(dir.path()), dir.path());

  test::write_file(p, good);
  auto f = SafetensorsFile::open(p);
  EXPECT_QSERVE_ERROR((void)f->get("nope"), p, "no tensor named 'nope'");
}

// Every prefix and thousands of random mutations of a valid file either parse or throw
// qserve::Error; under ASan/UBSan (QSERVE_SANITIZE=ON) this also proves no out-of-bounds reads.
TEST(SafetensorsHeader, TruncationsAndMutationsNeverCrash) {
  const std::string good = valid_file();
  for (size_t n = 0; n < good.size(); ++n) {
    // Copy into an exactly-sized buffer so an overread would be visible to ASan.
    std::vector<uint8_t> buf(good.begin(), good.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_THROW(parse_safetensors_header(buf.data(), n, n, "cut"), Error) << "prefix " << n;
  }
  std::mt19937 rng(42);
  int parsed = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string m = good;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % m.size();
      m[pos] = static_cast<char>(rng() % 3 == 0 ? "{}[]\",:0123456789-e. "[rng() % 21] : rng());
    }
    std::vector<uint8_t> buf(m.begin(), m.end());
    try {
      parse_safetensors_header(buf.data(), buf.size(), buf.size(), "mut");
      ++parsed;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(parsed, 0);  // some mutations only touch tensor bytes or metadata text
}

}  // namespace
}  // namespace qserve
