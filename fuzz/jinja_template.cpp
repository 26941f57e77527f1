// libFuzzer target: a Jinja chat template and its JSON context from arbitrary bytes. The bytes
// up to the first NUL are the template, the rest the context (a JSON object; if it does not
// parse, a small chat conversation is used so the template still gets realistic variables).
// Parsing and rendering either succeed or throw jinja::TemplateError; they must never crash,
// hang, overflow the stack or use unbounded memory (the render limits are set small here so
// every input finishes quickly).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "jinja/template.h"

namespace {

const nlohmann::ordered_json& default_context() {
  static const nlohmann::ordered_json ctx = nlohmann::ordered_json::parse(R"({
    "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true,
    "tools": null, "documents": null,
    "messages": [{"role": "system", "content": " Be brief. "},
                 {"role": "user", "content": "Hi \u00e9\u4f60"},
                 {"role": "assistant", "content": "Hello",
                  "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1.5}}}]},
                 {"role": "user", "content": "What?"}]
  })");
  return ctx;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const size_t nul = bytes.find('\0');
  const std::string source(bytes.substr(0, nul));
  nlohmann::ordered_json ctx = default_context();
  if (nul != std::string_view::npos) {
    try {
      nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(bytes.substr(nul + 1));
      if (parsed.is_object()) ctx = std::move(parsed);
    } catch (const nlohmann::json::exception&) {
      // Not JSON: keep the default context.
    }
  }
  qserve::jinja::RenderOptions opts;
  opts.max_steps = 200'000;
  opts.max_output_bytes = 1 << 20;
  opts.max_list_items = 1 << 14;
  opts.max_call_depth = 32;
  opts.strftime_now = [](const std::string& f) { return f; };
  try {
    const qserve::jinja::Template t(source, "fuzz");
    const std::string out = t.render(ctx, opts);
    if (out.size() > opts.max_output_bytes) std::abort();  // the limit must hold
  } catch (const qserve::jinja::TemplateError& e) {
    // Every error names the template.
    if (std::string_view(e.what()).substr(0, 11) != "jinja: fuzz") std::abort();
  }
  return 0;
}
