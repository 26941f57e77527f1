// Renders the chat-template fixtures (tests/data/chat/templates/*.jinja and doc-llama-22m's own
// template) on every conversation of tests/data/chat/goldens.json and compares byte for byte
// with what transformers' apply_chat_template rendered (tools/gen_chat_goldens.py), including the
// conversations its templates reject with raise_exception.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "jinja/template.h"
#include "test_paths.h"

namespace qserve::jinja {
namespace {

using json = nlohmann::ordered_json;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json load_goldens() {
  return json::parse(read_file(test::source_dir() + "/tests/data/chat/goldens.json"));
}

std::string template_source(const json& spec) {
  if (spec.contains("file"))
    return read_file(test::source_dir() + "/tests/data/chat/templates/" +
                     spec["file"].get<std::string>());
  const json cfg = json::parse(read_file(test::model_dir(spec["shared_model"].get<std::string>()) +
                                         "/tokenizer_config.json"));
  return cfg["chat_template"].get<std::string>();
}

// The variables apply_chat_template gives a template: the special tokens, the messages,
// tools and documents (None unless given), add_generation_prompt, and extra keyword arguments.
json context_for(const json& goldens, const json& c) {
  json ctx = goldens["templates"][c["template"].get<std::string>()]["special_tokens"];
  ctx["messages"] = goldens["conversations"][c["conversation"].get<std::string>()];
  ctx["tools"] = nullptr;
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = c["add_generation_prompt"];
  for (const auto& [k, v] : c["kwargs"].items()) ctx[k] = v;
  return ctx;
}

TEST(ChatGoldens, MatchTransformersByteForByte) {
  const json goldens = load_goldens();
  ASSERT_GE(goldens["cases"].size(), 200u);
  std::map<std::string, Template> templates;
  for (const auto& [name, spec] : goldens["templates"].items())
    templates.emplace(name, Template(template_source(spec), name));
  size_t rendered = 0, rejected = 0;
  for (const json& c : goldens["cases"]) {
    const std::string label = c["template"].get<std::string>() + " / " +
                              c["conversation"].get<std::string>() +
                              (c["add_generation_prompt"].get<bool>() ? " / gen" : " / no gen") +
                              (c["kwargs"].empty() ? "" : " / " + c["kwargs"].dump());
    const Template& t = templates.at(c["template"].get<std::string>());
    const json ctx = context_for(goldens, c);
    if (c.contains("expected")) {
      std::string got;
      try {
        got = t.render(ctx);
      } catch (const TemplateError& e) {
        ADD_FAILURE() << label << ": " << e.what();
        continue;
      }
      EXPECT_EQ(got, c["expected"].get<std::string>()) << label;
      ++rendered;
    } else {
      try {
        t.render(ctx);
        ADD_FAILURE() << label << ": rendered, but transformers raised " << c["error"];
      } catch (const TemplateError& e) {
        // Our message carries the position and the template's own message.
        const std::string what = e.what();
        EXPECT_NE(what.find("raise_exception: " + c["error"].get<std::string>()), std::string::npos)
            << label << ": " << what;
        EXPECT_EQ(what.rfind("jinja: " + c["template"].get<std::string>() + ":", 0), 0u) << what;
      }
      ++rejected;
    }
  }
  EXPECT_GT(rendered, 150u);
  EXPECT_GT(rejected, 20u);
}

// One Jinja feature per snippet (goldens.json "snippets"), rendered by transformers with the
// same environment; where it raised, we must raise too (with our own message).
TEST(ChatGoldens, SnippetsMatchTransformers) {
  const json goldens = load_goldens();
  const json& ctx = goldens["snippet_context"];
  ASSERT_GE(goldens["snippets"].size(), 80u);
  for (const json& s : goldens["snippets"]) {
    const std::string src = s["template"].get<std::string>();
    json full = ctx;
    full["messages"] = json::array();
    full["tools"] = nullptr;
    full["documents"] = nullptr;
    full["add_generation_prompt"] = false;
    if (s.contains("expected")) {
      try {
        EXPECT_EQ(Template(src, "snippet").render(full), s["expected"].get<std::string>()) << src;
      } catch (const TemplateError& e) {
        ADD_FAILURE() << src << ": " << e.what();
      }
    } else {
      EXPECT_THROW(Template(src, "snippet").render(full), TemplateError) << src;
    }
  }
}

}  // namespace
}  // namespace qserve::jinja
