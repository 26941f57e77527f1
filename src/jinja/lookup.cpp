// Attribute, item and slice lookup with Jinja's rules, and the Python methods of str, dict
// and list that templates call (what obj.name finds).
#include "jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include "core/error.h"
#include "jinja/py_string.h"

namespace qserve::jinja {

// --- arguments -------------------------------------------------------------------------------

Value ArgReader::get(size_t pos, const char* name, Value def) {
  used_.emplace_back(name);
  for (auto& [k, v] : args_.keyword) {
    if (k == name) {
      if (pos < args_.positional.size())
        throw Error(fn_ + "() got multiple values for argument '" + name + "'");
      return v;
    }
  }
  if (pos < args_.positional.size()) return args_.positional[pos];
  return def;
}

bool ArgReader::has(size_t pos, const char* name) const {
  if (pos < args_.positional.size()) return true;
  for (const auto& kv : args_.keyword)
    if (kv.first == name) return true;
  return false;
}

void ArgReader::done(size_t max_pos) const {
  if (args_.positional.size() > max_pos) {
    throw Error(fn_ + "() takes at most " + std::to_string(max_pos) + " argument" +
                (max_pos == 1 ? "" : "s") + " (" + std::to_string(args_.positional.size()) +
                " given)");
  }
  for (const auto& kv : args_.keyword) {
    if (std::find(used_.begin(), used_.end(), kv.first) == used_.end())
      throw Error(fn_ + "() got an unexpected keyword argument '" + kv.first + "'");
  }
}

std::string require_string(const Value& v, const std::string& what) {
  if (!v.is_string()) throw Error(what + " must be a string, not " + v.type_name());
  return v.as_string();
}

std::optional<std::string> optional_string(const Value& v, const std::string& what) {
  if (v.is_undefined() || v.is_none()) return std::nullopt;
  return require_string(v, what);
}

int64_t require_int(const Value& v, const std::string& what) {
  if (!v.is_int()) throw Error(what + " must be an integer, not " + v.type_name());
  return v.as_int();
}

void check_string_size(size_t bytes, const RenderOptions& opts) {
  if (bytes > opts.max_output_bytes)
    throw Error("string of " + std::to_string(bytes) + " bytes exceeds the limit of " +
                std::to_string(opts.max_output_bytes));
}

void check_list_size(size_t items, const RenderOptions& opts) {
  if (items > opts.max_list_items)
    throw Error("list of " + std::to_string(items) + " items exceeds the limit of " +
                std::to_string(opts.max_list_items));
}

namespace {

[[noreturn]] void raise_undefined(const Value& v) {
  throw Error(v.undefined_hint());
}

std::string object_name(const Value& v) {
  if (v.is_none()) return "'None'";
  // Appends rather than `"'" + std::string&&`: GCC 12 -O3 warns falsely (-Wrestrict) on that.
  std::string out = "'";
  out.append(v.type_name()).append(" object'");
  return out;
}

// Python's str.startswith/endswith with a str or a tuple (list) of them.
bool affix_match(const std::string& s, const Value& affix, bool prefix, const std::string& fn) {
  auto one = [&](const Value& a) {
    const std::string x = require_string(a, fn + "() argument");
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0
                  : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) {
    for (const Value& a : affix.as_list())
      if (one(a)) return true;
    return false;
  }
  return one(affix);
}

// Python's slice index normalization (like PySlice_AdjustIndices).
struct SliceRange {
  int64_t start, stop, step;
};

SliceRange adjust_slice(int64_t len, const Value& start, const Value& stop, const Value& step) {
  auto given = [](const Value& v) { return !v.is_undefined() && !v.is_none(); };
  const int64_t st = given(step) ? require_int(step, "slice step") : 1;
  if (st == 0) throw Error("slice step cannot be zero");
  int64_t b = 0, e = 0;
  if (st > 0) {
    b = given(start) ? require_int(start, "slice index") : 0;
    e = given(stop) ? require_int(stop, "slice index") : len;
    if (b < 0) b = std::max<int64_t>(0, b + len);
    if (e < 0) e = std::max<int64_t>(0, e + len);
    b = std::min(b, len);
    e = std::min(e, len);
  } else {
    b = given(start) ? require_int(start, "slice index") : len - 1;
    e = given(stop) ? require_int(stop, "slice index") : -1 - len;
    if (b < 0) b = std::max<int64_t>(-1, b + len);
    if (e < 0) e = std::max<int64_t>(-1, e + len);
    b = std::min(b, len - 1);
    e = std::min(e, len - 1);
  }
  return {b, e, st};
}

template <typename T>
std::vector<T> take_slice(const std::vector<T>& items, const SliceRange& r) {
  std::vector<T> out;
  if (r.step > 0) {
    for (int64_t i = r.start; i < r.stop; i += r.step) out.push_back(items[static_cast<size_t>(i)]);
  } else {
    for (int64_t i = r.start; i > r.stop; i += r.step) out.push_back(items[static_cast<size_t>(i)]);
  }
  return out;
}

Value bound(const Value& self, const std::string& name,
            std::function<Value(const Value&, CallArgs&)> fn) {
  return Value::callable(name, [self, fn = std::move(fn)](CallArgs& a) { return fn(self, a); });
}

Value string_method(const Value& self, const std::string& name, const RenderOptions& opts) {
  using Fn = std::function<Value(const std::string&, ArgReader&)>;
  auto make = [&](Fn fn) {
    return bound(self, name, [name, fn = std::move(fn)](const Value& s, CallArgs& a) {
      ArgReader r(a, "str." + name);
      return fn(s.as_string(), r);
    });
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip", right = name != "lstrip";
    return make([left, right](const std::string& s, ArgReader& r) {
      const auto chars = optional_string(r.get(0, "chars"), "strip chars");
      r.done(1);
      return Value(py_strip(s, chars, left, right));
    });
  }
  if (name == "split") {
    return make([](const std::string& s, ArgReader& r) {
      const auto sep = optional_string(r.get(0, "sep"), "split separator");
      const int64_t maxsplit = require_int(r.get(1, "maxsplit", Value(-1)), "maxsplit");
      r.done(2);
      if (sep && sep->empty()) throw Error("empty separator");
      List out;
      for (std::string& p : py_split(s, sep, maxsplit)) out.emplace_back(std::move(p));
      return Value(std::move(out));
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    return make([name](const std::string& s, ArgReader& r) {
      r.done(0);
      if (name == "upper") return Value(py_upper(s));
      if (name == "lower") return Value(py_lower(s));
      if (name == "title") return Value(py_title(s));
      return Value(py_capitalize(s));
    });
  }
  if (name == "replace") {
    return make([&opts](const std::string& s, ArgReader& r) {
      const std::string old_s = require_string(r.get(0, "old"), "replace() argument 1");
      const std::string new_s = require_string(r.get(1, "new"), "replace() argument 2");
      const int64_t count = require_int(r.get(2, "count", Value(-1)), "replace count");
      r.done(3);
      if (new_s.size() > old_s.size())
        check_string_size(s.size() + (s.size() + 1) * (new_s.size() - old_s.size()), opts);
      return Value(py_replace(s, old_s, new_s, count));
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool prefix = name == "startswith";
    return make([prefix, name](const std::string& s, ArgReader& r) {
      const Value affix = r.get(0, "prefix");
      r.done(1);
      if (affix.is_undefined()) throw Error(name + "() takes at least 1 argument (0 given)");
      return Value(affix_match(s, affix, prefix, name));
    });
  }
  if (name == "removeprefix" || name == "removesuffix") {
    const bool prefix = name == "removeprefix";
    return make([prefix, name](const std::string& s, ArgReader& r) {
      const Value affix = r.get(0, "prefix");
      r.done(1);
      const std::string a = require_string(affix, name + "() argument");
      if (!affix_match(s, affix, prefix, name)) return Value(s);
      return Value(prefix ? s.substr(a.size()) : s.substr(0, s.size() - a.size()));
    });
  }
  if (name == "find" || name == "rfind" || name == "count") {
    return make([name](const std::string& s, ArgReader& r) {
      const std::string sub = require_string(r.get(0, "sub"), name + "() argument");
      r.done(1);
      if (name == "count") {
        if (sub.empty()) return Value(static_cast<int64_t>(py_len(s) + 1));
        int64_t n = 0;
        for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size()))
          ++n;
        return Value(n);
      }
      const size_t at = name == "find" ? s.find(sub) : s.rfind(sub);
      if (at == std::string::npos) return Value(static_cast<int64_t>(-1));
      return Value(static_cast<int64_t>(py_len(s.substr(0, at))));  // in characters
    });
  }
  if (name == "join") {
    return make([&opts](const std::string& s, ArgReader& r) {
      const Value items = r.get(0, "iterable");
      r.done(1);
      std::string out;
      bool first = true;
      for (const Value& v : iterate(items)) {
        if (!v.is_string())
          throw Error("sequence item: expected str instance, " + v.type_name() + " found");
        if (!first) out += s;
        out += v.as_string();
        first = false;
        check_string_size(out.size(), opts);
      }
      return Value(std::move(out));
    });
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum" ||
      name == "isupper" || name == "islower") {
    return make([name](const std::string& s, ArgReader& r) {
      r.done(0);
      if (s.empty()) return Value(false);
      if (name == "isspace") {
        for (const std::string& c : py_chars(s)) {
          uint32_t cp = 0;
          size_t n = 0;
          if (!utf8_decode(c, 0, &cp, &n) || !py_isspace(cp)) return Value(false);
        }
        return Value(true);
      }
      if (name == "isupper" || name == "islower") {
        const bool up = name == "isupper";
        bool cased = false;
        for (char c : s) {
          const auto u = static_cast<unsigned char>(c);
          if (std::isalpha(u)) {
            cased = true;
            if ((std::isupper(u) != 0) != up) return Value(false);
          }
        }
        return Value(cased);
      }
      // ASCII classes only (see py_string.h).
      for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        const bool ok = name == "isdigit"   ? std::isdigit(u) != 0
                        : name == "isalpha" ? std::isalpha(u) != 0
                                            : std::isalnum(u) != 0;
        if (!ok) return Value(false);
      }
      return Value(true);
    });
  }
  return Value::undefined("'str object' has no attribute '" + name + "'");
}

Value dict_method(const Value& self, const std::string& name) {
  if (name == "items" || name == "keys" || name == "values") {
    return bound(self, name, [name](const Value& d, CallArgs& a) {
      ArgReader r(a, "dict." + name);
      r.done(0);
      List out;
      for (const auto& [k, v] : d.as_dict().items()) {
        if (name == "items")
          out.push_back(Value::tuple(List{Value(k), v}));
        else if (name == "keys")
          out.emplace_back(k);
        else
          out.push_back(v);
      }
      return Value(std::move(out));
    });
  }
  if (name == "get") {
    return bound(self, name, [](const Value& d, CallArgs& a) {
      ArgReader r(a, "dict.get");
      const Value key = r.get(0, "key");
      const Value def = r.get(1, "default", Value::none());
      r.done(2);
      if (!key.is_string()) return def;
      const Value* v = d.as_dict().find(key.as_string());
      return v ? *v : def;
    });
  }
  static const char* const kMutators[] = {"pop",        "popitem", "update",  "clear",
                                          "setdefault", "copy",    "fromkeys"};
  for (const char* m : kMutators) {
    if (name == m) {
      return bound(self, name, [name](const Value&, CallArgs&) -> Value {
        throw Error("dict." + name + "() is not available: templates cannot modify dicts");
      });
    }
  }
  return Value();  // not a method
}

bool is_list_mutator(const std::string& name) {
  static const char* const kMutators[] = {"append", "extend", "insert", "pop",
                                          "remove", "clear",  "sort",   "reverse"};
  for (const char* m : kMutators)
    if (name == m) return true;
  return false;
}

}  // namespace

// --- lookup ----------------------------------------------------------------------------------

size_t py_length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return py_len(v.as_string());
    case Value::Kind::kList:
      return v.as_list().size();
    case Value::Kind::kDict:
      return v.as_dict().size();
    default:
      throw Error("object of type '" + v.type_name() + "' has no len()");
  }
}

List iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
      return v.as_list();
    case Value::Kind::kDict: {
      List keys;
      for (const auto& kv : v.as_dict().items()) keys.emplace_back(kv.first);
      return keys;
    }
    case Value::Kind::kString: {
      List chars;
      for (std::string& c : py_chars(v.as_string())) chars.emplace_back(std::move(c));
      return chars;
    }
    default:
      throw Error("'" + v.type_name() + "' object is not iterable");
  }
}

Value get_attr(const Value& obj, const std::string& name, const RenderOptions& opts) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      raise_undefined(obj);
    case Value::Kind::kDict: {
      Value m = dict_method(obj, name);
      if (!m.is_undefined()) return m;
      if (const Value* v = obj.as_dict().find(name)) return *v;
      break;
    }
    case Value::Kind::kNamespace:
      if (const Value* v = obj.namespace_attrs().find(name)) return *v;
      break;
    case Value::Kind::kString:
      return string_method(obj, name, opts);
    case Value::Kind::kList:
      if (is_list_mutator(name)) {
        return bound(obj, name, [name](const Value&, CallArgs&) -> Value {
          throw Error("list." + name + "() is not available: templates cannot modify lists");
        });
      }
      break;
    default:
      break;
  }
  return Value::undefined(object_name(obj) + " has no attribute '" + name + "'");
}

