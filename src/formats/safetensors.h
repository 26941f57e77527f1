// Safetensors: zero-copy reader (mmap), sharded checkpoints (model.safetensors.index.json), and
// a writer. Format: u64 little-endian header length N, N bytes of JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data section; offsets are relative to the data section.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/mmap_file.h"
#include "core/tensor.h"

namespace qserve {

struct SafetensorsEntry {
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offset into the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // 8 + header length
};

// Parses and validates the header of a safetensors file held in `bytes` (the whole file, or at
// least its first 8 + N bytes when file_size is given separately). Validates: length prefix
// within the file, UTF-8 JSON object, known dtypes, non-negative shapes, offsets in order,
// non-overlapping, covering the data section, and matching dtype size x numel. Throws
// qserve::Error with `source` (the file name) in the message. Exposed for the fuzzer.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                                           const std::string& source);

// One mmapped safetensors file.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return file_->path(); }
  bool has(const std::string& name) const { return header_.tensors.count(name) != 0; }
  // A read-only view of the tensor's bytes in the mapping (keeps the mapping alive).
  Tensor get(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
};

// All tensors of a checkpoint folder: model.safetensors.index.json (sharded) or a single
// model.safetensors, or an explicit list of files.
class SafetensorsCheckpoint {
 public:
  // Opens `dir`. Errors name the folder/file: no safetensors found, missing shard, tensor listed in
  // the index but absent from its shard, malformed index JSON.
  static SafetensorsCheckpoint open_dir(const std::string& dir);
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  Tensor get(const std::string& name) const;  // throws naming the tensor and folder if absent
  const SafetensorsEntry& entry(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::string& source() const { return source_; }
  // Metadata merged across shards (first shard wins on conflicts).
  std::map<std::string, std::string> metadata() const;

 private:
  std::string source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// A tensor to write: name, dtype, shape and its raw bytes (must be dtype_size x numel long).
struct SafetensorsWriteItem {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string_view bytes;
};

// Writes a safetensors file (tensors sorted by name, 8-byte aligned header as the reference
// implementation does). Throws on size mismatch or I/O failure, naming the path.
void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace qserve
