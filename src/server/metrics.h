// Prometheus metrics of the server, in the text exposition format (GET /metrics). Names follow
// vLLM's where vLLM has the metric (vllm:num_requests_running, vllm:e2e_request_latency_seconds,
// ...), so dashboards built for vLLM read ours; the rest are qserve:-prefixed. Thread-safe: HTTP
// threads and the engine thread record into it, /metrics renders a consistent snapshot.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace qserve::server {

// A cumulative histogram with fixed upper bounds (+Inf implied).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // Lines "<name>_bucket{<labels>,le=...} n", "<name>_sum{<labels>}", "<name>_count{<labels>}";
  // labels: 'key="value",...' (not empty).
  void render(const std::string& name, const std::string& labels, std::string& out) const;
  int64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket (not cumulative), last = +Inf
  double sum_ = 0.0;
  int64_t count_ = 0;
};

// What the engine thread last saw (gauges).
struct EngineGauges {
  int64_t running = 0, waiting = 0;
  int64_t pages_total = 0, pages_used = 0;
};

class Metrics {
 public:
  Metrics();

  void on_http_response(const std::string& endpoint, int status);
  void on_prompt_tokens(int64_t n);
  void on_generation_tokens(int64_t n);
  // A finished engine request: its finish reason, TTFT, mean time per output token (when it
  // produced more than one token) and end-to-end latency.
  void on_request_finished(const std::string& finish_reason, double ttft_s, double tpot_s,
                           bool has_tpot, double e2e_s, int64_t prompt_tokens,
                           int64_t generation_tokens);
  void on_rejected_queue_full();
  void set_engine_gauges(const EngineGauges& g);
  void set_http_in_flight(int64_t n);

  std::string render(const std::string& model_name) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> http_responses_;
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0, rejected_ = 0, http_in_flight_ = 0;
  std::map<std::string, int64_t> finished_;
  Histogram ttft_, tpot_, e2e_, prompt_len_, gen_len_;
  EngineGauges gauges_;
};

}  // namespace qserve::server
