// The request parser/validator: every accepted field lands in the right place, every malformed
// or out-of-range one is a 400 naming the field, unsupported features say so.
#include <gtest/gtest.h>

#include <string>

#include "server/openai_request.h"

namespace qserve::server {
namespace {

OpenAIRequest completion(const std::string& body) {
  return parse_openai_request(body, ApiKind::kCompletion);
}
OpenAIRequest chat(const std::string& body) {
  return parse_openai_request(body, ApiKind::kChat);
}

// The ApiError a body produces (status 0 if it parses).
ApiError error_of(const std::string& body, ApiKind kind = ApiKind::kCompletion) {
  try {
    parse_openai_request(body, kind);
  } catch (const ApiError& e) {
    return e;
  }
  return ApiError(0, "no error");
}

TEST(OpenAIRequest, CompletionFieldsAreParsed) {
  const OpenAIRequest r = completion(R"({"model": "m", "prompt": "hi", "max_tokens": 7,
      "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 42, "stop": "\n",
      "stop_token_ids": [2, 3], "n": 2, "stream": true, "stream_options": {"include_usage": true},
      "echo": true, "ignore_eos": true, "min_tokens": 1, "unknown_field": {"x": 1}})");
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(*r.prompts[0].text, "hi");
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_EQ(r.sampling.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_EQ(r.sampling.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.sampling.stop_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(r.n, 2);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.echo);
  EXPECT_TRUE(r.sampling.ignore_eos);
  EXPECT_EQ(r.sampling.min_tokens, 1);
}

TEST(OpenAIRequest, Defaults) {
  const OpenAIRequest r = completion(R"({"prompt": "hi"})");
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);  // OpenAI's default, not greedy
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.seed_given);
  EXPECT_FALSE(r.logprobs);
  // Nulls count as absent.
  const OpenAIRequest n = completion(R"({"prompt": "hi", "max_tokens": null, "seed": null})");
  EXPECT_FALSE(n.max_tokens_given);
  EXPECT_FALSE(n.seed_given);
}

TEST(OpenAIRequest, PromptShapes) {
  EXPECT_EQ(completion(R"({"prompt": [1, 2, 3]})").prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));
  const OpenAIRequest batch = completion(R"({"prompt": ["a", "b"]})");
  ASSERT_EQ(batch.prompts.size(), 2u);
  EXPECT_EQ(*batch.prompts[1].text, "b");
  const OpenAIRequest ids = completion(R"({"prompt": [[5], [6, 7]]})");
  ASSERT_EQ(ids.prompts.size(), 2u);
  EXPECT_FALSE(ids.prompts[1].text.has_value());
  EXPECT_EQ(ids.prompts[1].ids, (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(error_of(R"({"prompt": []})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [1, "a"]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [-1]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": 5})").param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": [[]]})").param(), "prompt");
  EXPECT_EQ(error_of(R"({})").param(), "prompt");
}

TEST(OpenAIRequest, ChatMessages) {
  const OpenAIRequest r = chat(R"({"messages": [
      {"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "assistant", "content": null},
      {"role": "user", "content": "c"}], "max_completion_tokens": 3, "logprobs": true,
      "top_logprobs": 2})");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.sampling.max_tokens, 3);
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 2);
  EXPECT_EQ(error_of(R"({"messages": []})", ApiKind::kChat).param(), "messages");
  EXPECT_EQ(error_of(R"({"messages": [{"role": "tool", "content": "x"}]})", ApiKind::kChat).param(),
            "messages");
  EXPECT_EQ(error_of(R"({"messages": [{"content": "x"}]})", ApiKind::kChat).param(), "messages");
  const ApiError image = error_of(
      R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
      ApiKind::kChat);
  EXPECT_NE(std::string(image.what()).find("unsupported"), std::string::npos);
  EXPECT_EQ(error_of(R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})",
                     ApiKind::kChat)
                .param(),
            "top_logprobs");
}

TEST(OpenAIRequest, CompletionLogprobsIsACount) {
  const OpenAIRequest r = completion(R"({"prompt": "x", "logprobs": 3})");
  EXPECT_TRUE(r.sampling.logprobs);
  EXPECT_EQ(r.sampling.top_logprobs, 3);
  EXPECT_TRUE(completion(R"({"prompt": "x", "logprobs": 0})").sampling.logprobs);
  EXPECT_EQ(error_of(R"({"prompt": "x", "logprobs": 21})").param(), "logprobs");
  EXPECT_EQ(error_of(R"({"prompt": "x", "logprobs": true})").param(), "logprobs");
  EXPECT_EQ(error_of(R"({"prompt": "x", "logprobs": 1, "echo": true})").param(), "echo");
}

