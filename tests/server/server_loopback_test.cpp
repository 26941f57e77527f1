// The server on loopback with doc-llama-22m on the CPU backend: each endpoint answers what the
// engine produces for the same request, streams are well-formed SSE, errors are OpenAI-style,
// and clients that go away free their KV pages. Skipped when the model is not in ../shared.
#include <gtest/gtest.h>
#include <httplib.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "model/llama_model.h"
#include "server/chat_prompt.h"
#include "server/server.h"
#include "server/sse_client.h"
#include "test_paths.h"
#include "tokenizer/tokenizer.h"

namespace qserve::server {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr int64_t kMaxModelLen = 256;

// A server on an ephemeral port, run on its own thread.
struct TestServer {
  TestServer(const LlamaModel& model, const Tokenizer& tok, const std::string& model_dir,
             ServerConfig cfg, int64_t max_seqs = 64) {
    EngineConfig ecfg;
    ecfg.max_num_seqs = max_seqs;
    ecfg.max_model_len = kMaxModelLen;
    ecfg.num_pages = max_seqs * pages_for_tokens(kMaxModelLen);
    cfg.host = "127.0.0.1";
    cfg.port = 0;
    cfg.served_model_name = "doc-llama";
    cfg.log_requests = false;
    cfg.keepalive = 200ms;
    server = std::make_unique<OpenAIServer>(Engine::create(model, &tok, ecfg), tok,
                                            load_chat_prompt_format(model_dir, "", tok), cfg);
    port = server->bind();
    url = "http://127.0.0.1:" + std::to_string(port);
    thread = std::thread([this] { server->run(); });
  }
  ~TestServer() {
    server->shutdown(0ms);
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c(url);
    c.set_read_timeout(120, 0);
    return c;
  }
  // POST a JSON body; returns status and parsed body (null if not JSON).
  std::pair<int, json> post(const std::string& path, const std::string& body,
                            const httplib::Headers& headers = {}) const {
    httplib::Client c = client();
    const httplib::Result r = c.Post(path.c_str(), headers, body, "application/json");
    if (!r) return {0, nullptr};
    return {r->status, json::parse(r->body, nullptr, false)};
  }
  // Waits until no engine request is active.
  bool idle(std::chrono::milliseconds timeout = 20s) const {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (server->engine_snapshot().active_requests == 0 && server->http_in_flight() == 0) {
        return true;
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  std::unique_ptr<OpenAIServer> server;
  int port = 0;
  std::string url;
  std::thread thread;
};

// Collects a stream: the JSON chunks in order, and whether [DONE] ended it.
struct Collected {
  StreamResult result;
  std::vector<json> chunks;
  std::string text;  // completions text / chat delta content of choice 0, concatenated
};

Collected stream(const TestServer& s, const std::string& path, const json& body,
                 int disconnect_after_chunks = -1) {
  Collected c;
  int text_chunks = 0;
  c.result = post_stream(s.url, path, body.dump(), "", [&](const std::string& d, auto) {
    if (d == "[DONE]") return true;
    json j = json::parse(d, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << d;
    if (!j.is_discarded() && !j["choices"].empty()) {
      const json& ch = j["choices"][0];
      std::string t;
      if (ch.contains("text")) t = ch["text"];
      if (ch.contains("delta") && ch["delta"].contains("content")) t = ch["delta"]["content"];
      c.text += t;
      if (!t.empty()) ++text_chunks;
    }
    c.chunks.push_back(std::move(j));
    return disconnect_after_chunks < 0 || text_chunks < disconnect_after_chunks;
  });
  return c;
}

int64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

class ServerLoopback : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = test::model_dir("doc-llama-22m");
    if (!std::filesystem::exists(dir_ + "/config.json")) return;
    model_ = LlamaModel::load(dir_).release();
    tok_ = load_tokenizer(dir_).release();
    server_ = new TestServer(*model_, *tok_, dir_, ServerConfig{});
  }
  static void TearDownTestSuite() {
    delete server_;
    delete tok_;
    delete model_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "doc-llama-22m not found under " << dir_;
  }

  // What the engine itself generates for these prompt ids and params (a fresh engine).
  static CompletedRequest reference(const std::vector<int32_t>& ids, const SamplingParams& p) {
    EngineConfig cfg;
    cfg.max_num_seqs = 4;
    cfg.max_model_len = kMaxModelLen;
    cfg.num_pages = 4 * pages_for_tokens(kMaxModelLen);
    auto engine = Engine::create(*model_, tok_, cfg);
    return generate(*engine, {{ids, p}}).at(0);
  }
  static SamplingParams greedy(int64_t max_tokens) {
    SamplingParams p;
    p.temperature = 0.0f;
    p.max_tokens = max_tokens;
    return p;
  }

  static std::string dir_;
  static LlamaModel* model_;
  static Tokenizer* tok_;
  static TestServer* server_;
};
std::string ServerLoopback::dir_;
LlamaModel* ServerLoopback::model_ = nullptr;
Tokenizer* ServerLoopback::tok_ = nullptr;
TestServer* ServerLoopback::server_ = nullptr;

const char* kPrompt = "The kernel scheduler";

TEST_F(ServerLoopback, CompletionMatchesTheEngine) {
  const auto [status, j] = server_->post(
      "/v1/completions",
      json{{"model", "doc-llama"}, {"prompt", kPrompt}, {"max_tokens", 8}, {"temperature", 0}}
          .dump());
  ASSERT_EQ(status, 200) << j.dump();
  const CompletedRequest ref = reference(tok_->encode(kPrompt, true), greedy(8));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "doc-llama");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["text"], ref.text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], ref.finish_reason);
  EXPECT_EQ(j["usage"]["prompt_tokens"], ref.prompt_tokens);
  EXPECT_EQ(j["usage"]["completion_tokens"], ref.token_ids.size());
  // Token-id prompts give the same; echo prepends the prompt.
  const auto [s2, k] = server_->post(
      "/v1/completions",
      json{{"prompt", tok_->encode(kPrompt, true)}, {"max_tokens", 8}, {"temperature", 0}}.dump());
  ASSERT_EQ(s2, 200);
  EXPECT_EQ(k["choices"][0]["text"], ref.text);
  const auto [s3, e] = server_->post(
      "/v1/completions",
      json{{"prompt", kPrompt}, {"max_tokens", 8}, {"temperature", 0}, {"echo", true}}.dump());
  ASSERT_EQ(s3, 200);
  EXPECT_EQ(e["choices"][0]["text"], std::string(kPrompt) + ref.text);
}

