#include "server/openai_request.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

namespace qserve::server {

namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, param);
}

[[noreturn]] void unsupported(const std::string& param, const std::string& what) {
  throw ApiError(400, "'" + param + "' is unsupported by this server: " + what, param);
}

// Nesting depth of a JSON text (brackets outside strings), without parsing it, so that a deeply
// nested body is refused before the parser and the value's destructor recurse into it.
int json_depth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

// The field, or null when absent (a null value counts as absent, as in OpenAI's API).
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

int64_t get_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(name, "'" + name + "' must be an integer");
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      bad(name, "'" + name + "' is out of range [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
    }
    x = static_cast<int64_t>(u);
  } else {
    x = v.get<int64_t>();
  }
  if (x < lo || x > hi) {
    bad(name, "'" + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                  "], got " + std::to_string(x));
  }
  return x;
}

double get_number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) bad(name, "'" + name + "' must be a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    bad(name, "'" + name + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() + "]");
  }
  return x;
}

bool get_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad(name, "'" + name + "' must be a boolean");
  return v.get<bool>();
}

std::string get_string(const json& v, const std::string& name) {
  if (!v.is_string()) bad(name, "'" + name + "' must be a string");
  return v.get<std::string>();
}

std::vector<int32_t> get_token_ids(const json& v, const std::string& name) {
  if (v.empty()) bad(name, "'" + name + "' must not be an empty list of token ids");
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (const json& x : v) {
    ids.push_back(static_cast<int32_t>(get_int(x, name, 0, std::numeric_limits<int32_t>::max())));
  }
  return ids;
}

std::vector<PromptInput> parse_prompt(const json& body) {
  const json* p = field(body, "prompt");
  if (p == nullptr) bad("prompt", "'prompt' is required");
  std::vector<PromptInput> out;
  if (p->is_string()) {
    out.push_back({p->get<std::string>(), {}});
    return out;
  }
  if (!p->is_array()) {
    bad("prompt",
        "'prompt' must be a string, a list of strings, a list of token ids or a list "
        "of lists of token ids");
  }
  if (p->empty()) bad("prompt", "'prompt' must not be empty");
  if ((*p)[0].is_number_integer()) {
    out.push_back({std::nullopt, get_token_ids(*p, "prompt")});
    return out;
  }
  if (p->size() > static_cast<size_t>(kMaxPrompts)) {
    bad("prompt", "'prompt' holds " + std::to_string(p->size()) + " prompts; at most " +
                      std::to_string(kMaxPrompts) + " per request");
  }
  for (const json& e : *p) {
    if (e.is_string()) {
      out.push_back({e.get<std::string>(), {}});
    } else if (e.is_array()) {
      out.push_back({std::nullopt, get_token_ids(e, "prompt")});
    } else {
      bad("prompt", "'prompt' list entries must all be strings or all be lists of token ids");
    }
  }
  return out;
}

// A message's content: a string, null (an assistant turn with no text), or a list of
// {"type": "text", "text": ...} parts, which are concatenated.
std::string message_content(const json& m) {
  const json* c = field(m, "content");
  if (c == nullptr) return {};
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) bad("messages", "message 'content' must be a string or a list of parts");
  std::string text;
  for (const json& part : *c) {
    if (!part.is_object()) bad("messages", "a content part must be an object");
    const json* type = field(part, "type");
    if (type == nullptr || !type->is_string()) {
      bad("messages", "a content part needs a string 'type'");
    }
    if (type->get<std::string>() != "text") {
      unsupported("messages",
                  "content parts of type '" + type->get<std::string>() + "' (only 'text')");
    }
    const json* t = field(part, "text");
    if (t == nullptr || !t->is_string()) bad("messages", "a text part needs a string 'text'");
    text += t->get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* m = field(body, "messages");
  if (m == nullptr) bad("messages", "'messages' is required");
  if (!m->is_array() || m->empty()) bad("messages", "'messages' must be a non-empty list");
  std::vector<ChatMessage> out;
  for (const json& e : *m) {
    if (!e.is_object()) bad("messages", "each message must be an object");
    const json* r = field(e, "role");
    if (r == nullptr || !r->is_string()) bad("messages", "each message needs a string 'role'");
    std::string role = r->get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    if (role != "system" && role != "user" && role != "assistant") {
      bad("messages",
          "unknown message role '" + role + "' (expected system, developer, user or assistant)");
    }
    out.push_back({role, message_content(e)});
  }
  return out;
}

