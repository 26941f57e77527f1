// Pure-decode steps (every sequence one new token after a non-empty context, no sliding-window
// cut): run at a bucketed shape, inputs in one packed upload, replayed from a CUDA graph.
//
// Shape. The n sequences are padded to the batch bucket B >= n and the attention's context
// bound to the context bucket C (decode_buckets.h); the block table is B x C/64. Padding rows
// take token 0 at context 0 with every table entry on the scratch page (the pool's extra page
// that no sequence owns): their RoPE/append writes only that page and their attention reads
// only their own K/V, so they cannot disturb a real row. Every row - real and padding - goes
// through the lm_head and the sampler (output order: kDevice rows, kLogits rows, the rest;
// rows past the kDevice ones sample greedily and are discarded).
//
// Memory. All activations, workspaces (split-KV partials sized for (largest bucket, C); the
// GEMMs' stream-K scratch through their caller-workspace overloads) and the packed inputs live
// in one StepBuffers sized for the largest bucket and shared by every graph; the inputs of step
// (B, C) are laid out by DecodeLayout at its start. Steps run one at a time on one stream, so
// graphs never overlap on these buffers.
//
// Graphs. Key (B, C). A step whose key has no graph runs eagerly (which also warms up every
// lazily initialized kernel attribute and library state), then the same forward is captured
// and instantiated for the next steps with that key. With graphs off the same bucketed forward
// is launched op by op, so on and off give bit-identical results.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"
#include "engine_cuda/decode_buckets.h"
#include "engine_cuda/executor_impl.h"

