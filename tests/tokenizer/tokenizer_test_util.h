// Helpers shared by the tokenizer tests: golden files, fixtures, the incremental property.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "test_paths.h"
#include "tokenizer/tokenizer.h"

namespace qserve::test {

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(read_text(path));
}

inline std::vector<int32_t> ids_of(const nlohmann::json& j) {
  return j.get<std::vector<int32_t>>();
}

// The folder of a generated fixture (tools/gen_spm_tokenizers.py).
inline std::string fixture_dir(const std::string& name) {
  return source_dir() + "/tests/data/tokenizers/" + name;
}

// Feeds ids one by one, then flush(); returns the concatenation of everything emitted and checks
// that each push emitted whole UTF-8 characters.
std::string detokenize_incrementally(const Tokenizer& tok, const std::vector<int32_t>& ids,
                                     bool skip_special);

}  // namespace qserve::test