std::vector<std::string> parse_stop(const json& v) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    if (v.size() > static_cast<size_t>(kMaxStops)) {
      bad("stop", "'stop' holds more than " + std::to_string(kMaxStops) + " strings");
    }
    for (const json& s : v) out.push_back(get_string(s, "stop"));
  } else {
    bad("stop", "'stop' must be a string or a list of strings");
  }
  for (const std::string& s : out) {
    if (s.empty()) bad("stop", "stop strings must not be empty");
  }
  return out;
}

void parse_unsupported(const json& body, int n) {
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (const json* v = field(body, name)) {
      if (get_number(*v, name, -2.0, 2.0) != 0.0) unsupported(name, "penalties must be 0");
    }
  }
  if (const json* v = field(body, "repetition_penalty")) {
    if (get_number(*v, "repetition_penalty", 0.0, 100.0) != 1.0) {
      unsupported("repetition_penalty", "it must be 1");
    }
  }
  if (const json* v = field(body, "logit_bias")) {
    if (!v->is_object()) bad("logit_bias", "'logit_bias' must be an object");
    if (!v->empty()) unsupported("logit_bias", "it must be empty");
  }
  if (const json* v = field(body, "best_of")) {
    if (get_int(*v, "best_of", 1, kMaxN) != n) unsupported("best_of", "it must equal n");
  }
  if (const json* v = field(body, "suffix")) {
    if (!v->is_string()) bad("suffix", "'suffix' must be a string");
    if (!v->get<std::string>().empty()) unsupported("suffix", "insertion is not implemented");
  }
}

void parse_sampling(const json& body, OpenAIRequest& r) {
  SamplingParams& p = r.sampling;
  const json* mt = field(body, "max_tokens");
  if (const json* mct = field(body, "max_completion_tokens")) mt = mct;  // the newer name wins
  if (mt != nullptr) {
    p.max_tokens =
        get_int(*mt, mt == field(body, "max_tokens") ? "max_tokens" : "max_completion_tokens", 1,
                std::numeric_limits<int32_t>::max());
    r.max_tokens_given = true;
  }
  if (const json* v = field(body, "temperature")) {
    p.temperature = static_cast<float>(get_number(*v, "temperature", 0.0, 2.0));
  } else {
    p.temperature = 1.0f;  // OpenAI's default
  }
  if (const json* v = field(body, "top_p")) {
    p.top_p = static_cast<float>(get_number(*v, "top_p", 0.0, 1.0));
    if (p.top_p <= 0.0f) bad("top_p", "'top_p' must be in (0, 1]");
  }
  if (const json* v = field(body, "top_k")) {
    p.top_k = static_cast<int>(get_int(*v, "top_k", -1, std::numeric_limits<int32_t>::max()));
  }
  if (const json* v = field(body, "min_p")) {
    p.min_p = static_cast<float>(get_number(*v, "min_p", 0.0, 1.0));
  }
  if (const json* v = field(body, "seed")) {
    p.seed = static_cast<uint64_t>(get_int(*v, "seed", std::numeric_limits<int64_t>::min(),
                                           std::numeric_limits<int64_t>::max()));
    r.seed_given = true;
  }
  if (const json* v = field(body, "stop")) p.stop = parse_stop(*v);
  if (const json* v = field(body, "stop_token_ids")) {
    if (!v->is_array()) bad("stop_token_ids", "'stop_token_ids' must be a list of integers");
    for (const json& x : *v) {
      p.stop_token_ids.push_back(static_cast<int32_t>(
          get_int(x, "stop_token_ids", 0, std::numeric_limits<int32_t>::max())));
    }
  }
  if (const json* v = field(body, "ignore_eos")) p.ignore_eos = get_bool(*v, "ignore_eos");
  if (const json* v = field(body, "min_tokens")) {
    p.min_tokens = get_int(*v, "min_tokens", 0, std::numeric_limits<int32_t>::max());
  }
  if (const json* v = field(body, "skip_special_tokens")) {
    p.skip_special_tokens = get_bool(*v, "skip_special_tokens");
  }
}