TEST_F(ServerLoopback, ChatMatchesTheEngineWithTheTemplate) {
  const json msgs = json::array({{{"role", "user"}, {"content", "What is a page table?"}}});
  const auto [status, j] =
      server_->post("/v1/chat/completions",
                    json{{"messages", msgs}, {"max_tokens", 6}, {"temperature", 0}}.dump());
  ASSERT_EQ(status, 200) << j.dump();
  const ChatPromptFormat f = load_chat_prompt_format(dir_, "", *tok_);
  const ChatMessage m{"user", "What is a page table?"};
  const std::vector<int32_t> ids = tok_->encode(render_chat_prompt(f, {&m, 1}, true), false);
  const CompletedRequest ref = reference(ids, greedy(6));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], ref.text);
  EXPECT_EQ(j["usage"]["prompt_tokens"], ids.size());
}

TEST_F(ServerLoopback, StreamIsWellFormedSseAndEqualsTheWholeResponse) {
  const json body = {{"prompt", kPrompt}, {"max_tokens", 8}, {"temperature", 0}};
  const auto [status, whole] = server_->post("/v1/completions", body.dump());
  ASSERT_EQ(status, 200);
  json sbody = body;
  sbody["stream"] = true;
  sbody["stream_options"] = {{"include_usage", true}};
  const Collected c = stream(*server_, "/v1/completions", sbody);
  EXPECT_EQ(c.result.status, 200);
  EXPECT_TRUE(c.result.done) << "no data: [DONE]";
  ASSERT_GE(c.chunks.size(), 2u);
  EXPECT_EQ(c.text, whole["choices"][0]["text"]);
  for (size_t i = 0; i + 1 < c.chunks.size(); ++i) {
    EXPECT_EQ(c.chunks[i]["object"], "text_completion");
    EXPECT_TRUE(c.chunks[i]["usage"].is_null()) << c.chunks[i].dump();
    EXPECT_EQ(c.chunks[i]["id"], c.chunks[0]["id"]);
  }
  // The finish reason comes with the last choice chunk; the usage chunk follows with no choices.
  EXPECT_EQ(c.chunks[c.chunks.size() - 2]["choices"][0]["finish_reason"],
            whole["choices"][0]["finish_reason"]);
  const json& usage = c.chunks.back();
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"], whole["usage"]);
  // Without include_usage there is no usage chunk and no "usage" key.
  sbody.erase("stream_options");
  const Collected d = stream(*server_, "/v1/completions", sbody);
  EXPECT_TRUE(d.result.done);
  EXPECT_FALSE(d.chunks.back().contains("usage"));
  EXPECT_EQ(d.text, c.text);
}

