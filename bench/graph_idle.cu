// How long the GPU idles between the kernels of a decode step, with CUDA graphs and without
// (issue 8: <= 5% of the step with graphs at batch 64), measured with CUPTI activity tracing.
//
//   build/bench_graph_idle [--model synthetic:llama-3-8b] [--precision w4a8kv4] [--batch 64[,8..]]
//                          [--context 1024] [--steps 20] [--warmup 3] [--kernels] [--json F]
//
// --kernels adds a table of the graph-mode steps per kernel (launches and GPU time per step,
// mean time per launch; template arguments dropped so each kernel template is one row): what
// each kernel of a replayed step really costs, without the profiler's per-op events.
//
// The CUDA executor runs pure-decode steps of `batch` sequences whose contexts lie in
// (context - 64, context] (one context bucket for the whole run), once with CUDA graphs and once
// with the same bucketed steps launched kernel by kernel (--no-cuda-graphs): first `steps`
// untraced steps (host time per step, and the host time of the launch itself: cudaGraphLaunch,
// or enqueueing ~330 kernels), then `steps` traced ones. The pages hold
// zeros rather than a prefilled prompt: no kernel's time depends on the values (sampling is
// greedy), and it saves a 65k-token prefill. Every kernel, memcpy and memset of the traced steps
// is recorded (CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, MEMCPY, MEMSET) and attributed to its step
// by the host timestamps around the step (each step ends with a synchronization). Per step:
//   span  = first kernel start -> last kernel end
//   busy  = length of the union of the kernel/memset/memcpy intervals inside the span
//   idle  = span - busy, idle % = idle / span
// The input upload before the first kernel and the id copy after the last are outside the span;
// pre/post are the host-side times around it (call start -> first kernel, last kernel -> return).
// CUPTI slows launches (a graph launch of ~330 nodes from ~170 to ~570 us on the H200), which
// moves the first kernel later but not the gaps inside the span; the untraced figures are the
// real host cost. Afterwards, single steps at 7 other batch
// buckets capture 7 more graphs; the drop in free device memory over them, per graph, is the
// memory a graph costs (an upper bound: kernels loaded lazily for new shapes count too).
#include <cuda_runtime.h>
#include <cupti.h>

#include <cxxabi.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_check.h"
#include "bench_common.cuh"
#include "engine/block_manager.h"
#include "engine_cuda/cuda_executor.h"
#include "model/llama_model.h"
#include "model/synthetic_configs.h"

namespace {

using json = nlohmann::json;

void cupti_check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  throw qserve::Error(std::string("CUPTI ") + what + ": " + (s != nullptr ? s : "?"));
}

// ---- CUPTI activity buffers -----------------------------------------------------------------
struct Interval {
  uint64_t start = 0, end = 0;
  bool kernel = false;
  std::string name;  // kernels only, and only with --kernels (mangled, as CUPTI reports it)
};
bool g_names = false;
std::mutex g_mu;
std::vector<Interval> g_intervals;
uint64_t g_dropped = 0;

constexpr size_t kBufferBytes = 8 << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t,
                               size_t valid) {
  std::lock_guard<std::mutex> lock(g_mu);
  CUpti_Activity* r = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    switch (r->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      case CUPTI_ACTIVITY_KIND_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
        g_intervals.push_back(
            {k->start, k->end, true, g_names && k->name != nullptr ? k->name : std::string()});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
        g_intervals.push_back({m->start, m->end, false, {}});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
        g_intervals.push_back({m->start, m->end, false, {}});
        break;
      }
      default:
        break;
    }
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS) {
    g_dropped += dropped;
  }
  std::free(buffer);
}

const CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                     CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET};

// ---- one step's timeline --------------------------------------------------------------------
struct StepTime {
  double span_us = 0, busy_us = 0, idle_us = 0, idle_pct = 0, host_ms = 0;
  double pre_us = 0, post_us = 0;  // host call start -> first kernel; last kernel -> return
  int kernels = 0;
};

