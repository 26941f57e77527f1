// State shared by the server's HTTP handlers (server.cpp routes, generation.cpp the completion
// endpoints). Internal to src/server.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>

#include "server/chat_prompt.h"
#include "server/engine_loop.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "server/server.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace qserve::server {

struct ServerContext {
  ServerContext(std::unique_ptr<Engine> engine, const Tokenizer& tok, ChatPromptFormat chat_format,
                ServerConfig config)
      : tokenizer(tok),
        chat(std::move(chat_format)),
        cfg(std::move(config)),
        loop(std::move(engine), &metrics),
        seed_rng(std::random_device{}()) {}

  const Tokenizer& tokenizer;
  const ChatPromptFormat chat;
  const ServerConfig cfg;
  Metrics metrics;
  EngineLoop loop;
  std::atomic<int64_t> in_flight{0};  // admitted generation requests not yet answered
  std::atomic<bool> draining{false};
  std::atomic<uint64_t> next_request{0};
  std::mutex seed_mu;
  std::mt19937_64 seed_rng;  // seeds for requests that give none

  uint64_t random_seed() {
    std::lock_guard<std::mutex> lock(seed_mu);
    return seed_rng();
  }
};

// POST /v1/completions and /v1/chat/completions. Throws ApiError for client errors.
void handle_generation(ServerContext& ctx, ApiKind kind, const httplib::Request& req,
                       httplib::Response& res);

}  // namespace qserve::server
