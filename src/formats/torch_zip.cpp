// ZIP container parsing for torch checkpoints. Layout (APPNOTE.TXT): [local header, data]...,
// central directory, [ZIP64 EOCD record, ZIP64 EOCD locator], EOCD record. We trust nothing but
// the buffer size: every record is checked to lie inside the buffer (and data before the central
// directory) before a byte of it is read.
#include "formats/torch_zip.h"

#include <array>
#include <cstring>

#include "core/error.h"
#include "formats/json_util.h"

namespace qserve {

namespace {

using namespace zip_format;  // NOLINT(google-build-using-namespace): the record ids

constexpr size_t kLocalSize = 30;
constexpr size_t kCentralSize = 46;
constexpr size_t kEocdSize = 22;
constexpr size_t kZip64EocdSize = 56;
constexpr size_t kZip64LocatorSize = 20;
constexpr uint16_t kFlagEncrypted = 0x0001;

uint16_t le16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const uint8_t* p) {
  return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32);
}

// True when [off, off + len) lies inside [0, limit), computed without overflow.
bool fits(uint64_t off, uint64_t len, uint64_t limit) {
  return off <= limit && len <= limit - off;
}

struct Parser {
  const uint8_t* bytes;
  size_t size;
  const std::string& source;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(source + ": not a valid torch zip archive: " + what);
  }

  // Returns the offset of the end-of-central-directory record: the last signature whose comment
  // runs exactly to the end of the buffer (a signature may also occur inside the comment).
  size_t find_eocd() const {
    if (size < kEocdSize) fail("file too small (" + std::to_string(size) + " bytes)");
    const size_t last = size - kEocdSize;
    const size_t first = last > 0xffff ? last - 0xffff : 0;
    for (size_t pos = last + 1; pos-- > first;) {
      if (le32(bytes + pos) == kEocdSig && pos + kEocdSize + le16(bytes + pos + 20) == size) {
        return pos;
      }
    }
    fail("no end-of-central-directory record (truncated file?)");
  }

  // The four numbers of the central directory as found in the EOCD (or ZIP64 EOCD) record.
  struct Directory {
    uint64_t entries = 0;
    uint64_t cd_size = 0;
    uint64_t cd_offset = 0;
    uint64_t end = 0;  // first byte after the central directory's allowed space
  };

  Directory read_directory(size_t eocd) const {
    const uint8_t* e = bytes + eocd;
    Directory d;
    const uint32_t disk = le16(e + 4), cd_disk = le16(e + 6);
    const uint64_t disk_entries = le16(e + 8);
    d.entries = le16(e + 10);
    d.cd_size = le32(e + 12);
    d.cd_offset = le32(e + 16);
    d.end = eocd;
    // ZIP64: a locator right before the EOCD points at the ZIP64 EOCD record, whose 64-bit
    // fields replace the saturated 16/32-bit ones.
    if (eocd >= kZip64LocatorSize && le32(bytes + eocd - kZip64LocatorSize) == kZip64LocatorSig) {
      const size_t loc = eocd - kZip64LocatorSize;
      const uint32_t zdisk = le32(bytes + loc + 4);
      const uint64_t zoff = le64(bytes + loc + 8);
      const uint32_t ndisks = le32(bytes + loc + 16);
      if (zdisk != 0 || ndisks > 1) fail("multi-disk (split) archives are not supported");
      if (!fits(zoff, kZip64EocdSize, loc))
        fail("ZIP64 end-of-central-directory offset out of range");
      const uint8_t* z = bytes + zoff;
      if (le32(z) != kZip64EocdSig) fail("bad ZIP64 end-of-central-directory signature");
      if (le32(z + 16) != 0 || le32(z + 20) != 0)
        fail("multi-disk (split) archives are not supported");
      const uint64_t zdisk_entries = le64(z + 24);
      d.entries = le64(z + 32);
      d.cd_size = le64(z + 40);
      d.cd_offset = le64(z + 48);
      d.end = zoff;
      if (zdisk_entries != d.entries) fail("multi-disk (split) archives are not supported");
    } else {
      if (disk != 0 || cd_disk != 0 || disk_entries != d.entries)
        fail("multi-disk (split) archives are not supported");
    }
    if (!fits(d.cd_offset, d.cd_size, d.end))
      fail("central directory (offset " + std::to_string(d.cd_offset) + ", size " +
           std::to_string(d.cd_size) + ") lies outside the file");
    if (d.entries > d.cd_size / kCentralSize)
      fail("central directory claims " + std::to_string(d.entries) + " entries in " +
           std::to_string(d.cd_size) + " bytes");
    return d;
  }

  // Reads the ZIP64 extended-information extra field: it holds, in this order, exactly those of
  // (size, stored size, local header offset) whose 32-bit fields are saturated.
  void read_zip64_extra(const uint8_t* extra, size_t len, ZipEntry& e, uint64_t& local_offset,
                        bool need_size, bool need_stored, bool need_offset) const {
    size_t pos = 0;
    while (need_size || need_stored || need_offset) {
      if (len - pos < 4)
        fail("entry '" + formats_detail::printable(e.name) +
             "': missing ZIP64 extra field for a saturated size or offset");
      const uint16_t id = le16(extra + pos), n = le16(extra + pos + 2);
      if (n > len - pos - 4)
        fail("entry '" + formats_detail::printable(e.name) + "': extra field runs past its header");
      if (id == kZip64ExtraId) {
        const uint8_t* f = extra + pos + 4;
        size_t used = 0;
        auto take = [&](uint64_t& out) {
          if (n - used < 8)
            fail("entry '" + formats_detail::printable(e.name) + "': ZIP64 extra field too short");
          out = le64(f + used);
          used += 8;
        };
        if (need_size) take(e.size);
        if (need_stored) take(e.stored_size);
        if (need_offset) take(local_offset);
        return;
      }
      pos += 4 + n;
    }
  }

  ZipEntry read_entry(uint64_t& pos, const Directory& d) const {
    const uint64_t cd_end = d.cd_offset + d.cd_size;
    if (!fits(pos, kCentralSize, cd_end)) fail("central directory truncated");
    const uint8_t* c = bytes + pos;
    if (le32(c) != kCentralSig)
      fail("bad central directory signature at offset " + std::to_string(pos));
    ZipEntry e;
    e.flags = le16(c + 8);
    e.method = le16(c + 10);
    e.crc32 = le32(c + 16);
    e.stored_size = le32(c + 20);
    e.size = le32(c + 24);
    const uint16_t name_len = le16(c + 28), extra_len = le16(c + 30), comment_len = le16(c + 32);
    const uint16_t disk = le16(c + 34);
    uint64_t local = le32(c + 42);
    const uint64_t var_len = uint64_t{name_len} + extra_len + comment_len;
    if (!fits(pos + kCentralSize, var_len, cd_end))
      fail("central directory entry runs past its end");
    e.name.assign(reinterpret_cast<const char*>(c + kCentralSize), name_len);
    if (e.name.empty() || e.name.find('\0') != std::string::npos)
      fail("entry with an empty or NUL-containing name");
    const bool need_size = e.size == 0xffffffffu, need_stored = e.stored_size == 0xffffffffu;
    const bool need_offset = local == 0xffffffffu;
    read_zip64_extra(c + kCentralSize + name_len, extra_len, e, local, need_size, need_stored,
                     need_offset);
    if (disk != 0 && disk != 0xffff) fail("multi-disk (split) archives are not supported");
    pos += kCentralSize + var_len;

    // The local header repeats the name and has its own extra field (torch pads the data to 64
    // bytes with it), so the data starts after *its* lengths.
    const std::string what = "entry '" + formats_detail::printable(e.name) + "'";
    if (!fits(local, kLocalSize, d.cd_offset)) fail(what + ": local header offset out of range");
    const uint8_t* l = bytes + local;
    if (le32(l) != kLocalSig) fail(what + ": bad local header signature");
    const uint16_t lname = le16(l + 26), lextra = le16(l + 28);
    if (!fits(local + kLocalSize, uint64_t{lname} + lextra, d.cd_offset))
      fail(what + ": local header runs into the central directory");
    if (lname != name_len || std::memcmp(l + kLocalSize, e.name.data(), name_len) != 0)
      fail(what + ": local header names a different file");
    e.data_offset = local + kLocalSize + lname + lextra;
    if (!fits(e.data_offset, e.stored_size, d.cd_offset))
      fail(what + ": data (" + std::to_string(e.stored_size) + " bytes at offset " +
           std::to_string(e.data_offset) + ") runs past the start of the central directory");
    if (e.method == 0 && e.stored_size != e.size)
      fail(what + ": stored entry with different compressed and uncompressed sizes");
    return e;
  }
};

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    t[i] = c;
  }
  return t;
}

}  // namespace

