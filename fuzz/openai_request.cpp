// libFuzzer target: an OpenAI request body from arbitrary bytes either parses into a request
// that satisfies the parser's contract or is refused with ApiError (400) - never any other
// exception, never a crash. The same bytes also go through the SSE event splitter of
// bench-serve's client.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "server/openai_request.h"
#include "server/sse_client.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const auto kind : {qserve::server::ApiKind::kCompletion, qserve::server::ApiKind::kChat}) {
    try {
      const qserve::server::OpenAIRequest r = qserve::server::parse_openai_request(text, kind);
      // The contract: a completion has prompts, a chat has messages; n and the batch are
      // bounded; what the engine will validate again is already in range.
      if (kind == qserve::server::ApiKind::kCompletion && r.prompts.empty()) std::abort();
      if (kind == qserve::server::ApiKind::kChat && r.messages.empty()) std::abort();
      if (r.n < 1 || r.n > qserve::server::kMaxN) std::abort();
      if (r.n * static_cast<int64_t>(std::max<size_t>(r.prompts.size(), 1)) >
          qserve::server::kMaxPrompts) {
        std::abort();
      }
      if (r.max_tokens_given && r.sampling.max_tokens < 1) std::abort();
      if (r.sampling.top_logprobs < 0 || r.sampling.top_logprobs > qserve::kMaxTopLogprobs) {
        std::abort();
      }
      if (r.include_usage && !r.stream) std::abort();
      for (const auto& p : r.prompts) {
        if (!p.text && p.ids.empty()) std::abort();
        for (const int32_t id : p.ids) {
          if (id < 0) std::abort();
        }
      }
    } catch (const qserve::server::ApiError& e) {
      if (e.status() != 400) std::abort();
    }
  }
  std::string buffer(text);
  size_t events = 0;
  qserve::server::drain_sse_events(buffer, [&](const std::string&) {
    ++events;
    return true;
  });
  if (buffer.size() > size) std::abort();
  return 0;
}
