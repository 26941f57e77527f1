// Helpers for the formats tests: scratch folders, raw file bytes, and checking that a call fails
// with a qserve::Error whose message names the input and the problem.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <string_view>

#include "core/error.h"

namespace qserve::test {

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "qserve-fmt-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The 8-byte little-endian length prefix for a header of n bytes.
inline std::string length_prefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a literal header (not validated, not padded) and data section.
inline std::string raw_safetensors(const std::string& header, const std::string& data = "") {
  return length_prefix(header.size()) + header + data;
}

// Runs fn and checks it throws qserve::Error with every needle in its message.
inline void expect_error(const std::function<void()>& fn,
                         std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const qserve::Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles) {
      EXPECT_NE(msg.find(n), std::string::npos) << "message lacks \"" << n << "\": " << msg;
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-qserve exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw";
}

#define EXPECT_QSERVE_ERROR(stmt, ...)                          \
  do {                                                          \
    SCOPED_TRACE(#stmt);                                        \
    ::qserve::test::expect_error([&] { stmt; }, {__VA_ARGS__}); \
  } while (0)

}  // namespace qserve::test