uint32_t zip_crc32(const uint8_t* bytes, size_t n) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ bytes[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

ZipArchive ZipArchive::parse(const uint8_t* bytes, size_t size, const std::string& source) {
  const Parser p{bytes, size, source};
  const size_t eocd = p.find_eocd();
  const Parser::Directory d = p.read_directory(eocd);
  ZipArchive z;
  z.bytes_ = bytes;
  z.size_ = size;
  z.source_ = source;
  z.entries_.reserve(static_cast<size_t>(d.entries));
  uint64_t pos = d.cd_offset;
  for (uint64_t i = 0; i < d.entries; ++i) {
    ZipEntry e = p.read_entry(pos, d);
    if (!z.by_name_.emplace(e.name, z.entries_.size()).second)
      p.fail("duplicate entry '" + formats_detail::printable(e.name) + "'");
    z.entries_.push_back(std::move(e));
  }
  if (pos != d.cd_offset + d.cd_size)
    p.fail("central directory size does not match its " + std::to_string(d.entries) + " entries");
  return z;
}

const ZipEntry* ZipArchive::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::span<const uint8_t> ZipArchive::data(const ZipEntry& e) const {
  const std::string what = source_ + ": entry '" + formats_detail::printable(e.name) + "'";
  if (e.flags & kFlagEncrypted) throw Error(what + " is encrypted, which is not supported");
  if (e.method != 0) {
    throw Error(what + " is compressed (method " + std::to_string(e.method) +
                "); torch.save never compresses, so this file was repacked by another tool. "
                "Re-save it with torch.save or convert it to safetensors");
  }
  return {bytes_ + e.data_offset, static_cast<size_t>(e.size)};
}

std::span<const uint8_t> ZipArchive::checked_data(const ZipEntry& e) const {
  const std::span<const uint8_t> d = data(e);
  if (zip_crc32(d.data(), d.size()) != e.crc32) {
    throw Error(source_ + ": entry '" + formats_detail::printable(e.name) +
                "' is corrupt (CRC-32 mismatch)");
  }
  return d;
}

}  // namespace qserve
