// POST /v1/completions and /v1/chat/completions: parse, tokenize (or render the chat), check
// the context, submit n requests per prompt to the engine loop, then answer with one JSON body
// or stream server-sent events. A streaming client that goes away (a chunk write fails) has its
// requests aborted, which frees their KV pages at once.
#include <httplib.h>

#include <chrono>
#include <optional>

#include "core/error.h"
#include "server/openai_response.h"
#include "server/server_context.h"

namespace qserve::server {

namespace {

using nlohmann::json;

// Releases an admission slot when the last owner of the request's state goes away.
struct AdmissionSlot {
  explicit AdmissionSlot(ServerContext& c) : ctx(c) {}
  ~AdmissionSlot() { ctx.metrics.set_http_in_flight(--ctx.in_flight); }
  AdmissionSlot(const AdmissionSlot&) = delete;
  AdmissionSlot& operator=(const AdmissionSlot&) = delete;
  ServerContext& ctx;
};

struct Prepared {
  std::vector<GenerationRequest> requests;  // prompt-major: prompt p, choice i at p * n + i
  std::vector<std::string> echo;            // per prompt, the text to prepend with echo
  int64_t prompt_tokens = 0;                // each prompt counted once, as OpenAI does
};

std::string context_error(int64_t limit, int64_t prompt, int64_t max_tokens, bool given) {
  if (!given || prompt >= limit) {
    return "This model's maximum context length is " + std::to_string(limit) +
           " tokens. However, your prompt has " + std::to_string(prompt) +
           " tokens, which leaves no room for a completion. Please shorten the prompt.";
  }
  return "This model's maximum context length is " + std::to_string(limit) +
         " tokens. However, you requested " + std::to_string(prompt + max_tokens) + " tokens (" +
         std::to_string(prompt) + " in the prompt, " + std::to_string(max_tokens) +
         " for the completion). Please reduce the prompt or max_tokens.";
}

Prepared prepare(ServerContext& ctx, const OpenAIRequest& r) {
  Prepared out;
  std::vector<std::vector<int32_t>> prompts;
  if (r.kind == ApiKind::kChat) {
    std::string text;
    try {
      text = render_chat_prompt(ctx.chat, r.messages, r.add_generation_prompt);
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "messages");
    }
    prompts.push_back(ctx.tokenizer.encode(text, /*add_special_tokens=*/false));
    out.echo.emplace_back();
  } else {
    for (const PromptInput& p : r.prompts) {
      if (p.text) {
        prompts.push_back(ctx.tokenizer.encode(*p.text, /*add_special_tokens=*/true));
        out.echo.push_back(*p.text);
      } else {
        for (const int32_t id : p.ids) {
          if (id >= ctx.tokenizer.vocab_size()) {
            throw ApiError(400,
                           "prompt token id " + std::to_string(id) +
                               " is outside the vocabulary (size " +
                               std::to_string(ctx.tokenizer.vocab_size()) + ")",
                           "prompt");
          }
        }
        prompts.push_back(p.ids);
        out.echo.push_back(r.echo ? ctx.tokenizer.decode(p.ids, /*skip_special_tokens=*/true)
                                  : std::string());
      }
    }
  }
  const int64_t limit = ctx.loop.max_model_len();
  for (std::vector<int32_t>& ids : prompts) {
    const int64_t n_prompt = static_cast<int64_t>(ids.size());
    if (n_prompt == 0) throw ApiError(400, "the prompt is empty", "prompt");
    SamplingParams p = r.sampling;
    if (!r.max_tokens_given) {
      // OpenAI's defaults: 16 tokens for completions, the rest of the context for chat.
      p.max_tokens = r.kind == ApiKind::kCompletion ? 16 : limit - n_prompt;
      p.max_tokens = std::min(p.max_tokens, limit - n_prompt);
      p.min_tokens = std::min(p.min_tokens, std::max<int64_t>(p.max_tokens, 0));
    }
    if (n_prompt >= limit || n_prompt + p.max_tokens > limit) {
      throw ApiError(400, context_error(limit, n_prompt, p.max_tokens, r.max_tokens_given),
                     r.kind == ApiKind::kChat ? "messages" : "prompt");
    }
    out.prompt_tokens += n_prompt;
    const uint64_t base_seed = r.seed_given ? p.seed : 0;
    for (int i = 0; i < r.n; ++i) {
      GenerationRequest g;
      g.prompt_ids = ids;
      g.params = p;
      // A given seed makes every choice reproducible (choice i uses seed + i); without one each
      // choice gets a fresh random seed, as clients expect from temperature > 0.
      g.params.seed = r.seed_given ? base_seed + static_cast<uint64_t>(i) : ctx.random_seed();
      out.requests.push_back(std::move(g));
    }
  }
  return out;
}

TokenText token_text(const Tokenizer& tok) {
  return [&tok](int32_t id) { return tok.decode({&id, 1}, /*skip_special_tokens=*/false); };
}

std::string new_id(ServerContext& ctx, ApiKind kind) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(ctx.random_seed() ^ ctx.next_request++));
  return std::string(kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-") + buf;
}

