// A Jinja-subset template engine for HuggingFace chat templates: renders a template the way
// transformers' apply_chat_template does (jinja2 ImmutableSandboxedEnvironment with
// trim_blocks, lstrip_blocks and loopcontrols; its tojson, raise_exception, strftime_now,
// namespace and dict globals). docs/chat-templates.md lists what is supported.
//
//   jinja::Template t(source, "chat_template");
//   std::string text = t.render(context);  // context: a JSON object of the template's variables
//
// Every problem (a syntax error, an unknown filter or test, a type error, an undefined value
// used where Jinja raises, raise_exception(), a resource limit) throws jinja::TemplateError,
// a qserve::Error whose message is "jinja: <name>:<line>:<column>: <what>".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "jinja/value.h"

namespace qserve::jinja {

class TemplateError : public Error {
 public:
  using Error::Error;
};

// Bounds on what one render may do, so that a hostile template fails with an error instead of
// hanging, exhausting memory or the stack.
struct RenderOptions {
  size_t max_output_bytes = 64u << 20;  // the rendered text, and any one string value
  size_t max_list_items = 1u << 22;     // any one list (range(), list * n, ...)
  int64_t max_steps = 20'000'000;       // expression evaluations + loop iterations
  int max_call_depth = 64;              // nested macro calls (recursion)
  // strftime_now(format); unset: the local time now. Tests set it for reproducible output.
  std::function<std::string(const std::string& format)> strftime_now;
};

struct Stmt;

class Template {
 public:
  // Parses `source`; `name` appears in error messages. Throws TemplateError.
  explicit Template(const std::string& source, std::string name = "template");

  // Renders with the variables of `context` (a JSON object; also accepted: a Value dict).
  std::string render(const nlohmann::ordered_json& context,
                     const RenderOptions& options = {}) const;
  std::string render(const Value& context, const RenderOptions& options = {}) const;

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::shared_ptr<const std::vector<std::unique_ptr<Stmt>>> body_;
};

}  // namespace qserve::jinja
