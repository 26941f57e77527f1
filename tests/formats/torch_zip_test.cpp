// The zip reader: torch's archives (plain and ZIP64) parse into aligned, checksummed entries; every
// structural defect of a crafted archive is a qserve::Error naming the file and the defect; no
// truncation or mutation reads outside the buffer (run under ASan in the sanitizer build).
#include <gtest/gtest.h>

#include <random>

#include "formats/formats_test_util.h"
#include "formats/torch_test_util.h"
#include "formats/torch_zip.h"

namespace qserve {
namespace {

using test::put_le;
using test::ZipWriter;

ZipArchive parse(const std::string& bytes) {
  return ZipArchive::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "mem.zip");
}

#define EXPECT_ZIP_ERROR(bytes, ...) EXPECT_QSERVE_ERROR((void)parse(bytes), "mem.zip", __VA_ARGS__)

std::string text(std::span<const uint8_t> d) {
  return std::string(d.begin(), d.end());
}

uint64_t get_le(const std::string& s, size_t off, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i)
    v |= static_cast<uint64_t>(static_cast<uint8_t>(s[off + i])) << (8 * i);
  return v;
}
void set_le(std::string& s, size_t off, uint64_t v, int bytes) {
  std::string b;
  put_le(b, v, bytes);
  s.replace(off, bytes, b);
}

// Offsets inside a non-ZIP64 archive without comment built by ZipWriter.
struct Layout {
  size_t eocd, cd;
  explicit Layout(const std::string& z)
      : eocd(z.size() - 22), cd(static_cast<size_t>(get_le(z, z.size() - 6, 4))) {}
};

std::string two_entries() {
  return ZipWriter().add("a/data.pkl", "hello").add("a/data/0", std::string(100, 'x')).build();
}

TEST(TorchZip, ReadsTorchArchives) {
  const std::string bytes = test::read_file(test::torch_fixture("dtypes.pt"));
  const ZipArchive z = parse(bytes);
  ASSERT_NE(z.find("dtypes/data.pkl"), nullptr);
  ASSERT_NE(z.find("dtypes/data/0"), nullptr);
  EXPECT_EQ(text(z.checked_data(*z.find("dtypes/byteorder"))), "little");
  EXPECT_EQ(z.find("dtypes/nope"), nullptr);
  for (const ZipEntry& e : z.entries()) {
    EXPECT_EQ(e.data_offset % 64, 0u) << e.name;  // torch aligns every record
    EXPECT_EQ(e.method, 0);
    EXPECT_NO_THROW(z.checked_data(e)) << e.name;
  }
}

TEST(TorchZip, Zip64ArchiveHasTheSameRecords) {
  const std::string plain = test::read_file(test::torch_fixture("dtypes.pt"));
  const std::string big = test::read_file(test::torch_fixture("zip64.pt"));
  const ZipArchive a = parse(plain), b = parse(big);
  ASSERT_EQ(a.entries().size(), b.entries().size());
  for (size_t i = 0; i < a.entries().size(); ++i) {
    const ZipEntry& x = a.entries()[i];
    const ZipEntry& y = b.entries()[i];
    EXPECT_EQ("zip64/" + x.name.substr(x.name.find('/') + 1), y.name);
    EXPECT_EQ(text(a.checked_data(x)), text(b.checked_data(y)));
    EXPECT_EQ(y.data_offset % 64, 0u);
  }
}

TEST(TorchZip, WriterRoundTripsWithAndWithoutZip64AndComments) {
  for (bool zip64 : {false, true}) {
    // A comment that itself contains an EOCD signature must not confuse the search.
    for (const std::string& comment : {std::string(), std::string("PK\x05\x06 trailing", 14)}) {
      const std::string bytes = ZipWriter().add("x/a", "1").add("x/b", "").build(zip64, comment);
      const ZipArchive z = parse(bytes);  // views into `bytes`, which must outlive it
      ASSERT_EQ(z.entries().size(), 2u);
      EXPECT_EQ(text(z.checked_data(*z.find("x/a"))), "1");
      EXPECT_EQ(z.find("x/b")->size, 0u);
    }
  }
  EXPECT_EQ(parse(ZipWriter().build()).entries().size(), 0u);
}

