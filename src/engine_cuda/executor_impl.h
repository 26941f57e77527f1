// The CUDA executor's class, shared by its three source files:
//   cuda_executor.cu  construction, the eager entry points (prefill, mixed, score), factories
//   forward.cu        the op sequence of one step (model/llama_forward.cpp on the GPU)
//   decode_step.cu    pure-decode steps: bucketed shapes, one packed upload, CUDA graphs
// Internal to src/engine_cuda/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "engine/model_executor.h"
#include "engine_cuda/cuda_executor.h"
#include "engine_cuda/cuda_weights.h"
#include "engine_cuda/decode_graphs.h"
#include "engine_cuda/host_staging.h"
#include "engine_cuda/step_buffers.h"
#include "engine_cuda/step_profiler.h"
#include "model/llama_model.h"

namespace qserve::cuda {

inline constexpr int64_t kPageTokens = 64;

// The device-side inputs of one step (pointers into a StepBuffers' packed inputs).
struct StepInputs {
  const int32_t* tokens = nullptr;  // [rows]
  // Decode steps: row t's token is feed_ids[feed[t]] where feed[t] >= 0 (sampled by the step
  // before; overlapped steps), else tokens[t]. Null on eager steps.
  const int32_t* feed = nullptr;
  const int32_t* feed_ids = nullptr;
  int64_t rows = 0;
  VarlenBatchDevice all, dec, pre;    // every sequence (RoPE/append); decode rows; prefill chunks
  const int32_t* out_rows = nullptr;  // [num_out] rows that go through the lm_head, in order
  int64_t num_out = 0;
  // Device sampling of the first num_sample output rows (sample_rows_fast's arrays).
  const float* temperature = nullptr;
  const int32_t* top_k = nullptr;
  const float* top_p = nullptr;
  const double* uniform = nullptr;
  int64_t num_sample = 0;
};

// kDevice rows' sampling parameters, in output order.
struct SampleArrays {
  std::vector<float> temperature, top_p;
  std::vector<int32_t> top_k;
  std::vector<double> uniform;
};

class CudaExecutor final : public ModelExecutor {
 public:
  // pages_for(free_bytes, total_bytes, bytes_per_page_all_layers) picks the page count once the
  // weights are on the device.
  using PagesFn = std::function<int64_t(int64_t, int64_t, int64_t)>;

  CudaExecutor(const LlamaModel& model, const PagesFn& pages_for, int64_t num_slots,
               int64_t max_model_len, const CudaExecutorOptions& options);

  int64_t vocab_size() const override { return cfg_.vocab_size; }
  // H200 peaks: HBM3e 4.8 TB/s, dense int8 1,979 TOP/s, dense fp16 989 TFLOP/s.
  std::string profile_report() const override {
    return prof_ ? prof_->report(4.8, 1979.0, 989.0) : std::string();
  }
  int64_t num_slots() const override { return num_slots_; }
  int64_t num_pages() const override { return num_pages_; }
  double device_wait_seconds() const override { return device_wait_s_; }
  std::string describe() const override;
  void execute(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
               std::span<const PageTable* const> pages, std::vector<float>& logits) override;
  bool samples_on_device() const override { return true; }
  // The logits rows of the sampled sequences only: kDevice rows first (sampled here, ids to
  // the host), then kLogits rows (copied to the host); one synchronization per step.
  void execute_rows(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                    std::span<const PageTable* const> pages, std::span<const RowSample> rows,
                    std::vector<float>& logits, std::vector<int32_t>& ids) override;
  void score(std::span<const int32_t> tokens, std::vector<float>& logits) override;
  // Overlapped decode steps: the bucketed decode path (graphs when on), its inputs staged in
  // one of two pinned buffers and its ids copied back into one of two pinned buffers behind an
  // event, so two steps can be outstanding. Not while profiling (the profile times each step).
  bool can_launch(std::span<const SeqSpan> seqs, std::span<const RowSample> rows) const override;
  void launch(std::span<const int32_t> tokens, std::span<const int32_t> feed,
              std::span<const SeqSpan> seqs, std::span<const PageTable* const> pages,
              std::span<const RowSample> rows) override;
  void collect(std::vector<int32_t>& ids) override;

  CudaGraphStats graph_stats() const;

