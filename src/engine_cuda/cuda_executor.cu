// The forward of model/llama_forward.cpp on the GPU, op for op, so each step matches the CPU
// reference within the parity harness's tolerances:
//   embedding -> per layer [norm (+ int8 quant) -> QKV -> RoPE + fp16 K/V + paged append ->
//   attention (decode rows: decode kernel; prefill chunks: prefill kernel) -> (quant) -> O ->
//   residual + norm (+ quant) -> gate_up -> SiLU·mul (+ quant) -> down -> residual]
//   -> final norm on the rows that sample -> lm_head (fp32 for W16A16; fp16 weights and input
//   with fp32 logits for quantized models, as QServe) -> tokens sampled on the GPU.
// Quantized linears emit fp16 (QServe's epilogue), which the next fused op reads directly; the
// fp32 linears (W16A16) run through cuBLASLt in fp32.
#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_device.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"
#include "engine/kv_sizing.h"
#include "engine_cuda/cuda_executor.h"
#include "engine_cuda/cuda_weights.h"
#include "engine_cuda/step_profiler.h"

namespace qserve {

namespace {

using cuda::DeviceBuffer;

// residual[i] += fp32(delta16[i]) - the CPU's `x += proj` on fp16-valued projections.
__global__ void add_f16_kernel(float* residual, const uint16_t* delta, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) residual[i] = __fadd_rn(residual[i], __half2float(__ushort_as_half(delta[i])));
}

// residual[i] += delta[i] (fp32).
__global__ void add_f32_kernel(float* residual, const float* delta, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) residual[i] = __fadd_rn(residual[i], delta[i]);
}

// out[i] = fp16_RN(x[i]): the fp16 input of the fp16 lm_head.
__global__ void to_f16_kernel(const float* x, uint16_t* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __half_as_ushort(__float2half_rn(x[i]));
}

// y[r, c] = fp16(y + bias[c]) with one fp16 rounding: the W8A8 bias (quant::f16_add).
__global__ void add_bias_f16_kernel(uint16_t* y, const uint16_t* bias, int64_t rows, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * n) return;
  const __half a = __ushort_as_half(y[i]), b = __ushort_as_half(bias[i % n]);
  y[i] = __half_as_ushort(__float2half_rn(__fadd_rn(__half2float(a), __half2float(b))));
}

unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

cuda::KvFormat kv_format(KvPrecision kv) {
  switch (kv) {
    case KvPrecision::kKv4:
      return cuda::KvFormat::kv4;
    case KvPrecision::kKv8:
      return cuda::KvFormat::kv8;
    case KvPrecision::kKv16:
      break;
  }
  return cuda::KvFormat::kv16;
}

// The host side of one varlen (sub)batch, uploaded as cuda::VarlenBatchDevice.
struct HostBatch {
  std::vector<int32_t> offset, ntok, ctx, table;
  std::vector<const PageTable*> tabs;
  int32_t stride = 1, max_tokens = 0, max_total = 0;

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

  // Uploads the arrays (kept alive in `keep` until the step's work is done; one stream, so
  // the caching allocator reuses them only after it).
  cuda::VarlenBatchDevice upload(std::vector<DeviceBuffer<int32_t>>& keep, cudaStream_t stream) {
    cuda::VarlenBatchDevice b;
    b.num_seqs = size();
    if (size() == 0) return b;
    table.assign(static_cast<size_t>(size()) * static_cast<size_t>(stride), 0);
    for (size_t i = 0; i < tabs.size(); ++i) {
      std::copy(tabs[i]->begin(), tabs[i]->end(), table.begin() + static_cast<int64_t>(i) * stride);
    }
    const auto put = [&](const std::vector<int32_t>& v) {
      keep.emplace_back(v.size());
      keep.back().copy_from_host(v, stream);
      return keep.back().data();
    };
    b.token_offset = put(offset);
    b.num_tokens = put(ntok);
    b.context_len = put(ctx);
    b.block_table = put(table);
    b.block_stride = stride;
    b.max_num_tokens = max_tokens;
    b.max_total_len = max_total;
    return b;
  }
};