void parse_logprobs(const json& body, OpenAIRequest& r) {
  if (r.kind == ApiKind::kCompletion) {
    // Completions: "logprobs": k returns the sampled token's logprob and k alternatives.
    if (const json* v = field(body, "logprobs")) {
      r.logprobs = true;
      r.top_logprobs = static_cast<int>(get_int(*v, "logprobs", 0, kMaxTopLogprobs));
    }
    return;
  }
  if (const json* v = field(body, "logprobs")) r.logprobs = get_bool(*v, "logprobs");
  if (const json* v = field(body, "top_logprobs")) {
    r.top_logprobs = static_cast<int>(get_int(*v, "top_logprobs", 0, kMaxTopLogprobs));
    if (r.top_logprobs > 0 && !r.logprobs) {
      bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    }
  }
}

int64_t p_max(const SamplingParams& p) {
  return std::max(p.max_tokens, p.min_tokens);
}

}  // namespace

OpenAIRequest parse_openai_request(std::string_view body, ApiKind kind) {
  if (json_depth(body) > kMaxJsonDepth) {
    bad("", "the JSON body is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) bad("", "the body is not valid JSON");
  if (!j.is_object()) bad("", "the body must be a JSON object");

  OpenAIRequest r;
  r.kind = kind;
  if (const json* v = field(j, "model")) r.model = get_string(*v, "model");
  if (kind == ApiKind::kCompletion) {
    r.prompts = parse_prompt(j);
  } else {
    r.messages = parse_messages(j);
    if (const json* v = field(j, "add_generation_prompt")) {
      r.add_generation_prompt = get_bool(*v, "add_generation_prompt");
    }
  }
  if (const json* v = field(j, "n")) r.n = static_cast<int>(get_int(*v, "n", 1, kMaxN));
  if (r.n * static_cast<int64_t>(std::max<size_t>(r.prompts.size(), 1)) > kMaxPrompts) {
    bad("n", "n times the number of prompts must be at most " + std::to_string(kMaxPrompts));
  }
  parse_unsupported(j, r.n);
  parse_sampling(j, r);
  parse_logprobs(j, r);
  r.sampling.logprobs = r.logprobs;
  r.sampling.top_logprobs = r.top_logprobs;
  if (const json* v = field(j, "stream")) r.stream = get_bool(*v, "stream");
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed with 'stream': true");
    if (const json* u = field(*v, "include_usage")) {
      r.include_usage = get_bool(*u, "stream_options.include_usage");
    }
  }
  if (kind == ApiKind::kCompletion) {
    if (const json* v = field(j, "echo")) r.echo = get_bool(*v, "echo");
    if (r.echo && r.logprobs) {
      unsupported("echo", "echo with logprobs (prompt logprobs are not computed)");
    }
  }
  try {
    SamplingParams check_copy = r.sampling;  // chat's default max_tokens is set by the server
    if (!r.max_tokens_given) check_copy.max_tokens = std::max(p_max(check_copy), int64_t{1});
    validate(check_copy);
  } catch (const std::exception& e) {
    bad("", e.what());
  }
  return r;
}

}  // namespace qserve::server
