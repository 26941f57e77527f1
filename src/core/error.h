// Errors at the edges: one exception type that carries a message naming the input and what
// was expected. Thrown while loading files or validating requests, never in hot loops.
#pragma once

#include <stdexcept>
#include <string>

namespace qserve {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws qserve::Error(message) when cond is false. For validating inputs, not for asserts.
inline void check(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

}  // namespace qserve
