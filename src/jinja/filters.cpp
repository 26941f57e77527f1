// Jinja's filters as transformers' environment has them (tojson is its own version).
#include "jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include "core/error.h"
#include "jinja/py_string.h"

namespace qserve::jinja {
// --- filters ---------------------------------------------------------------------------------

namespace {

using FilterFn = std::function<Value(const Value&, ArgReader&, CallArgs&, const RenderOptions&)>;

// For sort/unique/min/max: strings compare case-insensitively unless case_sensitive.
Value sort_key(const Value& v, const Value& attribute, bool case_sensitive,
               const RenderOptions& opts) {
  Value k = v;
  if (!attribute.is_undefined() && !attribute.is_none()) {
    const std::string path = attribute.is_string() ? attribute.as_string() : attribute.str();
    for (const std::string& part : py_split(path, std::string("."), -1)) {
      bool numeric = !part.empty() && std::all_of(part.begin(), part.end(),
                                                  [](char c) { return c >= '0' && c <= '9'; });
      k = numeric && part.size() < 18
              ? get_item(k, Value(static_cast<int64_t>(std::stoll(part))), opts)
              : get_item(k, Value(part), opts);
      if (k.is_undefined()) break;
    }
  }
  if (!case_sensitive && k.is_string()) return Value(py_lower(k.as_string()));
  return k;
}

Value attribute_of(const Value& v, const Value& attribute, const RenderOptions& opts) {
  return sort_key(v, attribute, true, opts);
}

// select/reject/selectattr/rejectattr: args after the attribute are (test name, test args...).
Value select_filter(const Value& input, CallArgs& args, bool by_attr, bool keep,
                    const RenderOptions& opts) {
  size_t pos = 0;
  Value attr;
  if (by_attr) {
    if (args.positional.empty()) throw Error("selectattr/rejectattr need an attribute name");
    attr = args.positional[pos++];
  }
  std::string test;
  if (pos < args.positional.size()) test = require_string(args.positional[pos++], "test name");
  CallArgs test_args;
  test_args.positional.assign(args.positional.begin() + static_cast<std::ptrdiff_t>(pos),
                              args.positional.end());
  test_args.keyword = args.keyword;
  if (!test.empty() && !has_test(test)) throw Error("no test named '" + test + "'");
  List out;
  for (const Value& item : iterate(input)) {
    const Value subject = by_attr ? attribute_of(item, attr, opts) : item;
    bool ok = false;
    if (test.empty()) {
      ok = subject.truthy();
    } else {
      CallArgs a = test_args;
      ok = call_test(test, subject, a);
    }
    if (ok == keep) out.push_back(item);
  }
  return Value(std::move(out));
}

Value round_filter(const Value& v, ArgReader& r) {
  const int64_t precision = require_int(r.get(0, "precision", Value(0)), "round precision");
  const Value method_v = r.get(1, "method", Value("common"));
  r.done(2);
  const std::string method = require_string(method_v, "round method");
  if (!v.is_number()) throw Error("round() needs a number, not " + v.type_name());
  if (method == "common" && v.is_int() && precision >= 0) return Value(v.as_int());  // Python: int
  if (precision < -300 || precision > 300) throw Error("round precision out of range");
  // Negative precisions divide by an exact power of ten rather than multiply by an inexact one.
  const double scale = std::pow(10.0, static_cast<double>(precision < 0 ? -precision : precision));
  const double x = precision < 0 ? v.as_float() / scale : v.as_float() * scale;
  double y = 0;
  if (method == "common")
    y = std::nearbyint(x);  // Python's round(): half to even
  else if (method == "ceil")
    y = std::ceil(x);
  else if (method == "floor")
    y = std::floor(x);
  else
    throw Error("round method must be 'common', 'ceil' or 'floor'");
  const double rounded = precision < 0 ? y * scale : y / scale;
  if (method == "common" && v.is_int() && std::fabs(rounded) < 9.2e18)
    return Value(static_cast<int64_t>(rounded));  // round(int, -n) stays an int in Python
  return Value(rounded);
}

std::string indent_text(const std::string& s, const Value& width, bool first, bool blank) {
  const std::string pad = width.is_string()
                              ? width.as_string()
                              : std::string(static_cast<size_t>(std::clamp<int64_t>(
                                                require_int(width, "indent width"), 0, 1024)),
                                            ' ');
  std::string text = s + "\n";  // Jinja appends a newline, indents, and removes it again
  std::string out;
  size_t line_start = 0;
  bool first_line = true;
  while (line_start < text.size()) {
    size_t nl = text.find('\n', line_start);
    const std::string line = text.substr(line_start, nl - line_start);
    const bool is_blank = py_strip(line, std::nullopt, true, true).empty();
    if (!first_line || first) {
      if (blank || !is_blank) out += pad;
    }
    out += line + "\n";
    first_line = false;
    line_start = nl + 1;
  }
  out.pop_back();
  return out;
}

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> f = [] {
    std::map<std::string, FilterFn> m;
    auto simple = [](std::function<Value(const Value&)> fn) {
      return [fn = std::move(fn)](const Value& v, ArgReader& r, CallArgs&, const RenderOptions&) {
        r.done(0);
        return fn(v);
      };
    };
    m["upper"] = simple([](const Value& v) { return Value(py_upper(v.str())); });
    m["lower"] = simple([](const Value& v) { return Value(py_lower(v.str())); });
    m["capitalize"] = simple([](const Value& v) { return Value(py_capitalize(v.str())); });
    m["title"] = simple([](const Value& v) {
      // Jinja's title: words begin after whitespace, '-', '(', '{', '[' or '<'.
      std::string s = v.str(), out;
      bool word_start = true;
      for (char c : s) {
        const bool sep = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
                         c == '\v' || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        if (sep) {
          out += c;
          word_start = true;
        } else {
          out += word_start ? static_cast<char>(std::toupper(static_cast<unsigned char>(c)))
                            : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          word_start = false;
        }
      }
      return Value(out);
    });
    m["trim"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions&) {
      const auto chars = optional_string(r.get(0, "chars"), "trim chars");
      r.done(1);
      return Value(py_strip(v.str(), chars, true, true));
    };
    m["length"] = m["count"] =
        simple([](const Value& v) { return Value(static_cast<int64_t>(py_length(v))); });
    m["string"] = simple([](const Value& v) { return Value(v.str()); });
    m["safe"] = simple([](const Value& v) { return v; });
    m["list"] = simple([](const Value& v) { return Value(iterate(v)); });
    m["first"] = simple([](const Value& v) {
      const List l = iterate(v);
      return l.empty() ? Value::undefined("No first item, sequence was empty.") : l.front();
    });
    m["last"] = simple([](const Value& v) {
      const List l = iterate(v);
      return l.empty() ? Value::undefined("No last item, sequence was empty.") : l.back();
    });
    m["reverse"] = simple([](const Value& v) {
      if (v.is_string()) {
        std::vector<std::string> c = py_chars(v.as_string());
        std::string out;
        for (auto it = c.rbegin(); it != c.rend(); ++it) out += *it;
        return Value(out);
      }
      List l = iterate(v);
      std::reverse(l.begin(), l.end());
      return Value(std::move(l));
    });
    m["abs"] = simple([](const Value& v) {
      if (v.kind() == Value::Kind::kFloat) return Value(std::fabs(v.as_float()));
      if (v.is_int()) {
        if (v.as_int() == INT64_MIN) throw Error("integer overflow in abs()");
        return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
      }
      throw Error("bad operand type for abs(): '" + v.type_name() + "'");
    });
    m["items"] = simple([](const Value& v) {
      if (v.is_undefined()) return Value(List{});
      if (!v.is_dict()) throw Error("items filter needs a mapping, not " + v.type_name());
      List out;
      for (const auto& [k, x] : v.as_dict().items()) out.push_back(Value::tuple(List{Value(k), x}));
      return Value(std::move(out));
    });
    m["default"] = m["d"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions&) {
      const Value def = r.get(0, "default_value", Value(""));
      const bool boolean = r.get(1, "boolean", Value(false)).truthy();
      r.done(2);
      if (v.is_undefined() || (boolean && !v.truthy())) return def;
      return v;
    };
    m["join"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      const std::string sep = r.get(0, "d", Value("")).str();
      const Value attribute = r.get(1, "attribute");
      r.done(2);
      std::string out;
      bool first = true;
      for (const Value& x : iterate(v)) {
        if (!first) out += sep;
        out += attribute.is_undefined() ? x.str() : attribute_of(x, attribute, o).str();
        first = false;
        check_string_size(out.size(), o);
      }
      return Value(std::move(out));
    };
    m["replace"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      const std::string old_s = r.get(0, "old").str();
      const std::string new_s = r.get(1, "new").str();
      const Value count = r.get(2, "count", Value::none());
      r.done(3);
      const std::string s = v.str();
      if (new_s.size() > old_s.size())
        check_string_size(s.size() + (s.size() + 1) * (new_s.size() - old_s.size()), o);
      return Value(py_replace(s, old_s, new_s, count.is_none() ? -1 : require_int(count, "count")));
    };
    m["int"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions&) {
      const Value def = r.get(0, "default", Value(0));
      const int64_t base = require_int(r.get(1, "base", Value(10)), "int base");
      r.done(2);
      if (v.is_undefined()) throw Error(v.undefined_hint());  // int(Undefined) raises in Jinja
      if (v.is_int()) return Value(v.as_int());
      if (v.kind() == Value::Kind::kFloat) {
        const double d = v.as_float();
        if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return def;
        return Value(static_cast<int64_t>(d));
      }
      if (v.is_string()) {
        const std::string s = py_strip(v.as_string(), std::nullopt, true, true);
        if (base < 2 || base > 36) return def;
        try {
          size_t used = 0;
          const long long x = std::stoll(s, &used, static_cast<int>(base));
          if (used == s.size()) return Value(static_cast<int64_t>(x));
        } catch (const std::exception&) {
        }
        // Jinja falls back to int(float(s)) for base 10.
        try {
          size_t used = 0;
          const double d = std::stod(s, &used);
          if (used == s.size() && std::isfinite(d) && std::fabs(d) < 9.2e18)
            return Value(static_cast<int64_t>(d));
        } catch (const std::exception&) {
        }
      }
      return def;
    };
    m["float"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions&) {
      const Value def = r.get(0, "default", Value(0.0));
      r.done(1);
      if (v.is_undefined()) throw Error(v.undefined_hint());
      if (v.is_number()) return Value(v.as_float());
      if (v.is_string()) {
        const std::string s = py_strip(v.as_string(), std::nullopt, true, true);
        try {
          size_t used = 0;
          const double d = std::stod(s, &used);
          if (used == s.size()) return Value(d);
        } catch (const std::exception&) {
        }
      }
      return def;
    };
    m["tojson"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      // transformers' tojson: json.dumps(x, ensure_ascii=False, indent, separators, sort_keys)
      const Value ensure_ascii = r.get(0, "ensure_ascii", Value(false));
      const Value indent = r.get(1, "indent", Value::none());
      const Value separators = r.get(2, "separators", Value::none());
      const Value sort_keys = r.get(3, "sort_keys", Value(false));
      r.done(4);
      if (ensure_ascii.truthy())
        throw Error("tojson(ensure_ascii=True) is not supported by qserve's Jinja subset");
      JsonDumpOptions jo;
      jo.sort_keys = sort_keys.truthy();
      if (!indent.is_none()) {
        jo.indent = static_cast<int>(std::clamp<int64_t>(require_int(indent, "indent"), 0, 64));
        jo.item_separator = ",";
      }
      if (!separators.is_none()) {
        if (!separators.is_list() || separators.as_list().size() != 2)
          throw Error("tojson separators must be an (item, key) pair");
        jo.item_separator = require_string(separators.as_list()[0], "separator");
        jo.key_separator = require_string(separators.as_list()[1], "separator");
      }
      std::string out = to_json(v, jo);
      check_string_size(out.size(), o);
      return Value(std::move(out));
    };
    m["map"] = [](const Value& v, ArgReader&, CallArgs& args, const RenderOptions& o) {
      List out;
      const List items = iterate(v);
      for (const auto& kv : args.keyword) {
        if (kv.first != "attribute" && kv.first != "default")
          throw Error("map() got an unexpected keyword argument '" + kv.first + "'");
      }
      const auto attr_it = std::find_if(args.keyword.begin(), args.keyword.end(),
                                        [](const auto& kv) { return kv.first == "attribute"; });
      if (attr_it != args.keyword.end()) {
        const auto def_it = std::find_if(args.keyword.begin(), args.keyword.end(),
                                         [](const auto& kv) { return kv.first == "default"; });
        for (const Value& x : items) {
          Value a = attribute_of(x, attr_it->second, o);
          if (a.is_undefined() && def_it != args.keyword.end()) a = def_it->second;
          out.push_back(a);
        }
        return Value(std::move(out));
      }
      if (args.positional.empty()) throw Error("map() needs a filter name or attribute=");
      const std::string name = require_string(args.positional[0], "map filter name");
      if (!has_filter(name)) throw Error("no filter named '" + name + "'");
      for (const Value& x : items) {
        CallArgs a;
        a.positional.assign(args.positional.begin() + 1, args.positional.end());
        out.push_back(call_filter(name, x, a, o));
      }
      return Value(std::move(out));
    };
    m["select"] = [](const Value& v, ArgReader&, CallArgs& a, const RenderOptions& o) {
      return select_filter(v, a, false, true, o);
    };
    m["reject"] = [](const Value& v, ArgReader&, CallArgs& a, const RenderOptions& o) {
      return select_filter(v, a, false, false, o);
    };
    m["selectattr"] = [](const Value& v, ArgReader&, CallArgs& a, const RenderOptions& o) {
      return select_filter(v, a, true, true, o);
    };
    m["rejectattr"] = [](const Value& v, ArgReader&, CallArgs& a, const RenderOptions& o) {
      return select_filter(v, a, true, false, o);
    };
    m["attr"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      const std::string name = require_string(r.get(0, "name"), "attr name");
      r.done(1);
      // Python's getattr only: a dict's keys are not its attributes (its methods are).
      if (v.is_dict()) {
        const Value method = get_attr(Value(Dict{}), name, o);
        if (method.is_undefined())
          return Value::undefined("'dict object' has no attribute '" + name + "'");
        return get_attr(v, name, o);
      }
      return get_attr(v, name, o);
    };
    m["sort"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      const bool reverse = r.get(0, "reverse", Value(false)).truthy();
      const bool cs = r.get(1, "case_sensitive", Value(false)).truthy();
      const Value attribute = r.get(2, "attribute");
      r.done(3);
      List l = iterate(v);
      std::vector<std::pair<Value, size_t>> keyed;
      for (size_t i = 0; i < l.size(); ++i) keyed.emplace_back(sort_key(l[i], attribute, cs, o), i);
      std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
        return reverse ? less_than(b.first, a.first) : less_than(a.first, b.first);
      });
      List out;
      for (const auto& k : keyed) out.push_back(l[k.second]);
      return Value(std::move(out));
    };
    m["unique"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      const bool cs = r.get(0, "case_sensitive", Value(false)).truthy();
      const Value attribute = r.get(1, "attribute");
      r.done(2);
      List out, seen;
      for (const Value& x : iterate(v)) {
        const Value k = sort_key(x, attribute, cs, o);
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, k); })) {
          seen.push_back(k);
          out.push_back(x);
        }
      }
      return Value(std::move(out));
    };
    auto extreme = [](bool want_max) {
      return [want_max](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
        const bool cs = r.get(0, "case_sensitive", Value(false)).truthy();
        const Value attribute = r.get(1, "attribute");
        r.done(2);
        const List l = iterate(v);
        if (l.empty()) return Value::undefined("No aggregated item, sequence was empty.");
        size_t best = 0;
        for (size_t i = 1; i < l.size(); ++i) {
          const Value a = sort_key(l[i], attribute, cs, o), b = sort_key(l[best], attribute, cs, o);
          if (want_max ? less_than(b, a) : less_than(a, b)) best = i;
        }
        return l[best];
      };
    };
    m["max"] = extreme(true);
    m["min"] = extreme(false);
    m["sum"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      const Value attribute = r.get(0, "attribute");
      Value total = r.get(1, "start", Value(0));
      r.done(2);
      for (const Value& x : iterate(v)) {
        const Value a = attribute.is_undefined() ? x : attribute_of(x, attribute, o);
        if (!a.is_number() || !total.is_number())
          throw Error("sum() needs numbers, got " + a.type_name());
        if (a.kind() == Value::Kind::kFloat || total.kind() == Value::Kind::kFloat) {
          total = Value(total.as_float() + a.as_float());
        } else {
          int64_t s = 0;
          if (__builtin_add_overflow(total.as_int(), a.as_int(), &s))
            throw Error("integer overflow in sum()");
          total = Value(s);
        }
      }
      return total;
    };
    m["round"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions&) {
      return round_filter(v, r);
    };
    m["indent"] = [](const Value& v, ArgReader& r, CallArgs&, const RenderOptions& o) {
      const Value width = r.get(0, "width", Value(4));
      const bool first = r.get(1, "first", Value(false)).truthy();
      const bool blank = r.get(2, "blank", Value(false)).truthy();
      r.done(3);
      const std::string s = v.str();
      const size_t lines = static_cast<size_t>(std::count(s.begin(), s.end(), '\n')) + 1;
      const size_t pad = width.is_string() ? width.as_string().size()
                         : width.is_int()
                             ? static_cast<size_t>(std::clamp<int64_t>(width.as_int(), 0, 1024))
                             : 0;
      check_string_size(s.size() + lines * pad, o);
      return Value(indent_text(s, width, first, blank));
    };
    return m;
  }();
  return f;
}

}  // namespace

bool has_filter(const std::string& name) {
  return filters().count(name) != 0;
}

Value call_filter(const std::string& name, const Value& input, CallArgs& args,
                  const RenderOptions& opts) {
  const auto it = filters().find(name);
  if (it == filters().end()) throw Error("no filter named '" + name + "'");
  ArgReader r(args, name);
  return it->second(input, r, args, opts);
}

}  // namespace qserve::jinja
