#include "jinja/lexer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "jinja/py_string.h"

namespace qserve::jinja {
namespace {

bool is_name_start(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
}
bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

class Lexer {
 public:
  Lexer(std::string source, const std::string& name) : src_(std::move(source)), name_(name) {
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    // Jinja's lstrip_blocks strips indentation before a tag only at the start of a line: after
    // a newline in the text, at the start of the template, or right after a tag whose end
    // consumed a newline.
    bool line_starting = true;
    while (pos < src_.size()) {
      const size_t start = find_tag_start(pos);
      if (start == std::string::npos) {
        emit_text(src_.substr(pos), pos);
        break;
      }
      const char type = src_[start + 1];  // '{', '%' or '#'
      char sign = 0;
      if (start + 2 < src_.size() && (src_[start + 2] == '-' || src_[start + 2] == '+'))
        sign = src_[start + 2];
      std::string text = src_.substr(pos, start - pos);
      if (sign == '-') {
        text = py_strip(text, std::nullopt, false, true);
      } else if (sign != '+' && type != '{') {
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() && all_space(text, l_pos))
          text.resize(l_pos);
      }
      emit_text(text, pos);
      const size_t body = start + 2 + (sign != 0 ? 1 : 0);
      if (type == '#') {
        pos = lex_comment(start, body);
      } else if (type == '%' && is_raw_begin(body, &pos)) {
        pos = lex_raw(start, pos);
      } else {
        pos = lex_tag(type == '{', start, body);
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    tokens_.push_back(Token{TokenKind::kEof, "", 0, 0, where(src_.size())});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void fail(size_t at, const std::string& msg) const {
    const SourcePos p = where(at);
    throw Error("jinja: " + name_ + ":" + std::to_string(p.line) + ":" + std::to_string(p.column) +
                ": " + msg);
  }

  SourcePos where(size_t at) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), at);
    const size_t line_start = it == line_starts_.begin() ? 0 : *(it - 1);
    return SourcePos{static_cast<int>(it - line_starts_.begin()) + 1,
                     static_cast<int>(at - line_start) + 1};
  }

  size_t find_tag_start(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
        return i;
    }
    return std::string::npos;
  }

  bool all_space(const std::string& s, size_t from) const {
    for (size_t i = from; i < s.size();) {
      uint32_t cp = 0;
      size_t n = 1;
      if (!utf8_decode(s, i, &cp, &n) || !py_isspace(cp)) return false;
      i += n;
    }
    return true;
  }

  size_t skip_space(size_t i) const {
    while (i < src_.size()) {
      uint32_t cp = 0;
      size_t n = 1;
      if (!utf8_decode(src_, i, &cp, &n) || !py_isspace(cp)) break;
      i += n;
    }
    return i;
  }

  void emit_text(const std::string& text, size_t at) {
    if (!text.empty()) tokens_.push_back(Token{TokenKind::kText, text, 0, 0, where(at)});
  }

  // After a tag's closing marker at `end` (one past it): `-` strips all following whitespace,
  // `+` keeps it, and otherwise (trim_blocks, block and comment tags only) one newline goes.
  size_t after_close(char sign, size_t end, bool trim_newline) const {
    if (sign == '-') return skip_space(end);
    if (sign != '+' && trim_newline && end < src_.size() && src_[end] == '\n') return end + 1;
    return end;
  }

  size_t lex_comment(size_t start, size_t body) {
    const size_t close = src_.find("#}", body);
    if (close == std::string::npos) fail(start, "missing end of comment tag");
    const char sign =
        close > body && (src_[close - 1] == '-' || src_[close - 1] == '+') ? src_[close - 1] : 0;
    return after_close(sign, close + 2, true);
  }

  // {% raw %}: `body` is just after "{%" and its sign; on success *after is past the tag.
  bool is_raw_begin(size_t body, size_t* after) const {
    size_t i = skip_space(body);
    if (src_.compare(i, 3, "raw") != 0 || (i + 3 < src_.size() && is_name_char(src_[i + 3])))
      return false;
    i = skip_space(i + 3);
    if (src_.compare(i, 3, "-%}") == 0) {
      *after = skip_space(i + 3);
      return true;
    }
    if (src_.compare(i, 2, "%}") == 0) {
      *after = i + 2;  // Jinja applies no trim_blocks after {% raw %}
      return true;
    }
    return false;
  }

