// The CUDA executor: weights and KV pools on the device, the eager step path (prefill, mixed
// and scoring steps, launched op by op) and the factories. The op sequence is forward.cu; pure
// decode steps take decode_step.cu's bucketed, graph-captured path.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_device.h"
#include "core/error.h"
#include "engine/kv_sizing.h"
#include "engine_cuda/decode_buckets.h"
#include "engine_cuda/executor_impl.h"
#include "engine_cuda/memory_plan.h"

namespace qserve::cuda {

namespace {

// Adds the wall time of its scope to `total` (seconds): the executor's waits for the device
// (device_wait_seconds).
class WaitTimer {
 public:
  explicit WaitTimer(double& total) : total_(total), t0_(std::chrono::steady_clock::now()) {}
  ~WaitTimer() {
    total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  WaitTimer(const WaitTimer&) = delete;
  WaitTimer& operator=(const WaitTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point t0_;
};

KvFormat kv_format(KvPrecision kv) {
  switch (kv) {
    case KvPrecision::kKv4:
      return KvFormat::kv4;
    case KvPrecision::kKv8:
      return KvFormat::kv8;
    case KvPrecision::kKv16:
      break;
  }
  return KvFormat::kv16;
}

// The host side of one varlen (sub)batch, packed into the step's single upload and resolved to
// a VarlenBatchDevice once the device copy of the pack exists.
struct HostBatch {
  std::vector<int32_t> offset, ntok, ctx, table;
  std::vector<const PageTable*> tabs;
  int32_t stride = 1, max_tokens = 0, max_total = 0;
  size_t o_offset = 0, o_ntok = 0, o_ctx = 0, o_table = 0;

  void add(const SeqSpan& s, const PageTable& pages) {
    offset.push_back(static_cast<int32_t>(s.token_offset));
    ntok.push_back(static_cast<int32_t>(s.num_tokens));
    ctx.push_back(static_cast<int32_t>(s.context_len));
    tabs.push_back(&pages);
    max_tokens = std::max(max_tokens, static_cast<int32_t>(s.num_tokens));
    max_total = std::max(max_total, static_cast<int32_t>(s.context_len + s.num_tokens));
    stride = std::max(stride, static_cast<int32_t>(pages.size()));
  }
  int32_t size() const { return static_cast<int32_t>(offset.size()); }

  void pack(HostPack& p) {
    if (size() == 0) return;
    table.assign(static_cast<size_t>(size()) * static_cast<size_t>(stride), 0);
    for (size_t i = 0; i < tabs.size(); ++i) {
      std::copy(tabs[i]->begin(), tabs[i]->end(), table.begin() + static_cast<int64_t>(i) * stride);
    }
    o_offset = p.add(offset);
    o_ntok = p.add(ntok);
    o_ctx = p.add(ctx);
    o_table = p.add(table);
  }

  VarlenBatchDevice resolve(const uint8_t* base) const {
    VarlenBatchDevice b;
    b.num_seqs = size();
    if (size() == 0) return b;
    b.token_offset = reinterpret_cast<const int32_t*>(base + o_offset);
    b.num_tokens = reinterpret_cast<const int32_t*>(base + o_ntok);
    b.context_len = reinterpret_cast<const int32_t*>(base + o_ctx);
    b.block_table = reinterpret_cast<const int32_t*>(base + o_table);
    b.block_stride = stride;
    b.max_num_tokens = max_tokens;
    b.max_total_len = max_total;
    return b;
  }
};

}  // namespace

CudaExecutor::CudaExecutor(const LlamaModel& model, const PagesFn& pages_for, int64_t num_slots,
                           int64_t max_model_len, const CudaExecutorOptions& options)
    : cfg_(model.config()),
      precision_(model.precision()),
      norm_kind_(model.options().qserve_norm ? quant::NormKind::kQServeLayerNorm
                                             : quant::NormKind::kRmsNorm),
      opts_(options),
      num_slots_(num_slots),
      max_model_len_(max_model_len),
      graphs_(options.max_graphs) {
  check(device_count() > 0, "cuda executor: no CUDA device is visible");
  check(num_slots > 0, "cuda executor: slots must be positive");
  w_ = upload_llama(model, stream_);
  format_ = kv_format(precision_.kv);
  page_bytes_ = kv_page_bytes(format_, cfg_.num_kv_heads, cfg_.head_dim);
  // Free memory after returning the caching allocator's idle blocks to the driver: a previous
  // engine's KV pools (sized from memory too) stay cached after it is destroyed, and cudaMemGetInfo
  // alone then left the next engine of the process no room for a single page (2026-11-30:
  // `qserve bench --ifb --max-num-seqs 512`, whose warm-up engine had taken ~90% of the GPU).
  const DeviceMemory mem = device_memory();
  num_pages_ = pages_for(mem.free, mem.total, page_bytes_ * 2 * cfg_.num_layers);
  check(num_pages_ > 0, "cuda executor: no room for a single KV page");
  check(num_pages_ < (int64_t{1} << 31) - 1, "cuda executor: too many KV pages for int32 ids");
  // One page more than the engine is told about: padding rows of bucketed decode steps append
  // their K/V there, so they never touch a page a sequence owns.
  scratch_page_ = static_cast<int32_t>(num_pages_);
  const int64_t pool = (num_pages_ + 1) * page_bytes_;
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    k_pools_.emplace_back(static_cast<size_t>(pool));
    v_pools_.emplace_back(static_cast<size_t>(pool));
    // Deterministic contents for never-written page slots (they are never read).
    k_pools_.back().fill_bytes(0, stream_);
    v_pools_.back().fill_bytes(0, stream_);
  }
  stream_.synchronize();
  if (opts_.profile) prof_ = std::make_unique<StepProfiler>(stream_.get());
  graphs_on_ = opts_.cuda_graphs && opts_.bucket_decode && opts_.max_graphs > 0 && !opts_.profile;
  buckets_ = decode_batch_buckets(num_slots_);
}

std::string CudaExecutor::describe() const {
  return "cuda (" + device_summary() + "), " + precision_.name() + ", " +
         std::to_string(num_pages_) + " KV pages, " + std::to_string(w_.bytes >> 20) +
         " MiB of weights, CUDA graphs " + (graphs_on_ ? "on" : "off");
}

void CudaExecutor::validate(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                            std::span<const PageTable* const> pages,
                            std::span<const int32_t> feed) const {
  check(pages.size() == seqs.size() && !seqs.empty(), "cuda executor: bad batch");
  check(feed.empty() || feed.size() == tokens.size(), "cuda executor: one feed entry per row");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!feed.empty() && feed[i] >= 0) continue;  // produced on the device
    const int32_t t = tokens[i];
    check(t >= 0 && t < cfg_.vocab_size,
          "cuda executor: token id " + std::to_string(t) + " outside the vocabulary");
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqSpan& s = seqs[i];
    check(s.context_len + s.num_tokens <= max_model_len_ &&
              static_cast<int64_t>(pages[i]->size()) * kPageTokens >= s.context_len + s.num_tokens,
          "cuda executor: sequence exceeds its pages or the model length");
    for (int32_t p : *pages[i]) {
      check(p >= 0 && p < num_pages_, "cuda executor: page id out of range");
    }
  }
}

