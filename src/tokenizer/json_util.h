// Reading the JSON files of a HF model folder with errors that say which file and which field
// is wrong. Components throw qserve::Error("<field>: <problem>"); the loader prefixes the file.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace qserve::json {

using Json = nlohmann::json;

// The whole file; throws Error naming path when it cannot be read.
std::string read_file(const std::string& path);

// Parses text; throws Error("<source>: not valid JSON: ...") (never a nlohmann exception).
Json parse(std::string_view text, const std::string& source);

// The member key of obj, or nullptr when obj is not an object, has no such key, or it is null.
const Json* member(const Json& obj, std::string_view key);

// The member key of obj; throws Error("<where>: missing '<key>'") when absent or null.
const Json& require(const Json& obj, std::string_view key, const std::string& where);

// v as a string / bool / int32; throws Error("<where>: expected ...") on a wrong type.
std::string as_string(const Json& v, const std::string& where);
bool as_bool(const Json& v, const std::string& where);
int32_t as_id(const Json& v, const std::string& where);  // a non-negative int32

// Optional members with defaults (a null value counts as absent).
bool opt_bool(const Json& obj, std::string_view key, bool fallback, const std::string& where);
std::string opt_string(const Json& obj, std::string_view key, const std::string& fallback,
                       const std::string& where);

// Sequence components nest; a bound keeps hostile files from exhausting the stack.
inline constexpr int kMaxNesting = 32;
void check_depth(int depth, const std::string& where);

// obj["type"] as a string (the tag of every HF component).
std::string type_of(const Json& obj, const std::string& where);

}  // namespace qserve::json
