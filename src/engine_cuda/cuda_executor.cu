// The forward of model/llama_forward.cpp on the GPU, op for op, so each step matches the CPU
// reference within the parity harness's tolerances:
//   embedding -> per layer [norm (+ int8 quant) -> QKV -> RoPE + fp16 K/V + paged append ->
//   attention (decode rows: decode kernel; prefill chunks: prefill kernel) -> (quant) -> O ->
//   residual + norm (+ quant) -> gate_up -> SiLU·mul (+ quant) -> down -> residual]
//   -> final norm on each sequence's last row -> fp32 lm_head -> logits to the host.
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
    case KvPrecision::kKv4: return cuda::KvFormat::kv4;
    case KvPrecision::kKv8: return cuda::KvFormat::kv8;
    case KvPrecision::kKv16: break;
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
               int64_t max_model_len)
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
  }

  int64_t vocab_size() const override { return cfg_.vocab_size; }
  int64_t num_slots() const override { return num_slots_; }
  int64_t num_pages() const override { return num_pages_; }
  std::string describe() const override {
    return "cuda (" + cuda::device_summary() + "), " + precision_.name() + ", " +
           std::to_string(num_pages_) + " KV pages, " +
           std::to_string(w_.bytes >> 20) + " MiB of weights";
  }

  void execute(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
               std::span<const PageTable* const> pages, std::vector<float>& logits) override {
    std::vector<int32_t> last_rows;
    for (const SeqSpan& s : seqs) {
      last_rows.push_back(static_cast<int32_t>(s.token_offset + s.num_tokens - 1));
    }
    run(tokens, seqs, pages, last_rows, logits);
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
    run(tokens, {&s, 1}, {&tp, 1}, rows, logits);
  }

 private:
  // One forward step; logits [out_rows.size(), vocab] of the given rows of the batch.
  void run(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
           std::span<const PageTable* const> pages, const std::vector<int32_t>& out_rows,
           std::vector<float>& logits) {
    check(pages.size() == seqs.size() && !seqs.empty(), "cuda executor: bad batch");
    const int64_t T = static_cast<int64_t>(tokens.size());
    const int64_t S = static_cast<int64_t>(out_rows.size());
    const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, V = cfg_.vocab_size;
    const int64_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim(), hd = cfg_.head_dim;
    const int64_t heads = cfg_.num_heads, window = cfg_.sliding_window.value_or(0);
    for (int32_t t : tokens) {
      check(t >= 0 && t < V, "cuda executor: token id " + std::to_string(t) + " outside the vocabulary");
    }

    // Batch metadata: all sequences (RoPE/append), decode rows and prefill chunks apart.
    HostBatch all, dec, pre;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const SeqSpan& s = seqs[i];
      check(s.context_len + s.num_tokens <= max_model_len_ &&
                static_cast<int64_t>(pages[i]->size()) * kPageTokens >= s.context_len + s.num_tokens,
            "cuda executor: sequence exceeds its pages or the model length");
      for (int32_t p : *pages[i]) {
        check(p >= 0 && p < num_pages_, "cuda executor: page id out of range");
      }
      all.add(s, *pages[i]);
      const bool windowed = window > 0 && s.context_len + s.num_tokens > window;
      (s.num_tokens == 1 && s.context_len > 0 && !windowed ? dec : pre).add(s, *pages[i]);
    }
    std::vector<DeviceBuffer<int32_t>> keep;
    keep.reserve(16);  // pointers into it are handed out; never reallocate
    const cuda::VarlenBatchDevice b_all = all.upload(keep, stream_.get());
    const cuda::VarlenBatchDevice b_dec = dec.upload(keep, stream_.get());
    const cuda::VarlenBatchDevice b_pre = pre.upload(keep, stream_.get());
    DeviceBuffer<int32_t> d_tokens(tokens.size()), d_last(out_rows.size());
    d_tokens.copy_from_host(tokens, stream_.get());
    d_last.copy_from_host(out_rows, stream_.get());

    // Activations.
    DeviceBuffer<float> x(static_cast<size_t>(T * H));  // the residual stream
    cuda::embedding_f32(w_.embed.data(), d_tokens.data(), T, H, x.data(), stream_.get());
    DeviceBuffer<float> q(static_cast<size_t>(T * qd)), attn(static_cast<size_t>(T * qd));
    DeviceBuffer<uint16_t> k16(static_cast<size_t>(T * kvd)), v16(static_cast<size_t>(T * kvd));
    DeviceBuffer<uint8_t> ws;
    if (b_dec.num_seqs > 0) {
      ws = DeviceBuffer<uint8_t>(std::max<size_t>(
          1, cuda::decode_attention_workspace_bytes(b_dec.num_seqs, heads, hd, b_dec.max_total_len)));
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
        quant_gemm(L.qkv, aq.data(), ascale.data(), asum.data(), T, qkv16.data());
        const cuda::PagedKvDevice cache = layer_cache(l);
        cuda::rope_kv_append_f16(qkv16.data(), qd + 2 * kvd, b_all, heads, cfg_.num_kv_heads, hd,
                                 w_.inv_freq.data(), cache, q.data(), k16.data(), v16.data(),
                                 stream_.get());
        attention(q.data(), k16.data(), v16.data(), cache, b_dec, b_pre, window, attn.data(), ws);
        cuda::quantize_per_token_f32(attn.data(), T, qd, aq.data(), ascale.data(),
                                     L.o.needs_act_sum() ? asum.data() : nullptr, stream_.get());
        quant_gemm(L.o, aq.data(), ascale.data(), asum.data(), T, o16.data());
        cuda::add_residual_norm_quant_f16delta(x.data(), o16.data(), L.post_norm.data(), eps, T, H,
                                               norm_kind_, qout(L.gate_up.needs_act_sum()),
                                               stream_.get());
        quant_gemm(L.gate_up, aq.data(), ascale.data(), asum.data(), T, gu16.data());
        cuda::silu_mul_quant_f16(gu16.data(), T, I, aq.data(), ascale.data(),
                                 L.down.needs_act_sum() ? asum.data() : nullptr, nullptr,
                                 stream_.get());
        quant_gemm(L.down, aq.data(), ascale.data(), asum.data(), T, d16.data());
      }
      add_f16_kernel<<<blocks_for(T * H, 256), 256, 0, stream_.get()>>>(x.data(), d16.data(), T * H);
      cuda::check_launch("add_f16", "n=" + std::to_string(T * H));
    } else {
      DeviceBuffer<float> h(static_cast<size_t>(T * H)), qkv(static_cast<size_t>(T * (qd + 2 * kvd)));
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
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.qkv.w), h.data(), T, qkv.data());
        const cuda::PagedKvDevice cache = layer_cache(l);
        cuda::rope_kv_append(qkv.data(), qd + 2 * kvd, b_all, heads, cfg_.num_kv_heads, hd,
                             w_.inv_freq.data(), cache, q.data(), k16.data(), v16.data(),
                             stream_.get());
        attention(q.data(), k16.data(), v16.data(), cache, b_dec, b_pre, window, attn.data(), ws);
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.o.w), attn.data(), T, proj.data());
        cuda::add_residual_rms_norm_f32(x.data(), proj.data(), L.post_norm.data(), eps, T, H,
                                        h.data(), stream_.get());
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.gate_up.w), h.data(), T, gu.data());
        cuda::silu_mul_f32(gu.data(), T, I, act.data(), stream_.get());
        f32_gemm(std::get<cuda::LinearF32OnDevice>(L.down.w), act.data(), T, proj.data());
      }
      add_f32_kernel<<<blocks_for(T * H, 256), 256, 0, stream_.get()>>>(x.data(), proj.data(), T * H);
      cuda::check_launch("add_f32", "n=" + std::to_string(T * H));
    }

    // Final norm and lm_head on each sequence's last row.
    DeviceBuffer<float> xr(static_cast<size_t>(S * H)), hr(static_cast<size_t>(S * H));
    cuda::gather_rows(x.data(), d_last.data(), S, H, xr.data(), stream_.get());
    cuda::rms_norm_f32(xr.data(), w_.final_norm.data(), eps, S, H, hr.data(), stream_.get());
    DeviceBuffer<float> out(static_cast<size_t>(S * V));
    f32_gemm(w_.lm_head, hr.data(), S, out.data());
    logits.resize(static_cast<size_t>(S * V));
    out.copy_to_host(logits, stream_.get());
    stream_.synchronize();
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
    }
    if (pre.num_seqs > 0) {
      cuda::prefill_attention(q, k16, v16, cache, pre, cfg_.num_heads, window, out, stream_.get());
    }
  }

  void f32_gemm(const cuda::LinearF32OnDevice& l, const float* x, int64_t m, float* y) {
    cuda::gemm_cublaslt(lt_, x, l.w.data(), cuda::DType::kF32, l.bias.empty() ? nullptr : l.bias.data(),
                        y, cuda::DType::kF32, m, l.n, l.k, stream_.get());
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
      std::make_unique<CudaExecutor>(model, pages_for, cfg.max_num_seqs, max_len), tokenizer, cfg,
      max_len, engine_eos_ids(tokenizer));
}

}  // namespace qserve
