#include "server/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <thread>

#include "core/error.h"
#include "server/api_error.h"
#include "server/openai_response.h"
#include "server/server_context.h"

namespace qserve::server {

struct OpenAIServer::Impl {
  Impl(std::unique_ptr<Engine> engine, const Tokenizer& tok, ChatPromptFormat chat,
       ServerConfig cfg)
      : ctx(std::move(engine), tok, std::move(chat), std::move(cfg)) {}

  ServerContext ctx;
  httplib::Server http;
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  bool stopped = false;
  bool listening = false;
};

namespace {

using nlohmann::json;

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(dump_json(e.to_json()), "application/json");
}

// Routes we report in metrics; anything else counts as "other" (so a scan of random paths
// cannot grow the label set).
std::string endpoint_label(const std::string& path) {
  for (const char* p :
       {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"}) {
    if (path == p) return p;
  }
  return "other";
}

std::string timestamp() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

OpenAIServer::OpenAIServer(std::unique_ptr<Engine> engine, const Tokenizer& tokenizer,
                           ChatPromptFormat chat_format, ServerConfig cfg)
    : impl_(std::make_unique<Impl>(std::move(engine), tokenizer, std::move(chat_format),
                                   std::move(cfg))) {
  ServerContext& ctx = impl_->ctx;
  httplib::Server& http = impl_->http;
  // One thread per open connection: enough for --max-queue streams plus a few for probes
  // (capped; beyond that, connections wait for a thread before they are answered).
  const int threads = ctx.cfg.http_threads > 0
                          ? ctx.cfg.http_threads
                          : static_cast<int>(std::min<int64_t>(ctx.cfg.max_queue + 8, 2048));
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_payload_max_length(ctx.cfg.max_body_bytes);
  http.set_keep_alive_timeout(2);
  http.set_read_timeout(30);
  http.set_write_timeout(30);

  http.set_pre_routing_handler([&ctx](const httplib::Request& req, httplib::Response& res) {
    if (ctx.cfg.api_key.empty() || req.path.rfind("/v1/", 0) != 0) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (req.get_header_value("Authorization") != "Bearer " + ctx.cfg.api_key) {
      send_error(res,
                 ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  const auto generation = [&ctx](ApiKind kind) {
    return [&ctx, kind](const httplib::Request& req, httplib::Response& res) {
      try {
        handle_generation(ctx, kind, req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      }
    };
  };
  http.Post("/v1/completions", generation(ApiKind::kCompletion));
  http.Post("/v1/chat/completions", generation(ApiKind::kChat));
  http.Get("/v1/models", [&ctx](const httplib::Request&, httplib::Response& res) {
    const json model = {{"id", ctx.cfg.served_model_name},
                        {"object", "model"},
                        {"created", 0},
                        {"owned_by", "qserve"},
                        {"root", ctx.cfg.served_model_name},
                        {"max_model_len", ctx.loop.max_model_len()}};
    res.set_content(dump_json({{"object", "list"}, {"data", json::array({model})}}),
                    "application/json");
  });
  http.Get("/health", [&ctx](const httplib::Request&, httplib::Response& res) {
    if (ctx.draining) {
      send_error(res, ApiError(503, "the server is shutting down"));
      return;
    }
    const EngineSnapshot s = ctx.loop.snapshot();
    res.set_content(dump_json({{"status", "ok"},
                               {"running", s.running},
                               {"waiting", s.waiting},
                               {"kv_pages_used", s.pages_used},
                               {"kv_pages_total", s.pages_total}}),
                    "application/json");
  });
  http.Get("/metrics", [&ctx](const httplib::Request&, httplib::Response& res) {
    res.set_content(ctx.metrics.render(ctx.cfg.served_model_name),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  // Errors httplib produces itself (413 body too large, 404 no route, 400 unreadable request)
  // get an OpenAI-style body too.
  http.set_error_handler(httplib::Server::HandlerWithResponse(
      [&ctx](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        std::string message;
        switch (res.status) {
          case 413:
            message = "the request body exceeds the limit of " +
                      std::to_string(ctx.cfg.max_body_bytes) + " bytes";
            break;
          case 404:
            message = "no route for " + req.method + " " + req.path;
            break;
          case 405:
            message = "method not allowed";
            break;
          default:
            message = "bad request (HTTP " + std::to_string(res.status) + ")";
            break;
        }
        send_error(res, ApiError(res.status, message));
        return httplib::Server::HandlerResponse::Handled;
      }));
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        send_error(res, ApiError(500, "internal error: " + what));
      });
  // Count every response by status before it is written (httplib runs the post-routing handler
  // once the status is final, error handler included, and before sending the status line), so a
  // client that has its answer always finds it in /metrics. The logger runs after the write.
  http.set_post_routing_handler([&ctx](const httplib::Request& req, httplib::Response& res) {
    ctx.metrics.on_http_response(endpoint_label(req.path), res.status);
  });
  http.set_logger([&ctx](const httplib::Request& req, const httplib::Response& res) {
    if (!ctx.cfg.log_requests) return;
    const std::string id = res.get_header_value("X-Request-Id");
    std::fprintf(stderr, "%s %s %s %s %d%s%s\n", timestamp().c_str(), req.remote_addr.c_str(),
                 req.method.c_str(), req.path.c_str(), res.status,
                 id.empty() ? "" : " id=", id.c_str());
  });
}

OpenAIServer::~OpenAIServer() {
  shutdown(std::chrono::milliseconds(0));
  impl_->ctx.loop.stop();
}

int OpenAIServer::bind() {
  const ServerConfig& cfg = impl_->ctx.cfg;
  // httplib listens with a backlog of 5, so a burst of connections (64 streaming clients
  // starting at once) overflows the accept queue and some connections stall or fail. Keep the
  // listening socket to raise the backlog once bound; SO_REUSEADDR is httplib's default option,
  // which this callback replaces.
  int listen_fd = -1;
  impl_->http.set_socket_options([&listen_fd](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  int port = -1;
  if (cfg.port == 0) {
    port = impl_->http.bind_to_any_port(cfg.host);
  } else {
    port = impl_->http.bind_to_port(cfg.host, cfg.port) ? cfg.port : -1;
  }
  check(port > 0, "serve: cannot listen on " + cfg.host + ":" + std::to_string(cfg.port) +
                      " (address in use, or not an address of this machine)");
  if (listen_fd >= 0) ::listen(listen_fd, SOMAXCONN);
  return port;
}

void OpenAIServer::run() {
  {
    std::lock_guard<std::mutex> lock(impl_->stop_mu);
    impl_->listening = !impl_->stopped;
  }
  impl_->stop_cv.notify_all();
  if (impl_->listening) impl_->http.listen_after_bind();
  // Every connection is closed now; whatever is still active (nothing, after a drain) is
  // cancelled and the engine thread ends.
  impl_->ctx.loop.stop();
}

void OpenAIServer::shutdown(std::chrono::milliseconds drain) {
  {
    std::lock_guard<std::mutex> lock(impl_->stop_mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  ServerContext& ctx = impl_->ctx;
  ctx.draining = true;
  // No new connections; open ones finish their current request. httplib's stop() does nothing
  // before its listen loop runs, so when run() has begun, wait until the loop is up.
  {
    std::unique_lock<std::mutex> lock(impl_->stop_mu);
    if (impl_->listening) {
      for (int i = 0; i < 200 && !impl_->http.is_running(); ++i) {
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        lock.lock();
      }
    }
  }
  impl_->http.stop();
  if (!ctx.loop.wait_idle(drain)) ctx.loop.abort_all();
}

const Metrics& OpenAIServer::metrics() const {
  return impl_->ctx.metrics;
}
EngineSnapshot OpenAIServer::engine_snapshot() const {
  return impl_->ctx.loop.snapshot();
}
int64_t OpenAIServer::http_in_flight() const {
  return impl_->ctx.in_flight.load();
}

}  // namespace qserve::server
