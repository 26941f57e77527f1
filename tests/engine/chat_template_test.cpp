#include "engine/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "jinja/template.h"
#include "test_paths.h"

namespace qserve {
namespace {

namespace fs = std::filesystem;

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const std::vector<ChatMessage> kMultiTurn = {
    {"user", "Hi"}, {"assistant", "Hello there."}, {"user", "What is RCU?"}};
const std::vector<ChatMessage> kWithSystem = {{"system", "Be brief."}, {"user", "Hi"}};

// doc-llama-22m ships a Llama-3 style Jinja template; golden.json holds what HF's
// apply_chat_template rendered for a system + user conversation.
TEST(ChatTemplate, MatchesDocLlamaGolden) {
  const std::string dir = test::model_dir("doc-llama-22m");
  EXPECT_EQ(detect_chat_template(dir), ChatTemplate::kLlama3);
  std::ifstream in(dir + "/golden.json");
  ASSERT_TRUE(in) << dir;
  const nlohmann::json golden = nlohmann::json::parse(in);
  const std::vector<ChatMessage> msgs = {{"system", "You are terse."},
                                         {"user", "What is a page table?"}};
  EXPECT_EQ(render_chat(ChatTemplate::kLlama3, msgs, true, "<|begin_of_text|>", "<|eot_id|>"),
            golden["chat_template_example"].get<std::string>());
}

// Written by hand from the Jinja of doc-llama-22m's tokenizer_config.json: bos_token, then per
// message '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content|trim + '<|eot_id|>',
// then the assistant header. `trim` strips the content's ends only.
TEST(ChatTemplate, Llama3MultiTurnTrimsContent) {
  const std::vector<ChatMessage> msgs = {
      {"user", "  Hi there \n"}, {"assistant", "Hello!"}, {"user", "Tell me\tabout mmap.\n\n"}};
  EXPECT_EQ(render_chat(ChatTemplate::kLlama3, msgs, true, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nTell me\tabout mmap.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(render_chat(ChatTemplate::kLlama3, msgs, false, "<|begin_of_text|>", "<|eot_id|>"),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nTell me\tabout mmap.<|eot_id|>");
}

TEST(ChatTemplate, Llama2Golden) {
  // meta-llama/Llama-2-7b-chat-hf: bos + '[INST] ' + content.strip() + ' [/INST]' per user turn,
  // ' ' + content.strip() + ' ' + eos per assistant turn, system inside the first user turn.
  EXPECT_EQ(render_chat(ChatTemplate::kLlama2, kMultiTurn, true, "<s>", "</s>"),
            "<s>[INST] Hi [/INST] Hello there. </s><s>[INST] What is RCU? [/INST]");
  std::vector<ChatMessage> msgs = {{"system", "Be brief."},
                                   {"user", " Hi "},
                                   {"assistant", "Hello there.\n"},
                                   {"user", "What is RCU?"}};
  EXPECT_EQ(render_chat(ChatTemplate::kLlama2, msgs, true, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST] Hello there. </s>"
            "<s>[INST] What is RCU? [/INST]");
  // add_generation_prompt changes nothing: the official template ignores it.
  EXPECT_EQ(render_chat(ChatTemplate::kLlama2, kWithSystem, false, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
}

TEST(ChatTemplate, MistralGolden) {
  // Mistral-7B-Instruct-v0.2: bos, '[INST] ' + user + ' [/INST]', assistant + eos; no strip.
  EXPECT_EQ(render_chat(ChatTemplate::kMistral, kMultiTurn, true, "<s>", "</s>"),
            "<s>[INST] Hi [/INST]Hello there.</s>[INST] What is RCU? [/INST]");
  // No system role: it is prepended to the first user message.
  EXPECT_EQ(render_chat(ChatTemplate::kMistral, kWithSystem, true, "<s>", "</s>"),
            "<s>[INST] Be brief.\n\nHi [/INST]");
}

TEST(ChatTemplate, ChatMLGolden) {
  EXPECT_EQ(render_chat(ChatTemplate::kChatML, kWithSystem, true, "", "<|im_end|>"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(ChatTemplate::kChatML, kMultiTurn, false, "<s>", "</s>"),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there.<|im_end|>\n"
            "<|im_start|>user\nWhat is RCU?<|im_end|>\n");
}

TEST(ChatTemplate, VicunaGolden) {
  // FastChat vicuna_v1.1.
  EXPECT_EQ(render_chat(ChatTemplate::kVicuna, kMultiTurn, true, "<s>", "</s>"),
            "<s>A chat between a curious user and an artificial intelligence assistant. The "
            "assistant gives helpful, detailed, and polite answers to the user's questions. "
            "USER: Hi ASSISTANT: Hello there.</s>USER: What is RCU? ASSISTANT:");
  EXPECT_EQ(render_chat(ChatTemplate::kVicuna, kWithSystem, true, "<s>", "</s>"),
            "<s>Be brief. USER: Hi ASSISTANT:");
}

TEST(ChatTemplate, RoleErrors) {
  const std::vector<ChatMessage> tool = {{"user", "a"}, {"tool", "b"}};
  EXPECT_NE(
      error_of([&] { render_chat(ChatTemplate::kLlama3, tool, true, "", ""); }).find("role 'tool'"),
      std::string::npos);
  const std::vector<ChatMessage> two_users = {{"user", "a"}, {"user", "b"}};
  for (ChatTemplate t : {ChatTemplate::kLlama2, ChatTemplate::kMistral, ChatTemplate::kVicuna}) {
    EXPECT_NE(error_of([&] { render_chat(t, two_users, true, "", ""); }).find("alternate"),
              std::string::npos)
        << chat_template_name(t);
  }
  // llama-3 and chatml render any order, like their templates.
  EXPECT_NO_THROW(render_chat(ChatTemplate::kLlama3, two_users, true, "", ""));
  const std::vector<ChatMessage> starts_assistant = {{"assistant", "a"}, {"user", "b"}};
  EXPECT_THROW(render_chat(ChatTemplate::kMistral, starts_assistant, true, "", ""), Error);
  const std::vector<ChatMessage> late_system = {{"user", "a"}, {"system", "b"}};
  EXPECT_NE(error_of([&] {
              render_chat(ChatTemplate::kLlama2, late_system, true, "", "");
            }).find("system message only first"),
            std::string::npos);
  const std::vector<ChatMessage> only_system = {{"system", "a"}};
  EXPECT_THROW(render_chat(ChatTemplate::kLlama3, only_system, true, "", ""), Error);
  EXPECT_THROW(render_chat(ChatTemplate::kChatML, {}, true, "", ""), Error);
}

TEST(ChatTemplate, Names) {
  for (ChatTemplate t : all_chat_templates())
    EXPECT_EQ(parse_chat_template(chat_template_name(t)), t);
  EXPECT_EQ(parse_chat_template("Llama3"), ChatTemplate::kLlama3);
  const std::string e = error_of([] { parse_chat_template("alpaca"); });
  EXPECT_NE(e.find("alpaca"), std::string::npos);
  EXPECT_NE(e.find("llama-3, llama-2, mistral, chatml, vicuna"), std::string::npos);
}

TEST(ChatTemplate, PythonStrip) {
  EXPECT_EQ(python_strip(" \t\n x y \r\f\v"), "x y");
  EXPECT_EQ(python_strip("\xC2\xA0\xE3\x80\x80x\xE2\x80\x83"), "x");  // NBSP, ideographic, em
  EXPECT_EQ(python_strip("\x1f"
                         "a\x1c"),
            "a");
  EXPECT_EQ(python_strip("\xFF "), "\xFF");
  EXPECT_EQ(python_strip("   "), "");
  EXPECT_EQ(python_strip("\xE6\x97\xA5"), "\xE6\x97\xA5");
}

TEST(ChatTemplate, DetectsFromConfigHeuristics) {
  EXPECT_EQ(detect_chat_template(test::model_dir("tiny-mistral")), ChatTemplate::kMistral);
  EXPECT_EQ(detect_chat_template(test::model_dir("tiny-qwen2-bias")), ChatTemplate::kChatML);
  EXPECT_EQ(detect_chat_template(test::model_dir("tiny-llama2-mha")), ChatTemplate::kLlama2);
}

class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() /
              ("qserve_chat_" + name + "_" +
               std::to_string(::testing::UnitTest::GetInstance()->random_seed()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  void write(const std::string& file, const std::string& text) const {
    std::ofstream(path_ / file) << text;
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

TEST(ChatTemplate, DetectsFromTemplateMarkers) {
  TempDir d("markers");
  const std::pair<const char*, ChatTemplate> cases[] = {
      {"{{ '<|im_start|>' + message['role'] }}", ChatTemplate::kChatML},
      {"{{ '<<SYS>>\\n' + system_message }}{{ '[INST] ' }}", ChatTemplate::kLlama2},
      {"{{ bos_token }}{{ '[INST] ' + message['content'] }}", ChatTemplate::kMistral},
      {"{{ 'USER: ' + m }}{{ 'ASSISTANT:' }}", ChatTemplate::kVicuna},
  };
  for (const auto& [jinja, want] : cases) {
    d.write("tokenizer_config.json", nlohmann::json{{"chat_template", jinja}}.dump());
    EXPECT_EQ(detect_chat_template(d.str()), want) << jinja;
  }
  // Named templates (newer tokenizer configs): the "default" one counts.
  d.write(
      "tokenizer_config.json",
      nlohmann::json{{"chat_template",
                      nlohmann::json::array({{{"name", "tool_use"}, {"template", "x"}},
                                             {{"name", "default"}, {"template", "<|im_start|>"}}})}}
          .dump());
  EXPECT_EQ(detect_chat_template(d.str()), ChatTemplate::kChatML);
  // An unknown template is an error, not a guess, even when config.json would suggest one.
  d.write("config.json", R"({"model_type": "llama", "vocab_size": 32000})");
  d.write("tokenizer_config.json", R"({"chat_template": "{{ '### Human: ' + m }}"})");
  EXPECT_NE(error_of([&] { detect_chat_template(d.str()); }).find("none of the built-in"),
            std::string::npos);
  // chat_template.jinja wins over tokenizer_config.json.
  d.write("chat_template.jinja", "{{ '<|start_header_id|>' }}");
  EXPECT_EQ(detect_chat_template(d.str()), ChatTemplate::kLlama3);
}

TEST(ChatTemplate, DetectHeuristicsAndErrors) {
  TempDir vicuna("vicuna-7b");
  vicuna.write("config.json", R"({"model_type": "llama", "vocab_size": 32000})");
  EXPECT_EQ(detect_chat_template(vicuna.str()), ChatTemplate::kVicuna);
  TempDir l3("l3");
  l3.write("config.json", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 128256})");
  EXPECT_EQ(detect_chat_template(l3.str()), ChatTemplate::kLlama3);
  TempDir gpt("gpt");
  gpt.write("config.json", R"({"model_type": "gpt2"})");
  EXPECT_NE(error_of([&] { detect_chat_template(gpt.str()); }).find("gpt2"), std::string::npos);
  TempDir empty("empty");
  EXPECT_NE(error_of([&] { detect_chat_template(empty.str()); }).find("no config.json"),
            std::string::npos);
}

// The built-ins (the fallbacks) against transformers' renders of the fixture templates of their
// families (tests/data/chat/goldens.json): equal wherever both render. The built-ins are
// stricter in two places: a conversation without a user/assistant turn, and (mistral) a system
// message, which the built-in folds into the first user turn while v0.2's template rejects it.
TEST(ChatTemplate, BuiltInsMatchTransformersGoldens) {
  std::ifstream in(test::source_dir() + "/tests/data/chat/goldens.json");
  ASSERT_TRUE(in);
  const nlohmann::json g = nlohmann::json::parse(in);
  const std::pair<const char*, ChatTemplate> families[] = {{"llama-3", ChatTemplate::kLlama3},
                                                           {"llama-2", ChatTemplate::kLlama2},
                                                           {"mistral", ChatTemplate::kMistral},
                                                           {"chatml", ChatTemplate::kChatML},
                                                           {"vicuna", ChatTemplate::kVicuna}};
  int compared = 0;
  for (const nlohmann::json& c : g["cases"]) {
    for (const auto& [name, t] : families) {
      if (c["template"] != name || !c["kwargs"].empty()) continue;
      const nlohmann::json& tokens = g["templates"][name]["special_tokens"];
      std::vector<ChatMessage> msgs;
      for (const auto& m : g["conversations"][c["conversation"].get<std::string>()])
        msgs.push_back({m["role"], m["content"]});
      const std::string label = std::string(name) + " / " + c["conversation"].get<std::string>();
      std::string got;
      try {
        got = render_chat(t, msgs, c["add_generation_prompt"], tokens.value("bos_token", ""),
                          tokens.value("eos_token", ""));
      } catch (const Error& e) {
        const bool stricter = c["conversation"] == "system_only";
        EXPECT_TRUE(stricter || c.contains("error")) << label << ": " << e.what();
        continue;
      }
      if (c.contains("error")) {
        EXPECT_EQ(t, ChatTemplate::kMistral) << label << " rendered; transformers raised";
        continue;
      }
      EXPECT_EQ(got, c["expected"].get<std::string>()) << label;
      ++compared;
    }
  }
  EXPECT_GT(compared, 60);
}

// --- ChatFormatter ---------------------------------------------------------------------------

// doc-llama-22m's own Jinja template, rendered by the interpreter, reproduces the golden that
// transformers' apply_chat_template made (golden.json), with the folder's special tokens.
TEST(ChatFormatter, RendersTheModelsJinjaTemplate) {
  const std::string dir = test::model_dir("doc-llama-22m");
  const ChatFormatter f = ChatFormatter::for_model(dir);
  EXPECT_TRUE(f.is_jinja());
  EXPECT_NE(f.description().find("tokenizer_config.json"), std::string::npos) << f.description();
  std::ifstream in(dir + "/golden.json");
  ASSERT_TRUE(in) << dir;
  const nlohmann::json golden = nlohmann::json::parse(in);
  const std::vector<ChatMessage> msgs = {{"system", "You are terse."},
                                         {"user", "What is a page table?"}};
  EXPECT_EQ(f.render(msgs, true), golden["chat_template_example"].get<std::string>());
  // The built-in it is recognized as renders the same text.
  for (const auto& m : {kMultiTurn, kWithSystem}) {
    for (bool gen : {true, false}) {
      EXPECT_EQ(f.render(m, gen),
                render_chat(ChatTemplate::kLlama3, m, gen, "<|begin_of_text|>", "<|eot_id|>"));
    }
  }
}

TEST(ChatFormatter, FallsBackToBuiltInsWithoutATemplate) {
  const ChatFormatter f =
      ChatFormatter::for_model(test::model_dir("tiny-mistral"), "", "<s>", "</s>");
  EXPECT_FALSE(f.is_jinja());
  EXPECT_NE(f.description().find("built-in mistral"), std::string::npos) << f.description();
  EXPECT_EQ(f.render(kMultiTurn, true),
            render_chat(ChatTemplate::kMistral, kMultiTurn, true, "<s>", "</s>"));
  // An override by name wins over the folder's own template.
  const ChatFormatter named = ChatFormatter::for_model(test::model_dir("doc-llama-22m"), "chatml");
  EXPECT_FALSE(named.is_jinja());
  EXPECT_EQ(named.render(kWithSystem, true),
            render_chat(ChatTemplate::kChatML, kWithSystem, true, "", ""));
  EXPECT_NE(error_of([] {
              ChatFormatter::for_model(test::model_dir("tiny-mistral"), "alpaca");
            }).find("unknown chat template 'alpaca'"),
            std::string::npos);
}

TEST(ChatFormatter, TemplateFileOverrideAndTokenForms) {
  TempDir d("formatter");
  d.write("config.json", R"({"model_type": "llama", "vocab_size": 32000})");
  // Special tokens as AddedToken objects, one only in special_tokens_map.json.
  d.write("tokenizer_config.json",
          R"({"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
              "eos_token": "</s>",
              "chat_template": [{"name": "tool_use", "template": "TOOLS"},
                                {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}|{{ m.content }}|{{ unk_token }}]{% endfor %}{{ eos_token if add_generation_prompt }}"}]})");
  d.write("special_tokens_map.json", R"({"unk_token": {"content": "<unk>"}, "eos_token": "X"})");
  const ChatFormatter f = ChatFormatter::for_model(d.str());
  ASSERT_TRUE(f.is_jinja());
  EXPECT_EQ(f.render(kWithSystem, true), "<s>[system|Be brief.|<unk>][user|Hi|<unk>]</s>");
  EXPECT_EQ(f.render(kWithSystem, false), "<s>[system|Be brief.|<unk>][user|Hi|<unk>]");
  // With tools, the "tool_use" entry renders (as in transformers).
  const auto one_user = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "x"}])");
  EXPECT_EQ(f.render_json(one_user, true, {{"tools", nlohmann::ordered_json::array()}}), "TOOLS");
  EXPECT_EQ(f.render_json(one_user, true, {{"tools", nullptr}}), "<s>[user|x|<unk>]</s>");
  // A .jinja file as override (tokens still from the folder).
  d.write("alt.jinja", "{% for m in messages %}{{ m.content | upper }};{% endfor %}\n");
  const ChatFormatter alt = ChatFormatter::for_model(d.str(), d.str() + "/alt.jinja");
  EXPECT_EQ(alt.render(kMultiTurn, false), "HI;HELLO THERE.;WHAT IS RCU?;");
  EXPECT_NE(alt.description().find("alt.jinja"), std::string::npos);
  EXPECT_THROW(ChatFormatter::for_model(d.str(), d.str() + "/missing.jinja"), Error);
  // Extra variables and OpenAI-style messages (None-valued keys are dropped, as transformers
  // does).
  const ChatFormatter tools = ChatFormatter::from_jinja(
      "{{ tools | length }}{% for m in messages %}{{ m.role }}{{ m.tool_calls is defined }}"
      "{% endfor %}",
      "tools", {});
  EXPECT_EQ(tools.render_json(nlohmann::ordered_json::parse(
                                  R"([{"role": "user", "content": "x", "tool_calls": null}])"),
                              true, nlohmann::ordered_json{{"tools", {1, 2}}}),
            "2userFalse");
}

TEST(ChatFormatter, ErrorsNameTheTemplateAndPosition) {
  TempDir d("formatter_err");
  d.write("tokenizer_config.json",
          R"({"chat_template": "{% for m in messages %}\n{{ m.content | nosuch }}{% endfor %}"})");
  const std::string parse_error = error_of([&] { ChatFormatter::for_model(d.str()); });
  EXPECT_NE(parse_error.find("tokenizer_config.json:2:"), std::string::npos) << parse_error;
  EXPECT_NE(parse_error.find("no filter named 'nosuch'"), std::string::npos) << parse_error;
  d.write(
      "tokenizer_config.json",
      R"({"chat_template": "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"})");
  const ChatFormatter f = ChatFormatter::for_model(d.str());
  EXPECT_EQ(f.render(kMultiTurn, true), "ok");
  const std::string raised = error_of([&] { f.render(kWithSystem, true); });
  EXPECT_NE(raised.find("raise_exception: first must be user"), std::string::npos) << raised;
  EXPECT_NE(raised.find(":1:"), std::string::npos) << raised;
  EXPECT_NE(error_of([&] { f.render({}, true); }).find("empty conversation"), std::string::npos);
}

}  // namespace
}  // namespace qserve
