// Internal to src/formats (used by the safetensors and torch checkpoint writers): a file written
// under a temporary name next to its destination and renamed over it only once complete, so a
// reader never sees a partial file and a failed write leaves the destination as it was.
#pragma once

#include <cstddef>
#include <string>

namespace qserve {

// Creates `path`.tmp.<pid>.<n> (exclusively, mode 0644) in the destination's folder; write()
// appends (looping over partial writes and EINTR); commit() fsyncs, closes and renames it over
// `path`. Destroyed uncommitted (an exception), it removes the temporary file. Every error is a
// qserve::Error "<path>: cannot write <kind>: <what failed>: <strerror>", e.g. kind
// "safetensors file".
class AtomicFileWriter {
 public:
  AtomicFileWriter(const std::string& path, const std::string& kind);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  // Makes the file durable and visible at `path`. Call once, after the last write().
  void commit();

 private:
  [[noreturn]] void fail(const std::string& what) const;
  std::string path_;
  std::string kind_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace qserve