namespace qserve::cuda {

namespace {

// Byte offsets of the packed inputs of a decode step of `batch` rows and `stride` table
// columns: the doubles first (8-byte alignment), then 4-byte arrays.
struct DecodeLayout {
  size_t batch = 0, stride = 0;
  size_t uniform() const { return 0; }              // double [B]
  size_t temperature() const { return 8 * batch; }  // float [B]
  size_t top_p() const { return 12 * batch; }       // float [B]
  size_t top_k() const { return 16 * batch; }       // int32 [B]
  size_t tokens() const { return 20 * batch; }      // int32 [B]
  size_t offset() const { return 24 * batch; }      // int32 [B] token_offset = row
  size_t num_tokens() const { return 28 * batch; }  // int32 [B] all 1
  size_t context() const { return 32 * batch; }     // int32 [B]
  size_t out_rows() const { return 36 * batch; }    // int32 [B] lm_head row order
  size_t feed() const { return 40 * batch; }        // int32 [B] StepInputs::feed (-1: tokens)
  size_t table() const { return 44 * batch; }       // int32 [B, stride]
  size_t bytes() const { return 44 * batch + 4 * batch * stride; }
};

template <typename T>
T* at(uint8_t* base, size_t off) {
  return reinterpret_cast<T*>(base + off);
}

}  // namespace

bool CudaExecutor::decode_eligible(std::span<const SeqSpan> seqs) const {
  if (!opts_.bucket_decode || static_cast<int64_t>(seqs.size()) > buckets_.back()) {
    return false;
  }
  const int64_t window = cfg_.sliding_window.value_or(0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqSpan& s = seqs[i];
    if (s.num_tokens != 1 || s.context_len <= 0 || s.token_offset != static_cast<int64_t>(i)) {
      return false;
    }
    if (window > 0 && s.context_len + 1 > window) return false;
  }
  return true;
}

size_t CudaExecutor::decode_gemm_workspace_bytes() const {
  if (!w_.quantized || w_.layers.empty()) return 0;
  size_t most = 0;
  // Every layer has the same shapes; the bound is the largest over the buckets.
  const LayerOnDevice& L = w_.layers.front();
  for (const int32_t b : buckets_) {
    for (const LinearOnDevice* l : {&L.qkv, &L.o, &L.gate_up, &L.down}) {
      size_t need = 0;
      if (const auto* w = std::get_if<W4PerChannelOnDevice>(&l->w)) {
        need = gemm_w4a8_per_channel_workspace_bytes(b, w->view());
      } else if (const auto* g = std::get_if<W4G128OnDevice>(&l->w)) {
        need = gemm_w4a8_g128_workspace_bytes(b, g->view());
      } else if (const auto* w8 = std::get_if<W8PerChannelOnDevice>(&l->w)) {
        need = gemm_w8a8_workspace_bytes(b, w8->view());
      }
      most = std::max(most, need);
    }
  }
  return most;
}

void CudaExecutor::ensure_decode_buffers(int64_t context) {
  const int64_t B = buckets_.back();
  if (decode_buf_.bytes() == 0) {
    const int64_t max_ctx = decode_context_bucket(max_model_len_, max_model_len_);
    StepDims d;
    d.rows = d.out_rows = B;
    d.input_bytes =
        DecodeLayout{static_cast<size_t>(B), static_cast<size_t>(max_ctx / kPageTokens)}.bytes();
    d.gemm_ws_bytes = decode_gemm_workspace_bytes();
    decode_buf_ = StepBuffers(cfg_, w_.quantized, d);
  }
  if (context <= decode_ctx_cap_) return;
  // Graphs hold the old workspace's address: drop them all (previous steps have finished).
  if (graphs_.size() > 0) ++stats_.invalidations;
  graphs_.clear();
  decode_attn_ws_ = DeviceBuffer<uint8_t>();
  decode_attn_ws_ = DeviceBuffer<uint8_t>(std::max<size_t>(
      1, decode_attention_workspace_bytes(B, cfg_.num_heads, cfg_.head_dim, context)));
  decode_ctx_cap_ = context;
  decode_buf_.attn_ws = decode_attn_ws_.data();
  decode_buf_.attn_ws_bytes = decode_attn_ws_.bytes();
}

void CudaExecutor::decode_step(std::span<const int32_t> tokens, std::span<const SeqSpan> seqs,
                               std::span<const PageTable* const> pages,
                               std::span<const RowSample> rows, std::vector<float>& logits,
                               std::vector<int32_t>& ids) {
  const DecodeRows n = enqueue_decode(tokens, {}, seqs, pages, rows, staging_);
  copy_out(decode_buf_, n.device, n.device, n.logits, ids, logits);
  finish_step();
}

CudaExecutor::DecodeRows CudaExecutor::enqueue_decode(std::span<const int32_t> tokens,
                                                      std::span<const int32_t> feed,
                                                      std::span<const SeqSpan> seqs,
                                                      std::span<const PageTable* const> pages,
                                                      std::span<const RowSample> rows,
                                                      PinnedBuffer& staging) {
  const int64_t n = static_cast<int64_t>(seqs.size());
  const int32_t B = decode_batch_bucket(buckets_, n);
  int64_t max_total = 0;
  for (const SeqSpan& s : seqs) max_total = std::max(max_total, s.context_len + 1);
  const int64_t C = decode_context_bucket(max_total, max_model_len_);
  const int64_t stride = C / kPageTokens;
  ensure_decode_buffers(C);
  begin_profile(seqs, n, n);

  // The packed inputs, written straight into pinned staging.
  const DecodeLayout L{static_cast<size_t>(B), static_cast<size_t>(stride)};
  uint8_t* h = staging.ensure(L.bytes());
  auto* uniform = at<double>(h, L.uniform());
  auto* temperature = at<float>(h, L.temperature());
  auto* top_p = at<float>(h, L.top_p());
  auto* top_k = at<int32_t>(h, L.top_k());
  auto* tok = at<int32_t>(h, L.tokens());
  auto* offset = at<int32_t>(h, L.offset());
  auto* ntok = at<int32_t>(h, L.num_tokens());
  auto* ctx = at<int32_t>(h, L.context());
  auto* out = at<int32_t>(h, L.out_rows());
  auto* fed = at<int32_t>(h, L.feed());
  auto* table = at<int32_t>(h, L.table());

  int64_t slot = 0;
  for (int64_t i = 0; i < n; ++i) {
    const RowSample& r = rows[static_cast<size_t>(i)];
    if (r.kind != RowSample::Kind::kDevice) continue;
    out[slot] = static_cast<int32_t>(i);
    temperature[slot] = r.temperature;
    top_k[slot] = r.top_k;
    top_p[slot] = r.top_p;
    uniform[slot] = r.uniform;
    ++slot;
  }
  const int64_t n_dev = slot;
  for (int64_t i = 0; i < n; ++i) {
    if (rows[static_cast<size_t>(i)].kind == RowSample::Kind::kLogits) {
      out[slot++] = static_cast<int32_t>(i);
    }
  }
  const int64_t n_log = slot - n_dev;
  for (int64_t i = 0; i < n; ++i) {
    if (rows[static_cast<size_t>(i)].kind == RowSample::Kind::kNone) {
      out[slot++] = static_cast<int32_t>(i);
    }
  }
  for (int64_t i = n; i < B; ++i) out[slot++] = static_cast<int32_t>(i);
  for (int64_t j = n_dev; j < B; ++j) {  // greedy, discarded
    temperature[j] = 0.0f;
    top_k[j] = 0;
    top_p[j] = 1.0f;
    uniform[j] = 0.0;
  }
  for (int64_t i = 0; i < B; ++i) {
    const bool real = i < n;
    fed[i] = real && !feed.empty() ? feed[static_cast<size_t>(i)] : -1;
    tok[i] = real && fed[i] < 0 ? tokens[static_cast<size_t>(i)] : 0;
    offset[i] = static_cast<int32_t>(i);
    ntok[i] = 1;
    ctx[i] = real ? static_cast<int32_t>(seqs[static_cast<size_t>(i)].context_len) : 0;
    int32_t* row = table + i * stride;
    int64_t j = 0;
    if (real) {
      const PageTable& pt = *pages[static_cast<size_t>(i)];
      j = std::min<int64_t>(stride, static_cast<int64_t>(pt.size()));
      std::copy(pt.begin(), pt.begin() + j, row);
    }
    std::fill(row + j, row + stride, scratch_page_);
  }
  upload_staging(h, L.bytes(), decode_buf_.inputs, stream_.get());

  StepInputs in;
  const uint8_t* d = decode_buf_.inputs;
  in.tokens = reinterpret_cast<const int32_t*>(d + L.tokens());
  in.feed = reinterpret_cast<const int32_t*>(d + L.feed());
  in.feed_ids = decode_buf_.ids;  // the previous decode step's samples, in row order
  in.rows = B;
  VarlenBatchDevice batch;
  batch.num_seqs = B;
  batch.token_offset = reinterpret_cast<const int32_t*>(d + L.offset());
  batch.num_tokens = reinterpret_cast<const int32_t*>(d + L.num_tokens());
  batch.context_len = reinterpret_cast<const int32_t*>(d + L.context());
  batch.block_table = reinterpret_cast<const int32_t*>(d + L.table());
  batch.block_stride = static_cast<int32_t>(stride);
  batch.max_num_tokens = 1;
  batch.max_total_len = static_cast<int32_t>(C);
  in.all = in.dec = batch;
  in.out_rows = reinterpret_cast<const int32_t*>(d + L.out_rows());
  in.num_out = B;
  in.temperature = reinterpret_cast<const float*>(d + L.temperature());
  in.top_k = reinterpret_cast<const int32_t*>(d + L.top_k());
  in.top_p = reinterpret_cast<const float*>(d + L.top_p());
  in.uniform = reinterpret_cast<const double*>(d + L.uniform());
  in.num_sample = B;

  ++stats_.decode_steps;
  stats_.padded_rows += B - n;
  const GemmWorkspace* gws = &decode_buf_.gemm_ws;
  const DecodeGraphKey key{B, C};
  const auto t0 = std::chrono::steady_clock::now();
  const auto launched = [&] {
    stats_.launch_us +=
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  };
  if (cudaGraphExec_t exec = graphs_on_ ? graphs_.find(key) : nullptr; exec != nullptr) {
    launch_graph(exec, stream_.get());
    launched();
    ++stats_.replays;
  } else {
    forward(in, decode_buf_, gws);
    launched();
    if (graphs_on_) {
      try {
        graphs_.insert(key, capture_graph(stream_.get(), [&] { forward(in, decode_buf_, gws); }));
        ++stats_.captures;
      } catch (const std::exception& e) {
        // This step already ran eagerly; later steps keep the bucketed eager path.
        graphs_on_ = false;
        graphs_.clear();
        ++stats_.capture_failures;
        std::fprintf(stderr, "warning: CUDA graph capture failed, graphs off: %s\n", e.what());
      }
    }
  }
  return {n_dev, n_log};
}

}  // namespace qserve::cuda