Value get_item(const Value& obj, const Value& key, const RenderOptions& opts) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      raise_undefined(obj);
    case Value::Kind::kDict:
      if (key.is_string()) {
        if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
      }
      break;
    case Value::Kind::kList:
    case Value::Kind::kString:
      if (key.is_int()) {
        const bool is_list = obj.is_list();
        std::vector<std::string> chars;
        if (!is_list) chars = py_chars(obj.as_string());
        const int64_t len = static_cast<int64_t>(is_list ? obj.as_list().size() : chars.size());
        int64_t i = key.as_int();
        if (i < 0) i += len;
        if (i >= 0 && i < len) {
          return is_list ? obj.as_list()[static_cast<size_t>(i)]
                         : Value(chars[static_cast<size_t>(i)]);
        }
        return Value::undefined(object_name(obj) + " has no element " + key.repr());
      }
      break;
    default:
      break;
  }
  if (key.is_string()) return get_attr(obj, key.as_string(), opts);
  return Value::undefined(object_name(obj) + " has no element " + key.repr());
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) raise_undefined(obj);
  if (obj.is_list()) {
    const List& l = obj.as_list();
    return Value(take_slice(l, adjust_slice(static_cast<int64_t>(l.size()), start, stop, step)));
  }
  if (obj.is_string()) {
    const std::vector<std::string> chars = py_chars(obj.as_string());
    std::string out;
    for (const std::string& c :
         take_slice(chars, adjust_slice(static_cast<int64_t>(chars.size()), start, stop, step)))
      out += c;
    return Value(std::move(out));
  }
  throw Error("'" + obj.type_name() + "' object is not subscriptable");
}

}  // namespace qserve::jinja
