// The OpenAI-compatible HTTP server (qserve serve): /v1/completions, /v1/chat/completions (plain
// and streamed as server-sent events), /v1/models, /health, /metrics. HTTP threads (cpp-httplib)
// parse, tokenize and wait; one EngineLoop thread drives the Engine. docs/server.md describes
// the endpoints, fields, errors and operations.
//
//   OpenAIServer server(std::move(engine), *tokenizer, chat_format, cfg);
//   int port = server.bind();   // port 0: an ephemeral port
//   std::thread t([&] { server.run(); });
//   ...
//   server.shutdown(std::chrono::seconds(30));  // stop accepting, drain, then cancel
//   t.join();
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "server/chat_prompt.h"
#include "server/engine_loop.h"
#include "server/metrics.h"

namespace qserve::server {

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8000;                   // 0: an ephemeral port (bind() returns it)
  std::string served_model_name;     // the name clients send as "model" and /v1/models lists
  std::string api_key;               // "" = no auth; else /v1/* needs "Authorization: Bearer KEY"
  int64_t max_queue = 256;           // generation requests in flight; more are answered 429
  size_t max_body_bytes = 4u << 20;  // larger bodies are answered 413
  int http_threads = 0;              // 0: max_queue + 8, at most 2048 (one per connection)
  bool log_requests = true;          // one line per request on stderr, with its id
  std::chrono::milliseconds keepalive{2000};  // SSE comment after this long without output
};

class OpenAIServer {
 public:
  OpenAIServer(std::unique_ptr<Engine> engine, const Tokenizer& tokenizer,
               ChatPromptFormat chat_format, ServerConfig cfg);
  ~OpenAIServer();
  OpenAIServer(const OpenAIServer&) = delete;
  OpenAIServer& operator=(const OpenAIServer&) = delete;

  // Binds host:port; returns the port. Throws qserve::Error if it cannot.
  int bind();
  // Serves until shutdown(); returns once every connection is closed and the engine thread has
  // ended.
  void run();
  // Thread-safe (not async-signal-safe: call it from a normal thread). Stops accepting
  // connections, answers new generation requests 503, lets in-flight requests finish for up to
  // `drain`, then cancels what is left (finish_reason "abort").
  void shutdown(std::chrono::milliseconds drain);

  const Metrics& metrics() const;
  EngineSnapshot engine_snapshot() const;
  int64_t http_in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qserve::server
