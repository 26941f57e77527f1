#include "engine/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
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
  std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", " Hi "},
                                   {"assistant", "Hello there.\n"}, {"user", "What is RCU?"}};
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
  EXPECT_NE(error_of([&] { render_chat(ChatTemplate::kLlama3, tool, true, "", ""); })
                .find("role 'tool'"),
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
  EXPECT_NE(error_of([&] { render_chat(ChatTemplate::kLlama2, late_system, true, "", ""); })
                .find("system message only first"),
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
  EXPECT_EQ(python_strip("\x1f" "a\x1c"), "a");
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
      : path_(fs::temp_directory_path() / ("qserve_chat_" + name + "_" +
                                           std::to_string(::testing::UnitTest::GetInstance()
                                                              ->random_seed()))) {
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
  d.write("tokenizer_config.json",
          nlohmann::json{{"chat_template",
                          nlohmann::json::array({{{"name", "tool_use"}, {"template", "x"}},
                                                 {{"name", "default"},
                                                  {"template", "<|im_start|>"}}})}}
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

}  // namespace
}  // namespace qserve