StepTime analyze(std::vector<Interval> v, uint64_t host_begin, uint64_t host_end) {
  StepTime t;
  t.host_ms = static_cast<double>(host_end - host_begin) * 1e-6;
  uint64_t first = UINT64_MAX, last = 0;
  for (const Interval& i : v) {
    if (!i.kernel) continue;
    ++t.kernels;
    first = std::min(first, i.start);
    last = std::max(last, i.end);
  }
  if (t.kernels == 0) return t;
  std::sort(v.begin(), v.end(),
            [](const Interval& a, const Interval& b) { return a.start < b.start; });
  uint64_t busy = 0, cur_lo = 0, cur_hi = 0;
  bool open = false;
  for (const Interval& i : v) {  // union of intervals, clipped to the kernel span
    const uint64_t lo = std::max(i.start, first), hi = std::min(i.end, last);
    if (hi <= lo) continue;
    if (open && lo <= cur_hi) {
      cur_hi = std::max(cur_hi, hi);
      continue;
    }
    if (open) busy += cur_hi - cur_lo;
    cur_lo = lo;
    cur_hi = hi;
    open = true;
  }
  if (open) busy += cur_hi - cur_lo;
  t.span_us = static_cast<double>(last - first) * 1e-3;
  t.busy_us = static_cast<double>(busy) * 1e-3;
  t.idle_us = t.span_us - t.busy_us;
  t.idle_pct = t.span_us > 0 ? 100.0 * t.idle_us / t.span_us : 0.0;
  t.pre_us = (static_cast<double>(first) - static_cast<double>(host_begin)) * 1e-3;
  t.post_us = (static_cast<double>(host_end) - static_cast<double>(last)) * 1e-3;
  return t;
}

// ---- per-kernel table (--kernels) ---------------------------------------------------------
// A kernel's name without its template arguments and parameter list, so that every
// instantiation of one kernel template is one row (CUTLASS's device kernels would otherwise be
// one line of several kilobytes).
std::string short_kernel_name(const std::string& mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  const bool ok = status == 0 && d != nullptr;
  std::string n = ok ? d : mangled;
  std::free(d);
  if (!ok && mangled.find("cutlass") != std::string::npos) {
    // CUTLASS's kernel names defeat the demangler (and c++filt): name them by the markers of
    // their configuration instead (schedule, wgmma atom, tile scheduler).
    std::string label = "cutlass_gemm";
    for (const char* m : {"Pingpong", "Cooperative", "StreamKScheduler", "PersistentScheduler"}) {
      if (mangled.find(m) != std::string::npos) label += std::string("_") + m;
    }
    const size_t a = mangled.find("MMA_64x");
    if (a != std::string::npos) label += "_" + mangled.substr(a, mangled.find('_', a + 4) - a);
    return label;
  }
  std::string out;
  int depth = 0;
  for (char c : n) {
    if (c == '<' || c == '(') {
      if (depth++ == 0) out += c == '<' ? "<>" : "";
      continue;
    }
    if (c == '>' || c == ')') {
      depth = std::max(0, depth - 1);
      continue;
    }
    if (depth == 0) out += c;
  }
  const size_t ns = out.rfind("::");  // drop leading namespaces, keep the kernel's own name
  if (ns != std::string::npos && ns + 2 < out.size()) out = out.substr(ns + 2);
  return out;
}

// Per kernel name over the traced steps: launches and GPU time per step, mean time per launch.
void kernel_table(const std::vector<std::vector<Interval>>& steps, const char* mode, int64_t batch,
                  json& results) {
  struct Row {
    int64_t launches = 0;
    double us = 0;
  };
  std::map<std::string, Row> rows;
  for (const auto& st : steps) {
    for (const Interval& i : st) {
      if (!i.kernel) continue;
      Row& r = rows[short_kernel_name(i.name)];
      ++r.launches;
      r.us += static_cast<double>(i.end - i.start) * 1e-3;
    }
  }
  std::vector<std::pair<std::string, Row>> sorted(rows.begin(), rows.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.second.us > b.second.us; });
  const double n = static_cast<double>(std::max<size_t>(1, steps.size()));
  double total = 0;
  for (const auto& [name, r] : sorted) total += r.us / n;
  std::printf("KERNELS %s batch=%lld: %.1f us of kernels per step\n", mode,
              static_cast<long long>(batch), total);
  std::printf("  %10s %7s %9s %10s  %s\n", "us/step", "share", "launches", "us/launch", "kernel");
  for (const auto& [name, r] : sorted) {
    const double per_step = r.us / n;
    std::printf("  %10.1f %6.1f%% %9.1f %10.2f  %s\n", per_step, 100.0 * per_step / total,
                static_cast<double>(r.launches) / n, r.us / static_cast<double>(r.launches),
                name.c_str());
    results.push_back({{"kind", "kernel"},
                       {"mode", mode},
                       {"batch", batch},
                       {"kernel", name},
                       {"us_per_step", per_step},
                       {"launches_per_step", static_cast<double>(r.launches) / n},
                       {"us_per_launch", r.us / static_cast<double>(r.launches)}});
  }
}

// ---- the decode steps -----------------------------------------------------------------------
struct Seq {
  int64_t ctx = 0;
  qserve::PageTable pages;
};

