// The interpreter's contract beyond the transformers goldens: error messages with positions,
// resource limits against hostile templates, and the value helpers.
#include "jinja/template.h"

#include <gtest/gtest.h>

#include <cmath>

#include "jinja/py_string.h"
#include "jinja/value.h"

namespace qserve::jinja {
namespace {

using json = nlohmann::ordered_json;

std::string render(const std::string& src, const json& ctx = json::object(),
                   const RenderOptions& opts = {}) {
  return Template(src, "t").render(ctx, opts);
}

std::string error_of(const std::string& src, const json& ctx = json::object(),
                     const RenderOptions& opts = {}) {
  try {
    render(src, ctx, opts);
  } catch (const TemplateError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(JinjaTemplate, SyntaxErrorsCarryLineAndColumn) {
  EXPECT_EQ(error_of("ab\n  {{ 1 + }}"), "jinja: t:2:10: expected an expression, got '}}'");
  EXPECT_EQ(error_of("{% for m in messages %}\n{{ m }}"),
            "jinja: t:1:4: unexpected end of template; this tag needs '{% endfor %}'");
  EXPECT_EQ(error_of("x\n\n   {{ m | frobnicate }}"),
            "jinja: t:3:11: no filter named 'frobnicate' (docs/chat-templates.md lists the "
            "supported ones)");
  EXPECT_EQ(error_of("{% include 'x.jinja' %}"),
            "jinja: t:1:4: the 'include' tag is not supported by qserve's Jinja subset "
            "(docs/chat-templates.md)");
  EXPECT_EQ(error_of("{{ 'abc }}"), "jinja: t:1:4: unterminated string literal");
  EXPECT_EQ(error_of("{# never closed"), "jinja: t:1:1: missing end of comment tag");
  EXPECT_EQ(error_of("{{ (1 ]}}"), "jinja: t:1:7: unexpected ']', expected ')'");
  EXPECT_EQ(error_of("{% break %}"), "jinja: t:1:4: 'break' outside of a for loop");
  EXPECT_EQ(error_of("{{ x is frob }}"),
            "jinja: t:1:6: no test named 'frob' (docs/chat-templates.md lists the supported "
            "ones)");
  EXPECT_EQ(error_of("{{ 99999999999999999999 }}"),
            "jinja: t:1:4: integer literal 99999999999999999999 is too large (64-bit integers "
            "only)");
  // An unknown filter is an error even in a branch that never runs (as in Jinja).
  EXPECT_NE(error_of("{% if false %}{{ x | nope }}{% endif %}"), "(no error)");
}

TEST(JinjaTemplate, RuntimeErrorsCarryThePositionOfTheFailingExpression) {
  EXPECT_EQ(error_of("{{ 'a' }}\n{{ user.name }}"), "jinja: t:2:8: 'user' is undefined");
  EXPECT_EQ(error_of("{{ m.a.b }}", json{{"m", json::object()}}),
            "jinja: t:1:7: 'dict object' has no attribute 'a'");
  EXPECT_EQ(error_of("{{ raise_exception('Roles must alternate') }}"),
            "jinja: t:1:19: raise_exception: Roles must alternate");
  EXPECT_EQ(error_of("{{ 'n=' + 1 }}"),
            "jinja: t:1:9: can only concatenate str (not \"int\") to str");
  EXPECT_EQ(error_of("{{ nothing() }}"), "jinja: t:1:11: 'nothing' is undefined");
  EXPECT_EQ(error_of("{{ 1 // 0 }}"), "jinja: t:1:6: integer division or modulo by zero");
  EXPECT_EQ(error_of("{{ 9223372036854775807 + 1 }}"), "jinja: t:1:24: integer overflow");
  EXPECT_EQ(error_of("{{ [1].append(2) }}"),
            "jinja: t:1:14: list.append() is not available: templates cannot modify lists");
  EXPECT_EQ(error_of("{{ [] | tojson(ensure_ascii=true) }}"),
            "jinja: t:1:9: tojson(ensure_ascii=True) is not supported by qserve's Jinja subset");
  EXPECT_EQ(error_of("{% set x = 1 %}{% set x.a = 2 %}"),
            "jinja: t:1:19: cannot assign attribute on non-namespace object 'x'");
  EXPECT_EQ(error_of("{{ u | tojson }}"),
            "jinja: t:1:8: tojson: Object of type Undefined is not JSON serializable");
  // A non-object context is refused.
  EXPECT_THROW(Template("x", "t").render(json::array()), TemplateError);
}

TEST(JinjaTemplate, UndefinedIsEmptyAndFalsyUntilUsedFurther) {
  EXPECT_EQ(render("[{{ u }}|{{ u | length }}|{{ u | trim }}|{{ 'y' if u else 'n' }}|{{ u is "
                   "defined }}|{% for x in u %}x{% else %}empty{% endfor %}|{{ m.missing }}]",
                   json{{"m", json::object()}}),
            "[|0||n|False|empty|]");
  EXPECT_EQ(render("{{ u ~ 'x' }}{{ u == none }}{{ 'a' in u }}"), "xFalseFalse");
}

TEST(JinjaTemplate, WhitespaceControlFollowsTransformersEnvironment) {
  // trim_blocks removes the newline after a block tag; lstrip_blocks the indentation before it;
  // neither applies to {{ }}.
  EXPECT_EQ(render("{% if true %}\n  A\n  {% endif %}\n  {{ 'B' }}\n"), "  A\n  B");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(render("a\n  {%+ if true %}b{% endif +%}\nc"), "a\n  b\nc");
  EXPECT_EQ(render("x\r\ny\n\n"), "x\ny\n");  // newlines normalized, one trailing one dropped
  EXPECT_EQ(render("{% raw %}{{ not rendered }}{% endraw %}"), "{{ not rendered }}");
}

TEST(JinjaTemplate, LimitsStopHostileTemplates) {
  RenderOptions small;
  small.max_steps = 10'000;
  small.max_output_bytes = 1'000;
  small.max_list_items = 100;
  small.max_call_depth = 8;
  EXPECT_NE(error_of("{% for i in range(50) %}{% for j in range(50) %}{% for k in range(50) %}"
                     "{% endfor %}{% endfor %}{% endfor %}",
                     json::object(), small)
                .find("budget of 10000 steps"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 5000 }}", json::object(), small).find("exceeds the limit"),
            std::string::npos);
  EXPECT_NE(error_of("{% for i in range(70) %}{{ '0123456789abcdef' }}{% endfor %}", json::object(),
                     small)
                .find("output exceeds the limit of 1000 bytes"),
            std::string::npos);
  EXPECT_NE(error_of("{{ range(1000) | length }}", json::object(), small).find("list of 1000"),
            std::string::npos);
  EXPECT_NE(
      error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", json::object(), small)
          .find("macro calls nested deeper than 8"),
      std::string::npos);
  // Deep nesting is a parse error, not a stack overflow.
  EXPECT_NE(error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}")
                .find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}")
                .find("nested too deeply"),
            std::string::npos);
  EXPECT_NE(error_of("{{ " + std::string(5000, '-') + "1 }}").find("nested too deeply"),
            std::string::npos);
  std::string nots = "{{ ";
  for (int i = 0; i < 5000; ++i) nots += "not ";
  EXPECT_NE(error_of(nots + "1 }}").find("nested too deeply"), std::string::npos);
  std::string ifs;
  for (int i = 0; i < 1000; ++i) ifs += "{% if true %}";
  EXPECT_NE(error_of(ifs).find("nested too deeply"), std::string::npos);
  // So is building a deeply nested value at run time, or passing one in.
  EXPECT_NE(error_of("{% set ns = namespace(v=[]) %}{% for i in range(1000) %}{% set ns.v = "
                     "[ns.v] %}{% endfor %}{{ ns.v }}")
                .find("nested too deeply"),
            std::string::npos);
  json deep = json::array();
  for (int i = 0; i < 1000; ++i) deep = json::array({deep});
  EXPECT_NE(error_of("{{ d }}", json{{"d", deep}}).find("nested too deeply"), std::string::npos);
  // A namespace cannot hold itself (no reference cycles).
  EXPECT_NE(error_of("{% set ns = namespace() %}{% set ns.me = [ns] %}")
                .find("cannot hold another namespace"),
            std::string::npos);
}

TEST(JinjaTemplate, StrftimeNowIsInjectable) {
  RenderOptions o;
  o.strftime_now = [](const std::string& f) { return "<" + f + ">"; };
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y') }}", json::object(), o), "<%d %b %Y>");
  // The default formats the local time now: check the shape only.
  const std::string year = render("{{ strftime_now('%Y') }}");
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
}

TEST(JinjaValue, PythonReprOfFloatsAndStrings) {
  EXPECT_EQ(python_float_repr(1.0), "1.0");
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(123456789012345.6), "123456789012345.6");
  EXPECT_EQ(python_float_repr(1e-5), "1e-05");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(-2.5e-300), "-2.5e-300");
  EXPECT_EQ(python_float_repr(INFINITY), "inf");
  EXPECT_EQ(python_float_repr(std::nan("")), "nan");
  EXPECT_EQ(python_str_repr("it's"), "\"it's\"");
  EXPECT_EQ(python_str_repr("a'\"b"), "'a\\'\"b'");
  EXPECT_EQ(python_str_repr("\x01\n\xC3\xA9"), "'\\x01\\n\xC3\xA9'");
}

TEST(JinjaValue, PythonStringHelpers) {
  EXPECT_EQ(py_len("h\xC3\xA9llo"), 5u);
  EXPECT_EQ(py_strip("\xE3\x80\x80 x \xC2\xA0", std::nullopt, true, true), "x");
  EXPECT_EQ(py_strip("xyaxy", std::string("yx"), true, false), "axy");
  EXPECT_EQ(py_split("  a  b c ", std::nullopt, 1), (std::vector<std::string>{"a", "b c"}));
  EXPECT_EQ(py_split("a,,b", std::string(","), -1), (std::vector<std::string>{"a", "", "b"}));
  EXPECT_EQ(py_replace("ab", "", "-", -1), "-a-b-");
  EXPECT_EQ(py_title("hello wORLD-x"), "Hello World-X");
}

}  // namespace
}  // namespace qserve::jinja