class CudaExecutor final : public ModelExecutor {
 public:
  // pages_for(free_bytes, total_bytes, bytes_per_page_all_layers) picks the page count once the
  // weights are on the device.
  using PagesFn = std::function<int64_t(int64_t, int64_t, int64_t)>;

  CudaExecutor(const LlamaModel& model, const PagesFn& pages_for, int64_t num_slots,
               int64_t max_model_len, bool profile = false)
      : cfg_(model.config()),
        precision_(model.precision()),
        norm_kind_(model.options().qserve_norm ? quant::NormKind::kQServeLayerNorm
                                               : quant::NormKind::kRmsNorm),
        num_slots_(num_slots),
        max_model_len_(max_model_len) {
    check(cuda::device_count() > 0, "cuda executor: no CUDA device is visible");
    check(num_slots > 0, "cuda executor: slots must be positive");
    w_ = cuda::upload_llama(model, stream_);
    format_ = kv_format(precision_.kv);
    page_bytes_ = cuda::kv_page_bytes(format_, cfg_.num_kv_heads, cfg_.head_dim);
    size_t free_b = 0, total_b = 0;
    cuda::cuda_check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    num_pages_ = pages_for(static_cast<int64_t>(free_b), static_cast<int64_t>(total_b),
                           page_bytes_ * 2 * cfg_.num_layers);
    check(num_pages_ > 0, "cuda executor: no room for a single KV page");
    const int64_t pool = num_pages_ * page_bytes_;
    for (int64_t l = 0; l < cfg_.num_layers; ++l) {
      k_pools_.emplace_back(static_cast<size_t>(pool));
      v_pools_.emplace_back(static_cast<size_t>(pool));
      // Deterministic contents for never-written page slots (they are never read).
      k_pools_.back().fill_bytes(0, stream_);
      v_pools_.back().fill_bytes(0, stream_);
    }
    stream_.synchronize();
    if (profile) prof_ = std::make_unique<cuda::StepProfiler>(stream_.get());
  }

  int64_t vocab_size() const override { return cfg_.vocab_size; }
  // H200 peaks: HBM3e 4.8 TB/s, dense int8 1,979 TOP/s, dense fp16 989 TFLOP/s.
  std::string profile_report() const override {
    return prof_ ? prof_->report(4.8, 1979.0, 989.0) : std::string();
  }
  int64_t num_slots() const override { return num_slots_; }
  int64_t num_pages() const override { return num_pages_; }
  std::string describe() const override {
    return "cuda (" + cuda::device_summary() + "), " + precision_.name() + ", " +
           std::to_string(num_pages_) + " KV pages, " + std::to_string(w_.bytes >> 20) +
           " MiB of weights";
  }

  void execute(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
               std::span<const PageTable* const> pages, std::vector<float>& logits) override {
    std::vector<int32_t> last_rows;
    for (const SeqSpan& s : seqs) {
      last_rows.push_back(static_cast<int32_t>(s.token_offset + s.num_tokens - 1));
    }
    to_host(run(tokens, seqs, pages, last_rows), logits);
    if (prof_) prof_->end_step();
  }

  bool samples_on_device() const override { return true; }