TEST_F(ServerLoopback, ChatStreamStartsWithTheRole) {
  const json body = {{"messages", {{{"role", "user"}, {"content", "Hello"}}}},
                     {"max_tokens", 5},
                     {"temperature", 0},
                     {"stream", true}};
  const Collected c = stream(*server_, "/v1/chat/completions", body);
  ASSERT_TRUE(c.result.done);
  ASSERT_GE(c.chunks.size(), 2u);
  EXPECT_EQ(c.chunks[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(c.chunks[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_FALSE(c.chunks.back()["choices"][0]["finish_reason"].is_null());
  json whole = body;
  whole.erase("stream");
  const auto [status, j] = server_->post("/v1/chat/completions", whole.dump());
  ASSERT_EQ(status, 200);
  EXPECT_EQ(c.text, j["choices"][0]["message"]["content"]);
}

TEST_F(ServerLoopback, StopStringsCutTheText) {
  const CompletedRequest ref = reference(tok_->encode(kPrompt, true), greedy(16));
  ASSERT_GE(ref.text.size(), 8u);
  // A stop string from the middle of the greedy text: the answer is the text before it.
  const std::string stop = ref.text.substr(ref.text.size() / 2, 3);
  const size_t cut = ref.text.find(stop);
  const auto [status, j] = server_->post(
      "/v1/completions",
      json{{"prompt", kPrompt}, {"max_tokens", 16}, {"temperature", 0}, {"stop", {stop}}}.dump());
  ASSERT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["choices"][0]["text"], ref.text.substr(0, cut));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["choices"][0]["stop_reason"], stop);
}

TEST_F(ServerLoopback, SeedsReproduceAndNUsesSeedPlusIndex) {
  const json body = {
      {"prompt", kPrompt}, {"max_tokens", 10}, {"temperature", 1.0}, {"seed", 7}, {"n", 3}};
  const auto [s1, a] = server_->post("/v1/completions", body.dump());
  const auto [s2, b] = server_->post("/v1/completions", body.dump());
  ASSERT_EQ(s1, 200);
  ASSERT_EQ(s2, 200);
  ASSERT_EQ(a["choices"].size(), 3u);
  EXPECT_EQ(a["choices"], b["choices"]);
  int64_t tokens = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a["choices"][i]["index"], i);
    SamplingParams p;
    p.temperature = 1.0f;
    p.max_tokens = 10;
    p.seed = 7 + static_cast<uint64_t>(i);
    const CompletedRequest ref = reference(tok_->encode(kPrompt, true), p);
    EXPECT_EQ(a["choices"][i]["text"], ref.text) << "choice " << i;
    tokens += static_cast<int64_t>(ref.token_ids.size());
  }
  EXPECT_EQ(a["usage"]["completion_tokens"], tokens);
  EXPECT_EQ(a["usage"]["prompt_tokens"], tok_->encode(kPrompt, true).size());
}

