// Where tests find ../shared (models with golden outputs) and the build outputs.
#pragma once

#include <string>

namespace qserve::test {

// $QSERVE_SHARED if set, else the compile-time default (<source>/../shared).
std::string shared_dir();
// shared_dir() + "/models/" + name
std::string model_dir(const std::string& name);
std::string source_dir();
std::string binary_dir();

}  // namespace qserve::test