void decode_step(qserve::ModelExecutor& ex, std::vector<Seq>& seqs, size_t n, std::mt19937& rng) {
  std::vector<int32_t> tokens;
  std::vector<qserve::SeqSpan> spans;
  std::vector<const qserve::PageTable*> tables;
  std::vector<qserve::RowSample> rows;
  for (size_t i = 0; i < n; ++i) {
    tokens.push_back(static_cast<int32_t>(rng() % static_cast<uint32_t>(ex.vocab_size())));
    spans.push_back({static_cast<int64_t>(i), 1, seqs[i].ctx, 0});
    tables.push_back(&seqs[i].pages);
    qserve::RowSample r;
    r.kind = qserve::RowSample::Kind::kDevice;  // greedy
    rows.push_back(r);
    ++seqs[i].ctx;
  }
  std::vector<float> logits;
  std::vector<int32_t> ids;
  ex.execute_rows(tokens, spans, tables, rows, logits, ids);
}

struct Options {
  std::string model = "synthetic:llama-3-8b", precision = "w4a8kv4", json_path;
  std::vector<int64_t> batches = {64};
  int64_t context = 1024;
  int steps = 20, warmup = 3;
  bool kernels = false;  // --kernels: the per-kernel table of the graph-mode steps
};

constexpr int kMemorySteps = 7;  // extra graphs captured for the memory figure

