// Jinja's filters (filters.cpp) and tests (is_tests.cpp), and attribute/item lookup with Jinja's
// rules, including the Python methods of str/dict/list that templates call (lookup.cpp). They
// throw plain qserve::Error; the renderer adds the template position.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "jinja/template.h"
#include "jinja/value.h"

namespace qserve::jinja {

bool has_filter(const std::string& name);
bool has_test(const std::string& name);

Value call_filter(const std::string& name, const Value& input, CallArgs& args,
                  const RenderOptions& opts);
bool call_test(const std::string& name, const Value& input, CallArgs& args);

// obj.name: for a dict its methods (items, get, ...) and then its keys; for str/list their
// methods; for a namespace its attributes. Missing: an Undefined saying so. Throws for an
// Undefined obj (Jinja raises there).
Value get_attr(const Value& obj, const std::string& name, const RenderOptions& opts);
// obj[key]: a dict key, a list/str index (negative from the end), else as get_attr for a
// string key; missing: Undefined.
Value get_item(const Value& obj, const Value& key, const RenderOptions& opts);
// obj[start:stop:step] on a list or str (Undefined and none bounds are omitted ones).
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// Python's len(); throws for values without one.
size_t py_length(const Value& v);
// Python's iteration: list items, dict keys, str characters; Undefined iterates as empty.
List iterate(const Value& v);

// Argument checks shared by the builtins; `what` names the argument in the error.
std::string require_string(const Value& v, const std::string& what);
std::optional<std::string> optional_string(const Value& v,
                                           const std::string& what);  // none/undefined: nullopt
int64_t require_int(const Value& v, const std::string& what);

// Throws qserve::Error when a string or list would exceed the render limits.
void check_string_size(size_t bytes, const RenderOptions& opts);
void check_list_size(size_t items, const RenderOptions& opts);

// Reads a builtin's arguments by position or keyword, Python-style, rejecting extras.
class ArgReader {
 public:
  ArgReader(CallArgs& args, std::string fn) : args_(args), fn_(std::move(fn)) {}
  // The argument at `pos` (0-based, after the filter input) or named `name`; `def` if absent.
  Value get(size_t pos, const char* name, Value def = Value());
  bool has(size_t pos, const char* name) const;
  // Errors if positional arguments beyond `max_pos` or keywords other than those read remain.
  void done(size_t max_pos) const;

 private:
  CallArgs& args_;
  std::string fn_;
  std::vector<std::string> used_;
};

}  // namespace qserve::jinja
