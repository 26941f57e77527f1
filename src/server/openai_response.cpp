#include "server/openai_response.h"

#include <charconv>

namespace qserve::server {

using nlohmann::json;

namespace {

const char* object_name(ApiKind k, bool chunk) {
  if (k == ApiKind::kCompletion) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (const char c : s) b.push_back(static_cast<int>(static_cast<unsigned char>(c)));
  return b;
}

}  // namespace

json stop_reason_json(const std::string& stop_reason) {
  if (stop_reason.empty()) return nullptr;
  const std::string prefix = "token:";
  if (stop_reason.rfind(prefix, 0) == 0) {
    int64_t id = 0;
    const char* b = stop_reason.data() + prefix.size();
    const char* e = stop_reason.data() + stop_reason.size();
    const auto [p, ec] = std::from_chars(b, e, id);
    if (ec == std::errc() && p == e) return id;
  }
  return stop_reason;
}

json completion_logprobs(std::span<const SampledToken> lps, const TokenText& text,
                         size_t first_offset, int top_logprobs) {
  json tokens = json::array(), token_logprobs = json::array(), tops = json::array(),
       offsets = json::array();
  size_t offset = first_offset;
  for (const SampledToken& t : lps) {
    const std::string s = text(t.id);
    tokens.push_back(s);
    token_logprobs.push_back(t.logprob);
    offsets.push_back(offset);
    offset += s.size();
    json top = json::object();
    for (size_t i = 0; i < t.top.size() && static_cast<int>(i) < top_logprobs; ++i) {
      top[text(t.top[i].id)] = t.top[i].logprob;
    }
    tops.push_back(top_logprobs > 0 ? top : json(nullptr));
  }
  return {{"tokens", tokens},
          {"token_logprobs", token_logprobs},
          {"top_logprobs", tops},
          {"text_offset", offsets}};
}

json chat_logprobs(std::span<const SampledToken> lps, const TokenText& text, int top_logprobs) {
  json content = json::array();
  for (const SampledToken& t : lps) {
    const std::string s = text(t.id);
    json top = json::array();
    for (size_t i = 0; i < t.top.size() && static_cast<int>(i) < top_logprobs; ++i) {
      const std::string ts = text(t.top[i].id);
      top.push_back({{"token", ts}, {"logprob", t.top[i].logprob}, {"bytes", bytes_of(ts)}});
    }
    content.push_back(
        {{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_of(s)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

json full_response(const ResponseMeta& meta, std::span<const ChoiceResult> choices,
                   const TokenText& text, bool logprobs, int top_logprobs, int64_t prompt_tokens,
                   int64_t completion_tokens) {
  json cs = json::array();
  for (const ChoiceResult& c : choices) {
    json choice = {{"index", c.index},
                   {"finish_reason", c.finish_reason},
                   {"stop_reason", stop_reason_json(c.stop_reason)}};
    if (meta.kind == ApiKind::kCompletion) {
      choice["text"] = c.text;
      choice["logprobs"] =
          logprobs ? completion_logprobs(c.logprobs, text, c.text_offset, top_logprobs) : json();
    } else {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      choice["logprobs"] = logprobs ? chat_logprobs(c.logprobs, text, top_logprobs) : json();
    }
    cs.push_back(std::move(choice));
  }
  return {{"id", meta.id},           {"object", object_name(meta.kind, false)},
          {"created", meta.created}, {"model", meta.model},
          {"choices", cs},           {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

json stream_chunk(const ResponseMeta& meta, int index, const json& delta, const json& logprobs,
                  const std::optional<std::string>& finish_reason,
                  const std::optional<std::string>& stop_reason, bool with_usage) {
  json choice = {{"index", index}, {"logprobs", logprobs}};
  if (meta.kind == ApiKind::kCompletion) {
    choice["text"] = delta;
  } else {
    choice["delta"] = delta;
  }
  choice["finish_reason"] = finish_reason ? json(*finish_reason) : json();
  if (finish_reason) choice["stop_reason"] = stop_reason_json(stop_reason.value_or(""));
  json j = {{"id", meta.id},
            {"object", object_name(meta.kind, true)},
            {"created", meta.created},
            {"model", meta.model},
            {"choices", json::array({choice})}};
  if (with_usage) j["usage"] = nullptr;
  return j;
}

json usage_chunk(const ResponseMeta& meta, int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"id", meta.id},
          {"object", object_name(meta.kind, true)},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array()},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& j) {
  return "data: " + dump_json(j) + "\n\n";
}

}  // namespace qserve::server
