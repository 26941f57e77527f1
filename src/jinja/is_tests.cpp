// Jinja's tests (`x is defined`, `x is divisibleby 3`, ...).
#include "jinja/builtins.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <map>

#include "core/error.h"
#include "jinja/py_string.h"

namespace qserve::jinja {
// --- tests -----------------------------------------------------------------------------------

namespace {

using TestFn = std::function<bool(const Value&, ArgReader&)>;

bool plain_int(const Value& v) {
  return v.kind() == Value::Kind::kInt;
}

const std::map<std::string, TestFn>& tests() {
  static const std::map<std::string, TestFn> t = [] {
    std::map<std::string, TestFn> m;
    auto no_args = [](std::function<bool(const Value&)> f) {
      return [f = std::move(f)](const Value& v, ArgReader& r) {
        r.done(0);
        return f(v);
      };
    };
    m["defined"] = no_args([](const Value& v) { return !v.is_undefined(); });
    m["undefined"] = no_args([](const Value& v) { return v.is_undefined(); });
    m["none"] = no_args([](const Value& v) { return v.is_none(); });
    m["boolean"] = no_args([](const Value& v) { return v.kind() == Value::Kind::kBool; });
    m["true"] =
        no_args([](const Value& v) { return v.kind() == Value::Kind::kBool && v.as_bool_raw(); });
    m["false"] =
        no_args([](const Value& v) { return v.kind() == Value::Kind::kBool && !v.as_bool_raw(); });
    m["integer"] = no_args(plain_int);
    m["float"] = no_args([](const Value& v) { return v.kind() == Value::Kind::kFloat; });
    m["number"] = no_args([](const Value& v) { return v.is_number(); });
    m["string"] = no_args([](const Value& v) { return v.is_string(); });
    m["mapping"] = no_args([](const Value& v) { return v.is_dict(); });
    m["sequence"] =
        no_args([](const Value& v) { return v.is_string() || v.is_list() || v.is_dict(); });
    m["iterable"] = no_args([](const Value& v) {
      return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
    });
    m["callable"] = no_args([](const Value& v) { return v.is_callable(); });
    // Jinja: str(value).islower() / .isupper(): some cased letter, none of the other case.
    auto cased = [](bool upper) {
      return [upper](const Value& v, ArgReader& r) {
        r.done(0);
        const std::string s = v.str();
        bool any = false;
        for (char c : s) {
          const auto u = static_cast<unsigned char>(c);
          if (!std::isalpha(u)) continue;
          any = true;
          if ((std::isupper(u) != 0) != upper) return false;
        }
        return any;
      };
    };
    m["lower"] = cased(false);
    m["upper"] = cased(true);
    // Jinja: value % 2 == 1, value % 2 == 0, value % num == 0 (floats allowed, Python modulo).
    auto remainder = [](const Value& v, const Value& d, const std::string& what) {
      if (!v.is_number() || !d.is_number())
        throw Error(what + " needs numbers, not " + v.type_name() + " and " + d.type_name());
      if (v.is_int() && d.is_int()) {
        if (d.as_int() == 0) throw Error("integer division or modulo by zero");
        if (d.as_int() == -1) return 0.0;
        int64_t rem = v.as_int() % d.as_int();
        if (rem != 0 && ((rem < 0) != (d.as_int() < 0))) rem += d.as_int();
        return static_cast<double>(rem);
      }
      if (d.as_float() == 0.0) throw Error("float modulo");
      double rem = std::fmod(v.as_float(), d.as_float());
      if (rem != 0.0 && ((rem < 0) != (d.as_float() < 0))) rem += d.as_float();
      return rem;
    };
    m["odd"] = [remainder](const Value& v, ArgReader& r) {
      r.done(0);
      return remainder(v, Value(2), "odd test") == 1.0;
    };
    m["even"] = [remainder](const Value& v, ArgReader& r) {
      r.done(0);
      return remainder(v, Value(2), "even test") == 0.0;
    };
    m["divisibleby"] = [remainder](const Value& v, ArgReader& r) {
      const Value d = r.get(0, "num");
      r.done(1);
      return remainder(v, d, "divisibleby") == 0.0;
    };
    auto cmp = [](std::function<bool(const Value&, const Value&)> f) {
      return [f = std::move(f)](const Value& v, ArgReader& r) {
        const Value other = r.get(0, "other");
        r.done(1);
        return f(v, other);
      };
    };
    m["eq"] = m["equalto"] = m["=="] =
        cmp([](const Value& a, const Value& b) { return equals(a, b); });
    m["ne"] = m["!="] = cmp([](const Value& a, const Value& b) { return !equals(a, b); });
    m["lt"] = m["lessthan"] = m["<"] = cmp(less_than);
    m["gt"] = m["greaterthan"] = m[">"] =
        cmp([](const Value& a, const Value& b) { return less_than(b, a); });
    m["le"] = m["<="] = cmp([](const Value& a, const Value& b) { return !less_than(b, a); });
    m["ge"] = m[">="] = cmp([](const Value& a, const Value& b) { return !less_than(a, b); });
    m["sameas"] = cmp([](const Value& a, const Value& b) {
      // Python's `is`: identity; for the singletons and small values templates compare with
      // it (none, true, false) equality of kind and value is what matters.
      return a.kind() == b.kind() && equals(a, b);
    });
    m["in"] = cmp([](const Value& a, const Value& b) {
      if (b.is_string()) {
        if (!a.is_string()) throw Error("'in <string>' requires string as left operand");
        return b.as_string().find(a.as_string()) != std::string::npos;
      }
      if (b.is_dict()) return a.is_string() && b.as_dict().find(a.as_string()) != nullptr;
      for (const Value& x : iterate(b))
        if (equals(a, x)) return true;
      return false;
    });
    return m;
  }();
  return t;
}

}  // namespace

bool has_test(const std::string& name) {
  return tests().count(name) != 0;
}

bool call_test(const std::string& name, const Value& input, CallArgs& args) {
  const auto it = tests().find(name);
  if (it == tests().end()) throw Error("no test named '" + name + "'");
  ArgReader r(args, name);
  return it->second(input, r);
}

}  // namespace qserve::jinja
