#include "tokenizer/json_util.h"

#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace qserve::json {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open file");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  return std::move(ss).str();
}

Json parse(std::string_view text, const std::string& source) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    throw Error(source + ": not valid JSON: " + e.what());
  }
}

const Json* member(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

const Json& require(const Json& obj, std::string_view key, const std::string& where) {
  if (!obj.is_object()) throw Error(where + ": expected an object");
  const Json* v = member(obj, key);
  if (v == nullptr) throw Error(where + ": missing '" + std::string(key) + "'");
  return *v;
}

std::string as_string(const Json& v, const std::string& where) {
  if (!v.is_string()) throw Error(where + ": expected a string");
  return v.get<std::string>();
}

bool as_bool(const Json& v, const std::string& where) {
  if (!v.is_boolean()) throw Error(where + ": expected true or false");
  return v.get<bool>();
}

int32_t as_id(const Json& v, const std::string& where) {
  if (v.is_number_unsigned() || v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    if (x >= 0 && x <= std::numeric_limits<int32_t>::max()) return static_cast<int32_t>(x);
  }
  throw Error(where + ": expected a token id (a non-negative 32-bit integer)");
}

bool opt_bool(const Json& obj, std::string_view key, bool fallback, const std::string& where) {
  const Json* v = member(obj, key);
  return v == nullptr ? fallback : as_bool(*v, where + "." + std::string(key));
}

std::string opt_string(const Json& obj, std::string_view key, const std::string& fallback,
                       const std::string& where) {
  const Json* v = member(obj, key);
  return v == nullptr ? fallback : as_string(*v, where + "." + std::string(key));
}

void check_depth(int depth, const std::string& where) {
  if (depth > kMaxNesting) {
    throw Error(where + ": components nested more than " + std::to_string(kMaxNesting) + " deep");
  }
}

std::string type_of(const Json& obj, const std::string& where) {
  return as_string(require(obj, "type", where), where + ".type");
}

}  // namespace qserve::json
