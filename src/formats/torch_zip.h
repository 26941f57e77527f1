// A read-only ZIP reader for the container that torch.save writes (since torch 1.6): stored
// (uncompressed) entries, data 64-byte aligned, ZIP64 records for files or offsets past 4 GiB.
// It parses the end-of-central-directory record (and the ZIP64 one), the central directory and
// each local header from a buffer, usually an mmapped file, with every offset and length checked
// against the buffer, so a hostile file yields a qserve::Error and never an out-of-bounds read.
// Entry data is returned as a view into the buffer: nothing is copied or decompressed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qserve {

// Record signatures and the ZIP64 extra-field id (APPNOTE.TXT), shared by this reader and the
// writer (torch_zip_writer.h).
namespace zip_format {
inline constexpr uint32_t kLocalSig = 0x04034b50;
inline constexpr uint32_t kCentralSig = 0x02014b50;
inline constexpr uint32_t kEocdSig = 0x06054b50;
inline constexpr uint32_t kZip64EocdSig = 0x06064b50;
inline constexpr uint32_t kZip64LocatorSig = 0x07064b50;
inline constexpr uint16_t kZip64ExtraId = 0x0001;
}  // namespace zip_format

struct ZipEntry {
  std::string name;
  uint16_t method = 0;       // 0 = stored; anything else is refused when the data is read
  uint16_t flags = 0;        // general purpose bit flags from the central directory
  uint32_t crc32 = 0;        // as recorded in the central directory
  uint64_t data_offset = 0;  // first byte of the entry's data in the buffer
  uint64_t size = 0;         // uncompressed size
  uint64_t stored_size = 0;  // compressed size (== size for stored entries)
};

class ZipArchive {
 public:
  // Parses the archive held in bytes[0, size). `source` (the file name) starts every error
  // message. The bytes must outlive the archive and every span it returns.
  static ZipArchive parse(const uint8_t* bytes, size_t size, const std::string& source);

  const std::vector<ZipEntry>& entries() const { return entries_; }  // central directory order
  // The entry called `name`, or null.
  const ZipEntry* find(std::string_view name) const;
  // The bytes of a stored entry. Throws naming the entry if it is compressed or encrypted.
  std::span<const uint8_t> data(const ZipEntry& e) const;
  // data(e), after checking its CRC-32 against the central directory (throws on mismatch).
  std::span<const uint8_t> checked_data(const ZipEntry& e) const;
  const std::string& source() const { return source_; }

 private:
  const uint8_t* bytes_ = nullptr;
  size_t size_ = 0;
  std::string source_;
  std::vector<ZipEntry> entries_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// Standard CRC-32 (ISO 3309, as used by ZIP) of bytes[0, n).
uint32_t zip_crc32(const uint8_t* bytes, size_t n);

}  // namespace qserve
