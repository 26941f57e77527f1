// Parses Jinja tokens into a syntax tree, with Jinja's operator precedence and statement set
// (see docs/chat-templates.md for the supported subset). Nesting is bounded so hostile
// templates cannot exhaust the stack.
#pragma once

#include <string>

#include "jinja/ast.h"

namespace qserve::jinja {

inline constexpr int kMaxParseDepth = 200;

// Throws qserve::Error "jinja: <name>:<line>:<col>: ..." for syntax errors and unsupported tags.
Body parse_template(const std::string& source, const std::string& name);

}  // namespace qserve::jinja
