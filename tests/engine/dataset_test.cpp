#include "engine/dataset.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "test_paths.h"

namespace qserve {
namespace {

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string parse_error(const std::string& text) {
  return error_of([&] { parse_prompt_dataset(text, "d.jsonl"); });
}

TEST(Dataset, ParsesPromptsAndConversations) {
  const std::string text =
      "{\"prompt\": \"Once upon\", \"max_tokens\": 8, \"stop\": \"\\n\", \"temperature\": null}\n"
      "\n"
      "   \r\n"
      "{\"id\": \"w1\", \"conversation\": [{\"role\": \"user\", \"content\": \"Hi\", "
      "\"language\": \"English\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}], "
      "\"model\": \"gpt-4\", \"turn\": 1}\r\n"
      "{\"id\": 7, \"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", "
      "\"content\": \"U\"}], \"stop\": [\"a\", \"b\"], \"seed\": 18446744073709551615, "
      "\"logprobs\": true, \"top_logprobs\": 3}";
  const std::vector<DatasetRow> rows = parse_prompt_dataset(text, "d.jsonl");
  ASSERT_EQ(rows.size(), 3u);

  EXPECT_EQ(rows[0].line, 1);
  EXPECT_EQ(rows[0].id, "1");
  EXPECT_EQ(rows[0].prompt, "Once upon");
  EXPECT_TRUE(rows[0].conversation.empty());
  EXPECT_EQ(rows[0].sampling, (nlohmann::json{{"max_tokens", 8}, {"stop", "\n"}}));

  EXPECT_EQ(rows[1].line, 4);
  EXPECT_EQ(rows[1].id, "w1");
  EXPECT_FALSE(rows[1].prompt.has_value());
  ASSERT_EQ(rows[1].conversation.size(), 1u);  // the reference answer is dropped
  EXPECT_EQ(rows[1].conversation[0].role, "user");
  EXPECT_EQ(rows[1].conversation[0].content, "Hi");
  EXPECT_EQ(rows[1].reference, "Hello!");
  EXPECT_TRUE(rows[1].sampling.empty());

  EXPECT_EQ(rows[2].line, 5);
  EXPECT_EQ(rows[2].id, "7");
  ASSERT_EQ(rows[2].conversation.size(), 2u);
  EXPECT_FALSE(rows[2].reference.has_value());
  const SamplingParams p = apply_sampling_fields({}, rows[2].sampling, "d.jsonl:5");
  EXPECT_EQ(p.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(p.seed, 18446744073709551615ull);
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 3);
}

TEST(Dataset, ErrorsNameFileLineAndField) {
  EXPECT_EQ(parse_error("{\"prompt\": \"a\"}\n{\"prompt\": \"b\",}\n").rfind("d.jsonl:2: not valid JSON", 0),
            0u);
  EXPECT_EQ(parse_error("\n\n{\"text\": \"a\"}").rfind("d.jsonl:3: the row has neither", 0), 0u);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"messages\": []}").find("both"), std::string::npos);
  EXPECT_NE(parse_error("{\"conversation\": [], \"messages\": []}").find("both"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": 3}").find("d.jsonl:1: field 'prompt' is number"),
            std::string::npos);
  EXPECT_NE(parse_error("[1, 2]").find("expected an object"), std::string::npos);
  EXPECT_NE(parse_error("{\"id\": 1.5, \"prompt\": \"a\"}").find("field 'id'"), std::string::npos);
  EXPECT_NE(parse_error("{\"conversation\": [{\"role\": \"tool\", \"content\": \"x\"}]}")
                .find("field 'conversation[0].role' is 'tool'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"conversation\": [{\"role\": \"user\"}]}").find("no \"content\""),
            std::string::npos);
  EXPECT_NE(parse_error("{\"messages\": [{\"role\": \"user\", \"content\": null}]}")
                .find("field 'messages[0].content'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"conversation\": []}").find("empty list"), std::string::npos);
  EXPECT_NE(parse_error("{\"conversation\": {\"role\": \"user\"}}").find("field 'conversation'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"conversation\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": "
                        "\"assistant\", \"content\": \"b\"}, {\"role\": \"assistant\", "
                        "\"content\": \"c\"}]}")
                .find("must end with a user turn"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"conversation\": [{\"role\": \"assistant\", \"content\": \"b\"}]}")
                .find("must end with a user turn"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"max_tokens\": \"8\"}").find("field 'max_tokens'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"max_tokens\": 8.0}").find("an integer"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"stop\": [\"x\", 1]}").find("field 'stop[1]'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"stop\": \"\"}").find("non-empty"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"stop_token_ids\": [1, -2]}")
                .find("field 'stop_token_ids[1]'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"seed\": -1}").find("field 'seed'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"ignore_eos\": 1}").find("field 'ignore_eos'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"top_k\": 99999999999}").find("field 'top_k'"),
            std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"a\", \"top_logprobs\": 21}").find("field 'top_logprobs'"),
            std::string::npos);
  EXPECT_NE(parse_error(std::string("{\"prompt\": \"a\"}\0", 16)).find("NUL"), std::string::npos);
  EXPECT_NE(parse_error("\n \n").find("no rows"), std::string::npos);
  EXPECT_NE(parse_error("{\"prompt\": \"\xFF\"}").find("not valid JSON"), std::string::npos);
}