void respond_whole(ServerContext& ctx, const OpenAIRequest& r, const ResponseMeta& meta,
                   const Prepared& prep, std::vector<std::shared_ptr<RequestChannel>>& channels,
                   httplib::Response& res) {
  std::vector<ChoiceResult> choices(channels.size());
  int64_t completion_tokens = 0;
  for (size_t c = 0; c < channels.size(); ++c) {
    ChoiceResult& ch = choices[c];
    ch.index = static_cast<int>(c);
    const size_t prompt = c / static_cast<size_t>(r.n);
    if (r.echo) {
      ch.text = prep.echo[prompt];
      ch.text_offset = ch.text.size();
    }
    std::vector<RequestOutput> outs;
    while (!channels[c]->wait_pop(outs, std::chrono::milliseconds(500))) {
    }
    for (const RequestOutput& o : outs) {
      ch.text += o.text;
      ch.token_ids.insert(ch.token_ids.end(), o.token_ids.begin(), o.token_ids.end());
      ch.logprobs.insert(ch.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      if (o.finished) {
        ch.finish_reason = o.finish_reason;
        ch.stop_reason = o.stop_reason;
      }
    }
    completion_tokens += static_cast<int64_t>(ch.token_ids.size());
  }
  const json body = full_response(meta, choices, token_text(ctx.tokenizer), r.logprobs,
                                  r.top_logprobs, prep.prompt_tokens, completion_tokens);
  res.set_content(dump_json(body), "application/json");
}

// The state of one streamed response, shared by the content provider and its releaser.
struct Stream {
  ServerContext* ctx = nullptr;
  OpenAIRequest request;
  ResponseMeta meta;
  Prepared prep;
  std::vector<std::shared_ptr<RequestChannel>> channels;
  std::vector<bool> finished;
  int64_t completion_tokens = 0;
  std::unique_ptr<AdmissionSlot> slot;

  void abort_unfinished() {
    for (size_t c = 0; c < channels.size(); ++c) {
      if (!finished[c]) ctx->loop.abort(channels[c]);
    }
  }

  // Writes the whole stream; false when the client went away (its requests are then aborted).
  bool run(httplib::DataSink& sink) {
    const bool chat = meta.kind == ApiKind::kChat;
    const bool usage = request.include_usage;
    const auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
    const TokenText text = token_text(ctx->tokenizer);
    for (size_t c = 0; c < channels.size(); ++c) {
      json first;
      if (chat) {
        first = stream_chunk(meta, static_cast<int>(c), {{"role", "assistant"}, {"content", ""}},
                             nullptr, std::nullopt, std::nullopt, usage);
      } else if (request.echo) {
        first = stream_chunk(meta, static_cast<int>(c), prep.echo[c / request.n], nullptr,
                             std::nullopt, std::nullopt, usage);
      }
      if (!first.is_null() && !write(sse_event(first))) return false;
    }
    size_t remaining = channels.size();
    std::vector<size_t> offsets(channels.size(), 0);
    auto last_write = std::chrono::steady_clock::now();
    while (remaining > 0) {
      bool any = false;
      for (size_t c = 0; c < channels.size(); ++c) {
        if (finished[c]) continue;
        std::vector<RequestOutput> outs;
        // Block on the first unfinished choice only; poll the others.
        const auto wait = any ? std::chrono::milliseconds(0) : std::chrono::milliseconds(50);
        const bool done = channels[c]->wait_pop(outs, wait);
        for (const RequestOutput& o : outs) {
          completion_tokens += static_cast<int64_t>(o.token_ids.size());
          if (o.text.empty() && o.logprobs.empty() && !o.finished) continue;
          json lp = nullptr;
          if (request.logprobs) {
            if (chat) {
              lp = chat_logprobs(o.logprobs, text, request.top_logprobs);
            } else {
              lp = completion_logprobs(o.logprobs, text, offsets[c], request.top_logprobs);
              for (const SampledToken& t : o.logprobs) offsets[c] += text(t.id).size();
            }
          }
          const json delta = chat ? json{{"content", o.text}} : json(o.text);
          std::optional<std::string> finish, stop;
          if (o.finished) {
            finish = o.finish_reason;
            stop = o.stop_reason;
          }
          if (!write(sse_event(
                  stream_chunk(meta, static_cast<int>(c), delta, lp, finish, stop, usage)))) {
            return false;
          }
          last_write = std::chrono::steady_clock::now();
        }
        any = any || !outs.empty();
        if (done) {
          finished[c] = true;
          --remaining;
        }
      }
      if (!any && std::chrono::steady_clock::now() - last_write > ctx->cfg.keepalive) {
        // An SSE comment: clients ignore it, and a failed write tells us the client is gone
        // even while a long prompt is still being prefilled.
        if (!write(": keep-alive\n\n")) return false;
        last_write = std::chrono::steady_clock::now();
      }
    }
    if (usage && !write(sse_event(usage_chunk(meta, prep.prompt_tokens, completion_tokens)))) {
      return false;
    }
    if (!write(kSseDone)) return false;
    sink.done();
    return true;
  }
};

}  // namespace