 private:
  // ---- cuda_executor.cu: eager steps
  // Checks token ids (but those of fed rows) and page tables (the same for every path).
  void validate(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                std::span<const PageTable* const> pages, std::span<const int32_t> feed = {}) const;
  // Synchronous entry points need no launched step outstanding (they share the stream's
  // buffers and staging with it).
  void check_nothing_launched(const char* what) const;
  // One step launched op by op, its inputs packed into one upload; the returned buffers hold
  // the logits of out_rows (and the ids of the first sample->temperature.size() of them).
  StepBuffers run_eager(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                        std::span<const PageTable* const> pages,
                        const std::vector<int32_t>& out_rows, const SampleArrays* sample);
  void begin_profile(std::span<const SeqSpan> seqs, int64_t rows, int64_t decode_rows);
  void copy_out(const StepBuffers& b, int64_t n_ids, int64_t first_logits, int64_t n_logits,
                std::vector<int32_t>& ids, std::vector<float>& logits);
  void finish_step();

  // ---- forward.cu: the op sequence, enqueued on stream_ (gws: the GEMMs' caller workspace,
  // null for the kernel files' own)
  void forward(const StepInputs& in, const StepBuffers& b, const GemmWorkspace* gws);
  PagedKvDevice layer_cache(int64_t l);
  void attention(const float* q, const uint16_t* k16, const uint16_t* v16,
                 const PagedKvDevice& cache, const StepInputs& in, float* out,
                 const StepBuffers& b);
  void f32_gemm(const LinearF32OnDevice& l, const float* x, int64_t m, float* y);
  void quant_gemm(const LinearOnDevice& l, const int8_t* aq, const uint16_t* ascale,
                  const uint16_t* asum, int64_t m, uint16_t* y, const GemmWorkspace* gws);
  void mark(OpClass c, OpWork w = {}) {
    if (prof_) prof_->mark(c, w);
  }

  // ---- decode_step.cu: pure-decode steps at bucketed shapes
  // Every sequence one token (row i) after a non-empty context, within the buckets and the window;
  // the caller checks that the step has one token per sequence.
  bool decode_eligible(std::span<const SeqSpan> seqs) const;
  void decode_step(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                   std::span<const PageTable* const> pages, std::span<const RowSample> rows,
                   std::vector<float>& logits, std::vector<int32_t>& ids);
  // Packs a decode step's inputs into `staging`, uploads them and enqueues the step (graph
  // replay, or eager run + capture). Returns its kDevice and kLogits row counts.
  struct DecodeRows {
    int64_t device = 0, logits = 0;
  };
  DecodeRows enqueue_decode(std::span<const int32_t> tokens, std::span<const int32_t> feed,
                            std::span<const SeqSpan> seqs, std::span<const PageTable* const> pages,
                            std::span<const RowSample> rows, PinnedBuffer& staging);
  // Makes the shared decode buffers fit a context bucket (growing drops every graph).
  void ensure_decode_buffers(int64_t context);
  size_t decode_gemm_workspace_bytes() const;

  ModelConfig cfg_;
  Precision precision_;
  quant::NormKind norm_kind_;
  CudaExecutorOptions opts_;
  int64_t num_pages_ = 0, num_slots_, max_model_len_;
  int32_t scratch_page_ = 0;  // == num_pages_: the pool's extra page, written by padding rows
  Stream stream_;
  CublasLt lt_;
  LlamaOnDevice w_;
  KvFormat format_ = KvFormat::kv16;
  int64_t page_bytes_ = 0;
  std::vector<DeviceBuffer<uint8_t>> k_pools_, v_pools_;
  std::unique_ptr<StepProfiler> prof_;      // --profile only
  OpWork rope_work_, dec_work_, pre_work_;  // this step's per-layer work (profiling only)

  PinnedBuffer staging_;  // the packed host inputs of the step being uploaded
  HostPack pack_;         // eager steps build their image here first

  std::vector<int32_t> buckets_;          // batch buckets (decode_buckets.h)
  StepBuffers decode_buf_;                // sized for the largest bucket; graphs capture it
  DeviceBuffer<uint8_t> decode_attn_ws_;  // sized for (largest bucket, decode_ctx_cap_)
  int64_t decode_ctx_cap_ = 0;
  DecodeGraphCache graphs_;
  bool graphs_on_ = false;
  CudaGraphStats stats_;
  double device_wait_s_ = 0.0;  // copy_out's, finish_step's and collect's waits

  // Launched steps (can_launch / launch / collect): buffer set k = launch number % 2.
  struct Launched {
    int k = 0;
    int64_t rows = 0;
  };
  PinnedBuffer launch_staging_[2], launch_ids_[2];
  Event launch_done_[2];
  std::vector<Launched> outstanding_;  // oldest first, at most 2
  int64_t launch_count_ = 0;
};

}  // namespace qserve::cuda
