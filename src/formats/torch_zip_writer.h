// Internal to src/formats (used by torch_writer.cpp): the zip container torch.save writes, as a
// stream. Records are stored (never compressed), each local header carries the CRC-32 and sizes
// (all known up front, so no data descriptors) and an "FB" padding extra field that puts the
// data on a 64-byte boundary as torch's writer does (so readers can map tensors in place). An
// entry gets ZIP64 fields when its size or offset passes 4 GiB, and the end of the archive a
// ZIP64 end-of-central-directory record when the directory does - which every multi-gigabyte
// checkpoint needs. torch_zip.h reads the result.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/atomic_file.h"

namespace qserve {

// Where the archive's bytes go.
class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual void write(const void* data, size_t n) = 0;
};

class StringSink final : public ByteSink {
 public:
  void write(const void* data, size_t n) override {
    out_.append(static_cast<const char*>(data), n);
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

// The archive written to a file atomically (atomic_file.h): renamed over `path` by commit();
// destroyed uncommitted (an exception), it removes its temporary file, so a failed write never
// leaves a partial checkpoint behind. Errors name `path`.
class AtomicFileSink final : public ByteSink {
 public:
  explicit AtomicFileSink(const std::string& path) : file_(path, "torch checkpoint") {}
  void write(const void* data, size_t n) override { file_.write(data, n); }
  void commit() { file_.commit(); }

 private:
  AtomicFileWriter file_;
};

class ZipStreamWriter {
 public:
  // Sizes and offsets >= zip64_from (at most 0xffffffff, where the format needs them) get ZIP64
  // fields; lower values exercise that layout on small archives (tests).
  ZipStreamWriter(ByteSink& out, uint64_t zip64_from) : out_(out), zip64_from_(zip64_from) {}
  // Appends one stored record. Names must be unique (the caller's job: torch's are fixed).
  void add(std::string_view name, std::string_view data);
  // Writes the central directory and the end records. Call once, after the last add().
  void finish();

 private:
  struct Central {
    std::string name;
    uint32_t crc = 0;
    uint64_t size = 0;
    uint64_t offset = 0;
  };
  void put(const std::string& bytes);
  ByteSink& out_;
  uint64_t zip64_from_;
  uint64_t offset_ = 0;
  std::vector<Central> entries_;
};

}  // namespace qserve
