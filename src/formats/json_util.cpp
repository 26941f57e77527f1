#include "formats/json_util.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace qserve::formats_detail {

std::string printable(std::string_view s, size_t max_len) {
  std::string out;
  const size_t n = std::min(s.size(), max_len);
  out.reserve(n + 3);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  if (s.size() > max_len) out += "...";
  return out;
}

std::string json_error_text(const std::exception& e) {
  std::string_view msg = e.what();
  if (msg.rfind("[json.exception.", 0) == 0) {
    const size_t end = msg.find("] ");
    if (end != std::string_view::npos) msg.remove_prefix(end + 2);
  }
  return printable(msg);
}

std::string describe_json(const nlohmann::json& v) {
  // dump() cannot throw here: the value came from the parser, so its strings are valid UTF-8.
  return std::string(v.type_name()) + " " + printable(v.dump(), 60);
}

nlohmann::json read_json_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw Error(path + ": not found or not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error");
  const std::string text = ss.str();
  // The parser stops silently at a NUL byte; JSON never contains one, so reject it up front.
  if (text.find('\0') != std::string::npos)
    throw Error(path + ": not valid JSON (contains a NUL byte)");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + json_error_text(e));
  }
}

}  // namespace qserve::formats_detail
