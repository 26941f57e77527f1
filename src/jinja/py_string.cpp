#include "jinja/py_string.h"

#include <cctype>

namespace qserve::jinja {

bool utf8_decode(const std::string& s, size_t i, uint32_t* cp, size_t* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return false;
  uint32_t v = n == 1 ? c : c & (0x7Fu >> n);
  for (size_t k = 1; k < n; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc >> 6) != 2) return false;
    v = (v << 6) | (cc & 0x3Fu);
  }
  *cp = v;
  *len = n;
  return true;
}

void utf8_append(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

// Length in bytes of the character at s[i] (1 for a malformed byte).
size_t char_len(const std::string& s, size_t i) {
  uint32_t cp = 0;
  size_t n = 1;
  return utf8_decode(s, i, &cp, &n) ? n : 1;
}

bool space_at(const std::string& s, size_t i, size_t* n) {
  uint32_t cp = 0;
  if (!utf8_decode(s, i, &cp, n)) {
    *n = 1;
    return false;
  }
  return py_isspace(cp);
}

bool is_alpha_ascii(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) != 0;
}
char upper_ascii(char c) {
  return static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
}
char lower_ascii(char c) {
  return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
}

}  // namespace

std::vector<std::string> py_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = char_len(s, i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

size_t py_len(const std::string& s) {
  size_t count = 0;
  for (size_t i = 0; i < s.size(); i += char_len(s, i)) ++count;
  return count;
}

bool py_isspace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string py_strip(const std::string& s, const std::optional<std::string>& chars, bool left,
                     bool right) {
  std::vector<std::string> cs = py_chars(s);
  std::vector<std::string> set = chars ? py_chars(*chars) : std::vector<std::string>{};
  auto removable = [&](const std::string& c) {
    if (!chars) {
      uint32_t cp = 0;
      size_t n = 0;
      return utf8_decode(c, 0, &cp, &n) && py_isspace(cp);
    }
    for (const std::string& x : set)
      if (x == c) return true;
    return false;
  };
  size_t b = 0, e = cs.size();
  if (left)
    while (b < e && removable(cs[b])) ++b;
  if (right)
    while (e > b && removable(cs[e - 1])) --e;
  std::string out;
  for (size_t i = b; i < e; ++i) out += cs[i];
  return out;
}

std::vector<std::string> py_split(const std::string& s, const std::optional<std::string>& sep,
                                  int64_t maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    size_t start = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      const size_t at = s.find(*sep, start);
      if (at == std::string::npos) break;
      out.push_back(s.substr(start, at - start));
      start = at + sep->size();
    }
    out.push_back(s.substr(start));
    return out;
  }
  // Runs of whitespace separate; leading/trailing whitespace gives no empty strings.
  size_t i = 0, n = 0;
  while (i < s.size()) {
    while (i < s.size() && space_at(s, i, &n)) i += n;
    if (i >= s.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      // The remainder, with its trailing whitespace removed, is the last piece.
      out.push_back(py_strip(s.substr(i), std::nullopt, false, true));
      return out;
    }
    size_t j = i;
    while (j < s.size() && !space_at(s, j, &n)) j += n;
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& old_s, const std::string& new_s,
                       int64_t count) {
  std::string out;
  if (old_s.empty()) {
    // Python inserts `new` before every character and at the end.
    int64_t done = 0;
    for (const std::string& c : py_chars(s)) {
      if (count < 0 || done < count) {
        out += new_s;
        ++done;
      }
      out += c;
    }
    if (count < 0 || done < count) out += new_s;
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(old_s, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += new_s;
    start = at + old_s.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::string py_upper(const std::string& s) {
  std::string out = s;
  for (char& c : out) c = upper_ascii(c);
  return out;
}

std::string py_lower(const std::string& s) {
  std::string out = s;
  for (char& c : out) c = lower_ascii(c);
  return out;
}

std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_letter = false;
  for (char& c : out) {
    const bool letter = is_alpha_ascii(c);
    if (letter) c = prev_letter ? lower_ascii(c) : upper_ascii(c);
    // Bytes of non-ASCII characters count as non-letters here (ASCII-only case mapping).
    prev_letter = letter;
  }
  return out;
}

std::string py_capitalize(const std::string& s) {
  std::string out = py_lower(s);
  if (!out.empty()) out[0] = upper_ascii(out[0]);
  return out;
}

}  // namespace qserve::jinja
