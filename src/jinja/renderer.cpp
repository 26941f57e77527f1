// Evaluates a parsed template: Jinja's scoping (a for loop's body gets a fresh scope every
// iteration; if-blocks share their enclosing scope; macros see the template's top-level
// names), Python operator semantics, and the globals transformers adds.
#include <chrono>
#include <cmath>
#include <ctime>
#include <unordered_map>

#include "core/error.h"
#include "jinja/ast.h"
#include "jinja/builtins.h"
#include "jinja/parser.h"
#include "jinja/template.h"

namespace qserve::jinja {
namespace {

enum class Flow { kNormal, kBreak, kContinue };

using Frame = std::unordered_map<std::string, Value>;

// An error that already carries its template position; inner positions win.
class PositionedError : public TemplateError {
 public:
  using TemplateError::TemplateError;
};

class Renderer {
 public:
  Renderer(const std::string& name, const RenderOptions& opts) : name_(name), opts_(opts) {}

  std::string run(const Body& body, const Value& context) {
    Frame globals;
    install_globals(&globals);
    if (context.is_dict()) {
      for (const auto& [k, v] : context.as_dict().items()) globals[k] = v;
    } else if (!context.is_undefined() && !context.is_none()) {
      throw TemplateError("jinja: " + name_ + ": the render context must be a JSON object");
    }
    frames_.push_back(std::move(globals));
    frames_.emplace_back();  // the template's own top-level names
    std::string out;
    exec_body(body, &out);
    return out;
  }

 private:
  // --- errors ----------------------------------------------------------------------------
  std::string where(const SourcePos& p) const {
    return "jinja: " + name_ + ":" + std::to_string(p.line) + ":" + std::to_string(p.column) + ": ";
  }
  [[noreturn]] void fail(const SourcePos& p, const std::string& msg) const {
    throw PositionedError(where(p) + msg);
  }

  // Runs f; a plain qserve::Error from builtins gets the position `p`.
  template <typename F>
  auto at(const SourcePos& p, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const PositionedError&) {
      throw;
    } catch (const Error& e) {
      fail(p, e.what());
    }
  }

  void step(const SourcePos& p) {
    if (++steps_ > opts_.max_steps)
      fail(p, "the template exceeded its budget of " + std::to_string(opts_.max_steps) +
                  " steps (an endless or very large loop?)");
  }

  void emit(const std::string& s, std::string* out, const SourcePos& p) {
    if (out->size() + s.size() > opts_.max_output_bytes)
      fail(p, "output exceeds the limit of " + std::to_string(opts_.max_output_bytes) + " bytes");
    *out += s;
  }

  // --- scopes ----------------------------------------------------------------------------
  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      const auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }
  void assign(const std::string& name, Value v) { frames_.back()[name] = std::move(v); }

