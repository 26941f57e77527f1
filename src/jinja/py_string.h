// Python str semantics over UTF-8 text: what the chat templates' string methods and filters
// (strip, split, title, slicing, len, ...) do, counted in code points as Python counts them.
// Case mapping is ASCII only (non-ASCII letters are left as they are), a documented limit.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qserve::jinja {

// Decodes the code point at s[i]; false for malformed UTF-8 (callers then treat the byte as
// one opaque character).
bool utf8_decode(const std::string& s, size_t i, uint32_t* cp, size_t* len);
void utf8_append(uint32_t cp, std::string* out);

// The text split into characters (each a UTF-8 slice; a malformed byte is one character).
std::vector<std::string> py_chars(const std::string& s);
size_t py_len(const std::string& s);

// Python's str.isspace() for one code point.
bool py_isspace(uint32_t cp);

// str.strip/lstrip/rstrip; with `chars` the set of characters to remove, else whitespace.
std::string py_strip(const std::string& s, const std::optional<std::string>& chars, bool left,
                     bool right);
// str.split(sep=None, maxsplit=-1).
std::vector<std::string> py_split(const std::string& s, const std::optional<std::string>& sep,
                                  int64_t maxsplit);
// str.replace(old, new, count=-1).
std::string py_replace(const std::string& s, const std::string& old_s, const std::string& new_s,
                       int64_t count);
std::string py_upper(const std::string& s);
std::string py_lower(const std::string& s);
// str.title(): a letter after a non-letter is upper-cased, the others lower-cased.
std::string py_title(const std::string& s);
// str.capitalize(): the first character upper-cased, the rest lower-cased.
std::string py_capitalize(const std::string& s);

}  // namespace qserve::jinja
