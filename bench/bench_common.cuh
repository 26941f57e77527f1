// Shared by the CUDA benchmarks bench/attention.cu, bench/fused.cu and bench/graph_idle.cu: the
// JSON document they write with --json ({"device", "commit", "date", "command", "results"}) and
// the CUDA-event timing of a callable (median of the timed runs). Header-only: each benchmark is
// one translation unit, built with QSERVE_GIT_COMMIT defined by CMake.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_check.h"

#ifndef QSERVE_GIT_COMMIT
#define QSERVE_GIT_COMMIT "unknown"
#endif

namespace qserve::bench {

// argv joined by spaces: the "command" of the results document.
inline std::string command_line(int argc, char** argv) {
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  return command;
}

// The current CUDA device's name, or "unknown".
inline std::string device_name() {
  cudaDeviceProp prop{};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    return "unknown";
  }
  return prop.name;
}

// Today's UTC date, YYYY-MM-DD.
inline std::string today() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", std::gmtime(&t));
  return buf;
}

// The document a benchmark writes with --json (bench/results/*.json).
inline nlohmann::json results_document(const std::string& command, const nlohmann::json& results) {
  return {{"device", device_name()},
          {"commit", QSERVE_GIT_COMMIT},
          {"date", today()},
          {"command", command},
          {"results", results}};
}

// Writes doc to path (2-space indent, final newline) and prints "wrote PATH"; false, writing and
// printing nothing, when the file cannot be opened (each benchmark reports that its own way).
inline bool write_json(const std::string& path, const nlohmann::json& doc) {
  std::ofstream f(path);
  if (!f) return false;
  f << doc.dump(2) << "\n";
  std::printf("wrote %s\n", path.c_str());
  return true;
}

// One row of "results" for a timed kernel: `unit` names the figure of merit (tbps, tflops, ...).
inline nlohmann::json result(const std::string& kernel, const std::string& shape, int64_t batch,
                             int64_t context, const std::string& precision, double us,
                             const char* unit, double value, const std::string& system) {
  return nlohmann::json{{"kernel", kernel},   {"shape", shape},         {"batch", batch},
                        {"context", context}, {"precision", precision}, {"us", us},
                        {unit, value},        {"system", system}};
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

// Median microseconds of `iters` runs of f on the default stream, each bracketed by CUDA events,
// after `warmup` runs and a device synchronization. `before_timed`, when given, runs once just
// before the first timed run (e.g. to queue a spin kernel ahead of the timed launches).
inline double time_us(const std::function<void()>& f, int warmup, int iters,
                      const std::function<void()>& before_timed = {}) {
  for (int i = 0; i < warmup; ++i) f();
  QSERVE_CUDA_CHECK(cudaDeviceSynchronize(), "bench warm-up");
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(iters));
  for (auto& e : ev) QSERVE_CUDA_CHECK(cudaEventCreate(&e), "bench event");
  if (before_timed) before_timed();
  for (int i = 0; i < iters; ++i) {
    QSERVE_CUDA_CHECK(cudaEventRecord(ev[2 * i], nullptr), "bench event");
    f();
    QSERVE_CUDA_CHECK(cudaEventRecord(ev[2 * i + 1], nullptr), "bench event");
  }
  QSERVE_CUDA_CHECK(cudaEventSynchronize(ev.back()), "bench sync");
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    float ms = 0.0f;
    QSERVE_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]), "bench elapsed");
    t.push_back(1e3 * ms);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  return median(t);
}

}  // namespace qserve::bench
