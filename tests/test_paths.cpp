#include "test_paths.h"

#include <cstdlib>

namespace qserve::test {

std::string shared_dir() {
  if (const char* s = std::getenv("QSERVE_SHARED"); s != nullptr && *s != '\0') return s;
  return QSERVE_SHARED_DEFAULT;
}
std::string model_dir(const std::string& name) { return shared_dir() + "/models/" + name; }
std::string source_dir() { return QSERVE_SOURCE_DIR; }
std::string binary_dir() { return QSERVE_BINARY_DIR; }

}  // namespace qserve::test