// Work per layer for the profile: RoPE (fp16 QKV in, fp32 q, fp16 k/v and page bytes out),
// decode attention (the K/V bytes of every context read once per layer) and prefill attention
// (causal FLOPs once: 4 D Hq per query-key pair). Only a profiled run walks the sequences.
void CudaExecutor::begin_profile(std::span<const SeqSpan> seqs, int64_t rows, int64_t decode_rows) {
  if (!prof_) return;
  const int64_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim();
  const double kv_token_bytes = 2.0 * static_cast<double>(page_bytes_) / kPageTokens;
  rope_work_ = {
      static_cast<double>(rows) * ((qd + 2 * kvd) * 2.0 + qd * 4.0 + kvd * 4.0 + kv_token_bytes),
      0.0};
  dec_work_ = pre_work_ = {};
  for (const SeqSpan& s : seqs) {
    if (s.num_tokens == 1 && s.context_len > 0) {
      dec_work_.bytes += static_cast<double>(s.context_len) * kv_token_bytes;
    } else {
      const double n = static_cast<double>(s.num_tokens), c = static_cast<double>(s.context_len);
      pre_work_.flops +=
          4.0 * static_cast<double>(cfg_.head_dim * cfg_.num_heads) * (n * c + n * (n + 1) / 2);
    }
  }
  const int64_t all = static_cast<int64_t>(seqs.size());
  prof_->begin_step(decode_rows == all ? "decode"
                    : decode_rows == 0 ? "prefill"
                                       : "mixed",
                    rows, all);
}

