// Helpers shared by the JSON-based readers of formats/ (safetensors index, config.json): read a
// file into a JSON value, and quote untrusted text safely inside error messages.
#pragma once

#include <exception>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace qserve::formats_detail {

// Reads and parses the JSON file at `path`. Throws qserve::Error naming `path` when the file cannot
// be read or is not valid JSON (the parser's message is kept, made printable).
nlohmann::json read_json_file(const std::string& path);

// `s` with control and non-ASCII bytes replaced by '?' and cut to `max_len` characters (with
// "..."), so that hostile input cannot put escape sequences or megabytes of text into an error
// message.
std::string printable(std::string_view s, size_t max_len = 200);

// The message of a nlohmann exception without its "[json.exception.parse_error.101] " prefix,
// made printable.
std::string json_error_text(const std::exception& e);

// A short description of a JSON value for error messages: its type and (abbreviated) value.
std::string describe_json(const nlohmann::json& v);

}  // namespace qserve::formats_detail
