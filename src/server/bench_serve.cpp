#include "server/bench_serve.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include "server/sse_client.h"

namespace qserve::server {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

BenchRequestResult send_one(const BenchItem& item, const BenchOptions& opts) {
  BenchRequestResult r;
  json body = item.body;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const auto t0 = Clock::now();
  bool first = true;
  auto last = t0;
  const StreamResult s = post_stream(
      opts.base_url, item.path, body.dump(), opts.api_key,
      [&](const std::string& data, Clock::time_point t) {
        if (data == "[DONE]") return true;
        const json j = json::parse(data, nullptr, false);
        if (j.is_discarded()) return true;
        if (j.contains("usage") && j["usage"].is_object()) {
          r.prompt_tokens = j["usage"].value("prompt_tokens", int64_t{0});
          r.output_tokens = j["usage"].value("completion_tokens", int64_t{0});
        }
        if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return true;
        const json& c = j["choices"][0];
        std::string text;
        if (c.contains("text") && c["text"].is_string()) text = c["text"];
        if (c.contains("delta") && c["delta"].is_object() && c["delta"].contains("content") &&
            c["delta"]["content"].is_string()) {
          text = c["delta"]["content"];
        }
        if (text.empty()) return true;
        if (first) {
          r.ttft_s = std::chrono::duration<double>(t - t0).count();
          first = false;
        } else {
          r.itl_s.push_back(std::chrono::duration<double>(t - last).count());
        }
        last = t;
        return true;
      },
      opts.timeout_s);
  r.e2e_s = std::chrono::duration<double>(Clock::now() - t0).count();
  r.ok = s.status == 200 && s.done && s.error.empty();
  if (!r.ok) {
    r.error = s.error.empty() ? "HTTP " + std::to_string(s.status) + " without [DONE]" : s.error;
  }
  return r;
}

struct Stat {
  double mean = 0, median = 0, p90 = 0, p99 = 0;
};

Stat stat_of(const std::vector<double>& v) {
  Stat s;
  if (v.empty()) return s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  s.median = percentile(v, 0.5);
  s.p90 = percentile(v, 0.9);
  s.p99 = percentile(v, 0.99);
  return s;
}

}  // namespace

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

std::vector<BenchRequestResult> run_bench(const std::vector<BenchItem>& items,
                                          const BenchOptions& opts, double* duration_s) {
  const size_t n = items.size();
  // Arrival offsets: a Poisson process (exponential gaps) with a fixed seed, or all at zero.
  std::vector<double> arrival(n, 0.0);
  if (opts.rate > 0.0 && std::isfinite(opts.rate)) {
    std::mt19937_64 rng(opts.seed);
    std::exponential_distribution<double> gap(opts.rate);
    double t = 0.0;
    for (size_t i = 0; i < n; ++i) {
      arrival[i] = t;
      t += gap(rng);
    }
  }
  const size_t workers = std::min<size_t>(
      n, opts.concurrency > 0 ? static_cast<size_t>(opts.concurrency) : size_t{512});
  std::vector<BenchRequestResult> results(n);
  std::atomic<size_t> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (size_t w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      for (size_t i = next++; i < n; i = next++) {
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(arrival[i])));
        results[i] = send_one(items[i], opts);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (duration_s != nullptr)
    *duration_s = std::chrono::duration<double>(Clock::now() - start).count();
  return results;
}

json summarize(const std::vector<BenchRequestResult>& results, double duration_s) {
  int64_t completed = 0, failed = 0, in_tokens = 0, out_tokens = 0;
  std::vector<double> ttft, tpot, itl, e2e;
  for (const BenchRequestResult& r : results) {
    if (!r.ok) {
      ++failed;
      continue;
    }
    ++completed;
    in_tokens += r.prompt_tokens;
    out_tokens += r.output_tokens;
    ttft.push_back(r.ttft_s * 1e3);
    e2e.push_back(r.e2e_s * 1e3);
    if (r.output_tokens > 1) {
      tpot.push_back((r.e2e_s - r.ttft_s) * 1e3 / static_cast<double>(r.output_tokens - 1));
    }
    for (const double x : r.itl_s) itl.push_back(x * 1e3);
  }
  const double d = std::max(duration_s, 1e-9);
  json j = {{"completed", completed},
            {"failed", failed},
            {"duration_s", duration_s},
            {"total_input_tokens", in_tokens},
            {"total_output_tokens", out_tokens},
            {"request_throughput", static_cast<double>(completed) / d},
            {"output_throughput", static_cast<double>(out_tokens) / d},
            {"total_token_throughput", static_cast<double>(in_tokens + out_tokens) / d}};
  const std::pair<const char*, const std::vector<double>*> series[] = {
      {"ttft", &ttft}, {"tpot", &tpot}, {"itl", &itl}, {"e2el", &e2e}};
  for (const auto& [name, v] : series) {
    const Stat s = stat_of(*v);
    j[std::string("mean_") + name + "_ms"] = s.mean;
    j[std::string("median_") + name + "_ms"] = s.median;
    j[std::string("p90_") + name + "_ms"] = s.p90;
    j[std::string("p99_") + name + "_ms"] = s.p99;
  }
  return j;
}

}  // namespace qserve::server
