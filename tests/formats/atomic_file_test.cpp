// AtomicFileWriter (formats/atomic_file.h), the temporary-file-then-rename writer under both the
// safetensors and the torch checkpoint writers: content, atomic replacement, no temporary file
// left behind on success or failure, and errors that name the file.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/atomic_file.h"
#include "formats/formats_test_util.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// The names in dir, sorted (so a leftover temporary file shows up in a failure message).
std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(AtomicFileWriter, WritesTheBytesAndLeavesOnlyTheFile) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  {
    AtomicFileWriter out(path, "test file");
    out.write("hello ", 6);
    out.write("", 0);
    const std::string big(3 << 20, 'x');  // several MiB in one call
    out.write(big.data(), big.size());
    EXPECT_FALSE(fs::exists(path)) << "visible before commit";
    out.commit();
  }
  const std::string got = test::read_file(path);
  ASSERT_EQ(got.size(), 6u + (3u << 20));
  EXPECT_EQ(got.substr(0, 6), "hello ");
  EXPECT_EQ(got.find_first_not_of('x', 6), std::string::npos);
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFileWriter, EmptyFile) {
  TempDir dir;
  const std::string path = dir.file("empty");
  AtomicFileWriter out(path, "test file");
  out.commit();
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(fs::file_size(path), 0u);
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"empty"});
}

TEST(AtomicFileWriter, ReplacesAnExistingFileOnlyOnCommit) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  test::write_file(path, "old contents that are longer than the new ones");
  {
    AtomicFileWriter out(path, "test file");
    out.write("new", 3);
    EXPECT_EQ(test::read_file(path), "old contents that are longer than the new ones");
    out.commit();
  }
  EXPECT_EQ(test::read_file(path), "new");
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFileWriter, UncommittedLeavesTheDestinationAsItWasAndNoTemporaryFile) {
  TempDir dir;
  const std::string fresh = dir.file("fresh.bin"), existing = dir.file("existing.bin");
  test::write_file(existing, "keep me");
  {
    AtomicFileWriter a(fresh, "test file");
    AtomicFileWriter b(existing, "test file");
    a.write("partial", 7);
    b.write("partial", 7);
    EXPECT_EQ(names_in(dir.path()).size(), 3u) << "one temporary file per writer";
    // Destroyed without commit(), as when the caller throws half way.
  }
  EXPECT_FALSE(fs::exists(fresh));
  EXPECT_EQ(test::read_file(existing), "keep me");
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"existing.bin"});
}

TEST(AtomicFileWriter, TwoWritersOfOnePathUseDistinctTemporaryFiles) {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  {
    AtomicFileWriter a(path, "test file");
    AtomicFileWriter b(path, "test file");
    a.write("a", 1);
    b.write("b", 1);
    a.commit();
    b.commit();  // the last rename wins; neither write is mixed into the other
  }
  EXPECT_EQ(test::read_file(path), "b");
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFileWriter, MissingFolderIsAClearErrorAndCreatesNothing) {
  TempDir dir;
  const std::string path = dir.file("missing/out.bin");
  EXPECT_QSERVE_ERROR(AtomicFileWriter(path, "test file"), path + ": cannot write test file",
                      "cannot create a temporary file", "No such file or directory");
  EXPECT_TRUE(names_in(dir.path()).empty());
}

TEST(AtomicFileWriter, FailedRenameIsAClearErrorAndRemovesTheTemporaryFile) {
  TempDir dir;
  // The destination is a non-empty folder, so rename() over it fails after all the writing.
  const std::string path = dir.file("taken");
  fs::create_directory(path);
  test::write_file(path + "/inside", "x");
  {
    AtomicFileWriter out(path, "test file");
    out.write("data", 4);
    EXPECT_QSERVE_ERROR(out.commit(), path + ": cannot write test file",
                        "cannot rename the temporary file");
  }
  EXPECT_EQ(names_in(dir.path()), std::vector<std::string>{"taken"});
  EXPECT_EQ(names_in(path), std::vector<std::string>{"inside"});
}

}  // namespace
}  // namespace qserve