  void assign_targets(const std::vector<std::string>& targets, const Value& v, const SourcePos& p) {
    if (targets.size() == 1) {
      assign(targets[0], v);
      return;
    }
    const List items = at(p, [&] { return iterate(v); });
    if (items.size() != targets.size()) {
      fail(p, "cannot unpack " + std::to_string(items.size()) + " values into " +
                  std::to_string(targets.size()) + " names");
    }
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  void install_globals(Frame* g) {
    (*g)["range"] = Value::callable("range", [this](CallArgs& a) { return range(a); });
    (*g)["namespace"] = Value::callable("namespace", [](CallArgs& a) {
      Dict d;
      if (a.positional.size() > 1) throw Error("namespace() takes at most 1 positional argument");
      if (a.positional.size() == 1) {
        if (!a.positional[0].is_dict()) throw Error("namespace() argument must be a dict");
        d = a.positional[0].as_dict();
      }
      for (auto& [k, v] : a.keyword) d.set(k, v);
      for (const auto& [k, v] : d.items()) {
        if (!k.empty() && k[0] == '_')
          throw Error(
              "Chat templates cannot store underscore-prefixed attributes on a "
              "namespace, but got '" +
              k + "'");
        if (v.contains_namespace()) throw Error("a namespace cannot hold another namespace");
      }
      return Value::make_namespace(std::move(d));
    });
    (*g)["dict"] = Value::callable("dict", [](CallArgs& a) {
      Dict d;
      if (a.positional.size() > 1) throw Error("dict() takes at most 1 positional argument");
      if (a.positional.size() == 1) {
        if (!a.positional[0].is_dict()) throw Error("dict() argument must be a dict");
        d = a.positional[0].as_dict();
      }
      for (auto& [k, v] : a.keyword) d.set(k, v);
      return Value(std::move(d));
    });
    (*g)["raise_exception"] = Value::callable("raise_exception", [](CallArgs& a) -> Value {
      ArgReader r(a, "raise_exception");
      const Value msg = r.get(0, "message");
      r.done(1);
      throw Error("raise_exception: " + msg.str());
    });
    (*g)["strftime_now"] = Value::callable("strftime_now", [this](CallArgs& a) {
      ArgReader r(a, "strftime_now");
      const Value fmt = r.get(0, "format");
      r.done(1);
      if (!fmt.is_string()) throw Error("strftime_now() needs a format string");
      if (opts_.strftime_now) return Value(opts_.strftime_now(fmt.as_string()));
      const std::time_t now =
          std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[512];
      const size_t n = fmt.as_string().size() < 200
                           ? std::strftime(buf, sizeof(buf), fmt.as_string().c_str(), &tm)
                           : 0;
      return Value(std::string(buf, n));
    });
  }

  Value range(CallArgs& a) {
    if (!a.keyword.empty()) throw Error("range() takes no keyword arguments");
    std::vector<int64_t> p;
    for (const Value& v : a.positional) {
      if (!v.is_int()) throw Error("range() arguments must be integers, not " + v.type_name());
      p.push_back(v.as_int());
    }
    if (p.empty() || p.size() > 3) throw Error("range() takes 1 to 3 arguments");
    const int64_t start = p.size() == 1 ? 0 : p[0];
    const int64_t stop = p.size() == 1 ? p[0] : p[1];
    const int64_t stride = p.size() == 3 ? p[2] : 1;
    if (stride == 0) throw Error("range() arg 3 must not be zero");
    const long double count_f = stride > 0
                                    ? std::ceil((static_cast<long double>(stop) - start) / stride)
                                    : std::ceil((static_cast<long double>(start) - stop) / -stride);
    const size_t count =
        count_f > 0 ? static_cast<size_t>(std::min<long double>(count_f, 1e18)) : 0;
    check_list_size(count, opts_);
    List out;
    out.reserve(count);
    for (size_t i = 0; i < count; ++i) out.emplace_back(start + static_cast<int64_t>(i) * stride);
    return Value(std::move(out));
  }

  // --- statements ------------------------------------------------------------------------
  Flow exec_body(const Body& body, std::string* out) {
    for (const StmtPtr& s : body) {
      const Flow f = exec(*s, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow exec(const Stmt& s, std::string* out) {
    step(s.pos);
    switch (s.kind) {
      case Stmt::Kind::kText:
        emit(s.text, out, s.pos);
        return Flow::kNormal;
      case Stmt::Kind::kOutput:
        emit(eval(*s.expr).str(), out, s.pos);
        return Flow::kNormal;
      case Stmt::Kind::kIf:
        for (const auto& [cond, body] : s.branches) {
          if (!cond || eval(*cond).truthy()) return exec_body(body, out);
        }
        return Flow::kNormal;
      case Stmt::Kind::kFor:
        exec_for(s, out);
        return Flow::kNormal;
      case Stmt::Kind::kSet:
        exec_set(s);
        return Flow::kNormal;
      case Stmt::Kind::kSetBlock: {
        std::string captured;
        exec_body(s.body, &captured);
        assign(s.targets[0], Value(std::move(captured)));
        return Flow::kNormal;
      }
      case Stmt::Kind::kMacro:
        define_macro(s);
        return Flow::kNormal;
      case Stmt::Kind::kBreak:
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        return Flow::kContinue;
      case Stmt::Kind::kFilterBlock: {
        std::string captured;
        exec_body(s.body, &captured);
        emit(apply_filter_chain(*s.expr, Value(std::move(captured))).str(), out, s.pos);
        return Flow::kNormal;
      }
      case Stmt::Kind::kGeneration:
        return exec_body(s.body, out);
    }
    return Flow::kNormal;
  }

  void exec_set(const Stmt& s) {
    Value v = eval(*s.expr);
    if (s.attr.empty()) {
      assign_targets(s.targets, v, s.pos);
      return;
    }
    const Value ns = lookup(s.targets[0]);
    if (ns.kind() != Value::Kind::kNamespace)
      fail(s.pos, "cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
    if (!s.attr.empty() && s.attr[0] == '_')
      fail(s.pos, "Chat templates cannot store underscore-prefixed attributes on a namespace");
    if (v.contains_namespace()) fail(s.pos, "a namespace cannot hold another namespace");
    ns.namespace_attrs().set(s.attr, std::move(v));
  }

  void exec_for(const Stmt& s, std::string* out) {
    const Value seq = eval(*s.expr);
    List items = at(s.pos, [&] { return iterate(seq); });
    if (s.condition) {
      // `for x in xs if cond`: filtered before the loop, so loop.* counts the kept items.
      List kept;
      for (const Value& item : items) {
        step(s.pos);
        frames_.emplace_back();
        assign_targets(s.targets, item, s.pos);
        const bool keep = eval(*s.condition).truthy();
        frames_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec_body(s.else_body, out);
      return;
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      step(s.pos);
      frames_.emplace_back();
      Dict loop;
      loop.set("index", Value(i + 1));
      loop.set("index0", Value(i));
      loop.set("revindex", Value(n - i));
      loop.set("revindex0", Value(n - i - 1));
      loop.set("first", Value(i == 0));
      loop.set("last", Value(i == n - 1));
      loop.set("length", Value(n));
      loop.set("depth", Value(1));
      loop.set("depth0", Value(0));
      loop.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)]
                                 : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)]
                                     : Value::undefined("there is no next item"));
      loop.set("cycle", Value::callable("loop.cycle", [i](CallArgs& a) {
                 if (a.positional.empty()) throw Error("no items for cycling given");
                 return a.positional[static_cast<size_t>(i) % a.positional.size()];
               }));
      assign("loop", Value(std::move(loop)));
      assign_targets(s.targets, items[static_cast<size_t>(i)], s.pos);
      const Flow f = exec_body(s.body, out);
      frames_.pop_back();
      if (f == Flow::kBreak) break;
    }
  }

  void define_macro(const Stmt& s) {
    const Stmt* def = &s;
    assign(s.name,
           Value::callable(s.name, [this, def](CallArgs& a) { return call_macro(*def, a); }));
  }

  Value call_macro(const Stmt& def, CallArgs& a) {
    if (++call_depth_ > opts_.max_call_depth) {
      --call_depth_;
      throw Error("macro calls nested deeper than " + std::to_string(opts_.max_call_depth) +
                  " (unbounded recursion?)");
    }
    struct DepthRestore {
      int* d;
      ~DepthRestore() { --*d; }
    } restore{&call_depth_};
    if (a.positional.size() > def.params.size())
      throw Error("macro '" + def.name + "' takes " + std::to_string(def.params.size()) +
                  " arguments (" + std::to_string(a.positional.size()) + " given)");
    Frame locals;
    for (size_t i = 0; i < def.params.size(); ++i) {
      const auto& [pname, pdefault] = def.params[i];
      if (i < a.positional.size()) {
        locals[pname] = a.positional[i];
        continue;
      }
      bool found = false;
      for (const auto& [k, v] : a.keyword) {
        if (k == pname) {
          locals[pname] = v;
          found = true;
        }
      }
      if (!found) {
        locals[pname] = pdefault ? eval(*pdefault)
                                 : Value::undefined("parameter '" + pname + "' was not provided");
      }
    }
    for (const auto& kv : a.keyword) {
      bool known = false;
      for (const auto& p : def.params) known |= p.first == kv.first;
      if (!known)
        throw Error("macro '" + def.name + "' takes no keyword argument '" + kv.first + "'");
    }
    // A macro sees its arguments and the template's globals and top-level names, not the
    // caller's loop variables: set the caller's inner frames aside while it runs.
    std::vector<Frame> inner(std::make_move_iterator(frames_.begin() + 2),
                             std::make_move_iterator(frames_.end()));
    frames_.resize(2);
    frames_.push_back(std::move(locals));
    std::string out;
    try {
      exec_body(def.body, &out);
    } catch (...) {
      frames_.resize(2);
      for (Frame& f : inner) frames_.push_back(std::move(f));
      throw;
    }
    frames_.resize(2);
    for (Frame& f : inner) frames_.push_back(std::move(f));
    return Value(std::move(out));
  }

  // --- expressions -----------------------------------------------------------------------
  CallArgs eval_args(const Expr& e, size_t first) {
    CallArgs a;
    for (size_t i = first; i < e.children.size(); ++i) a.positional.push_back(eval(*e.children[i]));
    for (const auto& [k, v] : e.keywords) a.keyword.emplace_back(k, eval(*v));
    return a;
  }

  Value apply_filter(const Expr& e, const Value& input) {
    CallArgs a = eval_args(e, 1);
    return at(e.pos, [&] { return call_filter(e.name, input, a, opts_); });
  }

  // {% filter a|b %}: the innermost filter (null input) gets the block's text.
  Value apply_filter_chain(const Expr& e, const Value& text) {
    if (!e.children[0]) return apply_filter(e, text);
    return apply_filter(e, apply_filter_chain(*e.children[0], text));
  }

  Value eval(const Expr& e) {
    step(e.pos);
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.literal;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kList: {
        List l;
        for (const ExprPtr& c : e.children) l.push_back(eval(*c));
        return at(e.pos, [&] {
          return e.name == "tuple" ? Value::tuple(std::move(l)) : Value(std::move(l));
        });
      }
      case Expr::Kind::kDict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
          const Value k = eval(*e.children[i]);
          if (!k.is_string())
            fail(e.children[i]->pos, "dict keys must be strings in qserve's Jinja subset");
          d.set(k.as_string(), eval(*e.children[i + 1]));
        }
        return at(e.pos, [&] { return Value(std::move(d)); });
      }
      case Expr::Kind::kAttr: {
        const Value obj = eval(*e.children[0]);
        return at(e.pos, [&] { return get_attr(obj, e.name, opts_); });
      }
      case Expr::Kind::kItem: {
        const Value obj = eval(*e.children[0]);
        const Value key = eval(*e.children[1]);
        return at(e.pos, [&] { return get_item(obj, key, opts_); });
      }
      case Expr::Kind::kSlice: {
        const Value obj = eval(*e.children[0]);
        Value parts[3];
        for (int k = 0; k < 3; ++k)
          if (e.children[static_cast<size_t>(k) + 1])
            parts[k] = eval(*e.children[static_cast<size_t>(k) + 1]);
        return at(e.pos, [&] { return get_slice(obj, parts[0], parts[1], parts[2]); });
      }
      case Expr::Kind::kCall: {
        const Value callee = eval(*e.children[0]);
        CallArgs a = eval_args(e, 1);
        return at(e.pos, [&]() -> Value {
          if (callee.is_undefined()) throw Error(callee.undefined_hint());
          if (!callee.is_callable())
            throw Error("'" + callee.type_name() + "' object is not callable");
          Value r = callee.as_callable().call(a);
          if (r.is_string()) check_string_size(r.as_string().size(), opts_);
          return r;
        });
      }
      case Expr::Kind::kFilter:
        return apply_filter(e, eval(*e.children[0]));
      case Expr::Kind::kTest: {
        const Value v = eval(*e.children[0]);
        CallArgs a = eval_args(e, 1);
        const bool r = at(e.pos, [&] { return call_test(e.name, v, a); });
        return Value(r != e.negated);
      }
      case Expr::Kind::kUnary: {
        const Value v = eval(*e.children[0]);
        if (e.name == "not") return Value(!v.truthy());
        return at(e.pos, [&] { return unary(e.name, v); });
      }
      case Expr::Kind::kBinary: {
        const Value l = eval(*e.children[0]);
        const Value r = eval(*e.children[1]);
        return at(e.pos, [&] { return binary(e.name, l, r); });
      }
      case Expr::Kind::kAnd: {
        Value l = eval(*e.children[0]);
        return l.truthy() ? eval(*e.children[1]) : l;
      }
      case Expr::Kind::kOr: {
        Value l = eval(*e.children[0]);
        return l.truthy() ? l : eval(*e.children[1]);
      }
      case Expr::Kind::kCompare: {
        Value l = eval(*e.children[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value r = eval(*e.children[i + 1]);
          const bool ok = at(e.pos, [&] { return compare(e.ops[i], l, r); });
          if (!ok) return Value(false);
          l = std::move(r);
        }
        return Value(true);
      }
      case Expr::Kind::kCondition: {
        if (eval(*e.children[1]).truthy()) return eval(*e.children[0]);
        if (e.children[2]) return eval(*e.children[2]);
        return Value::undefined(
            "the inline if expression evaluated to false and no else "
            "section was defined");
      }
    }
    return Value();
  }

  static Value unary(const std::string& op, const Value& v) {
    if (v.is_undefined()) throw Error(v.undefined_hint());
    if (v.kind() == Value::Kind::kFloat) return Value(op == "-" ? -v.as_float() : v.as_float());
    if (v.is_int()) {
      if (op == "-" && v.as_int() == INT64_MIN) throw Error("integer overflow");
      return Value(op == "-" ? -v.as_int() : v.as_int());
    }
    throw Error("bad operand type for unary " + op + ": '" + v.type_name() + "'");
  }

  static bool contains(const Value& container, const Value& item) {
    CallArgs a;
    a.positional.push_back(container);
    return call_test("in", item, a);
  }

  static bool compare(const std::string& op, const Value& l, const Value& r) {
    if (op == "==") return equals(l, r);
    if (op == "!=") return !equals(l, r);
    if (op == "in") return contains(r, l);
    if (op == "not in") return !contains(r, l);
    if (l.is_undefined()) throw Error(l.undefined_hint());
    if (r.is_undefined()) throw Error(r.undefined_hint());
    if (op == "<") return less_than(l, r);
    if (op == ">") return less_than(r, l);
    if (op == "<=") return !less_than(r, l);
    return !less_than(l, r);  // >=
  }

  Value repeat(const Value& seq, int64_t n) const {
    if (n < 0) n = 0;
    if (seq.is_string()) {
      check_string_size(seq.as_string().size() * static_cast<size_t>(std::min<int64_t>(n, 1 << 30)),
                        opts_);
      std::string out;
      for (int64_t i = 0; i < n; ++i) out += seq.as_string();
      return Value(std::move(out));
    }
    const List& l = seq.as_list();
    check_list_size(l.size() * static_cast<size_t>(std::min<int64_t>(n, 1 << 30)), opts_);
    List out;
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), l.begin(), l.end());
    return Value(std::move(out));
  }

  Value binary(const std::string& op, const Value& l, const Value& r) const {
    if (op == "~") {
      std::string s = l.str() + r.str();
      check_string_size(s.size(), opts_);
      return Value(std::move(s));
    }
    if (l.is_undefined()) throw Error(l.undefined_hint());
    if (r.is_undefined()) throw Error(r.undefined_hint());
    if (op == "+") {
      if (l.is_string() && r.is_string()) {
        check_string_size(l.as_string().size() + r.as_string().size(), opts_);
        return Value(l.as_string() + r.as_string());
      }
      if (l.is_list() && r.is_list()) {
        check_list_size(l.as_list().size() + r.as_list().size(), opts_);
        List out = l.as_list();
        out.insert(out.end(), r.as_list().begin(), r.as_list().end());
        return Value(std::move(out));
      }
    }
    if (op == "*") {
      if ((l.is_string() || l.is_list()) && r.is_int()) return repeat(l, r.as_int());
      if (l.is_int() && (r.is_string() || r.is_list())) return repeat(r, l.as_int());
    }
    if (!l.is_number() || !r.is_number()) {
      if (op == "+" && l.is_string())
        throw Error("can only concatenate str (not \"" + r.type_name() + "\") to str");
      throw Error("unsupported operand type(s) for " + op + ": '" + l.type_name() + "' and '" +
                  r.type_name() + "'");
    }
    const bool floats = l.kind() == Value::Kind::kFloat || r.kind() == Value::Kind::kFloat;
    if (op == "/") {
      if (r.as_float() == 0.0) throw Error("division by zero");
      return Value(l.as_float() / r.as_float());
    }
    if (floats) {
      const double a = l.as_float(), b = r.as_float();
      if (op == "+") return Value(a + b);
      if (op == "-") return Value(a - b);
      if (op == "*") return Value(a * b);
      if (op == "**") return Value(std::pow(a, b));
      if (b == 0.0) throw Error("float division by zero");
      if (op == "//") return Value(std::floor(a / b));
      double m = std::fmod(a, b);  // Python: the result has the divisor's sign
      if (m != 0.0 && ((m < 0) != (b < 0))) m += b;
      return Value(m);
    }
    const int64_t a = l.as_int(), b = r.as_int();
    int64_t out = 0;
    if (op == "+") {
      if (__builtin_add_overflow(a, b, &out)) throw Error("integer overflow");
      return Value(out);
    }
    if (op == "-") {
      if (__builtin_sub_overflow(a, b, &out)) throw Error("integer overflow");
      return Value(out);
    }
    if (op == "*") {
      if (__builtin_mul_overflow(a, b, &out)) throw Error("integer overflow");
      return Value(out);
    }
    if (op == "**") {
      if (b < 0) return Value(std::pow(static_cast<double>(a), static_cast<double>(b)));
      int64_t result = 1;
      for (int64_t i = 0; i < b; ++i) {
        if (__builtin_mul_overflow(result, a, &result)) throw Error("integer overflow");
        if (result == 0 || result == 1) break;  // further factors change nothing... unless -1
      }
      if (a == -1) result = (b % 2 == 0) ? 1 : -1;
      return Value(result);
    }
    if (b == 0) throw Error("integer division or modulo by zero");
    if (a == INT64_MIN && b == -1) throw Error("integer overflow");
    int64_t q = a / b, m = a % b;
    if (m != 0 && ((m < 0) != (b < 0))) {  // floor toward negative infinity, like Python
      --q;
      m += b;
    }
    return Value(op == "//" ? q : m);
  }

  const std::string& name_;
  const RenderOptions& opts_;
  std::vector<Frame> frames_;
  int64_t steps_ = 0;
  int call_depth_ = 0;
};

}  // namespace

Template::Template(const std::string& source, std::string name) : name_(std::move(name)) {
  try {
    body_ = std::make_shared<const Body>(parse_template(source, name_));
  } catch (const TemplateError&) {
    throw;
  } catch (const Error& e) {
    throw TemplateError(e.what());
  }
}

std::string Template::render(const Value& context, const RenderOptions& options) const {
  try {
    return Renderer(name_, options).run(*body_, context);
  } catch (const TemplateError&) {
    throw;
  } catch (const Error& e) {
    throw TemplateError("jinja: " + name_ + ": " + e.what());
  }
}

std::string Template::render(const nlohmann::ordered_json& context,
                             const RenderOptions& options) const {
  Value v;
  try {
    v = Value::from_json(context);
  } catch (const Error& e) {
    throw TemplateError("jinja: " + name_ + ": context: " + e.what());
  }
  return render(v, options);
}

}  // namespace qserve::jinja