TEST(OpenAIRequest, MalformedBodies) {
  for (const std::string body : {"", "{", "not json", "[1, 2]", "\"str\"", "null", "{\"a\":}"}) {
    const ApiError e = error_of(body);
    EXPECT_EQ(e.status(), 400) << body;
    EXPECT_FALSE(std::string(e.what()).empty());
  }
  // Deep nesting is refused before parsing.
  const std::string deep = "{\"prompt\":" + std::string(10000, '[') + std::string(10000, ']') + "}";
  EXPECT_NE(std::string(error_of(deep).what()).find("nested"), std::string::npos);
  // Brackets inside strings do not count.
  EXPECT_EQ(completion("{\"prompt\": \"" + std::string(1000, '[') + "\"}").prompts.size(), 1u);
}

TEST(OpenAIRequest, WrongTypesAndRanges) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"prompt": "x", "max_tokens": "5"})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": -1})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 99999999999999999999})", "max_tokens"},
      {R"({"prompt": "x", "max_completion_tokens": -3})", "max_completion_tokens"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "temperature": 2.5})", "temperature"},
      {R"({"prompt": "x", "temperature": -0.5})", "temperature"},
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "top_p": 1.1})", "top_p"},
      {R"({"prompt": "x", "top_k": -2})", "top_k"},
      {R"({"prompt": "x", "min_p": -0.1})", "min_p"},
      {R"({"prompt": "x", "n": 0})", "n"},
      {R"({"prompt": "x", "n": 17})", "n"},
      {R"({"prompt": "x", "seed": "1"})", "seed"},
      {R"({"prompt": "x", "stop": 3})", "stop"},
      {R"({"prompt": "x", "stop": [""]})", "stop"},
      {R"({"prompt": "x", "stop": ["a", 1]})", "stop"},
      {R"({"prompt": "x", "stop_token_ids": [-1]})", "stop_token_ids"},
      {R"({"prompt": "x", "stop_token_ids": 5})", "stop_token_ids"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "x", "stream": true, "stream_options": 1})", "stream_options"},
      {R"({"prompt": "x", "echo": 1})", "echo"},
      {R"({"prompt": "x", "model": 5})", "model"},
      {R"({"prompt": "x", "ignore_eos": "true"})", "ignore_eos"},
  };
  for (const auto& [body, param] : cases) {
    const ApiError e = error_of(body);
    EXPECT_EQ(e.status(), 400) << body;
    EXPECT_EQ(e.param(), param) << body << ": " << e.what();
  }
}

TEST(OpenAIRequest, UnsupportedFeaturesSayUnsupported) {
  for (const char* body :
       {R"({"prompt": "x", "presence_penalty": 0.5})",
        R"({"prompt": "x", "frequency_penalty": -1})",
        R"({"prompt": "x", "repetition_penalty": 1.2})",
        R"({"prompt": "x", "logit_bias": {"5": 1}})", R"({"prompt": "x", "best_of": 3})",
        R"({"prompt": "x", "suffix": "end"})"}) {
    const ApiError e = error_of(body);
    EXPECT_EQ(e.status(), 400) << body;
    EXPECT_NE(std::string(e.what()).find("unsupported"), std::string::npos) << e.what();
  }
  // Neutral values are accepted.
  EXPECT_NO_THROW(completion(R"({"prompt": "x", "presence_penalty": 0, "frequency_penalty": 0.0,
      "repetition_penalty": 1, "logit_bias": {}, "best_of": 1, "suffix": ""})"));
}

TEST(OpenAIRequest, BoundedWork) {
  std::string many = "{\"prompt\": [";
  for (int i = 0; i < kMaxPrompts + 1; ++i) many += std::string(i ? "," : "") + "\"p\"";
  many += "]}";
  EXPECT_EQ(error_of(many).param(), "prompt");
  EXPECT_EQ(error_of(R"({"prompt": ["a","b","c","d","e"], "n": 16})").param(), "n");
}

TEST(ApiError, Json) {
  const ApiError e(400, "bad thing", "max_tokens");
  const nlohmann::json j = e.to_json();
  EXPECT_EQ(j["error"]["message"], "bad thing");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "max_tokens");
  EXPECT_EQ(j["error"]["code"], 400);
  EXPECT_TRUE(ApiError(429, "x").to_json()["error"]["param"].is_null());
  EXPECT_EQ(ApiError(429, "x").type(), "rate_limit_error");
}

}  // namespace
}  // namespace qserve::server