StepBuffers CudaExecutor::run_eager(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                                    std::span<const PageTable* const> pages,
                                    const std::vector<int32_t>& out_rows,
                                    const SampleArrays* sample) {
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t window = cfg_.sliding_window.value_or(0);
  // Batch metadata: all sequences (RoPE/append), decode rows and prefill chunks apart.
  HostBatch all, dec, pre;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqSpan& s = seqs[i];
    all.add(s, *pages[i]);
    const bool windowed = window > 0 && s.context_len + s.num_tokens > window;
    (s.num_tokens == 1 && s.context_len > 0 && !windowed ? dec : pre).add(s, *pages[i]);
  }
  begin_profile(seqs, T, dec.size());

  pack_.clear();
  const size_t o_tokens = pack_.add(tokens);
  const size_t o_rows = pack_.add(out_rows);
  all.pack(pack_);
  dec.pack(pack_);
  pre.pack(pack_);
  const int64_t n_sample = sample != nullptr ? static_cast<int64_t>(sample->temperature.size()) : 0;
  size_t o_temp = 0, o_top_k = 0, o_top_p = 0, o_uniform = 0;
  if (n_sample > 0) {
    o_temp = pack_.add(sample->temperature);
    o_top_k = pack_.add(sample->top_k);
    o_top_p = pack_.add(sample->top_p);
    o_uniform = pack_.add(sample->uniform);
  }

  StepDims d;
  d.rows = T;
  d.out_rows = static_cast<int64_t>(out_rows.size());
  d.input_bytes = pack_.size();
  if (dec.size() > 0) {
    d.attn_ws_bytes =
        decode_attention_workspace_bytes(dec.size(), cfg_.num_heads, cfg_.head_dim, dec.max_total);
  }
  StepBuffers b(cfg_, w_.quantized, d);
  pack_.upload(staging_, b.inputs, stream_.get());

  StepInputs in;
  in.tokens = reinterpret_cast<const int32_t*>(b.inputs + o_tokens);
  in.rows = T;
  in.all = all.resolve(b.inputs);
  in.dec = dec.resolve(b.inputs);
  in.pre = pre.resolve(b.inputs);
  in.out_rows = reinterpret_cast<const int32_t*>(b.inputs + o_rows);
  in.num_out = d.out_rows;
  if (n_sample > 0) {
    in.temperature = reinterpret_cast<const float*>(b.inputs + o_temp);
    in.top_k = reinterpret_cast<const int32_t*>(b.inputs + o_top_k);
    in.top_p = reinterpret_cast<const float*>(b.inputs + o_top_p);
    in.uniform = reinterpret_cast<const double*>(b.inputs + o_uniform);
    in.num_sample = n_sample;
  }
  forward(in, b, nullptr);
  return b;
}

void CudaExecutor::copy_out(const StepBuffers& b, int64_t n_ids, int64_t first_logits,
                            int64_t n_logits, std::vector<int32_t>& ids,
                            std::vector<float>& logits) {
  const int64_t V = cfg_.vocab_size;
  ids.resize(static_cast<size_t>(n_ids));
  logits.resize(static_cast<size_t>(n_logits * V));
  // Copies into pageable host memory return once they are done, i.e. after the step's kernels:
  // this is where the host waits for the device (with finish_step's synchronization).
  const WaitTimer wait(device_wait_s_);
  if (n_ids > 0) {
    cuda_check(cudaMemcpyAsync(ids.data(), b.ids, static_cast<size_t>(n_ids) * sizeof(int32_t),
                               cudaMemcpyDeviceToHost, stream_.get()),
               "cuda executor: ids to the host");
  }
  if (n_logits > 0) {
    cuda_check(cudaMemcpyAsync(logits.data(), b.logits + first_logits * V,
                               static_cast<size_t>(n_logits * V) * sizeof(float),
                               cudaMemcpyDeviceToHost, stream_.get()),
               "cuda executor: logits to the host");
  }
}

