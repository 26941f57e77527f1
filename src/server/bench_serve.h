// The load generator behind `qserve bench-serve`: sends prepared streaming requests to a running
// server with Poisson arrivals (or all at once) under a concurrency cap, and measures each
// request's TTFT, inter-token latencies and end-to-end latency; summarize() turns them into
// vLLM's benchmark metric set (throughputs; TTFT/TPOT/ITL/E2EL mean, median, p90, p99).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qserve::server {

// One request to send: endpoint path ("/v1/completions" or "/v1/chat/completions") and its
// JSON body (stream and stream_options.include_usage are set by the runner).
struct BenchItem {
  std::string path;
  nlohmann::json body;
};

struct BenchOptions {
  std::string base_url = "http://127.0.0.1:8000";
  std::string api_key;
  double rate = 0.0;        // requests/s of the Poisson arrivals; <= 0 or inf: all at once
  int64_t concurrency = 0;  // requests in flight at most; 0: unlimited
  uint64_t seed = 0;        // of the arrival times
  int timeout_s = 600;
};

struct BenchRequestResult {
  bool ok = false;
  std::string error;
  int64_t prompt_tokens = 0, output_tokens = 0;
  double ttft_s = 0.0, e2e_s = 0.0;
  std::vector<double> itl_s;  // between consecutive chunks that carried text
};

std::vector<BenchRequestResult> run_bench(const std::vector<BenchItem>& items,
                                          const BenchOptions& opts, double* duration_s);

// The summary: flat JSON object with completed, failed, duration_s, total_input_tokens,
// total_output_tokens, request_throughput, output_throughput, total_token_throughput and
// {mean,median,p90,p99}_{ttft,tpot,itl,e2el}_ms.
nlohmann::json summarize(const std::vector<BenchRequestResult>& results, double duration_s);

// Linear-interpolated percentile (q in [0, 1]) of an unsorted sample; 0 for an empty one.
double percentile(std::vector<double> v, double q);

}  // namespace qserve::server
