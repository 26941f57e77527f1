// The syntax tree of a parsed template: expressions and statements, each with the source
// position runtime errors point at.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "jinja/lexer.h"
#include "jinja/value.h"

namespace qserve::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,  // literal
    kName,     // name
    kList,     // children = items; name "tuple" for a tuple literal
    kDict,     // children = key0, value0, key1, value1, ...
    kAttr,     // children[0].name
    kItem,     // children[0][children[1]]
    kSlice,    // children[0][children[1]:children[2]:children[3]] (null = omitted)
    kCall,     // children[0](children[1..], keywords)
    kFilter,   // children[0] | name(children[1..], keywords); children[0] null in {% filter %}
    kTest,     // children[0] is [not] name(children[1..], keywords)
    kUnary,    // name ("-", "+", "not") children[0]
    kBinary,   // children[0] name children[1]; name is an arithmetic operator or "~"
    kAnd,      // children[0] and children[1] (Python: returns an operand)
    kOr,
    kCompare,    // children[0] ops[0] children[1] ops[1] children[2] ... (chained like Python)
    kCondition,  // children[0] if children[1] else children[2] (null: undefined)
  };
  Kind kind;
  SourcePos pos;
  std::string name;
  Value literal;
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> keywords;
  std::vector<std::string> ops;  // kCompare: "==", "!=", "<", "<=", ">", ">=", "in", "not in"
  bool negated = false;          // kTest: `is not`
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches: (condition, body), the else branch has a null condition
    kFor,       // for targets in expr [if condition]: body [else else_body]
    kSet,       // set targets = expr, or set targets[0].attr = expr (namespace attribute)
    kSetBlock,  // set targets[0] %}body{% endset
    kMacro,     // macro name(params): body
    kBreak,
    kContinue,
    kFilterBlock,  // filter expr (a kFilter with a null input): body
    kGeneration,   // transformers' {% generation %}: body, rendered as is
  };
  Kind kind;
  SourcePos pos;
  std::string text;
  ExprPtr expr;
  ExprPtr condition;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::string> targets;
  std::string attr;
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // default may be null
  Body body, else_body;
};

}  // namespace qserve::jinja