TEST_F(ServerLoopback, Logprobs) {
  const auto [status, j] = server_->post(
      "/v1/completions",
      json{{"prompt", kPrompt}, {"max_tokens", 4}, {"temperature", 0}, {"logprobs", 3}}.dump());
  ASSERT_EQ(status, 200) << j.dump();
  const json& lp = j["choices"][0]["logprobs"];
  const size_t n = j["usage"]["completion_tokens"];
  ASSERT_EQ(lp["tokens"].size(), n);
  ASSERT_EQ(lp["token_logprobs"].size(), n);
  ASSERT_EQ(lp["text_offset"].size(), n);
  for (size_t i = 0; i < n; ++i) {
    const double l = lp["token_logprobs"][i];
    EXPECT_LE(l, 0.0);
    ASSERT_EQ(lp["top_logprobs"][i].size(), 3u);
    // Greedy: the sampled token is the most likely one.
    for (const auto& [tok, v] : lp["top_logprobs"][i].items()) EXPECT_LE(v.get<double>(), l + 1e-6);
  }
  const auto [s2, c] = server_->post("/v1/chat/completions",
                                     json{{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                          {"max_tokens", 3},
                                          {"temperature", 0},
                                          {"logprobs", true},
                                          {"top_logprobs", 2}}
                                         .dump());
  ASSERT_EQ(s2, 200) << c.dump();
  const json& content = c["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), c["usage"]["completion_tokens"].get<size_t>());
  for (const json& t : content) {
    EXPECT_EQ(t["top_logprobs"].size(), 2u);
    EXPECT_EQ(t["bytes"].size(), t["token"].get<std::string>().size());
  }
}

TEST_F(ServerLoopback, MalformedRequestsGetOpenAIErrors) {
  const auto expect_error = [](std::pair<int, json> r, int status, const std::string& needle) {
    EXPECT_EQ(r.first, status) << r.second.dump();
    ASSERT_TRUE(r.second.is_object()) << "no JSON error body";
    const std::string msg = r.second["error"]["message"];
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  expect_error(server_->post("/v1/completions", "{not json"), 400, "JSON");
  expect_error(server_->post("/v1/completions", R"({"prompt": "x", "max_tokens": "5"})"), 400,
               "max_tokens");
  expect_error(server_->post("/v1/completions", R"({"prompt": "x", "max_tokens": -5})"), 400,
               "max_tokens");
  expect_error(server_->post("/v1/completions", R"({"prompt": 5})"), 400, "prompt");
  expect_error(server_->post("/v1/completions", R"({"prompt": "x", "presence_penalty": 1})"), 400,
               "unsupported");
  expect_error(server_->post("/v1/completions", R"({"prompt": "x", "model": "gpt-4"})"), 404,
               "gpt-4");
  expect_error(server_->post("/v1/completions", R"({"prompt": [999999]})"), 400, "vocabulary");
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "kernel ";
  expect_error(server_->post("/v1/completions", json{{"prompt", long_prompt}}.dump()), 400,
               "maximum context length");
  expect_error(
      server_->post("/v1/completions", json{{"prompt", "x"}, {"max_tokens", kMaxModelLen}}.dump()),
      400, "maximum context length");
  // A 10 MB body is refused with 413 (the limit is 4 MiB).
  const std::string huge = "{\"prompt\": \"" + std::string(10u << 20, 'a') + "\"}";
  expect_error(server_->post("/v1/completions", huge), 413, "exceeds");
  expect_error(server_->post("/v1/nothing", "{}"), 404, "no route");
  // The server still works afterwards.
  EXPECT_EQ(server_->post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})").first, 200);
}

TEST_F(ServerLoopback, HealthModelsAndMetrics) {
  httplib::Client c = server_->client();
  const auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(json::parse(h->body)["status"], "ok");
  const auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  const json models = json::parse(m->body);
  EXPECT_EQ(models["data"][0]["id"], "doc-llama");
  EXPECT_EQ(models["data"][0]["max_model_len"], kMaxModelLen);
  ASSERT_EQ(server_->post("/v1/completions", R"({"prompt": "x", "max_tokens": 2})").first, 200);
  ASSERT_EQ(server_->post("/v1/completions", R"({"prompt": 1})").first, 400);
  const std::vector<std::string> want = {
      "vllm:num_requests_running{",
      "vllm:num_requests_waiting{",
      "vllm:gpu_cache_usage_perc{",
      "qserve:kv_pages_used{",
      "qserve:kv_pages_free{",
      "vllm:prompt_tokens_total{",
      "vllm:generation_tokens_total{",
      "vllm:time_to_first_token_seconds_bucket{",
      "vllm:time_per_output_token_seconds_count{",
      "vllm:e2e_request_latency_seconds_sum{",
      "endpoint=\"/v1/completions\",status=\"200\"}",
      "endpoint=\"/v1/completions\",status=\"400\"}",
      "vllm:request_success_total{model_name=\"doc-llama\",finished_reason=\"length\"}"};
  // Responses are counted by status before they are written (the post-routing handler), so the
  // counters are there once the client has its answers; the brief poll is kept as a safety net.
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    const auto t = c.Get("/metrics");
    ASSERT_TRUE(t);
    EXPECT_EQ(t->status, 200);
    text = t->body;
    const bool all = std::all_of(want.begin(), want.end(), [&](const std::string& s) {
      return text.find(s) != std::string::npos;
    });
    if (all || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const std::string& s : want) EXPECT_NE(text.find(s), std::string::npos) << s;
  EXPECT_EQ(text.find("vllm:generation_tokens_total{model_name=\"doc-llama\"} 0\n"),
            std::string::npos);
}

// A response is counted by status before it is written: once a client has its answer (on a new
// connection each time, so nothing waits for the server to finish the previous exchange),
// /metrics counts it already, every time, without polling.
TEST_F(ServerLoopback, ResponsesAreCountedBeforeTheClientHasThem) {
  const auto count = [&](const std::string& labels) -> int64_t {
    const auto t = server_->client().Get("/metrics");
    if (!t) return -1;
    const std::string key = "endpoint=\"" + labels + "\"} ";
    const size_t p = t->body.find(key);
    return p == std::string::npos ? 0 : std::stoll(t->body.substr(p + key.size()));
  };
  const std::string health = "/health\",status=\"200", other = "other\",status=\"404";
  const int64_t health0 = count(health), other0 = count(other);
  for (int i = 1; i <= 20; ++i) {
    const auto h = server_->client().Get("/health");
    ASSERT_TRUE(h);
    ASSERT_EQ(h->status, 200);
    EXPECT_EQ(count(health), health0 + i);
    const auto o = server_->client().Get("/no-such-path");
    ASSERT_TRUE(o);
    ASSERT_EQ(o->status, 404);
    EXPECT_EQ(count(other), other0 + i);
  }
}

TEST_F(ServerLoopback, BearerKeyAuth) {
  ServerConfig cfg;
  cfg.api_key = "sekret";
  TestServer s(*model_, *tok_, dir_, cfg, 4);
  const std::string body = R"({"prompt": "x", "max_tokens": 1})";
  EXPECT_EQ(s.post("/v1/completions", body).first, 401);
  EXPECT_EQ(s.post("/v1/completions", body, {{"Authorization", "Bearer wrong"}}).first, 401);
  const auto ok = s.post("/v1/completions", body, {{"Authorization", "Bearer sekret"}});
  EXPECT_EQ(ok.first, 200) << ok.second.dump();
  const auto r = s.client().Get("/health");  // health and metrics stay open
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const auto models = s.client().Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 401);
}

TEST_F(ServerLoopback, FullQueueAnswers429WithRetryAfter) {
  ServerConfig cfg;
  cfg.max_queue = 2;
  TestServer s(*model_, *tok_, dir_, cfg, 4);
  // Two long streams hold both slots until they are cut.
  std::atomic<bool> stop{false};
  std::vector<std::thread> holders;
  for (int i = 0; i < 2; ++i) {
    holders.emplace_back([&] {
      post_stream(
          s.url, "/v1/completions",
          json{{"prompt", kPrompt}, {"max_tokens", 200}, {"ignore_eos", true}, {"stream", true}}
              .dump(),
          "", [&](const std::string&, auto) { return !stop.load(); });
    });
  }
  const auto end = std::chrono::steady_clock::now() + 20s;
  while (s.server->http_in_flight() < 2 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_EQ(s.server->http_in_flight(), 2);
  httplib::Client c = s.client();
  const auto r =
      c.Post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "rate_limit_error");
  stop = true;
  for (std::thread& t : holders) t.join();
  // The cut streams were aborted; their slots and pages are back.
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(s.server->engine_snapshot().pages_used, 0);
  EXPECT_EQ(s.post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})").first, 200);
}