TEST(TorchZip, EndOfCentralDirectoryErrors) {
  EXPECT_ZIP_ERROR(std::string(), "file too small (0 bytes)");
  EXPECT_ZIP_ERROR(std::string(21, 'x'), "file too small");
  EXPECT_ZIP_ERROR(std::string(1000, 'x'), "no end-of-central-directory record");
  EXPECT_ZIP_ERROR(two_entries() + "junk", "no end-of-central-directory record");

  std::string z = two_entries();
  const Layout l(z);
  std::string m = z;
  set_le(m, l.eocd + 16, z.size(), 4);
  EXPECT_ZIP_ERROR(m, "central directory (offset", "lies outside the file");
  m = z;
  set_le(m, l.eocd + 12, 1000000, 4);
  EXPECT_ZIP_ERROR(m, "lies outside the file");
  m = z;
  set_le(m, l.eocd + 8, 60000, 2), set_le(m, l.eocd + 10, 60000, 2);
  EXPECT_ZIP_ERROR(m, "claims 60000 entries");
  m = z;
  set_le(m, l.eocd + 8, 1, 2), set_le(m, l.eocd + 10, 1, 2);
  EXPECT_ZIP_ERROR(m, "central directory size does not match its 1 entries");
  m = z;
  set_le(m, l.eocd + 4, 1, 2);
  EXPECT_ZIP_ERROR(m, "multi-disk");
  m = z;
  set_le(m, l.eocd + 8, 1, 2);
  EXPECT_ZIP_ERROR(m, "multi-disk");
}

TEST(TorchZip, CentralDirectoryErrors) {
  const std::string z = two_entries();
  const Layout l(z);
  const size_t e0 = l.cd, name0 = get_le(z, l.cd + 28, 2);
  const size_t e1 = l.cd + 46 + name0;  // second entry (no extra, no comment)
  std::string m = z;
  m[e1] = 'X';
  EXPECT_ZIP_ERROR(m, "bad central directory signature at offset " + std::to_string(e1));
  m = z;
  set_le(m, e0 + 28, 5000, 2);
  EXPECT_ZIP_ERROR(m, "central directory entry runs past its end");
  m = z;
  set_le(m, e0 + 28, 0, 2);
  EXPECT_ZIP_ERROR(m, "empty or NUL-containing name");
  m = z;
  m[e0 + 46 + 1] = '\0';
  EXPECT_ZIP_ERROR(m, "NUL-containing name");
  m = z;
  set_le(m, e0 + 34, 3, 2);
  EXPECT_ZIP_ERROR(m, "multi-disk");
  m = z;
  set_le(m, e1 + 42, l.cd, 4);
  EXPECT_ZIP_ERROR(m, "entry 'a/data/0': local header offset out of range");
  m = z;
  set_le(m, e1 + 42, 1, 4);
  EXPECT_ZIP_ERROR(m, "entry 'a/data/0': bad local header signature");
  m = z;
  m[30] = 'b';  // first local header's name
  EXPECT_ZIP_ERROR(m, "entry 'a/data.pkl': local header names a different file");
  m = z;
  set_le(m, 28, 60000, 2);  // local extra length runs into the central directory
  EXPECT_ZIP_ERROR(m, "local header runs into the central directory");
  m = z;
  set_le(m, e1 + 20, 100000, 4), set_le(m, e1 + 24, 100000, 4);
  EXPECT_ZIP_ERROR(m, "entry 'a/data/0': data (100000 bytes", "runs past the start of the central");
  m = z;
  set_le(m, e1 + 20, 10, 4);
  EXPECT_ZIP_ERROR(m, "stored entry with different compressed and uncompressed sizes");
  EXPECT_ZIP_ERROR(ZipWriter().add("a", "1").add("a", "2").build(), "duplicate entry 'a'");
  // Names are untrusted text: escape sequences do not reach the message.
  EXPECT_ZIP_ERROR(ZipWriter().add("\x1b[2J", "1").add("\x1b[2J", "2").build(),
                   "duplicate entry '?[2J'");
}

