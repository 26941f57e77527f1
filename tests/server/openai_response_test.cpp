// Response builders, SSE framing and splitting, metrics exposition, bench statistics.
#include <gtest/gtest.h>

#include <string>

#include "server/bench_serve.h"
#include "server/metrics.h"
#include "server/openai_response.h"
#include "server/sse_client.h"

namespace qserve::server {
namespace {

using nlohmann::json;

const TokenText kText = [](int32_t id) {
  return id == 7 ? std::string("\xc3\xa9") : "t" + std::to_string(id);
};

std::vector<SampledToken> two_tokens() {
  return {{5, -0.5f, {{5, -0.5f}, {7, -1.5f}}}, {7, -0.25f, {{7, -0.25f}, {5, -2.0f}}}};
}

TEST(OpenAIResponse, CompletionLogprobs) {
  const json j = completion_logprobs(two_tokens(), kText, 10, 1);
  EXPECT_EQ(j["tokens"], json({"t5", "\xc3\xa9"}));
  EXPECT_EQ(j["token_logprobs"][1].get<double>(), -0.25);
  EXPECT_EQ(j["text_offset"], json({10, 12}));  // "t5" is 2 bytes
  ASSERT_EQ(j["top_logprobs"][0].size(), 1u);   // only top_logprobs = 1 alternatives
  EXPECT_EQ(j["top_logprobs"][0]["t5"].get<double>(), -0.5);
  // top_logprobs 0: the entries are null, as OpenAI sends them.
  EXPECT_TRUE(completion_logprobs(two_tokens(), kText, 0, 0)["top_logprobs"][0].is_null());
}

TEST(OpenAIResponse, ChatLogprobs) {
  const json j = chat_logprobs(two_tokens(), kText, 2);
  ASSERT_EQ(j["content"].size(), 2u);
  EXPECT_EQ(j["content"][1]["token"], "\xc3\xa9");
  EXPECT_EQ(j["content"][1]["bytes"], json({0xc3, 0xa9}));
  EXPECT_EQ(j["content"][0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(j["content"][0]["top_logprobs"][1]["token"], "\xc3\xa9");
}

TEST(OpenAIResponse, FullCompletionAndChat) {
  ChoiceResult c;
  c.index = 0;
  c.text = "hello";
  c.finish_reason = "stop";
  c.stop_reason = "token:2";
  const ResponseMeta cm{ApiKind::kCompletion, "cmpl-1", 100, "m"};
  const json j = full_response(cm, {&c, 1}, kText, false, 0, 3, 1);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "hello");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["choices"][0]["stop_reason"], 2);
  EXPECT_EQ(j["usage"]["total_tokens"], 4);
  const ResponseMeta chm{ApiKind::kChat, "chatcmpl-1", 100, "m"};
  const json k = full_response(chm, {&c, 1}, kText, false, 0, 3, 1);
  EXPECT_EQ(k["object"], "chat.completion");
  EXPECT_EQ(k["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(k["choices"][0]["message"]["content"], "hello");
}

TEST(OpenAIResponse, StreamChunks) {
  const ResponseMeta chm{ApiKind::kChat, "chatcmpl-1", 100, "m"};
  const json first =
      stream_chunk(chm, 1, {{"content", "x"}}, nullptr, std::nullopt, std::nullopt, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["index"], 1);
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());
  const json last = stream_chunk(chm, 0, json::object(), nullptr, "length", "", false);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(last.contains("usage"));
  const json u = usage_chunk(chm, 5, 6);
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["completion_tokens"], 6);
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(stop_reason_json("\n\n"), "\n\n");
  EXPECT_TRUE(stop_reason_json("").is_null());
  // Invalid UTF-8 becomes U+FFFD rather than an exception.
  EXPECT_EQ(dump_json(json("a\xff")), "\"a\xef\xbf\xbd\"");
}

TEST(SseClient, SplitsEvents) {
  std::string buf = "data: {\"a\":1}\n\n: keep-alive\n\ndata: x\r\n\r\ndata: [DONE]\n\ndata: part";
  std::vector<std::string> got;
  EXPECT_TRUE(drain_sse_events(buf, [&](const std::string& d) {
    got.push_back(d);
    return true;
  }));
  EXPECT_EQ(got, (std::vector<std::string>{"{\"a\":1}", "x", "[DONE]"}));
  EXPECT_EQ(buf, "data: part");  // incomplete tail kept
  buf += "\n\n";
  EXPECT_FALSE(drain_sse_events(buf, [](const std::string&) { return false; }));
}

TEST(Metrics, PrometheusText) {
  Metrics m;
  m.on_http_response("/v1/completions", 200);
  m.on_http_response("/v1/completions", 200);
  m.on_http_response("/v1/completions", 400);
  m.on_prompt_tokens(11);
  m.on_generation_tokens(5);
  m.on_request_finished("length", 0.03, 0.02, true, 0.5, 11, 5);
  m.set_engine_gauges({2, 3, 100, 25});
  const std::string t = m.render("doc");
  const auto has = [&](const std::string& s) { return t.find(s) != std::string::npos; };
  EXPECT_TRUE(has("vllm:num_requests_running{model_name=\"doc\"} 2\n"));
  EXPECT_TRUE(has("vllm:num_requests_waiting{model_name=\"doc\"} 3\n"));
  EXPECT_TRUE(has("vllm:gpu_cache_usage_perc{model_name=\"doc\"} 0.25\n"));
  EXPECT_TRUE(has("qserve:kv_pages_free{model_name=\"doc\"} 75\n"));
  EXPECT_TRUE(has("vllm:prompt_tokens_total{model_name=\"doc\"} 11\n"));
  EXPECT_TRUE(has("vllm:generation_tokens_total{model_name=\"doc\"} 5\n"));
  EXPECT_TRUE(has("vllm:request_success_total{model_name=\"doc\",finished_reason=\"length\"} 1\n"));
  EXPECT_TRUE(has("endpoint=\"/v1/completions\",status=\"200\"} 2\n"));
  EXPECT_TRUE(has("endpoint=\"/v1/completions\",status=\"400\"} 1\n"));
  // 0.03 s falls in the 0.04 bucket and every larger one; 0.02 does not.
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"doc\",le=\"0.02\"} 0\n"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"doc\",le=\"0.04\"} 1\n"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_bucket{model_name=\"doc\",le=\"+Inf\"} 1\n"));
  EXPECT_TRUE(has("vllm:time_to_first_token_seconds_count{model_name=\"doc\"} 1\n"));
  EXPECT_TRUE(has("vllm:e2e_request_latency_seconds_sum{model_name=\"doc\"} 0.5\n"));
  EXPECT_TRUE(has("# TYPE vllm:time_per_output_token_seconds histogram\n"));
}

TEST(BenchServe, PercentilesAndSummary) {
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5}, 0.9), 4.6);
  EXPECT_DOUBLE_EQ(percentile({}, 0.5), 0.0);
  std::vector<BenchRequestResult> rs(3);
  rs[0] = {true, "", 10, 5, 0.1, 0.5, {0.1, 0.1, 0.1, 0.1}};
  rs[1] = {true, "", 20, 3, 0.3, 0.7, {0.2, 0.2}};
  rs[2] = {false, "boom", 0, 0, 0, 0, {}};
  const json s = summarize(rs, 2.0);
  EXPECT_EQ(s["completed"], 2);
  EXPECT_EQ(s["failed"], 1);
  EXPECT_EQ(s["total_output_tokens"], 8);
  EXPECT_DOUBLE_EQ(s["request_throughput"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(s["output_throughput"].get<double>(), 4.0);
  EXPECT_DOUBLE_EQ(s["total_token_throughput"].get<double>(), 19.0);
  EXPECT_NEAR(s["mean_ttft_ms"].get<double>(), 200.0, 1e-9);
  EXPECT_NEAR(s["mean_tpot_ms"].get<double>(), (100.0 + 200.0) / 2, 1e-9);  // 0.4/4, 0.4/2
  EXPECT_NEAR(s["median_itl_ms"].get<double>(), 100.0, 1e-9);
  EXPECT_NEAR(s["p99_e2el_ms"].get<double>(), 698.0, 1e-9);
}

}  // namespace
}  // namespace qserve::server
