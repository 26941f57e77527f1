// The zip container of torch.save, written as a stream (torch_zip_writer.h). Layout (APPNOTE.TXT):
// [local header, data]..., central directory, [ZIP64 EOCD record, ZIP64 EOCD locator], EOCD.
#include "formats/torch_zip_writer.h"

#include <algorithm>

#include "formats/torch_zip.h"

namespace qserve {

namespace {

using namespace zip_format;  // NOLINT(google-build-using-namespace): the record ids

constexpr uint64_t kMax32 = 0xffffffffu;
constexpr uint64_t kMax16 = 0xffffu;
constexpr uint16_t kPadExtraId = 0x4246;  // "FB": torch's alignment padding
constexpr uint64_t kAlignment = 64;       // torch aligns every record's data to 64 bytes
constexpr uint16_t kVersion = 20, kVersionZip64 = 45;
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;  // 1980-01-01: fixed, so output is stable

void le(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

void ZipStreamWriter::put(const std::string& bytes) {
  out_.write(bytes.data(), bytes.size());
  offset_ += bytes.size();
}

void ZipStreamWriter::add(std::string_view name, std::string_view data) {
  const uint64_t size = data.size();
  const uint32_t crc = zip_crc32(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  // The local header needs ZIP64 sizes only when a size does not fit 32 bits (its offset is in
  // the central directory alone).
  const bool zip64 = size >= std::min(zip64_from_, kMax32);
  std::string extra;
  if (zip64) {
    le(extra, kZip64ExtraId, 2), le(extra, 16, 2), le(extra, size, 8), le(extra, size, 8);
  }
  const uint64_t before_pad = offset_ + 30 + name.size() + extra.size() + 4;
  const uint64_t pad = (kAlignment - before_pad % kAlignment) % kAlignment;
  le(extra, kPadExtraId, 2), le(extra, pad, 2);
  extra.append(static_cast<size_t>(pad), 'Z');

  std::string h;
  le(h, kLocalSig, 4), le(h, zip64 ? kVersionZip64 : kVersion, 2), le(h, 0, 2);  // no flags
  le(h, 0, 2), le(h, 0, 2), le(h, kDosDate, 2);  // stored, time, date
  le(h, crc, 4), le(h, zip64 ? kMax32 : size, 4), le(h, zip64 ? kMax32 : size, 4);
  le(h, name.size(), 2), le(h, extra.size(), 2);
  h.append(name);
  h += extra;
  entries_.push_back({std::string(name), crc, size, offset_});
  put(h);
  out_.write(data.data(), data.size());
  offset_ += size;
}

void ZipStreamWriter::finish() {
  const uint64_t cd_offset = offset_;
  for (const Central& e : entries_) {
    // Each saturated field is supplied, in this order, by the ZIP64 extra field.
    const bool big_size = e.size >= std::min(zip64_from_, kMax32);
    const bool big_offset = e.offset >= std::min(zip64_from_, kMax32);
    std::string extra;
    if (big_size || big_offset) {
      le(extra, kZip64ExtraId, 2), le(extra, (big_size ? 16 : 0) + (big_offset ? 8 : 0), 2);
      if (big_size) le(extra, e.size, 8), le(extra, e.size, 8);
      if (big_offset) le(extra, e.offset, 8);
    }
    const uint16_t version = extra.empty() ? kVersion : kVersionZip64;
    std::string c;
    le(c, kCentralSig, 4), le(c, version, 2), le(c, version, 2), le(c, 0, 2);  // made by, need
    le(c, 0, 2), le(c, 0, 2), le(c, kDosDate, 2), le(c, e.crc, 4);
    le(c, big_size ? kMax32 : e.size, 4), le(c, big_size ? kMax32 : e.size, 4);
    le(c, e.name.size(), 2), le(c, extra.size(), 2), le(c, 0, 2);  // comment length
    le(c, 0, 2), le(c, 0, 2), le(c, 0, 4);                         // disk, attributes
    le(c, big_offset ? kMax32 : e.offset, 4);
    c += e.name;
    c += extra;
    put(c);
  }
  const uint64_t cd_size = offset_ - cd_offset, n = entries_.size();
  const uint64_t limit = std::min(zip64_from_, kMax32);
  const bool zip64 = n >= kMax16 || cd_size >= limit || cd_offset >= limit;
  std::string end;
  if (zip64) {
    const uint64_t record = offset_;
    le(end, kZip64EocdSig, 4), le(end, 44, 8), le(end, kVersionZip64, 2);
    le(end, kVersionZip64, 2), le(end, 0, 4), le(end, 0, 4);  // disk numbers
    le(end, n, 8), le(end, n, 8), le(end, cd_size, 8), le(end, cd_offset, 8);
    le(end, kZip64LocatorSig, 4), le(end, 0, 4), le(end, record, 8), le(end, 1, 4);
  }
  le(end, kEocdSig, 4), le(end, 0, 2), le(end, 0, 2);
  le(end, zip64 ? kMax16 : n, 2), le(end, zip64 ? kMax16 : n, 2);
  le(end, zip64 ? kMax32 : cd_size, 4), le(end, zip64 ? kMax32 : cd_offset, 4);
  le(end, 0, 2);  // comment length
  put(end);
}

}  // namespace qserve
