// Per-op-class GPU timing of the CUDA executor's steps (`qserve bench --profile`): where a
// decode step and a prefill step spend their time, against the roofline of each op class.
//
// When enabled, the executor calls begin_step() before it enqueues a step, mark(class, work)
// after each op it enqueues (one CUDA event per mark on the executor's stream) and end_step()
// after the step's synchronization. The time between two consecutive events is charged to the
// class of the later mark, so back-to-back kernels are attributed without gaps; the time from
// the step's first event to its last is the GPU span, and host wall time minus that span is
// what the GPU spent waiting for the host (launch overhead, scheduling, synchronization).
// Events cost a few microseconds of host time each, so a profiled run is slower than a plain
// one; the shares are what matters.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace qserve::cuda {

enum class OpClass : int {
  kInput,      // embedding, batch metadata uploads
  kNormQuant,  // (residual add +) norm (+ int8 quant), standalone quantization
  kGemmQkv,
  kRopeKv,  // RoPE + K/V rounding + paged append
  kAttnDecode,
  kAttnPrefill,
  kGemmO,
  kGemmGateUp,
  kSiluQuant,
  kGemmDown,
  kLmHead,    // final norm + lm_head
  kSampling,  // device sampling and the copies to the host
  kCount,
};
const char* op_class_name(OpClass c);

// The work an op did, for its roofline position: bytes it had to move and FLOPs (or integer
// ops) it had to do.
struct OpWork {
  double bytes = 0.0;
  double flops = 0.0;
};

class StepProfiler {
 public:
  explicit StepProfiler(cudaStream_t stream);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

  // kind: "decode" (every sequence one token), "prefill" (no decode rows) or "mixed".
  void begin_step(const std::string& kind, int64_t tokens, int64_t seqs);
  void mark(OpClass c, OpWork work = {});
  void end_step();  // after the stream was synchronized

  // A table per step kind: milliseconds per step of each class, share of the GPU span,
  // achieved TB/s and TFLOP/s and the share of its roofline bound (memory at peak_tbps, math at
  // gemm_peak_tops for the GEMM classes - int8 on a quantized model - and peak_tflops for the
  // rest); the GPU span and host wall time per step and the GPU's idle share.
  std::string report(double peak_tbps, double gemm_peak_tops, double peak_tflops) const;

 private:
  struct Totals {
    int64_t steps = 0, tokens = 0, seqs = 0;
    std::array<double, static_cast<size_t>(OpClass::kCount)> ms{}, bytes{}, flops{};
    double gpu_ms = 0.0, wall_ms = 0.0;
  };
  Totals& totals_for(const std::string& kind);
  cudaEvent_t event_at(size_t i);

  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;  // reused across steps
  std::vector<OpClass> classes_;     // classes_[i]: the class of the op ending at event i + 1
  std::vector<OpWork> work_;
  size_t used_ = 0;
  std::string kind_;
  int64_t tokens_ = 0, seqs_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::vector<std::pair<std::string, Totals>> totals_;  // in first-seen order
};

}  // namespace qserve::cuda
