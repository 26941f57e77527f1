#include "jinja/parser.h"

#include <initializer_list>

#include "core/error.h"
#include "jinja/builtins.h"

namespace qserve::jinja {
namespace {

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name)
      : toks_(std::move(tokens)), name_(name) {}

  Body parse_all() {
    Body body = parse_body({});
    if (cur().kind != TokenKind::kEof) fail(cur(), "unexpected tag");
    return body;
  }

 private:
  // --- token helpers ---------------------------------------------------------------------
  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  void advance() {
    if (i_ + 1 < toks_.size()) ++i_;
  }
  bool is_op(const char* op) const {
    return cur().kind == TokenKind::kOperator && cur().text == op;
  }
  bool is_name(const char* n) const { return cur().kind == TokenKind::kName && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    advance();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.kind) {
      case TokenKind::kText:
        return "template text";
      case TokenKind::kVarBegin:
        return "'{{'";
      case TokenKind::kVarEnd:
        return "'}}'";
      case TokenKind::kBlockBegin:
        return "'{%'";
      case TokenKind::kBlockEnd:
        return "'%}'";
      case TokenKind::kName:
        return "'" + t.text + "'";
      case TokenKind::kString:
        return "a string";
      case TokenKind::kInt:
      case TokenKind::kFloat:
        return "a number";
      case TokenKind::kOperator:
        return "'" + t.text + "'";
      case TokenKind::kEof:
        return "the end of the template";
    }
    return "?";
  }

  [[noreturn]] void fail(const Token& at, const std::string& msg) const {
    throw Error("jinja: " + name_ + ":" + std::to_string(at.pos.line) + ":" +
                std::to_string(at.pos.column) + ": " + msg);
  }
  [[noreturn]] void fail_expected(const std::string& what) const {
    fail(cur(), "expected " + what + ", got " + describe(cur()));
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail_expected(std::string("'") + op + "'");
  }
  std::string expect_name() {
    if (cur().kind != TokenKind::kName) fail_expected("a name");
    std::string n = cur().text;
    advance();
    return n;
  }
  void expect_block_end() {
    if (cur().kind != TokenKind::kBlockEnd) fail_expected("'%}'");
    advance();
  }

  // Bounds the nesting of statements and expressions: a hostile template must get an error,
  // not a stack overflow.
  struct DepthGuard {
    DepthGuard(Parser* p, const Token& at) : p_(p) {
      if (++p_->depth_ > kMaxParseDepth)
        p_->fail(at, "template nested too deeply (more than " + std::to_string(kMaxParseDepth) +
                         " levels)");
    }
    ~DepthGuard() { --p_->depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;
    Parser* p_;
  };

  ExprPtr node(Expr::Kind k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->pos = at.pos;
    return e;
  }

  // --- statements ------------------------------------------------------------------------
  // Parses until a block tag whose name is in `end_tags` (left unconsumed, positioned at its
  // name) or the end of the template.
  Body parse_body(std::initializer_list<const char*> end_tags) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.kind == TokenKind::kEof) return body;
      if (t.kind == TokenKind::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kText;
        s->pos = t.pos;
        s->text = t.text;
        body.push_back(std::move(s));
        advance();
      } else if (t.kind == TokenKind::kVarBegin) {
        advance();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::kOutput;
        s->pos = t.pos;
        s->expr = parse_tuple(true);
        if (cur().kind != TokenKind::kVarEnd) fail_expected("'}}'");
        advance();
        body.push_back(std::move(s));
      } else if (t.kind == TokenKind::kBlockBegin) {
        const Token& tag = peek();
        if (tag.kind != TokenKind::kName) {
          advance();
          fail_expected("a tag name");
        }
        for (const char* end : end_tags) {
          if (tag.text == end) {
            advance();  // now at the tag name
            return body;
          }
        }
        advance();
        body.push_back(parse_statement());
      } else {
        fail(t, "unexpected " + describe(t));
      }
    }
  }

  // Consumes the end tag name where parse_body stopped, checking it is `want`.
  void end_tag(const char* want, const Token& opened) {
    if (!is_name(want)) {
      if (cur().kind == TokenKind::kEof)
        fail(opened,
             std::string("unexpected end of template; this tag needs '{% ") + want + " %}'");
      fail_expected(std::string("'") + want + "'");
    }
    advance();
    expect_block_end();
  }

  StmtPtr parse_statement() {
    const Token tag = cur();
    DepthGuard guard(this, tag);
    const std::string& n = tag.text;
    if (n == "if") return parse_if();
    if (n == "for") return parse_for();
    if (n == "set") return parse_set();
    if (n == "macro") return parse_macro();
    if (n == "filter") return parse_filter_block();
    if (n == "generation") {
      advance();
      expect_block_end();
      auto s = make_stmt(Stmt::Kind::kGeneration, tag);
      s->body = parse_body({"endgeneration"});
      end_tag("endgeneration", tag);
      return s;
    }
    if (n == "break" || n == "continue") {
      if (loop_depth_ == 0) fail(tag, "'" + n + "' outside of a for loop");
      advance();
      expect_block_end();
      return make_stmt(n == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue, tag);
    }
    static const char* const kUnsupported[] = {"include", "import", "from", "extends",
                                               "block",   "call",   "with", "autoescape",
                                               "do",      "trans"};
    for (const char* u : kUnsupported) {
      if (n == u)
        fail(tag, "the '" + n + "' tag is not supported by qserve's Jinja subset " +
                      "(docs/chat-templates.md)");
    }
    fail(tag, "unknown tag '" + n + "'");
  }

  StmtPtr make_stmt(Stmt::Kind k, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->pos = at.pos;
    return s;
  }

  StmtPtr parse_if() {
    const Token tag = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kIf, tag);
    ExprPtr cond = parse_tuple(false);
    expect_block_end();
    while (true) {
      Body body = parse_body({"elif", "else", "endif"});
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (skip_name("elif")) {
        cond = parse_tuple(false);
        expect_block_end();
        continue;
      }
      if (skip_name("else")) {
        expect_block_end();
        s->branches.emplace_back(nullptr, parse_body({"endif"}));
      }
      end_tag("endif", tag);
      return s;
    }
  }

  // A name or a tuple of names: `x`, `k, v`, `(k, v)`.
  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    const bool paren = skip_op("(");
    do {
      names.push_back(expect_name());
    } while (skip_op(","));
    if (paren) expect_op(")");
    return names;
  }

  StmtPtr parse_for() {
    const Token tag = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kFor, tag);
    s->targets = parse_targets();
    if (!skip_name("in")) fail_expected("'in'");
    s->expr = parse_tuple(false);
    if (skip_name("if")) s->condition = parse_expression(true);
    if (is_name("recursive"))
      fail(cur(), "recursive for loops are not supported by qserve's Jinja subset");
    expect_block_end();
    ++loop_depth_;
    s->body = parse_body({"else", "endfor"});
    --loop_depth_;
    if (skip_name("else")) {
      expect_block_end();
      s->else_body = parse_body({"endfor"});
    }
    end_tag("endfor", tag);
    return s;
  }

  StmtPtr parse_set() {
    const Token tag = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kSet, tag);
    const std::string first = expect_name();
    s->targets.push_back(first);
    if (skip_op(".")) {
      s->attr = expect_name();  // {% set ns.attr = ... %}
    } else {
      while (skip_op(",")) s->targets.push_back(expect_name());
    }
    if (skip_op("=")) {
      s->expr = parse_tuple(true);
      expect_block_end();
      return s;
    }
    if (!s->attr.empty() || s->targets.size() != 1) fail_expected("'='");
    expect_block_end();
    s->kind = Stmt::Kind::kSetBlock;
    s->body = parse_body({"endset"});
    end_tag("endset", tag);
    return s;
  }

  StmtPtr parse_macro() {
    const Token tag = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kMacro, tag);
    s->name = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      if (!s->params.empty()) expect_op(",");
      if (is_op(")")) break;  // trailing comma
      std::string p = expect_name();
      ExprPtr def;
      if (skip_op("=")) def = parse_expression(true);
      s->params.emplace_back(std::move(p), std::move(def));
    }
    advance();
    expect_block_end();
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;  // break/continue cannot cross a macro
    s->body = parse_body({"endmacro"});
    loop_depth_ = saved_loops;
    end_tag("endmacro", tag);
    return s;
  }

  StmtPtr parse_filter_block() {
    const Token tag = cur();
    advance();
    auto s = make_stmt(Stmt::Kind::kFilterBlock, tag);
    ExprPtr chain;  // null input: the block's rendered body
    do {
      chain = parse_filter(std::move(chain));
    } while (skip_op("|"));
    s->expr = std::move(chain);
    expect_block_end();
    s->body = parse_body({"endfilter"});
    end_tag("endfilter", tag);
    return s;
  }

  // --- expressions -----------------------------------------------------------------------
  // An expression, or several separated by commas (a tuple, held as a list).
  ExprPtr parse_tuple(bool with_condexpr) {
    const Token start = cur();
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    ExprPtr list = node(Expr::Kind::kList, start);
    list->name = "tuple";
    list->children.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().kind == TokenKind::kVarEnd || cur().kind == TokenKind::kBlockEnd || is_op(")"))
        break;
      list->children.push_back(parse_expression(with_condexpr));
    }
    return list;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    DepthGuard guard(this, cur());
    if (!with_condexpr) return parse_or();
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const Token at = cur();
      advance();
      ExprPtr c = node(Expr::Kind::kCondition, at);
      ExprPtr cond = parse_or();
      ExprPtr otherwise = skip_name("else") ? parse_expression(true) : nullptr;
      c->children.push_back(std::move(e));
      c->children.push_back(std::move(cond));
      c->children.push_back(std::move(otherwise));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind k, const Token& at, std::string op, ExprPtr l, ExprPtr r) {
    ExprPtr e = node(k, at);
    e->name = std::move(op);
    e->children.push_back(std::move(l));
    e->children.push_back(std::move(r));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr l = parse_and();
    while (is_name("or")) {
      const Token at = cur();
      advance();
      l = binary(Expr::Kind::kOr, at, "or", std::move(l), parse_and());
    }
    return l;
  }

  ExprPtr parse_and() {
    ExprPtr l = parse_not();
    while (is_name("and")) {
      const Token at = cur();
      advance();
      l = binary(Expr::Kind::kAnd, at, "and", std::move(l), parse_not());
    }
    return l;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      const Token at = cur();
      advance();
      DepthGuard guard(this, at);
      ExprPtr e = node(Expr::Kind::kUnary, at);
      e->name = "not";
      e->children.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token start = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().kind == TokenKind::kOperator &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().kind == TokenKind::kName && peek().text == "in") {
        op = "not in";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Kind::kCompare, start);
        cmp->children.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->children.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr l = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = cur();
      advance();
      l = binary(Expr::Kind::kBinary, at, at.text, std::move(l), parse_concat());
    }
    return l;
  }

  ExprPtr parse_concat() {
    ExprPtr l = parse_math2();
    while (is_op("~")) {
      const Token at = cur();
      advance();
      l = binary(Expr::Kind::kBinary, at, "~", std::move(l), parse_math2());
    }
    return l;
  }

  ExprPtr parse_math2() {
    ExprPtr l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token at = cur();
      advance();
      l = binary(Expr::Kind::kBinary, at, at.text, std::move(l), parse_pow());
    }
    return l;
  }

  ExprPtr parse_pow() {
    ExprPtr l = parse_unary(true);
    while (is_op("**")) {
      const Token at = cur();
      advance();
      l = binary(Expr::Kind::kBinary, at, "**", std::move(l), parse_unary(true));
    }
    return l;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(this, cur());
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token at = cur();
      advance();
      e = node(Expr::Kind::kUnary, at);
      e->name = at.text;
      e->children.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token t = cur();
    switch (t.kind) {
      case TokenKind::kName: {
        advance();
        ExprPtr e = node(Expr::Kind::kLiteral, t);
        if (t.text == "true" || t.text == "True")
          e->literal = Value(true);
        else if (t.text == "false" || t.text == "False")
          e->literal = Value(false);
        else if (t.text == "none" || t.text == "None")
          e->literal = Value::none();
        else {
          e->kind = Expr::Kind::kName;
          e->name = t.text;
        }
        return e;
      }
      case TokenKind::kString: {
        std::string s;
        while (cur().kind == TokenKind::kString) {  // adjacent literals concatenate
          s += cur().text;
          advance();
        }
        ExprPtr e = node(Expr::Kind::kLiteral, t);
        e->literal = Value(std::move(s));
        return e;
      }
      case TokenKind::kInt:
      case TokenKind::kFloat: {
        advance();
        ExprPtr e = node(Expr::Kind::kLiteral, t);
        e->literal = t.kind == TokenKind::kInt ? Value(t.int_value) : Value(t.float_value);
        return e;
      }
      case TokenKind::kOperator:
        if (t.text == "(") {
          advance();
          if (skip_op(")")) {  // ()
            ExprPtr e = node(Expr::Kind::kList, t);
            e->name = "tuple";
            return e;
          }
          ExprPtr e = parse_tuple(true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          advance();
          ExprPtr e = node(Expr::Kind::kList, t);
          while (!is_op("]")) {
            if (!e->children.empty()) expect_op(",");
            if (is_op("]")) break;
            e->children.push_back(parse_expression(true));
          }
          advance();
          return e;
        }
        if (t.text == "{") {
          advance();
          ExprPtr e = node(Expr::Kind::kDict, t);
          while (!is_op("}")) {
            if (!e->children.empty()) expect_op(",");
            if (is_op("}")) break;
            e->children.push_back(parse_expression(true));
            expect_op(":");
            e->children.push_back(parse_expression(true));
          }
          advance();
          return e;
        }
        break;
      default:
        break;
    }
    fail_expected("an expression");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        advance();
        e = parse_filter(std::move(e));
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Token at = cur();
    DepthGuard guard(this, at);
    if (skip_op(".")) {
      if (cur().kind == TokenKind::kInt) {  // x.0 is x[0]
        ExprPtr e = node(Expr::Kind::kItem, at);
        ExprPtr idx = node(Expr::Kind::kLiteral, cur());
        idx->literal = Value(cur().int_value);
        advance();
        e->children.push_back(std::move(obj));
        e->children.push_back(std::move(idx));
        return e;
      }
      ExprPtr e = node(Expr::Kind::kAttr, at);
      e->name = expect_name();
      e->children.push_back(std::move(obj));
      return e;
    }
    expect_op("[");
    // [expr] or a slice [start:stop:step], any part omitted.
    ExprPtr parts[3];
    bool slice = false;
    if (!is_op(":")) parts[0] = parse_tuple(true);
    if (skip_op(":")) {
      slice = true;
      if (!is_op(":") && !is_op("]")) parts[1] = parse_expression(true);
      if (skip_op(":") && !is_op("]")) parts[2] = parse_expression(true);
    }
    expect_op("]");
    ExprPtr e = node(slice ? Expr::Kind::kSlice : Expr::Kind::kItem, at);
    e->children.push_back(std::move(obj));
    if (!slice && !parts[0]) fail(at, "expected an index between '[' and ']'");
    for (int k = 0; k < (slice ? 3 : 1); ++k) e->children.push_back(std::move(parts[k]));
    return e;
  }

  // (args, name=value, ...) into e->children[first..] and e->keywords.
  void parse_args(Expr* e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) fail(cur(), "*args and **kwargs calls are not supported");
      if (cur().kind == TokenKind::kName && peek().kind == TokenKind::kOperator &&
          peek().text == "=") {
        std::string key = cur().text;
        advance();
        advance();
        e->keywords.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e->keywords.empty()) fail(cur(), "positional argument follows keyword argument");
        e->children.push_back(parse_expression(true));
      }
    }
    advance();
  }

  ExprPtr parse_call(ExprPtr callee) {
    const Token at = cur();
    DepthGuard guard(this, at);
    ExprPtr e = node(Expr::Kind::kCall, at);
    e->children.push_back(std::move(callee));
    parse_args(e.get());
    return e;
  }

  std::string dotted_name() {
    std::string n = expect_name();
    while (is_op(".") && peek().kind == TokenKind::kName) {
      advance();
      n += "." + expect_name();
    }
    return n;
  }

  ExprPtr parse_filter(ExprPtr input) {
    const Token at = cur();
    DepthGuard guard(this, at);
    ExprPtr e = node(Expr::Kind::kFilter, at);
    e->name = dotted_name();
    // Like Jinja, an unknown filter is an error when the template is compiled.
    if (!has_filter(e->name))
      fail(at,
           "no filter named '" + e->name + "' (docs/chat-templates.md lists the supported ones)");
    e->children.push_back(std::move(input));
    if (is_op("(")) parse_args(e.get());
    return e;
  }

  ExprPtr parse_test(ExprPtr input) {
    const Token at = cur();
    DepthGuard guard(this, at);
    advance();  // is
    ExprPtr e = node(Expr::Kind::kTest, at);
    e->negated = skip_name("not");
    e->name = dotted_name();
    if (!has_test(e->name))
      fail(at, "no test named '" + e->name + "' (docs/chat-templates.md lists the supported ones)");
    e->children.push_back(std::move(input));
    if (is_op("(")) {
      parse_args(e.get());
    } else {
      // One argument without parentheses: `x is divisibleby 3`, `x is sameas none`.
      const Token& t = cur();
      const bool starts_arg =
          t.kind == TokenKind::kString || t.kind == TokenKind::kInt ||
          t.kind == TokenKind::kFloat || is_op("[") || is_op("{") ||
          (t.kind == TokenKind::kName && t.text != "else" && t.text != "or" && t.text != "and");
      if (starts_arg) e->children.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  std::vector<Token> toks_;
  std::string name_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse_template(const std::string& source, const std::string& name) {
  return Parser(lex_template(source, name), name).parse_all();
}

}  // namespace qserve::jinja