TEST(Dataset, ApplySamplingFields) {
  SamplingParams defaults;
  defaults.max_tokens = 64;
  defaults.temperature = 0.7f;
  defaults.stop = {"old"};
  const nlohmann::json f = {{"temperature", 0},       {"top_k", 40},       {"top_p", 0.9},
                            {"min_p", 0.05},          {"stop", "\n\n"},    {"min_tokens", 4},
                            {"stop_token_ids", {2}}, {"ignore_eos", true}, {"seed", 5},
                            {"top_logprobs", nullptr}};
  const SamplingParams p = apply_sampling_fields(defaults, f, "x:1");
  EXPECT_EQ(p.max_tokens, 64);  // untouched
  EXPECT_EQ(p.temperature, 0.0f);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_FLOAT_EQ(p.top_p, 0.9f);
  EXPECT_FLOAT_EQ(p.min_p, 0.05f);
  EXPECT_EQ(p.stop, std::vector<std::string>{"\n\n"});
  EXPECT_EQ(p.min_tokens, 4);
  EXPECT_EQ(p.stop_token_ids, std::vector<int32_t>{2});
  EXPECT_TRUE(p.ignore_eos);
  EXPECT_EQ(p.seed, 5u);
  // Validation against the merged result, prefixed with where.
  const std::string e = error_of(
      [&] { apply_sampling_fields(defaults, nlohmann::json{{"min_tokens", 100}}, "x:3"); });
  EXPECT_EQ(e.rfind("x:3: sampling: min_tokens", 0), 0u) << e;
  EXPECT_NE(error_of([&] {
              apply_sampling_fields(defaults, nlohmann::json{{"temperature", -1}}, "x:4");
            }).find("temperature"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              apply_sampling_fields(defaults, nlohmann::json{{"temprature", 1}}, "x:5");
            }).find("unknown sampling field 'temprature'"),
            std::string::npos);
  // A row's range errors surface at apply time, where the defaults are known.
  const std::vector<DatasetRow> rows =
      parse_prompt_dataset("{\"prompt\": \"a\", \"top_p\": 2}", "d.jsonl");
  EXPECT_NE(error_of([&] { apply_sampling_fields({}, rows[0].sampling, "d.jsonl:1"); })
                .find("d.jsonl:1: sampling: top_p"),
            std::string::npos);
}

TEST(Dataset, ReadsTheCommittedChatDataset) {
  const std::string path = test::source_dir() + "/tests/data/engine/chat200.jsonl";
  const std::vector<DatasetRow> rows = read_prompt_dataset(path);
  ASSERT_EQ(rows.size(), 200u);
  int with_system = 0, multi_turn = 0, with_sampling = 0, with_stop = 0;
  for (const DatasetRow& r : rows) {
    ASSERT_FALSE(r.conversation.empty()) << r.line;
    EXPECT_TRUE(r.reference.has_value()) << r.line;
    with_system += r.conversation[0].role == "system";
    multi_turn += r.conversation.size() >= 3;
    with_sampling += !r.sampling.empty();
    with_stop += r.sampling.contains("stop");
    EXPECT_NO_THROW(apply_sampling_fields({}, r.sampling, path + ":" + std::to_string(r.line)));
    for (ChatTemplate t : all_chat_templates())
      EXPECT_NO_THROW(render_chat(t, r.conversation, true, "<s>", "</s>"));
  }
  EXPECT_GT(with_system, 10);
  EXPECT_GT(multi_turn, 10);
  EXPECT_GT(with_sampling, 5);
  EXPECT_GT(with_stop, 2);
}

TEST(Dataset, MissingFile) {
  EXPECT_NE(error_of([] { read_prompt_dataset("/nonexistent/p.jsonl"); }).find("not found"),
            std::string::npos);
}

}  // namespace
}  // namespace qserve