  // The logits rows of the sampled sequences only: kDevice rows first (sampled here, ids to
  // the host), then kLogits rows (copied to the host); one synchronization per step.
  void execute_rows(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                    std::span<const PageTable* const> pages, std::span<const RowSample> rows,
                    std::vector<float>& logits, std::vector<int32_t>& ids) override {
    check(rows.size() == seqs.size(), "execute_rows: one RowSample per sequence is needed");
    std::vector<int32_t> out_rows;
    std::vector<float> temp, top_p;
    std::vector<int32_t> top_k;
    std::vector<double> uni;
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].kind != RowSample::Kind::kDevice) continue;
      out_rows.push_back(static_cast<int32_t>(seqs[i].token_offset + seqs[i].num_tokens - 1));
      temp.push_back(rows[i].temperature);
      top_k.push_back(rows[i].top_k);
      top_p.push_back(rows[i].top_p);
      uni.push_back(rows[i].uniform);
    }
    const int64_t n_dev = static_cast<int64_t>(out_rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].kind != RowSample::Kind::kLogits) continue;
      out_rows.push_back(static_cast<int32_t>(seqs[i].token_offset + seqs[i].num_tokens - 1));
    }
    const int64_t n_log = static_cast<int64_t>(out_rows.size()) - n_dev;
    const DeviceBuffer<float> d_logits = run(tokens, seqs, pages, out_rows);
    const int64_t V = cfg_.vocab_size;
    ids.resize(static_cast<size_t>(n_dev));
    logits.resize(static_cast<size_t>(n_log * V));
    DeviceBuffer<int32_t> d_ids;
    DeviceBuffer<float> d_temp, d_top_p;
    DeviceBuffer<int32_t> d_top_k;
    DeviceBuffer<double> d_uni;
    if (n_dev > 0) {
      const auto up = [&](auto& dst, const auto& src) {
        dst = std::remove_reference_t<decltype(dst)>(src.size());
        dst.copy_from_host(std::span(src), stream_.get());
      };
      up(d_temp, temp);
      up(d_top_p, top_p);
      up(d_top_k, top_k);
      up(d_uni, uni);
      d_ids = DeviceBuffer<int32_t>(static_cast<size_t>(n_dev));
      cuda::sample_rows_fast(d_logits.data(), n_dev, V, d_temp.data(), d_top_k.data(),
                             d_top_p.data(), d_uni.data(), d_ids.data(), stream_.get());
      d_ids.copy_to_host(std::span<int32_t>(ids), stream_.get());
    }
    if (n_log > 0) {
      cuda::cuda_check(cudaMemcpyAsync(logits.data(), d_logits.data() + n_dev * V,
                                       static_cast<size_t>(n_log * V) * sizeof(float),
                                       cudaMemcpyDeviceToHost, stream_.get()),
                       "execute_rows: logits to the host");
    }
    mark(cuda::OpClass::kSampling);
    stream_.synchronize();
    if (prof_) prof_->end_step();
  }

  void score(std::span<const int32_t> tokens, std::vector<float>& logits) override {
    const int64_t n = static_cast<int64_t>(tokens.size());
    check(n > 0 && n <= max_model_len_, "score: sequence length outside (0, max_model_len]");
    check(pages_for_tokens(n) <= num_pages_, "score: the cache has too few pages");
    PageTable table(static_cast<size_t>(pages_for_tokens(n)));
    for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
    const SeqSpan s{0, n, 0, 0};
    const PageTable* tp = &table;
    std::vector<int32_t> rows(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) rows[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    to_host(run(tokens, {&s, 1}, {&tp, 1}, rows), logits);
  }

 private:
  void to_host(const DeviceBuffer<float>& d, std::vector<float>& host) {
    host.resize(d.size());
    d.copy_to_host(std::span<float>(host), stream_.get());
    mark(cuda::OpClass::kSampling);
    stream_.synchronize();
  }

  void mark(cuda::OpClass c, cuda::OpWork w = {}) {
    if (prof_) prof_->mark(c, w);
  }

  // Bytes and integer ops of one quantized GEMM of m rows (weights, int8 activations in, fp16
  // out); g128 counts its 4-bit codes, whatever copy the kernel reads.
  static cuda::OpWork gemm_work(const cuda::LinearOnDevice& l, int64_t m) {
    const double n = static_cast<double>(l.n), k = static_cast<double>(l.k),
                 rows = static_cast<double>(m);
    const bool w8 = std::holds_alternative<cuda::W8PerChannelOnDevice>(l.w);
    return {n * k * (w8 ? 1.0 : 0.5) + rows * k + rows * n * 2.0, 2.0 * rows * n * k};
  }

  // One forward step, enqueued on stream_; returns the device logits [out_rows.size(), vocab]
  // of the given rows of the batch (none: the lm_head is skipped).
  DeviceBuffer<float> run(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                          std::span<const PageTable* const> pages,
                          const std::vector<int32_t>& out_rows) {
    check(pages.size() == seqs.size() && !seqs.empty(), "cuda executor: bad batch");
    const int64_t T = static_cast<int64_t>(tokens.size());
    const int64_t S = static_cast<int64_t>(out_rows.size());
    const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, V = cfg_.vocab_size;
    const int64_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim(), hd = cfg_.head_dim;
    const int64_t heads = cfg_.num_heads, window = cfg_.sliding_window.value_or(0);
    for (int32_t t : tokens) {
      check(t >= 0 && t < V,
            "cuda executor: token id " + std::to_string(t) + " outside the vocabulary");
    }

    // Batch metadata: all sequences (RoPE/append), decode rows and prefill chunks apart.
    HostBatch all, dec, pre;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const SeqSpan& s = seqs[i];
      check(
          s.context_len + s.num_tokens <= max_model_len_ &&
              static_cast<int64_t>(pages[i]->size()) * kPageTokens >= s.context_len + s.num_tokens,
          "cuda executor: sequence exceeds its pages or the model length");
      for (int32_t p : *pages[i]) {
        check(p >= 0 && p < num_pages_, "cuda executor: page id out of range");
      }
      all.add(s, *pages[i]);
      const bool windowed = window > 0 && s.context_len + s.num_tokens > window;
      (s.num_tokens == 1 && s.context_len > 0 && !windowed ? dec : pre).add(s, *pages[i]);
    }
    if (prof_) {
      prof_->begin_step(dec.size() == all.size() ? "decode"
                        : dec.size() == 0        ? "prefill"
                                                 : "mixed",
                        T, static_cast<int64_t>(seqs.size()));
    }
    std::vector<DeviceBuffer<int32_t>> keep;
    keep.reserve(16);  // pointers into it are handed out; never reallocate
    const cuda::VarlenBatchDevice b_all = all.upload(keep, stream_.get());
    const cuda::VarlenBatchDevice b_dec = dec.upload(keep, stream_.get());
    const cuda::VarlenBatchDevice b_pre = pre.upload(keep, stream_.get());
    DeviceBuffer<int32_t> d_tokens(tokens.size()), d_last(out_rows.size());
    d_tokens.copy_from_host(tokens, stream_.get());
    d_last.copy_from_host(out_rows, stream_.get());

    // Work per layer for the profile: RoPE (fp16 QKV in, fp32 q, fp16 k/v and page bytes out),
    // decode attention (the K/V bytes of every context read once per layer) and prefill
    // attention (causal FLOPs once: 4 D Hq per query-key pair).
    const double kv_token_bytes = 2.0 * static_cast<double>(page_bytes_) / kPageTokens;
    const cuda::OpWork rope_work{
        static_cast<double>(T) * ((qd + 2 * kvd) * 2.0 + qd * 4.0 + kvd * 4.0 + kv_token_bytes),
        0.0};
    // Only a profiled run needs it: a decode step does not walk its sequences again otherwise.
    dec_work_ = pre_work_ = {};
    for (size_t i = 0; prof_ && i < seqs.size(); ++i) {
      const SeqSpan& s = seqs[i];
      if (s.num_tokens == 1 && s.context_len > 0) {
        dec_work_.bytes += static_cast<double>(s.context_len) * kv_token_bytes;
      } else {
        const double n = static_cast<double>(s.num_tokens), c = static_cast<double>(s.context_len);
        pre_work_.flops += 4.0 * static_cast<double>(hd * heads) * (n * c + n * (n + 1) / 2);
      }
    }

    // Activations.
    DeviceBuffer<float> x(static_cast<size_t>(T * H));  // the residual stream
    cuda::embedding_f32(w_.embed.data(), d_tokens.data(), T, H, x.data(), stream_.get());
    mark(cuda::OpClass::kInput, {static_cast<double>(T * H) * 8.0, 0.0});
    DeviceBuffer<float> q(static_cast<size_t>(T * qd)), attn(static_cast<size_t>(T * qd));
    DeviceBuffer<uint16_t> k16(static_cast<size_t>(T * kvd)), v16(static_cast<size_t>(T * kvd));
    DeviceBuffer<uint8_t> ws;
    if (b_dec.num_seqs > 0) {
      ws = DeviceBuffer<uint8_t>(std::max<size_t>(
          1,
          cuda::decode_attention_workspace_bytes(b_dec.num_seqs, heads, hd, b_dec.max_total_len)));
    }
    const float eps = static_cast<float>(cfg_.rms_norm_eps);

    if (w_.quantized) {
      const int64_t widest = std::max({H, qd, I});
      DeviceBuffer<int8_t> aq(static_cast<size_t>(T * widest));
      DeviceBuffer<uint16_t> ascale(static_cast<size_t>(T)), asum(static_cast<size_t>(T));
      DeviceBuffer<uint16_t> qkv16(static_cast<size_t>(T * (qd + 2 * kvd)));
      DeviceBuffer<uint16_t> o16(static_cast<size_t>(T * H)), gu16(static_cast<size_t>(T * 2 * I));
      DeviceBuffer<uint16_t> d16(static_cast<size_t>(T * H));
      const auto qout = [&](bool sum) {
        return cuda::NormQuantOut{aq.data(), ascale.data(), sum ? asum.data() : nullptr, nullptr};
      };
      for (int64_t l = 0; l < cfg_.num_layers; ++l) {
        const cuda::LayerOnDevice& L = w_.layers[static_cast<size_t>(l)];
        if (l == 0) {
          cuda::norm_quant_f32(x.data(), L.input_norm.data(), eps, T, H, norm_kind_,
                               qout(L.qkv.needs_act_sum()), stream_.get());
        } else {
          cuda::add_residual_norm_quant_f16delta(x.data(), d16.data(), L.input_norm.data(), eps, T,
                                                 H, norm_kind_, qout(L.qkv.needs_act_sum()),
                                                 stream_.get());
        }
        mark(cuda::OpClass::kNormQuant, {static_cast<double>(T * H) * 11.0, 0.0});
        quant_gemm(L.qkv, aq.data(), ascale.data(), asum.data(), T, qkv16.data());
        mark(cuda::OpClass::kGemmQkv, gemm_work(L.qkv, T));
        const cuda::PagedKvDevice cache = layer_cache(l);
        cuda::rope_kv_append_f16(qkv16.data(), qd + 2 * kvd, b_all, heads, cfg_.num_kv_heads, hd,
                                 w_.inv_freq.data(), cache, q.data(), k16.data(), v16.data(),
                                 stream_.get());
        mark(cuda::OpClass::kRopeKv, rope_work);
        attention(q.data(), k16.data(), v16.data(), cache, b_dec, b_pre, window, attn.data(), ws);
        cuda::quantize_per_token_f32(attn.data(), T, qd, aq.data(), ascale.data(),
                                     L.o.needs_act_sum() ? asum.data() : nullptr, stream_.get());
        mark(cuda::OpClass::kNormQuant, {static_cast<double>(T * qd) * 5.0, 0.0});
        quant_gemm(L.o, aq.data(), ascale.data(), asum.data(), T, o16.data());
        mark(cuda::OpClass::kGemmO, gemm_work(L.o, T));
        cuda::add_residual_norm_quant_f16delta(x.data(), o16.data(), L.post_norm.data(), eps, T, H,
                                               norm_kind_, qout(L.gate_up.needs_act_sum()),
                                               stream_.get());
        mark(cuda::OpClass::kNormQuant, {static_cast<double>(T * H) * 11.0, 0.0});
        quant_gemm(L.gate_up, aq.data(), ascale.data(), asum.data(), T, gu16.data());
        mark(cuda::OpClass::kGemmGateUp, gemm_work(L.gate_up, T));
        cuda::silu_mul_quant_f16(gu16.data(), T, I, aq.data(), ascale.data(),
                                 L.down.needs_act_sum() ? asum.data() : nullptr, nullptr,
                                 stream_.get());
        mark(cuda::OpClass::kSiluQuant, {static_cast<double>(T * I) * 5.0, 0.0});
        quant_gemm(L.down, aq.data(), ascale.data(), asum.data(), T, d16.data());
        mark(cuda::OpClass::kGemmDown, gemm_work(L.down, T));
      }
      add_f16_kernel<<<blocks_for(T * H, 256), 256, 0, stream_.get()>>>(x.data(), d16.data(),
                                                                        T * H);
      cuda::check_launch("add_f16", "n=" + std::to_string(T * H));
      mark(cuda::OpClass::kNormQuant, {static_cast<double>(T * H) * 10.0, 0.0});
    } else {
      DeviceBuffer<float> h(static_cast<size_t>(T * H)),
          qkv(static_cast<size_t>(T * (qd + 2 * kvd)));
      DeviceBuffer<float> proj(static_cast<size_t>(T * H)), gu(static_cast<size_t>(T * 2 * I)),
          act(static_cast<size_t>(T * I));
      for (int64_t l = 0; l < cfg_.num_layers; ++l) {
        const cuda::LayerOnDevice& L = w_.layers[static_cast<size_t>(l)];
        if (l == 0) {
          cuda::rms_norm_f32(x.data(), L.input_norm.data(), eps, T, H, h.data(), stream_.get());
        } else {
          cuda::add_residual_rms_norm_f32(x.data(), proj.data(), L.input_norm.data(), eps, T, H,
                                          h.data(), stream_.get());
        }
        mark(cuda::OpClass::kNormQuant);
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.qkv.w), h.data(), T, qkv.data());
        mark(cuda::OpClass::kGemmQkv);
        const cuda::PagedKvDevice cache = layer_cache(l);
        cuda::rope_kv_append(qkv.data(), qd + 2 * kvd, b_all, heads, cfg_.num_kv_heads, hd,
                             w_.inv_freq.data(), cache, q.data(), k16.data(), v16.data(),
                             stream_.get());
        mark(cuda::OpClass::kRopeKv);
        attention(q.data(), k16.data(), v16.data(), cache, b_dec, b_pre, window, attn.data(), ws);
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.o.w), attn.data(), T, proj.data());
        mark(cuda::OpClass::kGemmO);
        cuda::add_residual_rms_norm_f32(x.data(), proj.data(), L.post_norm.data(), eps, T, H,
                                        h.data(), stream_.get());
        mark(cuda::OpClass::kNormQuant);
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.gate_up.w), h.data(), T, gu.data());
        mark(cuda::OpClass::kGemmGateUp);
        cuda::silu_mul_f32(gu.data(), T, I, act.data(), stream_.get());
        mark(cuda::OpClass::kSiluQuant);
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.down.w), act.data(), T, proj.data());
        mark(cuda::OpClass::kGemmDown);
      }
      add_f32_kernel<<<blocks_for(T * H, 256), 256, 0, stream_.get()>>>(x.data(), proj.data(),
                                                                        T * H);
      cuda::check_launch("add_f32", "n=" + std::to_string(T * H));
    }

    // Final norm and lm_head on the requested rows.
    DeviceBuffer<float> out(static_cast<size_t>(S * V));
    if (S == 0) return out;
    DeviceBuffer<float> xr(static_cast<size_t>(S * H)), hr(static_cast<size_t>(S * H));
    cuda::gather_rows(x.data(), d_last.data(), S, H, xr.data(), stream_.get());
    cuda::rms_norm_f32(xr.data(), w_.final_norm.data(), eps, S, H, hr.data(), stream_.get());
    double w_bytes = 4.0;
    if (!w_.lm_head16.empty()) {
      DeviceBuffer<uint16_t> h16(static_cast<size_t>(S * H));
      to_f16_kernel<<<blocks_for(S * H, 256), 256, 0, stream_.get()>>>(hr.data(), h16.data(),
                                                                       S * H);
      cuda::check_launch("lm_head to_f16", "n=" + std::to_string(S * H));
      cuda::gemm_cublaslt(lt_, h16.data(), w_.lm_head16.data(), cuda::DType::kF16, nullptr,
                          out.data(), cuda::DType::kF32, S, V, H, stream_.get());
      w_bytes = 2.0;
    } else {
      f32_gemm(w_.lm_head, hr.data(), S, out.data());
    }
    mark(cuda::OpClass::kLmHead,
         {static_cast<double>(V * H) * w_bytes + static_cast<double>(S * V) * 4.0,
          2.0 * static_cast<double>(S * V * H)});
    return out;
  }

  static constexpr int64_t kPageTokens = 64;

  cuda::PagedKvDevice layer_cache(int64_t l) {
    cuda::PagedKvDevice c;
    c.format = format_;
    c.kv_heads = static_cast<int32_t>(cfg_.num_kv_heads);
    c.head_dim = static_cast<int32_t>(cfg_.head_dim);
    c.k_pool = k_pools_[static_cast<size_t>(l)].data();
    c.v_pool = v_pools_[static_cast<size_t>(l)].data();
    c.num_pages = num_pages_;
    return c;
  }

  void attention(const float* q, const uint16_t* k16, const uint16_t* v16,
                 const cuda::PagedKvDevice& cache, const cuda::VarlenBatchDevice& dec,
                 const cuda::VarlenBatchDevice& pre, int64_t window, float* out,
                 DeviceBuffer<uint8_t>& ws) {
    if (dec.num_seqs > 0) {
      cuda::decode_attention(q, k16, v16, cache, dec, cfg_.num_heads, window, out, ws.data(),
                             ws.bytes(), stream_.get());
      mark(cuda::OpClass::kAttnDecode, dec_work_);
    }
    if (pre.num_seqs > 0) {
      cuda::prefill_attention(q, k16, v16, cache, pre, cfg_.num_heads, window, out, stream_.get());
      mark(cuda::OpClass::kAttnPrefill, pre_work_);
    }
  }

  void f32_gemm(const cuda::LinearF32OnDevice& l, const float* x, int64_t m, float* y) {
    cuda::gemm_cublaslt(lt_, x, l.w.data(), cuda::DType::kF32,
                        l.bias.empty() ? nullptr : l.bias.data(), y, cuda::DType::kF32, m, l.n, l.k,
                        stream_.get());
  }

  void quant_gemm(const cuda::LinearOnDevice& l, const int8_t* aq, const uint16_t* ascale,
                  const uint16_t* asum, int64_t m, uint16_t* y) {
    const uint16_t* bias = l.bias16.empty() ? nullptr : l.bias16.data();
    if (const auto* w = std::get_if<cuda::W4PerChannelOnDevice>(&l.w)) {
      cuda::gemm_w4a8_per_channel(aq, ascale, asum, m, w->view(), bias, y, nullptr, stream_.get());
    } else if (const auto* g = std::get_if<cuda::W4G128OnDevice>(&l.w)) {
      cuda::gemm_w4a8_g128(aq, ascale, m, g->view(), bias, y, nullptr, stream_.get());
    } else if (const auto* w8 = std::get_if<cuda::W8PerChannelOnDevice>(&l.w)) {
      cuda::gemm_w8a8(aq, ascale, m, w8->view(), y, nullptr, stream_.get());
      if (bias != nullptr) {
        add_bias_f16_kernel<<<blocks_for(m * l.n, 256), 256, 0, stream_.get()>>>(y, bias, m, l.n);
        cuda::check_launch("add_bias_f16", "rows=" + std::to_string(m));
      }
    } else {
      throw Error("cuda executor: an fp32 linear in a quantized model");
    }
  }

  ModelConfig cfg_;
  Precision precision_;
  quant::NormKind norm_kind_;
  int64_t num_pages_ = 0, num_slots_, max_model_len_;
  cuda::Stream stream_;
  cuda::CublasLt lt_;
  cuda::LlamaOnDevice w_;
  cuda::KvFormat format_ = cuda::KvFormat::kv16;
  int64_t page_bytes_ = 0;
  std::vector<DeviceBuffer<uint8_t>> k_pools_, v_pools_;
  std::unique_ptr<cuda::StepProfiler> prof_;  // --profile only
  cuda::OpWork dec_work_, pre_work_;          // this step's per-layer attention work
};

}  // namespace

std::unique_ptr<ModelExecutor> make_cuda_executor(const LlamaModel& model, int64_t num_pages,
                                                  int64_t num_slots, int64_t max_model_len) {
  return std::make_unique<CudaExecutor>(
      model, [num_pages](int64_t, int64_t, int64_t) { return num_pages; }, num_slots,
      max_model_len);
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
  return std::make_unique<Engine>(
      std::make_unique<CudaExecutor>(model, pages_for, cfg.max_num_seqs, max_len, cfg.profile),
      tokenizer, cfg, max_len, engine_eos_ids(tokenizer));
}

}  // namespace qserve