TEST(TorchZip, Zip64Errors) {
  const std::string z = ZipWriter().add("a/data.pkl", "hello").build(true);
  const size_t eocd = z.size() - 22, loc = eocd - 20;
  const size_t z64 = static_cast<size_t>(get_le(z, loc + 8, 8));
  std::string m = z;
  set_le(m, loc + 8, z.size(), 8);
  EXPECT_ZIP_ERROR(m, "ZIP64 end-of-central-directory offset out of range");
  m = z;
  m[z64] = 'X';
  EXPECT_ZIP_ERROR(m, "bad ZIP64 end-of-central-directory signature");
  m = z;
  set_le(m, loc + 16, 2, 4);
  EXPECT_ZIP_ERROR(m, "multi-disk");
  m = z;
  set_le(m, z64 + 16, 1, 4);
  EXPECT_ZIP_ERROR(m, "multi-disk");
  m = z;
  set_le(m, z64 + 24, 0, 8);
  EXPECT_ZIP_ERROR(m, "multi-disk");
  m = z;
  set_le(m, z64 + 48, 1ull << 62, 8);
  EXPECT_ZIP_ERROR(m, "lies outside the file");
  m = z;
  set_le(m, z64 + 40, ~0ull, 8);  // size overflowing offset + size
  EXPECT_ZIP_ERROR(m, "lies outside the file");
  // The ZIP64 extra field must hold every saturated value.
  const size_t cd = static_cast<size_t>(get_le(z, z64 + 48, 8));
  m = z;
  const size_t extra = cd + 46 + std::string("a/data.pkl").size();
  set_le(m, extra + 2, 8, 2);  // the ZIP64 field's own length: 8 of its 24 bytes
  EXPECT_ZIP_ERROR(m, "ZIP64 extra field too short");
  m = z;
  set_le(m, extra, 0x9999, 2);  // the field's id: no longer ZIP64
  EXPECT_ZIP_ERROR(m, "missing ZIP64 extra field");
  // A plain archive whose sizes are saturated but that has no ZIP64 extra at all.
  std::string p = two_entries();
  const Layout l(p);
  set_le(p, l.cd + 20, 0xffffffffu, 4), set_le(p, l.cd + 24, 0xffffffffu, 4);
  EXPECT_ZIP_ERROR(p, "missing ZIP64 extra field");
}

TEST(TorchZip, CompressedEncryptedAndCorruptEntries) {
  ZipWriter::Options deflated;
  deflated.method = 8;
  ZipWriter::Options encrypted;
  encrypted.flags = 0x0809;
  const std::string bytes =
      ZipWriter().add("d", "abc", deflated).add("e", "abc", encrypted).add("ok", "abc").build();
  const ZipArchive z = parse(bytes);  // listing works; reading does not
  EXPECT_QSERVE_ERROR((void)z.data(*z.find("d")), "mem.zip: entry 'd' is compressed (method 8)",
                      "torch.save never compresses");
  EXPECT_QSERVE_ERROR((void)z.data(*z.find("e")), "entry 'e' is encrypted");
  std::string bad = bytes;
  const size_t at = bad.find("abc", z.find("ok")->data_offset);
  bad[at] = 'X';
  const ZipArchive zb = parse(bad);
  EXPECT_QSERVE_ERROR((void)zb.checked_data(*zb.find("ok")), "mem.zip: entry 'ok' is corrupt",
                      "CRC-32 mismatch");
  EXPECT_EQ(text(zb.data(*zb.find("ok"))), "Xbc");  // unchecked access does not verify
}

TEST(TorchZip, Crc32MatchesZlib) {
  const std::string s = "123456789";
  EXPECT_EQ(zip_crc32(reinterpret_cast<const uint8_t*>(s.data()), s.size()), 0xcbf43926u);
  EXPECT_EQ(zip_crc32(nullptr, 0), 0u);
}

// Every prefix and thousands of random mutations of real archives: only ever a qserve::Error, and
// every entry of an archive that parses lies inside the buffer.
void fuzz_like(const std::string& fixture) {
  const std::string bytes = test::read_file(test::torch_fixture(fixture));
  auto check = [](const std::string& m) {
    try {
      const ZipArchive z = parse(m);
      for (const ZipEntry& e : z.entries()) {
        ASSERT_LE(e.data_offset + e.stored_size, m.size()) << e.name;
      }
    } catch (const Error&) {
    }
  };
  for (size_t n = 0; n < bytes.size(); ++n) check(bytes.substr(0, n));
  std::mt19937 rng(11);
  for (int i = 0; i < 3000; ++i) {
    std::string m = bytes;
    // Mutations concentrate on the directory records at the end, where the structure is.
    const size_t tail = std::min<size_t>(m.size(), 1200);
    for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k)
      m[m.size() - 1 - rng() % tail] = static_cast<char>(rng());
    check(m);
  }
}

TEST(TorchZip, TruncatedAndMutatedArchivesFailCleanly) {
  fuzz_like("dtypes.pt");
  fuzz_like("zip64.pt");
}

}  // namespace
}  // namespace qserve
