// Splits a template into text and tag tokens the way Jinja's lexer does in transformers'
// environment (trim_blocks, lstrip_blocks, keep_trailing_newline off, `-`/`+` whitespace
// control, comments and {% raw %} removed), and tokenizes the expressions inside the tags.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qserve::jinja {

struct SourcePos {
  int line = 1, column = 1;
};

enum class TokenKind {
  kText,        // template data between tags (whitespace control already applied)
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // escapes decoded
  kInt,
  kFloat,
  kOperator,
  kEof,
};

struct Token {
  TokenKind kind;
  std::string text;  // text, name, decoded string or operator
  int64_t int_value = 0;
  double float_value = 0;
  SourcePos pos;
};

// Throws qserve::Error "jinja: <name>:<line>:<col>: ..." for lexical errors (an unclosed tag,
// string or comment, an unexpected character, unbalanced brackets).
std::vector<Token> lex_template(const std::string& source, const std::string& name);

}  // namespace qserve::jinja