// 64 concurrent streaming clients, every third going away after two chunks: the kept streams are
// complete and equal to the non-streamed answer for their seed, no KV page stays in use, and a
// second round does not grow the process's memory.
TEST_F(ServerLoopback, SixtyFourStreamsWithDisconnects) {
  constexpr int kClients = 64, kSeeds = 16, kTokens = 12;
  const json base = {
      {"prompt", kPrompt}, {"max_tokens", kTokens}, {"temperature", 1.0}, {"ignore_eos", true}};
  // References: choice i of one n = 16 request uses seed 1000 + i.
  json ref_body = base;
  ref_body["n"] = kSeeds;
  ref_body["seed"] = 1000;
  const auto [status, refs] = server_->post("/v1/completions", ref_body.dump());
  ASSERT_EQ(status, 200) << refs.dump();
  const auto aborted_before = [&] {
    const auto t = server_->client().Get("/metrics");
    const std::string key = "finished_reason=\"abort\"} ";
    const size_t p = t->body.find(key);
    return p == std::string::npos ? int64_t{0} : std::stoll(t->body.substr(p + key.size()));
  };
  const auto round = [&](int64_t* aborted) {
    const int64_t before = aborted_before();
    std::vector<Collected> got(kClients);
    std::vector<std::thread> threads;
    for (int i = 0; i < kClients; ++i) {
      threads.emplace_back([&, i] {
        json body = base;
        body["stream"] = true;
        body["seed"] = 1000 + i % kSeeds;
        got[static_cast<size_t>(i)] =
            stream(*server_, "/v1/completions", body, i % 3 == 0 ? 2 : -1);
      });
    }
    for (std::thread& t : threads) t.join();
    for (int i = 0; i < kClients; ++i) {
      const Collected& c = got[static_cast<size_t>(i)];
      if (i % 3 == 0) {
        EXPECT_TRUE(c.result.cancelled) << "client " << i;
        continue;
      }
      EXPECT_EQ(c.result.status, 200) << "client " << i << ": " << c.result.error;
      EXPECT_TRUE(c.result.done) << "client " << i;
      EXPECT_EQ(c.text, refs["choices"][i % kSeeds]["text"]) << "client " << i;
      EXPECT_EQ(c.chunks.back()["choices"][0]["finish_reason"], "length") << "client " << i;
    }
    ASSERT_TRUE(server_->idle()) << "requests still active after every client ended";
    EXPECT_EQ(server_->server->engine_snapshot().pages_used, 0);
    *aborted = aborted_before() - before;
  };
  int64_t aborted = 0;
  round(&aborted);
  // Most cut streams end as engine aborts (one that had nearly finished may complete first).
  EXPECT_GE(aborted, (kClients / 3) / 2);
  malloc_trim(0);
  const int64_t rss1 = rss_bytes();
  round(&aborted);
  malloc_trim(0);
  const int64_t rss2 = rss_bytes();
  EXPECT_LT(rss2 - rss1, int64_t{32} << 20) << "RSS grew from " << rss1 << " to " << rss2;
}

TEST_F(ServerLoopback, ShutdownDrainsInFlightStreams) {
  TestServer* s = new TestServer(*model_, *tok_, dir_, ServerConfig{}, 4);
  Collected c;
  std::thread client([&] {
    c = stream(*s, "/v1/completions",
               json{{"prompt", kPrompt},
                    {"max_tokens", 20},
                    {"ignore_eos", true},
                    {"temperature", 0},
                    {"stream", true}});
  });
  const auto end = std::chrono::steady_clock::now() + 20s;
  while (s->server->engine_snapshot().active_requests == 0 &&
         std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(2ms);
  }
  s->server->shutdown(20s);  // drains: the stream runs to its end
  s->thread.join();
  client.join();
  EXPECT_TRUE(c.result.done);
  EXPECT_EQ(c.chunks.back()["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(s->server->engine_snapshot().pages_used, 0);
  s->thread = std::thread([] {});  // the destructor joins it
  delete s;
}

}  // namespace
}  // namespace qserve::server
