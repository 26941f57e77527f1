#include "cli_runner.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>

#include "test_paths.h"

namespace qserve::test {

RunResult run_qserve(const std::string& args, bool merge_stderr) {
  const std::string cmd =
      binary_dir() + "/qserve " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  RunResult r{-1, ""};
  if (p == nullptr) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

}  // namespace qserve::test