void CudaExecutor::finish_step() {
  mark(OpClass::kSampling);
  {
    const WaitTimer wait(device_wait_s_);
    stream_.synchronize();
  }
  if (prof_) prof_->end_step();
}

void CudaExecutor::check_nothing_launched(const char* what) const {
  check(outstanding_.empty(), std::string("cuda executor: ") + what +
                                  " while a launched step is outstanding (collect it first)");
}

void CudaExecutor::execute(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                           std::span<const PageTable* const> pages, std::vector<float>& logits) {
  check_nothing_launched("execute");
  validate(tokens, seqs, pages);
  std::vector<int32_t> last_rows;
  for (const SeqSpan& s : seqs) {
    last_rows.push_back(static_cast<int32_t>(s.token_offset + s.num_tokens - 1));
  }
  const StepBuffers b = run_eager(tokens, seqs, pages, last_rows, nullptr);
  std::vector<int32_t> no_ids;
  copy_out(b, 0, 0, static_cast<int64_t>(last_rows.size()), no_ids, logits);
  finish_step();
}

void CudaExecutor::execute_rows(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                                std::span<const PageTable* const> pages,
                                std::span<const RowSample> rows, std::vector<float>& logits,
                                std::vector<int32_t>& ids) {
  check(rows.size() == seqs.size(), "execute_rows: one RowSample per sequence is needed");
  check_nothing_launched("execute_rows");
  validate(tokens, seqs, pages);
  if (tokens.size() == seqs.size() && decode_eligible(seqs)) {
    decode_step(tokens, seqs, pages, rows, logits, ids);
    return;
  }
  std::vector<int32_t> out_rows;
  SampleArrays sample;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].kind != RowSample::Kind::kDevice) continue;
    out_rows.push_back(static_cast<int32_t>(seqs[i].token_offset + seqs[i].num_tokens - 1));
    sample.temperature.push_back(rows[i].temperature);
    sample.top_k.push_back(rows[i].top_k);
    sample.top_p.push_back(rows[i].top_p);
    sample.uniform.push_back(rows[i].uniform);
  }
  const int64_t n_dev = static_cast<int64_t>(out_rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].kind != RowSample::Kind::kLogits) continue;
    out_rows.push_back(static_cast<int32_t>(seqs[i].token_offset + seqs[i].num_tokens - 1));
  }
  const int64_t n_log = static_cast<int64_t>(out_rows.size()) - n_dev;
  const StepBuffers b = run_eager(tokens, seqs, pages, out_rows, &sample);
  copy_out(b, n_dev, n_dev, n_log, ids, logits);
  finish_step();
}

bool CudaExecutor::can_launch(std::span<const SeqSpan> seqs,
                              std::span<const RowSample> rows) const {
  if (prof_ || rows.size() != seqs.size() || !decode_eligible(seqs)) return false;
  return std::all_of(rows.begin(), rows.end(),
                     [](const RowSample& r) { return r.kind == RowSample::Kind::kDevice; });
}

void CudaExecutor::launch(std::span<const int32_t> tokens, std::span<const int32_t> feed,
                          std::span<const SeqSpan> seqs, std::span<const PageTable* const> pages,
                          std::span<const RowSample> rows) {
  check(can_launch(seqs, rows) && tokens.size() == seqs.size(),
        "cuda executor: launch of a step that is not an all-device decode step");
  check(outstanding_.size() < 2, "cuda executor: two launched steps are already outstanding");
  check(feed.empty() || !outstanding_.empty(),
        "cuda executor: fed tokens need the step they come from to be outstanding");
  validate(tokens, seqs, pages, feed);
  // Buffer set k was last used by launch number launch_count_ - 2, collected by now (at most
  // one is outstanding), so its staged inputs have been uploaded and its ids read.
  const int k = static_cast<int>(launch_count_ % 2);
  const DecodeRows n = enqueue_decode(tokens, feed, seqs, pages, rows, launch_staging_[k]);
  const size_t bytes = static_cast<size_t>(n.device) * sizeof(int32_t);
  cuda_check(cudaMemcpyAsync(launch_ids_[k].ensure(bytes), decode_buf_.ids, bytes,
                             cudaMemcpyDeviceToHost, stream_.get()),
             "cuda executor: launched step's ids to the host");
  launch_done_[k].record(stream_.get());
  outstanding_.push_back({k, n.device});
  ++launch_count_;
}