void handle_generation(ServerContext& ctx, ApiKind kind, const httplib::Request& req,
                       httplib::Response& res) {
  const std::string id = new_id(ctx, kind);
  res.set_header("X-Request-Id", id);
  if (ctx.draining) throw ApiError(503, "the server is shutting down");
  // Admission: a bounded number of generation requests in flight.
  if (++ctx.in_flight > ctx.cfg.max_queue) {
    ctx.metrics.set_http_in_flight(--ctx.in_flight);
    ctx.metrics.on_rejected_queue_full();
    res.set_header("Retry-After", "1");
    throw ApiError(429, "the server is at its limit of " + std::to_string(ctx.cfg.max_queue) +
                            " requests in flight; retry later");
  }
  ctx.metrics.set_http_in_flight(ctx.in_flight.load());
  auto slot = std::make_unique<AdmissionSlot>(ctx);

  OpenAIRequest r = parse_openai_request(req.body, kind);
  if (!r.model.empty() && r.model != ctx.cfg.served_model_name) {
    throw ApiError(404, "The model `" + r.model + "` does not exist.", "model", "NotFoundError");
  }
  ResponseMeta meta{kind, id, static_cast<int64_t>(std::time(nullptr)), ctx.cfg.served_model_name};
  Prepared prep = prepare(ctx, r);
  std::vector<std::shared_ptr<RequestChannel>> channels;
  try {
    channels = ctx.loop.submit(prep.requests);
  } catch (const Error& e) {
    if (ctx.draining) throw ApiError(503, e.what());
    throw ApiError(400, e.what());
  }

  if (!r.stream) {
    respond_whole(ctx, r, meta, prep, channels, res);
    return;
  }
  auto stream = std::make_shared<Stream>();
  stream->ctx = &ctx;
  stream->request = std::move(r);
  stream->meta = meta;
  stream->prep = std::move(prep);
  stream->channels = std::move(channels);
  stream->finished.assign(stream->channels.size(), false);
  stream->slot = std::move(slot);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream](size_t /*offset*/, httplib::DataSink& sink) { return stream->run(sink); },
      // Runs when the response is done with, written or not: a stream cut short (client gone,
      // write timeout, server stopping) must not leave its requests running.
      [stream](bool /*success*/) { stream->abort_unfinished(); });
}

}  // namespace qserve::server