json run_mode(const qserve::LlamaModel& model, const Options& o, int64_t batch, bool graphs,
              json& results) {
  const int64_t slack = o.warmup + 2 * o.steps + kMemorySteps + 2;
  const int64_t max_len = o.context + 64;
  const int64_t per_seq = qserve::pages_for_tokens(max_len);
  qserve::CudaExecutorOptions opts;
  opts.cuda_graphs = graphs;
  auto ex = qserve::make_cuda_executor(model, batch * per_seq, batch, max_len, opts);
  std::vector<Seq> seqs(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    Seq& s = seqs[static_cast<size_t>(i)];
    s.ctx = std::max<int64_t>(1, o.context - slack - (i % 32));
    for (int64_t p = 0; p < per_seq; ++p) s.pages.push_back(static_cast<int32_t>(i * per_seq + p));
  }
  std::mt19937 rng(1);
  const size_t n = seqs.size();
  for (int i = 0; i < o.warmup; ++i) decode_step(*ex, seqs, n, rng);

  // Untraced first: the host's time per step and in the launch itself, without CUPTI's
  // per-kernel bookkeeping (which slows launches, graph launches in particular).
  const qserve::CudaGraphStats s0 = qserve::cuda_graph_stats(*ex);
  const auto w0 = std::chrono::steady_clock::now();
  for (int i = 0; i < o.steps; ++i) decode_step(*ex, seqs, n, rng);
  const double untraced_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - w0).count() /
      o.steps;
  const double untraced_launch_us =
      (qserve::cuda_graph_stats(*ex).launch_us - s0.launch_us) / o.steps;

  // The first step after enabling CUPTI pays its set-up: run one, then drop its records.
  for (CUpti_ActivityKind k : kKinds) cupti_check(cuptiActivityEnable(k), "enable");
  decode_step(*ex, seqs, n, rng);
  cupti_check(cuptiActivityFlushAll(1), "flush");
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_intervals.clear();
  }
  std::vector<std::pair<uint64_t, uint64_t>> windows;
  const double traced_launch0 = qserve::cuda_graph_stats(*ex).launch_us;
  for (int i = 0; i < o.steps; ++i) {
    uint64_t t0 = 0, t1 = 0;
    cupti_check(cuptiGetTimestamp(&t0), "timestamp");
    decode_step(*ex, seqs, n, rng);
    cupti_check(cuptiGetTimestamp(&t1), "timestamp");
    windows.emplace_back(t0, t1);
  }
  for (CUpti_ActivityKind k : kKinds) cupti_check(cuptiActivityDisable(k), "disable");
  cupti_check(cuptiActivityFlushAll(1), "flush");

  const char* mode = graphs ? "graphs" : "eager";
  std::vector<StepTime> times;
  std::vector<std::vector<Interval>> per_step;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    for (size_t w = 0; w < windows.size(); ++w) {
      std::vector<Interval> mine;
      for (const Interval& i : g_intervals) {
        if (i.start >= windows[w].first && i.start <= windows[w].second) mine.push_back(i);
      }
      times.push_back(analyze(mine, windows[w].first, windows[w].second));
      per_step.push_back(std::move(mine));
    }
  }
  if (o.kernels && graphs) kernel_table(per_step, mode, batch, results);
  std::printf("%-7s %5s %10s %10s %10s %7s %8s %9s %8s %8s\n", "mode", "step", "span_us", "busy_us",
              "idle_us", "idle%", "kernels", "host_ms", "pre_us", "post_us");
  StepTime mean;
  double worst = 0.0;
  for (size_t i = 0; i < times.size(); ++i) {
    const StepTime& t = times[i];
    std::printf("%-7s %5zu %10.1f %10.1f %10.1f %7.2f %8d %9.3f %8.1f %8.1f\n", mode, i, t.span_us,
                t.busy_us, t.idle_us, t.idle_pct, t.kernels, t.host_ms, t.pre_us, t.post_us);
    results.push_back({{"kind", "step"},
                       {"mode", mode},
                       {"step", i},
                       {"batch", batch},
                       {"span_us", t.span_us},
                       {"busy_us", t.busy_us},
                       {"idle_us", t.idle_us},
                       {"idle_pct", t.idle_pct},
                       {"kernels", t.kernels},
                       {"host_ms", t.host_ms},
                       {"pre_us", t.pre_us},
                       {"post_us", t.post_us}});
    mean.span_us += t.span_us / static_cast<double>(times.size());
    mean.busy_us += t.busy_us / static_cast<double>(times.size());
    mean.idle_us += t.idle_us / static_cast<double>(times.size());
    mean.host_ms += t.host_ms / static_cast<double>(times.size());
    mean.pre_us += t.pre_us / static_cast<double>(times.size());
    mean.post_us += t.post_us / static_cast<double>(times.size());
    mean.kernels += t.kernels;
    worst = std::max(worst, t.idle_pct);
  }
  mean.idle_pct = mean.span_us > 0 ? 100.0 * mean.idle_us / mean.span_us : 0.0;
  const qserve::CudaGraphStats st = qserve::cuda_graph_stats(*ex);
  json summary = {{"kind", "summary"},
                  {"mode", mode},
                  {"model", o.model},
                  {"precision", o.precision},
                  {"batch", batch},
                  {"context", o.context},
                  {"steps", o.steps},
                  {"span_us_mean", mean.span_us},
                  {"busy_us_mean", mean.busy_us},
                  {"idle_us_mean", mean.idle_us},
                  {"idle_pct_mean", mean.idle_pct},
                  {"idle_pct_max", worst},
                  {"kernels_per_step", times.empty() ? 0 : mean.kernels / o.steps},
                  {"host_ms_per_step", mean.host_ms},
                  {"pre_us_mean", mean.pre_us},
                  {"launch_us_traced", (st.launch_us - traced_launch0) / o.steps},
                  {"host_ms_untraced", untraced_ms},
                  {"launch_us_untraced", untraced_launch_us},
                  {"post_us_mean", mean.post_us},
                  {"graph_replays", st.replays},
                  {"graph_captures", st.captures},
                  {"cupti_dropped_records", g_dropped}};
  std::printf(
      "GRAPH-IDLE %s batch=%lld: span %.1f us, busy %.1f us, idle %.1f us = %.2f%% (max %.2f%%), "
      "%d kernels, host %.3f ms per step (%.1f us before the first kernel, %.1f us after the "
      "last; launch %.1f us); untraced: host %.3f ms per step, launch %.1f us; replays=%lld "
      "captures=%lld\n",
      mode, static_cast<long long>(batch), mean.span_us, mean.busy_us, mean.idle_us, mean.idle_pct,
      worst, times.empty() ? 0 : mean.kernels / o.steps, mean.host_ms, mean.pre_us, mean.post_us,
      (st.launch_us - traced_launch0) / o.steps, untraced_ms, untraced_launch_us,
      static_cast<long long>(st.replays), static_cast<long long>(st.captures));
  results.push_back(summary);

  if (graphs) {  // device memory per captured graph
    QSERVE_CUDA_CHECK(cudaDeviceSynchronize(), "sync");
    size_t free0 = 0, free1 = 0, total = 0;
    QSERVE_CUDA_CHECK(cudaMemGetInfo(&free0, &total), "cudaMemGetInfo");
    const int64_t before = st.captures;
    int64_t sizes[kMemorySteps] = {48, 32, 16, 8, 4, 2, 1};
    for (int64_t k : sizes) decode_step(*ex, seqs, static_cast<size_t>(std::min(k, batch)), rng);
    QSERVE_CUDA_CHECK(cudaMemGetInfo(&free1, &total), "cudaMemGetInfo");
    const qserve::CudaGraphStats st2 = qserve::cuda_graph_stats(*ex);
    const int64_t captured = st2.captures - before;
    const double per_graph = captured > 0
                                 ? (static_cast<double>(free0) - static_cast<double>(free1)) /
                                       static_cast<double>(captured) / 1048576.0
                                 : 0.0;
    std::printf(
        "GRAPH-IDLE memory: %lld more graphs took %.2f MiB of device memory each; shared decode "
        "buffers %.1f MiB; invalidations %lld\n",
        static_cast<long long>(captured), per_graph,
        static_cast<double>(st2.decode_buffer_bytes) / 1048576.0,
        static_cast<long long>(st2.invalidations));
    results.push_back(
        {{"kind", "graph_memory"},
         {"graphs_captured", captured},
         {"mib_per_graph", per_graph},
         {"decode_buffers_mib", static_cast<double>(st2.decode_buffer_bytes) / 1048576.0},
         {"invalidations", st2.invalidations}});
  }
  return summary;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const std::string command = qserve::bench::command_line(argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw qserve::Error(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--model") {
        o.model = next();
      } else if (a == "--precision") {
        o.precision = next();
      } else if (a == "--batch") {  // one or several, comma-separated
        o.batches.clear();
        const std::string v = next();
        for (size_t p = 0; p < v.size();) {
          const size_t c = std::min(v.find(',', p), v.size());
          o.batches.push_back(std::stoll(v.substr(p, c - p)));
          p = c + 1;
        }
      } else if (a == "--context") {
        o.context = std::stoll(next());
      } else if (a == "--steps") {
        o.steps = std::stoi(next());
      } else if (a == "--warmup") {
        o.warmup = std::stoi(next());
      } else if (a == "--json") {
        o.json_path = next();
      } else if (a == "--kernels") {
        o.kernels = true;
      } else {
        std::fprintf(stderr,
                     "usage: %s [--model synthetic:NAME] [--precision P] [--batch N[,N...]] "
                     "[--context N] [--steps N] [--warmup N] [--kernels] [--json F]\n",
                     argv[0]);
        return 2;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 2;
    }
  }
  try {
    const std::string prefix = "synthetic:";
    qserve::check(o.model.rfind(prefix, 0) == 0, "--model must be synthetic:NAME");
    qserve::check(!o.batches.empty() && *std::min_element(o.batches.begin(), o.batches.end()) > 0 &&
                      o.steps > 0 && o.warmup >= 1 &&
                      o.context > o.warmup + 2 * o.steps + kMemorySteps + 40,
                  "need batch > 0, steps > 0, warmup >= 1 and a context longer than the steps");
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      std::printf("GRAPH-IDLE skipped: no CUDA device\n");
      return 0;
    }
    const auto t0 = std::chrono::steady_clock::now();
    qserve::LoadOptions lo;
    lo.precision = qserve::Precision::parse(o.precision);
    // Weights generated by the executor on the GPU (seconds, where the host generator takes
    // ~50 s for 8B): kernel times do not depend on the values.
    auto model = qserve::LlamaModel::synthetic_on_device(
        qserve::synthetic_config(o.model.substr(prefix.size())), 1234, lo);
    std::printf("model %s %s (weights made on the GPU by the executor) ready in %.1f s\n",
                o.model.c_str(), o.precision.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    g_names = o.kernels;
    cupti_check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "callbacks");

    json results = json::array();
    bool pass = true;
    for (const int64_t batch : o.batches) {
      const json g = run_mode(*model, o, batch, true, results);
      const json e = run_mode(*model, o, batch, false, results);
      const double idle = g["idle_pct_mean"].get<double>();
      // The issue's target is stated at batch 64; other batches are reported only.
      const bool target = batch == 64;
      if (target) pass = pass && idle <= 5.0;
      std::printf(
          "GRAPH-IDLE verdict: idle %.2f%% of the step with graphs vs %.2f%% eager at batch %lld "
          "(target <= 5%% at batch 64): %s; untraced host %.3f vs %.3f ms per step\n",
          idle, e["idle_pct_mean"].get<double>(), static_cast<long long>(batch),
          !target       ? "info"
          : idle <= 5.0 ? "PASS"
                        : "FAIL",
          g["host_ms_untraced"].get<double>(), e["host_ms_untraced"].get<double>());
    }
    std::printf("GRAPH-IDLE %s in %.1f s\n", pass ? "PASS" : "FAIL",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    const json doc = qserve::bench::results_document(command, results);
    if (!o.json_path.empty()) {
      qserve::check(qserve::bench::write_json(o.json_path, doc), "cannot write " + o.json_path);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