void CudaExecutor::collect(std::vector<int32_t>& ids) {
  check(!outstanding_.empty(), "cuda executor: collect without a launched step");
  const Launched l = outstanding_.front();
  outstanding_.erase(outstanding_.begin());
  {
    const WaitTimer wait(device_wait_s_);
    launch_done_[l.k].synchronize();
  }
  const auto* h = reinterpret_cast<const int32_t*>(launch_ids_[l.k].data());
  ids.assign(h, h + l.rows);
}

void CudaExecutor::score(std::span<const int32_t> tokens, std::vector<float>& logits) {
  check_nothing_launched("score");
  const int64_t n = static_cast<int64_t>(tokens.size());
  check(n > 0 && n <= max_model_len_, "score: sequence length outside (0, max_model_len]");
  check(pages_for_tokens(n) <= num_pages_, "score: the cache has too few pages");
  PageTable table(static_cast<size_t>(pages_for_tokens(n)));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  const SeqSpan s{0, n, 0, 0};
  const PageTable* tp = &table;
  validate(tokens, {&s, 1}, {&tp, 1});
  std::vector<int32_t> rows(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) rows[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  const StepBuffers b = run_eager(tokens, {&s, 1}, {&tp, 1}, rows, nullptr);
  std::vector<int32_t> no_ids;
  copy_out(b, 0, 0, n, no_ids, logits);
  finish_step();
}

CudaGraphStats CudaExecutor::graph_stats() const {
  CudaGraphStats s = stats_;
  s.graphs_enabled = graphs_on_;
  s.evictions = graphs_.evictions();
  s.graphs = static_cast<int64_t>(graphs_.size());
  s.decode_buffer_bytes = decode_buf_.bytes() + decode_attn_ws_.bytes();
  return s;
}

}  // namespace qserve::cuda

namespace qserve {

std::unique_ptr<ModelExecutor> make_cuda_executor(const LlamaModel& model, int64_t num_pages,
                                                  int64_t num_slots, int64_t max_model_len,
                                                  const CudaExecutorOptions& options) {
  return std::make_unique<cuda::CudaExecutor>(
      model, [num_pages](int64_t, int64_t, int64_t) { return num_pages; }, num_slots, max_model_len,
      options);
}

std::unique_ptr<Engine> create_cuda_engine(const LlamaModel& model, const Tokenizer* tokenizer,
                                           const EngineConfig& cfg) {
  check(cuda::device_count() > 0, "--device cuda: no CUDA device is visible");
  const int64_t max_len = engine_max_model_len(cfg, model.config());
  const int64_t want = engine_full_pages(cfg, max_len);
  // After the weights are uploaded: every slot at full length, or what free memory allows
  // (QServe's rule, with the scale/zero bytes of KV4/KV8 pages counted), unless the flag or
  // NUM_GPU_PAGE_BLOCKS says otherwise.
  const auto pages_for = [&](int64_t free_b, int64_t total_b, int64_t page_bytes) {
    const int64_t fit = pages_from_memory(free_b, total_b, cfg.memory_utilization, page_bytes);
    return resolve_num_pages(cfg.num_pages, std::min(want, fit));
  };
  CudaExecutorOptions opts;
  opts.cuda_graphs = cfg.cuda_graphs;
  opts.profile = cfg.profile;
  return std::make_unique<Engine>(
      std::make_unique<cuda::CudaExecutor>(model, pages_for, cfg.max_num_seqs, max_len, opts),
      tokenizer, cfg, max_len, engine_eos_ids(tokenizer));
}

CudaGraphStats cuda_graph_stats(const ModelExecutor& executor) {
  const auto* cuda = dynamic_cast<const cuda::CudaExecutor*>(&executor);
  check(cuda != nullptr, "cuda_graph_stats: not a CUDA executor (" + executor.describe() + ")");
  return cuda->graph_stats();
}

}  // namespace qserve