  size_t lex_raw(size_t start, size_t from) {
    for (size_t i = src_.find("{%", from); i != std::string::npos; i = src_.find("{%", i + 1)) {
      size_t j = i + 2;
      const char sign = j < src_.size() && (src_[j] == '-' || src_[j] == '+') ? src_[j] : 0;
      if (sign) ++j;
      j = skip_space(j);
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j = skip_space(j + 6);
      char close_sign = 0;
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) close_sign = src_[j++];
      if (src_.compare(j, 2, "%}") != 0) continue;
      std::string text = src_.substr(from, i - from);
      if (sign == '-') text = py_strip(text, std::nullopt, false, true);
      emit_text(text, from);
      return after_close(close_sign, j + 2, true);
    }
    fail(start, "missing end of raw directive");
  }

  // The end marker of the tag at i, if one is there: returns its length (0 if none) and the
  // whitespace-control sign.
  size_t end_marker_at(bool variable, size_t i, char* sign) const {
    const char* close = variable ? "}}" : "%}";
    *sign = 0;
    if ((src_[i] == '-' || (src_[i] == '+' && !variable)) && src_.compare(i + 1, 2, close) == 0) {
      *sign = src_[i];
      return 3;
    }
    return src_.compare(i, 2, close) == 0 ? 2 : 0;
  }

  size_t lex_tag(bool variable, size_t start, size_t body) {
    tokens_.push_back(
        Token{variable ? TokenKind::kVarBegin : TokenKind::kBlockBegin, "", 0, 0, where(start)});
    std::vector<char> brackets;  // expected closers; tag ends only count when balanced
    size_t i = body;
    while (true) {
      i = skip_space(i);
      if (i >= src_.size())
        fail(start, std::string("unexpected end of template; the tag is not "
                                "closed with '") +
                        (variable ? "}}" : "%}") + "'");
      char sign = 0;
      if (brackets.empty()) {
        if (const size_t n = end_marker_at(variable, i, &sign); n > 0) {
          tokens_.push_back(
              Token{variable ? TokenKind::kVarEnd : TokenKind::kBlockEnd, "", 0, 0, where(i)});
          return after_close(sign, i + n, !variable);
        }
      }
      const char c = src_[i];
      if (is_digit(c)) {
        i = lex_number(i);
      } else if (is_name_start(c)) {
        size_t j = i;
        while (j < src_.size() && is_name_char(src_[j])) ++j;
        tokens_.push_back(Token{TokenKind::kName, src_.substr(i, j - i), 0, 0, where(i)});
        i = j;
      } else if (c == '\'' || c == '"') {
        i = lex_string(i);
      } else {
        i = lex_operator(i, &brackets);
      }
    }
  }

  size_t lex_number(size_t i) {
    auto digits = [&](size_t j) {  // \d+(_\d+)*
      while (j < src_.size() && (is_digit(src_[j]) ||
                                 (src_[j] == '_' && j + 1 < src_.size() && is_digit(src_[j + 1]))))
        ++j;
      return j;
    };
    size_t j = digits(i);
    bool is_float = false;
    // Jinja's float rule does not apply right after a '.', so `x.0.1` is x[0][1].
    const bool after_dot = i > 0 && src_[i - 1] == '.';
    if (!after_dot && j + 1 < src_.size() && src_[j] == '.' && is_digit(src_[j + 1])) {
      j = digits(j + 1);
      is_float = true;
    }
    if (!after_dot && j < src_.size() && (src_[j] == 'e' || src_[j] == 'E')) {
      size_t k = j + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && is_digit(src_[k])) {
        j = digits(k);
        is_float = true;
      }
    }
    std::string text;
    for (size_t k = i; k < j; ++k)
      if (src_[k] != '_') text += src_[k];
    Token t{is_float ? TokenKind::kFloat : TokenKind::kInt, text, 0, 0, where(i)};
    if (is_float) {
      t.float_value = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
      if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX))
        fail(i, "integer literal " + text.substr(0, 40) + " is too large (64-bit integers only)");
      t.int_value = static_cast<int64_t>(v);
    }
    tokens_.push_back(std::move(t));
    return j;
  }

  static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // A quoted string with Python's escapes (Jinja decodes them with "unicode-escape").
  size_t lex_string(size_t i) {
    const char quote = src_[i];
    std::string out;
    size_t j = i + 1;
    while (true) {
      if (j >= src_.size()) fail(i, "unterminated string literal");
      const char c = src_[j];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++j;
        continue;
      }
      if (j + 1 >= src_.size()) fail(i, "unterminated string literal");
      const char e = src_[j + 1];
      j += 2;
      switch (e) {
        case '\n':
          break;  // line continuation
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            const int h = j + k < src_.size() ? hex_value(src_[j + k]) : -1;
            if (h < 0) fail(j - 2, std::string("truncated \\") + e + " escape in string literal");
            cp = cp * 16 + static_cast<uint32_t>(h);
          }
          if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            fail(j - 2, "escape is not a valid Unicode scalar value");
          utf8_append(cp, &out);
          j += n;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && j < src_.size() && src_[j] >= '0' && src_[j] <= '7'; ++k)
              cp = cp * 8 + static_cast<uint32_t>(src_[j++] - '0');
            utf8_append(cp, &out);
          } else {
            out += '\\';  // Python keeps unknown escapes as written
            out += e;
          }
      }
    }
    tokens_.push_back(Token{TokenKind::kString, out, 0, 0, where(i)});
    return j + 1;
  }

  size_t lex_operator(size_t i, std::vector<char>* brackets) {
    static const char* const kTwo[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : kTwo) {
      if (src_.compare(i, 2, op) == 0) {
        tokens_.push_back(Token{TokenKind::kOperator, op, 0, 0, where(i)});
        return i + 2;
      }
    }
    const char c = src_[i];
    static const std::string kOne = "+-/*%~[](){}<>=.:|,;";
    if (kOne.find(c) == std::string::npos) {
      fail(i, std::string("unexpected character '") +
                  (static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7F
                       ? std::string(1, c)
                       : "\\x" + std::to_string(static_cast<unsigned char>(c))) +
                  "' in a tag");
    }
    if (c == '(') brackets->push_back(')');
    if (c == '[') brackets->push_back(']');
    if (c == '{') brackets->push_back('}');
    if (c == ')' || c == ']' || c == '}') {
      if (brackets->empty()) fail(i, std::string("unexpected '") + c + "'");
      if (brackets->back() != c)
        fail(i, std::string("unexpected '") + c + "', expected '" + brackets->back() + "'");
      brackets->pop_back();
    }
    tokens_.push_back(Token{TokenKind::kOperator, std::string(1, c), 0, 0, where(i)});
    return i + 1;
  }

  std::string src_;
  std::string name_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
};

// Jinja treats \r\n, \r and \n as line breaks, writes them as \n, and (keep_trailing_newline
// off) drops one trailing newline of the template.
std::string normalize_newlines(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

std::vector<Token> lex_template(const std::string& source, const std::string& name) {
  return Lexer(normalize_newlines(source), name).run();
}

}  // namespace qserve::jinja
