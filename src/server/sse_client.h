// A small client for the server's streaming endpoints, used by qserve bench-serve and the
// loopback tests: POSTs a JSON body and hands each server-sent event's data to a callback as it
// arrives (SSE comments skipped), with the arrival time.
#pragma once

#include <chrono>
#include <functional>
#include <string>

namespace qserve::server {

struct StreamResult {
  int status = 0;          // HTTP status; 0 when no response came (connection error)
  std::string error;       // connection error, or the body of a non-200 response
  bool cancelled = false;  // on_event returned false
  bool done = false;       // "data: [DONE]" seen
};

// on_event(data, time): data is the text after "data: " (the JSON, or "[DONE]"). Returning
// false closes the connection at once (a client that goes away mid-stream).
using SseEventFn =
    std::function<bool(const std::string& data, std::chrono::steady_clock::time_point t)>;

// base_url: "http://host:port". api_key: "" for none. timeout_s: read timeout.
StreamResult post_stream(const std::string& base_url, const std::string& path,
                         const std::string& json_body, const std::string& api_key,
                         const SseEventFn& on_event, int timeout_s = 600);

// Splits SSE text: feeds complete events from `buffer` to on_data (the data lines of each event
// joined with "\n"), leaving an incomplete tail in `buffer`. Returns false if on_data did.
bool drain_sse_events(std::string& buffer, const std::function<bool(const std::string&)>& on_data);

}  // namespace qserve::server
