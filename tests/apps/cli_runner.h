// Runs the built qserve binary as a user would, capturing its output and exit code.
#pragma once

#include <string>

namespace qserve::test {

struct RunResult {
  int code;         // exit status, -1 if it did not exit normally
  std::string out;  // stdout (and stderr when merged)
};

// Runs `<build>/qserve ARGS` through the shell; stderr is merged into out or discarded.
RunResult run_qserve(const std::string& args, bool merge_stderr = true);

// Single-quotes s for the shell.
std::string shell_quote(const std::string& s);

}  // namespace qserve::test
