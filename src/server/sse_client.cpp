#include "server/sse_client.h"

#include <httplib.h>

namespace qserve::server {

bool drain_sse_events(std::string& buffer, const std::function<bool(const std::string&)>& on_data) {
  for (;;) {
    // Events end with a blank line; tolerate CRLF line ends.
    size_t end = buffer.find("\n\n");
    size_t sep = 2;
    const size_t crlf = buffer.find("\r\n\r\n");
    if (crlf != std::string::npos && (end == std::string::npos || crlf < end)) {
      end = crlf;
      sep = 4;
    }
    if (end == std::string::npos) return true;
    const std::string event = buffer.substr(0, end);
    buffer.erase(0, end + sep);
    std::string data;
    bool has_data = false;
    size_t pos = 0;
    while (pos <= event.size()) {
      size_t nl = event.find('\n', pos);
      if (nl == std::string::npos) nl = event.size();
      std::string line = event.substr(pos, nl - pos);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      pos = nl + 1;
      if (line.rfind("data:", 0) == 0) {
        std::string v = line.substr(5);
        if (!v.empty() && v.front() == ' ') v.erase(0, 1);
        if (has_data) data += '\n';
        data += v;
        has_data = true;
      }
    }
    if (has_data && !on_data(data)) return false;
  }
}

StreamResult post_stream(const std::string& base_url, const std::string& path,
                         const std::string& json_body, const std::string& api_key,
                         const SseEventFn& on_event, int timeout_s) {
  StreamResult result;
  httplib::Client cli(base_url);
  cli.set_read_timeout(timeout_s, 0);
  cli.set_connection_timeout(10, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = json_body;
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  if (!api_key.empty()) req.set_header("Authorization", "Bearer " + api_key);
  std::string buffer, raw;
  bool ok_status = true;
  req.response_handler = [&](const httplib::Response& r) {
    result.status = r.status;
    ok_status = r.status == 200;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    if (!ok_status) {
      raw.append(data, len);
      return true;
    }
    const auto now = std::chrono::steady_clock::now();
    buffer.append(data, len);
    const bool keep = drain_sse_events(buffer, [&](const std::string& d) {
      if (d == "[DONE]") result.done = true;
      return on_event(d, now);
    });
    if (!keep) result.cancelled = true;
    return keep;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = cli.send(req, res, err);
  if (result.status == 0) result.status = res.status;
  if (!sent && !result.cancelled) result.error = httplib::to_string(err);
  if (!ok_status) result.error = raw.empty() ? res.body : raw;
  return result;
}

}  // namespace qserve::server
