// The values a Jinja template computes with, modelled on the Python objects Jinja sees when
// transformers renders a chat template: None, bool, int, float, str, list, dict, namespace(),
// callables, and Jinja's default Undefined (renders empty, is falsy, raises when used further).
// Lists and dicts are immutable and shared (transformers renders in an ImmutableSandbox, so a
// template can never change them); a namespace is the one mutable object.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace qserve::jinja {

class Value;
using List = std::vector<Value>;

inline constexpr int kMaxValueDepth = 256;

class Dict;
struct CallArgs;
struct Callable;

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };

  Value() = default;  // Undefined
  static Value undefined(std::string hint) {
    Value v;
    v.str_ = std::move(hint);
    return v;
  }
  static Value none() { return Value(Kind::kNone); }
  Value(bool b) : kind_(Kind::kBool), int_(b ? 1 : 0) {}  // NOLINT: implicit like Python's
  Value(int64_t i) : kind_(Kind::kInt), int_(i) {}        // NOLINT
  Value(int i) : kind_(Kind::kInt), int_(i) {}            // NOLINT
  Value(double d) : kind_(Kind::kFloat), float_(d) {}     // NOLINT
  Value(std::string s) : kind_(Kind::kString), str_(std::move(s)) {}  // NOLINT
  Value(const char* s) : kind_(Kind::kString), str_(s) {}             // NOLINT
  // Containers record their nesting depth and refuse to nest deeper than kMaxValueDepth, so
  // printing, comparing or destroying a value never recurses without bound.
  Value(List l);  // NOLINT
  Value(Dict d);  // NOLINT
  // A Python tuple: a list that prints as (a, b) and never equals a list.
  static Value tuple(List l);
  static Value make_namespace(Dict d);
  static Value callable(std::string name, std::function<Value(CallArgs&)> fn);

  // From JSON as Python's json.loads would give it (objects keep their key order). Throws
  // qserve::Error for JSON nested deeper than kMaxValueDepth.
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_int() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }  // bool is an int
  bool is_number() const { return is_int() || kind_ == Kind::kFloat; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_mapping() const { return kind_ == Kind::kDict || kind_ == Kind::kNamespace; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  int64_t as_int() const { return kind_ == Kind::kFloat ? static_cast<int64_t>(float_) : int_; }
  double as_float() const { return kind_ == Kind::kFloat ? float_ : static_cast<double>(int_); }
  bool as_bool_raw() const { return int_ != 0; }
  const std::string& as_string() const { return str_; }  // kString (or an Undefined's hint)
  const List& as_list() const { return *list_; }
  const Dict& as_dict() const { return *dict_; }
  Dict& namespace_attrs() const { return *dict_; }  // kNamespace only: the mutable object
  const Callable& as_callable() const { return *callable_; }
  // For an Undefined: why it is undefined ("'foo' is undefined"), for error messages.
  const std::string& undefined_hint() const { return str_; }
  int depth() const { return depth_; }
  // Whether a namespace occurs in this value (namespaces may not nest, so no cycles exist).
  bool contains_namespace() const;

  // Python's bool(x); Undefined is falsy.
  bool truthy() const;
  // Python's str(x), which is what {{ x }} prints; Undefined prints "".
  std::string str() const;
  // Python's repr(x) (how lists and dicts print their elements).
  std::string repr() const;
  // The Python type name, for error messages ("str", "dict object" style is added by callers).
  std::string type_name() const;

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::kUndefined;
  int depth_ = 0;
  bool tuple_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  std::shared_ptr<const List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Callable> callable_;
};

// An insertion-ordered str -> value map (Python dicts keep insertion order, and tojson/items()
// must reproduce it).
class Dict {
 public:
  const Value* find(const std::string& key) const;
  Value* find(const std::string& key);
  void set(const std::string& key, Value v);
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }
  size_t size() const { return items_.size(); }

 private:
  std::vector<std::pair<std::string, Value>> items_;
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// A builtin function, a bound method or a macro. `call` may throw qserve::Error; the renderer
// adds the position of the call.
struct Callable {
  std::string name;
  std::function<Value(CallArgs&)> call;
};

// Python's ==, with int/float/bool comparing numerically.
bool equals(const Value& a, const Value& b);
// Python's <; throws qserve::Error for types Python cannot order.
bool less_than(const Value& a, const Value& b);

// Python's repr() of a float: the shortest digits that round-trip, in Python's layout
// ("1.0", "0.1", "1e-05", "1e+16", "inf").
std::string python_float_repr(double d);
// Python's repr() of a str.
std::string python_str_repr(const std::string& s);

struct JsonDumpOptions {
  int indent = -1;  // -1: None (one line, ", " and ": " separators)
  bool sort_keys = false;
  std::string item_separator = ", ", key_separator = ": ";
};
// json.dumps(x, ensure_ascii=False, ...) as transformers' tojson filter calls it. Throws
// qserve::Error for values JSON cannot hold (Undefined, callables, namespaces).
std::string to_json(const Value& v, const JsonDumpOptions& opts);

}  // namespace qserve::jinja
