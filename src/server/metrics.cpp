#include "server/metrics.h"

#include <cstdio>

namespace qserve::server {

namespace {

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// Label values are our own strings, but escape them as the format requires anyway.
std::string escape_label(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(const std::string& name, const std::string& labels, std::string& out) const {
  int64_t cum = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cum += counts_[i];
    const std::string le = i < bounds_.size() ? num(bounds_[i]) : std::string("+Inf");
    out.append(name).append("_bucket{").append(labels).append(",le=\"").append(le);
    out.append("\"} ").append(std::to_string(cum)).append("\n");
  }
  out.append(name).append("_sum{").append(labels).append("} ").append(num(sum_)).append("\n");
  out.append(name).append("_count{").append(labels).append("} ");
  out.append(std::to_string(count_)).append("\n");
}

Metrics::Metrics()
    // vLLM's bucket bounds for these histograms.
    : ttft_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
             1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}),
      tpot_({0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
             10.0, 20.0, 40.0, 80.0}),
      e2e_({0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
            30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}),
      prompt_len_({1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                   100000, 200000}),
      gen_len_({1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
                200000}) {}

void Metrics::on_http_response(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++http_responses_[{endpoint, status}];
}

void Metrics::on_prompt_tokens(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += n;
}

void Metrics::on_generation_tokens(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  generation_tokens_ += n;
}

void Metrics::on_request_finished(const std::string& finish_reason, double ttft_s, double tpot_s,
                                  bool has_tpot, double e2e_s, int64_t prompt_tokens,
                                  int64_t generation_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_[finish_reason];
  if (ttft_s > 0.0) ttft_.observe(ttft_s);
  if (has_tpot) tpot_.observe(tpot_s);
  e2e_.observe(e2e_s);
  prompt_len_.observe(static_cast<double>(prompt_tokens));
  gen_len_.observe(static_cast<double>(generation_tokens));
}

void Metrics::on_rejected_queue_full() {
  std::lock_guard<std::mutex> lock(mu_);
  ++rejected_;
}

void Metrics::set_engine_gauges(const EngineGauges& g) {
  std::lock_guard<std::mutex> lock(mu_);
  gauges_ = g;
}

void Metrics::set_http_in_flight(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  http_in_flight_ = n;
}

std::string Metrics::render(const std::string& model_name) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string m = "model_name=\"" + escape_label(model_name) + "\"";
  std::string out;
  header(out, "vllm:num_requests_running", "gauge", "Requests in the engine's running batch.");
  out += "vllm:num_requests_running{" + m + "} " + std::to_string(gauges_.running) + "\n";
  header(out, "vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
  out += "vllm:num_requests_waiting{" + m + "} " + std::to_string(gauges_.waiting) + "\n";
  header(out, "vllm:gpu_cache_usage_perc", "gauge",
         "Fraction of KV-cache pages in use (1 = full), whatever the device.");
  const double usage = gauges_.pages_total > 0 ? static_cast<double>(gauges_.pages_used) /
                                                     static_cast<double>(gauges_.pages_total)
                                               : 0.0;
  out += "vllm:gpu_cache_usage_perc{" + m + "} " + num(usage) + "\n";
  header(out, "qserve:kv_pages_used", "gauge", "KV-cache pages (64 tokens) in use.");
  out += "qserve:kv_pages_used{" + m + "} " + std::to_string(gauges_.pages_used) + "\n";
  header(out, "qserve:kv_pages_free", "gauge", "KV-cache pages (64 tokens) free.");
  out += "qserve:kv_pages_free{" + m + "} " +
         std::to_string(gauges_.pages_total - gauges_.pages_used) + "\n";
  header(out, "qserve:http_requests_in_flight", "gauge",
         "Generation requests admitted and not yet answered (bounded by --max-queue).");
  out += "qserve:http_requests_in_flight{" + m + "} " + std::to_string(http_in_flight_) + "\n";

  header(out, "vllm:prompt_tokens_total", "counter", "Prompt tokens of admitted requests.");
  out += "vllm:prompt_tokens_total{" + m + "} " + std::to_string(prompt_tokens_) + "\n";
  header(out, "vllm:generation_tokens_total", "counter", "Generated tokens.");
  out += "vllm:generation_tokens_total{" + m + "} " + std::to_string(generation_tokens_) + "\n";
  header(out, "vllm:request_success_total", "counter",
         "Finished engine requests by finish reason (stop, length, abort).");
  for (const auto& [reason, n] : finished_) {
    out += "vllm:request_success_total{" + m + ",finished_reason=\"" + escape_label(reason) +
           "\"} " + std::to_string(n) + "\n";
  }
  header(out, "qserve:http_requests_total", "counter", "HTTP responses by endpoint and status.");
  for (const auto& [key, n] : http_responses_) {
    out += "qserve:http_requests_total{" + m + ",endpoint=\"" + escape_label(key.first) +
           "\",status=\"" + std::to_string(key.second) + "\"} " + std::to_string(n) + "\n";
  }
  header(out, "qserve:requests_rejected_queue_full_total", "counter",
         "Requests answered 429 because --max-queue requests were in flight.");
  out += "qserve:requests_rejected_queue_full_total{" + m + "} " + std::to_string(rejected_) + "\n";

  header(out, "vllm:time_to_first_token_seconds", "histogram", "Arrival to first token.");
  ttft_.render("vllm:time_to_first_token_seconds", m, out);
  header(out, "vllm:time_per_output_token_seconds", "histogram",
         "Per request: (latency - TTFT) / (output tokens - 1).");
  tpot_.render("vllm:time_per_output_token_seconds", m, out);
  header(out, "vllm:e2e_request_latency_seconds", "histogram", "Arrival to finish.");
  e2e_.render("vllm:e2e_request_latency_seconds", m, out);
  header(out, "vllm:request_prompt_tokens", "histogram", "Prompt tokens per request.");
  prompt_len_.render("vllm:request_prompt_tokens", m, out);
  header(out, "vllm:request_generation_tokens", "histogram", "Generated tokens per request.");
  gen_len_.render("vllm:request_generation_tokens", m, out);
  return out;
}

}  // namespace qserve::server
