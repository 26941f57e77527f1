#include "engine_cuda/step_profiler.h"

#include <algorithm>
#include <cstdio>

#include "backend/cuda/cuda_check.h"

namespace qserve::cuda {

const char* op_class_name(OpClass c) {
  switch (c) {
    case OpClass::kInput:
      return "input (embed, metadata)";
    case OpClass::kNormQuant:
      return "norm + quant";
    case OpClass::kGemmQkv:
      return "gemm qkv";
    case OpClass::kRopeKv:
      return "rope + kv append";
    case OpClass::kAttnDecode:
      return "attention decode";
    case OpClass::kAttnPrefill:
      return "attention prefill";
    case OpClass::kGemmO:
      return "gemm o";
    case OpClass::kGemmGateUp:
      return "gemm gate_up";
    case OpClass::kSiluQuant:
      return "silu*mul + quant";
    case OpClass::kGemmDown:
      return "gemm down";
    case OpClass::kLmHead:
      return "final norm + lm_head";
    case OpClass::kSampling:
      return "sampling + copies";
    case OpClass::kCount:
      break;
  }
  return "?";
}

StepProfiler::StepProfiler(cudaStream_t stream) : stream_(stream) {}

StepProfiler::~StepProfiler() {
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
}

cudaEvent_t StepProfiler::event_at(size_t i) {
  while (events_.size() <= i) {
    cudaEvent_t e = nullptr;
    cuda_check(cudaEventCreate(&e), "profiler: cudaEventCreate");
    events_.push_back(e);
  }
  return events_[i];
}

void StepProfiler::begin_step(const std::string& kind, int64_t tokens, int64_t seqs) {
  kind_ = kind;
  tokens_ = tokens;
  seqs_ = seqs;
  used_ = 0;
  classes_.clear();
  work_.clear();
  start_ = std::chrono::steady_clock::now();
  cuda_check(cudaEventRecord(event_at(used_++), stream_), "profiler: cudaEventRecord");
}

void StepProfiler::mark(OpClass c, OpWork work) {
  cuda_check(cudaEventRecord(event_at(used_++), stream_), "profiler: cudaEventRecord");
  classes_.push_back(c);
  work_.push_back(work);
}

StepProfiler::Totals& StepProfiler::totals_for(const std::string& kind) {
  for (auto& [k, t] : totals_) {
    if (k == kind) return t;
  }
  totals_.emplace_back(kind, Totals{});
  return totals_.back().second;
}

void StepProfiler::end_step() {
  if (used_ < 2) return;
  const double wall =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  Totals& t = totals_for(kind_);
  ++t.steps;
  t.tokens += tokens_;
  t.seqs += seqs_;
  t.wall_ms += wall;
  for (size_t i = 0; i + 1 < used_; ++i) {
    float ms = 0.0f;
    cuda_check(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]), "profiler: elapsed");
    const size_t c = static_cast<size_t>(classes_[i]);
    t.ms[c] += ms;
    t.bytes[c] += work_[i].bytes;
    t.flops[c] += work_[i].flops;
    t.gpu_ms += ms;
  }
}

std::string StepProfiler::report(double peak_tbps, double gemm_peak_tops,
                                 double peak_tflops) const {
  std::string out;
  char line[256];
  for (const auto& [kind, t] : totals_) {
    if (t.steps == 0) continue;
    const double n = static_cast<double>(t.steps);
    std::snprintf(line, sizeof line,
                  "%s steps: %lld (%.0f tokens, %.0f sequences per step); GPU %.3f ms per step, "
                  "host wall %.3f ms per step, GPU idle %.1f%%\n",
                  kind.c_str(), static_cast<long long>(t.steps), static_cast<double>(t.tokens) / n,
                  static_cast<double>(t.seqs) / n, t.gpu_ms / n, t.wall_ms / n,
                  t.wall_ms > 0 ? 100.0 * (1.0 - t.gpu_ms / t.wall_ms) : 0.0);
    out += line;
    std::snprintf(line, sizeof line, "  %-26s %10s %7s %9s %9s %9s\n", "op class", "ms/step",
                  "share", "TB/s", "TFLOP/s", "roofline");
    out += line;
    for (size_t c = 0; c < static_cast<size_t>(OpClass::kCount); ++c) {
      if (t.ms[c] <= 0.0) continue;
      const double sec = t.ms[c] * 1e-3;
      const double tbps = t.bytes[c] / sec / 1e12, tflops = t.flops[c] / sec / 1e12;
      // The op's own bound: the larger of its memory time and its compute time at peak.
      const OpClass oc = static_cast<OpClass>(c);
      const bool gemm = oc == OpClass::kGemmQkv || oc == OpClass::kGemmO ||
                        oc == OpClass::kGemmGateUp || oc == OpClass::kGemmDown;
      const double math_peak = gemm ? gemm_peak_tops : peak_tflops;
      const double bound_s =
          std::max(t.bytes[c] / (peak_tbps * 1e12), t.flops[c] / (math_peak * 1e12));
      std::snprintf(line, sizeof line, "  %-26s %10.3f %6.1f%% %9.2f %9.1f %8.0f%%\n",
                    op_class_name(static_cast<OpClass>(c)), t.ms[c] / n, 100.0 * t.ms[c] / t.gpu_ms,
                    tbps, tflops, bound_s > 0 ? 100.0 * bound_s / sec : 0.0);
      out += line;
    }
  }
  if (out.empty()) out = "no profiled steps\n";
  return out;
}

}  // namespace qserve::cuda
