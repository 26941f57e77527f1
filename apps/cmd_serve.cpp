// qserve serve: the OpenAI-compatible HTTP server over one model (src/server/server.h,
// docs/server.md). SIGTERM or SIGINT: stop accepting, let in-flight requests finish for up to
// --shutdown-timeout seconds, cancel the rest, exit 0.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "engine_options.h"
#include "server/chat_prompt.h"
#include "server/server.h"

namespace qserve::cli {

namespace {

struct ServeArgs {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string served_model_name;
  int64_t max_queue = 256;
  std::string api_key;
  std::string chat_template;
  std::string tokenizer;
  size_t max_body_bytes = 4u << 20;
  double shutdown_timeout_s = 30.0;
  bool no_request_log = false;
  PrecisionArgs precision;
  EngineArgs engine;
};

void serve(const ServeArgs& a) {
  // Signals go to one waiting thread (sigwait), never to a handler: blocked here, before any
  // thread starts, so that every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not a kill

  LoadedModel m = load_model(a.model, /*need_tokenizer=*/true, a.precision.options(), a.tokenizer);
  // The chat template comes with the tokenizer's folder when --tokenizer names one.
  const std::string template_dir = a.tokenizer.empty() ? a.model : a.tokenizer;
  server::ServerConfig cfg;
  cfg.host = a.host;
  cfg.port = a.port;
  cfg.served_model_name =
      a.served_model_name.empty()
          ? std::filesystem::path(a.model).lexically_normal().filename().string()
          : a.served_model_name;
  if (cfg.served_model_name.empty()) cfg.served_model_name = a.model;
  cfg.api_key = a.api_key;
  if (cfg.api_key.empty()) {
    if (const char* env = std::getenv("QSERVE_API_KEY")) cfg.api_key = env;
  }
  cfg.max_queue = a.max_queue;
  cfg.max_body_bytes = a.max_body_bytes;
  cfg.log_requests = !a.no_request_log;
  const std::string device = resolve_device(a.engine.device);
  server::ChatPromptFormat chat =
      server::load_chat_prompt_format(template_dir, a.chat_template, *m.tokenizer);
  if (!chat.formatter) {
    std::fprintf(stderr, "warning: no chat template (%s); /v1/chat/completions will answer 400\n",
                 chat.unavailable_reason.c_str());
  } else {
    std::fprintf(stderr, "chat template: %s\n", chat.formatter->description().c_str());
  }
  auto engine = make_engine(*m.model, m.tokenizer.get(), a.engine.config(64), device);
  const int64_t pages = engine->blocks().num_pages();
  const int64_t max_len = engine->max_model_len();
  server::OpenAIServer srv(std::move(engine), *m.tokenizer, chat, cfg);
  const int port = srv.bind();
  std::fprintf(stderr,
               "qserve serve: model '%s' on %s, %lld KV pages, context %lld; listening on "
               "http://%s:%d (max %lld requests in flight%s)\n",
               cfg.served_model_name.c_str(), device_description(device).c_str(),
               static_cast<long long>(pages), static_cast<long long>(max_len), cfg.host.c_str(),
               port, static_cast<long long>(cfg.max_queue),
               cfg.api_key.empty() ? "" : ", API key required");
  std::fflush(stderr);

  const auto drain = std::chrono::milliseconds(static_cast<int64_t>(a.shutdown_timeout_s * 1e3));
  std::atomic<bool> signalled{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (signalled.exchange(true)) return;  // woken by the main thread below
    std::fprintf(stderr, "qserve serve: signal %d: stopping (draining for up to %.0f s)\n", sig,
                 a.shutdown_timeout_s);
    srv.shutdown(drain);
  });
  srv.run();
  // run() returns after a shutdown; should it ever return on its own, wake the waiter.
  if (!signalled.exchange(true)) pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  const server::EngineSnapshot s = srv.engine_snapshot();
  std::fprintf(stderr, "qserve serve: stopped; %lld KV pages in use\n",
               static_cast<long long>(s.pages_used));
}

}  // namespace

void add_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd =
      app.add_subcommand("serve",
                         "OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, "
                         "/v1/models, /health, /metrics (docs/server.md)");
  cmd->add_option("--model", args->model,
                  "HuggingFace model folder, or synthetic:NAME with --tokenizer (random weights "
                  "of a real shape, for load tests)")
      ->required();
  cmd->add_option("--tokenizer", args->tokenizer,
                  "Take the tokenizer (and chat template) from this folder; with a synthetic "
                  "model its vocabulary sets the model's");
  cmd->add_option("--host", args->host, "Address to listen on (default 127.0.0.1)");
  cmd->add_option("--port", args->port, "Port (default 8000; 0 = any free port)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--served-model-name", args->served_model_name,
                  "The model name clients use (default: the model folder's name)");
  cmd->add_option("--max-queue", args->max_queue,
                  "Generation requests in flight (running + waiting) before new ones get 429")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--api-key", args->api_key,
                  "Require 'Authorization: Bearer KEY' on /v1/* (default: env QSERVE_API_KEY)");
  cmd->add_option("--chat-template", args->chat_template,
                  "llama-3, llama-2, mistral, chatml or vicuna (default: from the model folder)");
  cmd->add_option("--max-body-bytes", args->max_body_bytes,
                  "Larger request bodies are answered 413 (default 4 MiB)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--shutdown-timeout", args->shutdown_timeout_s,
                  "On SIGTERM, seconds in-flight requests may take to finish before they are "
                  "cancelled (default 30)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--no-request-log", args->no_request_log, "No per-request log lines on stderr");
  add_precision_options(cmd, args->precision, /*norm_flag=*/true);
  add_engine_options(cmd, args->engine);
  cmd->callback([args] { serve(*args); });
}

}  // namespace qserve::cli
