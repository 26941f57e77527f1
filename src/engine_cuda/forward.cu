// The forward of model/llama_forward.cpp on the GPU, op for op, so each step matches the CPU
// reference within the parity harness's tolerances:
//   embedding -> per layer [norm (+ int8 quant) -> QKV -> RoPE + fp16 K/V + paged append ->
//   attention (decode rows: decode kernel; prefill chunks: prefill kernel) -> (quant) -> O ->
//   residual + norm (+ quant) -> gate_up -> SiLU·mul (+ quant) -> down -> residual]
//   -> final norm on the output rows -> lm_head (fp32 for W16A16; fp16 weights and input with
//   fp32 logits for quantized models, as QServe) -> tokens sampled on the GPU.
// Quantized linears emit fp16 (QServe's epilogue), which the next fused op reads directly; the
// fp32 linears (W16A16) run through cuBLASLt in fp32.
//
// Everything here only enqueues work on stream_ with pointers it is given: no allocation, no
// synchronization, no host-side value that differs between two steps of the same shape. That
// is what lets decode_step.cu capture it as a CUDA graph.
#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_device.h"
#include "core/error.h"
#include "engine_cuda/executor_impl.h"

namespace qserve::cuda {

namespace {

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

// Bytes and integer ops of one quantized GEMM of m rows (weights, int8 activations in, fp16
// out); g128 counts its 4-bit codes, whatever copy the kernel reads.
OpWork gemm_work(const LinearOnDevice& l, int64_t m) {
  const double n = static_cast<double>(l.n), k = static_cast<double>(l.k),
               rows = static_cast<double>(m);
  const bool w8 = std::holds_alternative<W8PerChannelOnDevice>(l.w);
  return {n * k * (w8 ? 1.0 : 0.5) + rows * k + rows * n * 2.0, 2.0 * rows * n * k};
}

}  // namespace

void CudaExecutor::forward(const StepInputs& in, const StepBuffers& b, const GemmWorkspace* gws) {
  const int64_t T = in.rows, S = in.num_out;
  const int64_t H = cfg_.hidden_size, I = cfg_.intermediate_size, V = cfg_.vocab_size;
  const int64_t qd = cfg_.q_dim(), kvd = cfg_.kv_dim(), hd = cfg_.head_dim;
  const int64_t heads = cfg_.num_heads;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  cudaStream_t s = stream_.get();

  embedding_f32_fed(w_.embed.data(), in.tokens, in.feed, in.feed_ids, T, H, b.x, s);
  mark(OpClass::kInput, {static_cast<double>(T * H) * 8.0, 0.0});
  // The step's RoPE table (cos/sin and each row's page slot), once for all layers, where the
  // layers' RoPE reads one (decode-sized steps; a step's shape is fixed, so graphs keep it).
  const RopeTableDevice rope_table{b.rope_cs, b.rope_info, T};
  const bool use_rope_table = rope_table_applies(T, cfg_.num_heads, cfg_.num_kv_heads, hd);
  if (use_rope_table) {
    rope_cos_sin_table(in.all, hd, w_.inv_freq.data(), rope_table, s);
    mark(OpClass::kRopeKv, {static_cast<double>(T * hd) * 4.0, 0.0});
  }
  const RopeTableDevice* rope_table_arg = use_rope_table ? &rope_table : nullptr;

  if (w_.quantized) {
    const auto qout = [&](bool sum) {
      return NormQuantOut{b.aq, b.ascale, sum ? b.asum : nullptr, nullptr};
    };
    for (int64_t l = 0; l < cfg_.num_layers; ++l) {
      const LayerOnDevice& L = w_.layers[static_cast<size_t>(l)];
      if (l == 0) {
        norm_quant_f32(b.x, L.input_norm.data(), eps, T, H, norm_kind_, qout(L.qkv.needs_act_sum()),
                       s);
      } else {
        add_residual_norm_quant_f16delta(b.x, b.d16, L.input_norm.data(), eps, T, H, norm_kind_,
                                         qout(L.qkv.needs_act_sum()), s);
      }
      mark(OpClass::kNormQuant, {static_cast<double>(T * H) * 11.0, 0.0});
      quant_gemm(L.qkv, b.aq, b.ascale, b.asum, T, b.qkv16, gws);
      mark(OpClass::kGemmQkv, gemm_work(L.qkv, T));
      const PagedKvDevice cache = layer_cache(l);
      rope_kv_append_f16(b.qkv16, qd + 2 * kvd, in.all, heads, cfg_.num_kv_heads, hd,
                         w_.inv_freq.data(), cache, b.q, b.k16, b.v16, s, rope_table_arg);
      mark(OpClass::kRopeKv, rope_work_);
      attention(b.q, b.k16, b.v16, cache, in, b.attn, b);
      quantize_per_token_f32(b.attn, T, qd, b.aq, b.ascale, L.o.needs_act_sum() ? b.asum : nullptr,
                             s);
      mark(OpClass::kNormQuant, {static_cast<double>(T * qd) * 5.0, 0.0});
      quant_gemm(L.o, b.aq, b.ascale, b.asum, T, b.o16, gws);
      mark(OpClass::kGemmO, gemm_work(L.o, T));
      add_residual_norm_quant_f16delta(b.x, b.o16, L.post_norm.data(), eps, T, H, norm_kind_,
                                       qout(L.gate_up.needs_act_sum()), s);
      mark(OpClass::kNormQuant, {static_cast<double>(T * H) * 11.0, 0.0});
      quant_gemm(L.gate_up, b.aq, b.ascale, b.asum, T, b.gu16, gws);
      mark(OpClass::kGemmGateUp, gemm_work(L.gate_up, T));
      silu_mul_quant_f16(b.gu16, T, I, b.aq, b.ascale, L.down.needs_act_sum() ? b.asum : nullptr,
                         nullptr, s);
      mark(OpClass::kSiluQuant, {static_cast<double>(T * I) * 5.0, 0.0});
      quant_gemm(L.down, b.aq, b.ascale, b.asum, T, b.d16, gws);
      mark(OpClass::kGemmDown, gemm_work(L.down, T));
    }
    add_f16_kernel<<<blocks_for(T * H, 256), 256, 0, s>>>(b.x, b.d16, T * H);
    check_launch("add_f16", "n=" + std::to_string(T * H));
    mark(OpClass::kNormQuant, {static_cast<double>(T * H) * 10.0, 0.0});
  } else {
    for (int64_t l = 0; l < cfg_.num_layers; ++l) {
      const LayerOnDevice& L = w_.layers[static_cast<size_t>(l)];
      if (l == 0) {
        rms_norm_f32(b.x, L.input_norm.data(), eps, T, H, b.h, s);
      } else {
        add_residual_rms_norm_f32(b.x, b.proj, L.input_norm.data(), eps, T, H, b.h, s);
      }
      mark(OpClass::kNormQuant);
      f32_gemm(std::get<LinearF32OnDevice>(L.qkv.w), b.h, T, b.qkv);
      mark(OpClass::kGemmQkv);
      const PagedKvDevice cache = layer_cache(l);
      rope_kv_append(b.qkv, qd + 2 * kvd, in.all, heads, cfg_.num_kv_heads, hd, w_.inv_freq.data(),
                     cache, b.q, b.k16, b.v16, s, rope_table_arg);
      mark(OpClass::kRopeKv);
      attention(b.q, b.k16, b.v16, cache, in, b.attn, b);
      f32_gemm(std::get<LinearF32OnDevice>(L.o.w), b.attn, T, b.proj);
      mark(OpClass::kGemmO);
      add_residual_rms_norm_f32(b.x, b.proj, L.post_norm.data(), eps, T, H, b.h, s);
      mark(OpClass::kNormQuant);
      f32_gemm(std::get<LinearF32OnDevice>(L.gate_up.w), b.h, T, b.gu);
      mark(OpClass::kGemmGateUp);
      silu_mul_f32(b.gu, T, I, b.act, s);
      mark(OpClass::kSiluQuant);
      f32_gemm(std::get<LinearF32OnDevice>(L.down.w), b.act, T, b.proj);
      mark(OpClass::kGemmDown);
    }
    add_f32_kernel<<<blocks_for(T * H, 256), 256, 0, s>>>(b.x, b.proj, T * H);
    check_launch("add_f32", "n=" + std::to_string(T * H));
  }

  // Final norm and lm_head on the output rows, then device sampling of the first num_sample.
  if (S == 0) return;
  gather_rows(b.x, in.out_rows, S, H, b.xr, s);
  rms_norm_f32(b.xr, w_.final_norm.data(), eps, S, H, b.hr, s);
  double w_bytes = 4.0;
  if (!w_.lm_head16.empty()) {
    to_f16_kernel<<<blocks_for(S * H, 256), 256, 0, s>>>(b.hr, b.h16, S * H);
    check_launch("lm_head to_f16", "n=" + std::to_string(S * H));
    gemm_cublaslt(lt_, b.h16, w_.lm_head16.data(), DType::kF16, nullptr, b.logits, DType::kF32, S,
                  V, H, s);
    w_bytes = 2.0;
  } else {
    f32_gemm(w_.lm_head, b.hr, S, b.logits);
  }
  mark(OpClass::kLmHead, {static_cast<double>(V * H) * w_bytes + static_cast<double>(S * V) * 4.0,
                          2.0 * static_cast<double>(S * V * H)});
  if (in.num_sample > 0) {
    sample_rows_fast(b.logits, in.num_sample, V, in.temperature, in.top_k, in.top_p, in.uniform,
                     b.ids, s);
  }
}

PagedKvDevice CudaExecutor::layer_cache(int64_t l) {
  PagedKvDevice c;
  c.format = format_;
  c.kv_heads = static_cast<int32_t>(cfg_.num_kv_heads);
  c.head_dim = static_cast<int32_t>(cfg_.head_dim);
  c.k_pool = k_pools_[static_cast<size_t>(l)].data();
  c.v_pool = v_pools_[static_cast<size_t>(l)].data();
  c.num_pages = num_pages_ + 1;  // the scratch page included
  return c;
}

void CudaExecutor::attention(const float* q, const uint16_t* k16, const uint16_t* v16,
                             const PagedKvDevice& cache, const StepInputs& in, float* out,
                             const StepBuffers& b) {
  const int64_t window = cfg_.sliding_window.value_or(0);
  if (in.dec.num_seqs > 0) {
    decode_attention(q, k16, v16, cache, in.dec, cfg_.num_heads, window, out, b.attn_ws,
                     b.attn_ws_bytes, stream_.get());
    mark(OpClass::kAttnDecode, dec_work_);
  }
  if (in.pre.num_seqs > 0) {
    prefill_attention(q, k16, v16, cache, in.pre, cfg_.num_heads, window, out, stream_.get());
    mark(OpClass::kAttnPrefill, pre_work_);
  }
}

void CudaExecutor::f32_gemm(const LinearF32OnDevice& l, const float* x, int64_t m, float* y) {
  gemm_cublaslt(lt_, x, l.w.data(), DType::kF32, l.bias.empty() ? nullptr : l.bias.data(), y,
                DType::kF32, m, l.n, l.k, stream_.get());
}

void CudaExecutor::quant_gemm(const LinearOnDevice& l, const int8_t* aq, const uint16_t* ascale,
                              const uint16_t* asum, int64_t m, uint16_t* y,
                              const GemmWorkspace* gws) {
  const uint16_t* bias = l.bias16.empty() ? nullptr : l.bias16.data();
  cudaStream_t s = stream_.get();
  if (const auto* w = std::get_if<W4PerChannelOnDevice>(&l.w)) {
    if (gws != nullptr) {
      gemm_w4a8_per_channel(aq, ascale, asum, m, w->view(), bias, y, nullptr, s, *gws);
    } else {
      gemm_w4a8_per_channel(aq, ascale, asum, m, w->view(), bias, y, nullptr, s);
    }
  } else if (const auto* g = std::get_if<W4G128OnDevice>(&l.w)) {
    if (gws != nullptr) {
      gemm_w4a8_g128(aq, ascale, m, g->view(), bias, y, nullptr, s, *gws);
    } else {
      gemm_w4a8_g128(aq, ascale, m, g->view(), bias, y, nullptr, s);
    }
  } else if (const auto* w8 = std::get_if<W8PerChannelOnDevice>(&l.w)) {
    if (gws != nullptr) {
      gemm_w8a8(aq, ascale, m, w8->view(), y, nullptr, s, *gws);
    } else {
      gemm_w8a8(aq, ascale, m, w8->view(), y, nullptr, s);
    }
    if (bias != nullptr) {
      add_bias_f16_kernel<<<blocks_for(m * l.n, 256), 256, 0, s>>>(y, bias, m, l.n);
      check_launch("add_bias_f16", "rows=" + std::to_string(m));
    }
  } else {
    throw Error("cuda executor: an fp32 linear in a quantized model");
  }
}

}  // namespace qserve::cuda
