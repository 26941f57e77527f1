// Attention benchmark: decode over the paged KV4/KV8 cache (the tensor-core kernel, the fast
// CUDA-core kernel and the baseline reference kernel) and causal prefill (the tensor-core
// kernel with 4-warp CTAs, the default, and with 8-warp CTAs, "_w8", the Hopper wgmma kernel
// "prefill_attention_wgmma" and its variants, and the fp32 baseline) at
// Llama-3-8B geometry (32 query heads, 8 KV heads, head_dim 128), beside the device-to-device
// copy bandwidth.
//
//   build/bench_attention [--check] [--prefill-only | --decode-only]
//                         [--json bench/results/FILE.json] [--iters N]
//
// Decode reports effective bandwidth: the bytes the step must move (KV payload + fp16
// scales/zeros of every cached token, the current token's fp16 K/V, q, the block table, and
// the fp32 output written) over the median time. Prefill reports TFLOP/s with the causal FLOPs
// counted once (4 * D per visible (query head, key) pair). Timing: CUDA events around each run,
// median of >= 30 runs after warm-up; inputs are random and non-zero (valid fp16 scales).
// --check first compares the tensor-core and the fast decode kernels with the baseline kernel
// on small cases (several splits, one split, a sliding window, head_dim 64, odd groups for the
// tensor-core kernel), and the tensor-core prefill kernel with the baseline fed fp16-rounded q
// (2 x 1024 tokens; the Hopper wgmma prefill kernel's variants also on a ragged 1000/517/77
// batch and a windowed one, and they run last); a kernel that fails is not timed,
// so a wrong kernel cannot be reported as fast. Every failure prints one "FAIL ..." line and
// the benchmark continues with the next case.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "bench_common.cuh"

namespace {

using qserve::cuda::DeviceBuffer;
using qserve::cuda::KvFormat;
using json = nlohmann::json;
using qserve::bench::result;
using qserve::bench::time_us;

int g_iters = 30;
int g_failures = 0;

void fail(const std::string& what) {
  ++g_failures;
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
}

// ---- random device data (splitmix64 of the element index; never all zero) ------------------
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float unit_float(uint64_t seed, size_t i) {
  return static_cast<float>(mix64(seed * 0x100000001b3ull + i) >> 40) * 0x1p-24f;
}
__global__ void fill_bytes_kernel(uint8_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    p[i] = static_cast<uint8_t>(mix64(seed * 0x100000001b3ull + i));
  }
}
__global__ void fill_f32_kernel(float* p, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    p[i] = lo + (hi - lo) * unit_float(seed, i);
  }
}
__global__ void fill_f16_kernel(uint16_t* p, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    p[i] = __half_as_ushort(__float2half_rn(lo + (hi - lo) * unit_float(seed, i)));
  }
}
// Valid per-token scales (0.002 .. 0.02) and zeros (0 .. max code) in every page of a pool.
__global__ void fix_scales_kernel(uint8_t* pool, int64_t pages, int64_t page_bytes,
                                  int64_t scale_off, int64_t entries, float max_code,
                                  uint64_t seed) {
  const int64_t total = pages * entries;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t page = i / entries, e = i % entries;
    uint16_t* s = reinterpret_cast<uint16_t*>(pool + page * page_bytes + scale_off);
    s[e] = __half_as_ushort(__float2half_rn(0.002f + 0.018f * unit_float(seed, 2 * i)));
    s[entries + e] =
        __half_as_ushort(__float2half_rn(rintf(max_code * unit_float(seed, 2 * i + 1))));
  }
}

constexpr int kFillGrid = 1024, kFillBlock = 256;

void fill_random_pool(uint8_t* pool, KvFormat fmt, int64_t pages, int64_t hkv, int64_t d,
                      uint64_t seed) {
  const int64_t pb = qserve::cuda::kv_page_bytes(fmt, hkv, d);
  fill_bytes_kernel<<<kFillGrid, kFillBlock>>>(pool, static_cast<size_t>(pages * pb), seed);
  if (fmt != KvFormat::kv16) {
    const int64_t rb = fmt == KvFormat::kv4 ? d / 2 : d;
    fix_scales_kernel<<<kFillGrid, kFillBlock>>>(pool, pages, pb, hkv * 64 * rb, hkv * 64,
                                                 fmt == KvFormat::kv4 ? 15.0f : 255.0f, seed + 1);
  }
  qserve::cuda::check_launch("bench fill pool");
}

// Device-to-device copy of 1 GiB: read + write bytes over time.
json copy_peer() {
  const size_t bytes = size_t{1} << 30;
  DeviceBuffer<uint8_t> src(bytes), dst(bytes);
  fill_bytes_kernel<<<kFillGrid, kFillBlock>>>(src.data(), bytes, 7);
  qserve::cuda::check_launch("bench fill copy source");
  const double us = time_us(
      [&] {
        QSERVE_CUDA_CHECK(
            cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, nullptr),
            "bench memcpy");
      },
      3, g_iters);
  const double tbps = 2.0 * static_cast<double>(bytes) / (us * 1e-6) / 1e12;
  std::printf("%-34s %-28s %10.1f us %8.3f TB/s\n", "memcpy_d2d", "1GiB (read+write)", us, tbps);
  return result("memcpy_d2d", "1GiB", 1, 0, "bytes", us, "tbps", tbps, "cuda-memcpy");
}

// ---- decode -------------------------------------------------------------------------------
const char* fmt_name(KvFormat f) {
  return f == KvFormat::kv4 ? "kv4" : f == KvFormat::kv8 ? "kv8" : "kv16";
}

using DecodeFn = void (*)(const float*, const uint16_t*, const uint16_t*,
                          const qserve::cuda::PagedKvDevice&,
                          const qserve::cuda::VarlenBatchDevice&, int64_t, int64_t, float*, void*,
                          size_t, cudaStream_t);

// One decode problem on the device: S sequences with the given cached contexts.
struct DecodeProblem {
  KvFormat fmt;
  int64_t hq, hkv, d, S, max_total = 0, pages_per_seq = 0, num_pages = 0;
  std::vector<int32_t> ctx;
  DeviceBuffer<uint8_t> kp, vp, ws;
  DeviceBuffer<float> q;
  DeviceBuffer<uint16_t> k16, v16;
  DeviceBuffer<int32_t> off, ntok, ctxl, bt;
  size_t ws_bytes = 0;

  DecodeProblem(KvFormat f, int64_t hq_, int64_t hkv_, int64_t d_, std::vector<int32_t> contexts,
                uint64_t seed)
      : fmt(f),
        hq(hq_),
        hkv(hkv_),
        d(d_),
        S(static_cast<int64_t>(contexts.size())),
        ctx(std::move(contexts)) {
    for (int32_t c : ctx) max_total = std::max<int64_t>(max_total, c + 1);
    pages_per_seq = (max_total + 63) / 64;
    num_pages = S * pages_per_seq;
    const int64_t pb = qserve::cuda::kv_page_bytes(fmt, hkv, d);
    kp = DeviceBuffer<uint8_t>(static_cast<size_t>(num_pages * pb));
    vp = DeviceBuffer<uint8_t>(static_cast<size_t>(num_pages * pb));
    fill_random_pool(kp.data(), fmt, num_pages, hkv, d, seed);
    fill_random_pool(vp.data(), fmt, num_pages, hkv, d, seed + 10);
    q = DeviceBuffer<float>(static_cast<size_t>(S * hq * d));
    k16 = DeviceBuffer<uint16_t>(static_cast<size_t>(S * hkv * d));
    v16 = DeviceBuffer<uint16_t>(static_cast<size_t>(S * hkv * d));
    fill_f32_kernel<<<kFillGrid, kFillBlock>>>(q.data(), q.size(), seed + 20, -1.0f, 1.0f);
    fill_f16_kernel<<<kFillGrid, kFillBlock>>>(k16.data(), k16.size(), seed + 21, -1.0f, 1.0f);
    fill_f16_kernel<<<kFillGrid, kFillBlock>>>(v16.data(), v16.size(), seed + 22, -1.0f, 1.0f);
    qserve::cuda::check_launch("bench fill decode inputs");
    // A shuffled page table: pages of different sequences interleave in memory.
    std::vector<int32_t> perm(static_cast<size_t>(num_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> o(static_cast<size_t>(S)), n(static_cast<size_t>(S), 1);
    std::iota(o.begin(), o.end(), 0);
    off = qserve::cuda::to_device(o);
    ntok = qserve::cuda::to_device(n);
    ctxl = qserve::cuda::to_device(ctx);
    bt = qserve::cuda::to_device(perm);
    ws_bytes = qserve::cuda::decode_attention_workspace_bytes(S, hq, d, max_total);
    ws = DeviceBuffer<uint8_t>(ws_bytes);
  }

  qserve::cuda::PagedKvDevice cache() {
    qserve::cuda::PagedKvDevice c;
    c.format = fmt;
    c.kv_heads = static_cast<int32_t>(hkv);
    c.head_dim = static_cast<int32_t>(d);
    c.k_pool = kp.data();
    c.v_pool = vp.data();
    c.num_pages = num_pages;
    return c;
  }
  qserve::cuda::VarlenBatchDevice batch() {
    qserve::cuda::VarlenBatchDevice b;
    b.num_seqs = static_cast<int32_t>(S);
    b.token_offset = off.data();
    b.num_tokens = ntok.data();
    b.context_len = ctxl.data();
    b.block_table = bt.data();
    b.block_stride = static_cast<int32_t>(pages_per_seq);
    b.max_num_tokens = 1;
    b.max_total_len = static_cast<int32_t>(max_total);
    return b;
  }
  void run(DecodeFn fn, float* out, int64_t window) {
    fn(q.data(), k16.data(), v16.data(), cache(), batch(), hq, window, out, ws.data(), ws_bytes,
       nullptr);
  }
  // Bytes one decode step must move (see the header).
  double bytes() const {
    const double rb = fmt == KvFormat::kv4 ? d / 2.0 : static_cast<double>(d);
    double cached = 0;
    for (int32_t c : ctx) cached += c;
    return cached * hkv * (rb + 4.0) * 2.0                // K and V payload + fp16 scale + zero
           + static_cast<double>(S) * hkv * d * 2 * 2     // current fp16 K/V
           + static_cast<double>(S) * hq * d * 4 * 2      // q read, out written (fp32)
           + static_cast<double>(S) * pages_per_seq * 4;  // block table
  }
};

// A kernel vs the baseline on one problem; true when every element is within twice the
// documented tolerance (each is within it of the CPU reference) and finite.
// fp16_contract: the kernel rounds q, P' and the dequantized K/V at fp16 level
// (decode_attention_mma); the gate is then max|V| (2^-9 + 2^-10 B_rms) with
// B_rms = scale sqrt(D) max|q| max|K| — the random-sign size of the score error, an empirical
// gate that a wrong channel or key mapping (errors of order max|V|) cannot pass. The parity
// test holds the kernel to the rigorous bound of ops_cuda_attention.h.
bool check_decode(const std::string& kernel, DecodeFn fn, const std::string& name, KvFormat fmt,
                  int64_t hq, int64_t hkv, int64_t d, std::vector<int32_t> ctx, int64_t window,
                  bool fp16_contract = false) {
  DecodeProblem p(fmt, hq, hkv, d, std::move(ctx), 1234);
  const size_t n = static_cast<size_t>(p.S * hq * d);
  DeviceBuffer<float> got(n), want(n);
  got.fill_bytes(0xFF, nullptr);  // NaN: an unwritten element fails
  want.fill_bytes(0xFF, nullptr);
  p.run(fn, got.data(), window);
  p.run(&qserve::cuda::decode_attention_baseline, want.data(), window);
  const std::vector<float> g = qserve::cuda::to_host(got), w = qserve::cuda::to_host(want);
  // |K|, |V| <= 0.02 * 255 (KV8) or 0.02 * 15 (KV4), or 1 (the fp16 current token); |q| <= 1.
  const double kmax = std::max(1.0, 0.02 * (fmt == KvFormat::kv4 ? 15.0 : 255.0)) * 1.1;
  const double B = 1.0 / std::sqrt(static_cast<double>(d)) * static_cast<double>(d) * kmax;
  const double B_rms =
      1.0 / std::sqrt(static_cast<double>(d)) * std::sqrt(static_cast<double>(d)) * kmax;
  const double tol = fp16_contract ? kmax * (std::ldexp(1.0, -9) + std::ldexp(1.0, -10) * B_rms)
                                   : 2.0 * kmax * (3e-5 + std::ldexp(1.0, -21) * B);
  double max_err = 0.0;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < n; ++i) {
    const double e = std::fabs(static_cast<double>(g[i]) - w[i]);
    if (!std::isfinite(g[i]) || !std::isfinite(w[i]) || e > tol) {
      if (bad++ == 0) first = i;
    }
    if (std::isfinite(e)) max_err = std::max(max_err, e);
  }
  const bool ok = bad == 0;
  std::printf("CHECK %s_%s %-22s vs baseline: max_abs_err=%.3g tol=%.3g %s\n", kernel.c_str(),
              fmt_name(fmt), name.c_str(), max_err, tol, ok ? "PASS" : "FAIL");
  if (!ok) {
    fail("check " + kernel + "_" + std::string(fmt_name(fmt)) + " " + name + ": " +
         std::to_string(bad) + " bad elements, first " + std::to_string(first) + " got " +
         std::to_string(g[first]) + " want " + std::to_string(w[first]));
  }
  return ok;
}

bool run_checks(KvFormat fmt, const std::string& kernel, DecodeFn fn, bool odd_groups,
                bool fp16_contract = false) {
  bool ok = true;
  try {
    // Several splits, contexts around page boundaries, the empty context.
    ok &= check_decode(kernel, fn, "mixed-ctx", fmt, 32, 8, 128, {0, 1, 63, 64, 65, 1000, 3001}, 0,
                       fp16_contract);
    // Many sequences: one split, the CTA normalizes itself.
    std::vector<int32_t> many(512);
    for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<int32_t>((i * 37) % 256);
    ok &= check_decode(kernel, fn, "one-split", fmt, 32, 8, 128, many, 0, fp16_contract);
    // Sliding window: tiles start off page boundaries.
    ok &= check_decode(kernel, fn, "window100", fmt, 32, 8, 128, {50, 100, 101, 700, 2000}, 100,
                       fp16_contract);
    // head_dim 64, group 8.
    ok &= check_decode(kernel, fn, "hd64-g8", fmt, 16, 2, 64, {5, 127, 2049}, 0, fp16_contract);
    // Odd groups (3 at head_dim 128, 7 at 64): only the tensor-core kernel takes them.
    if (odd_groups) {
      ok &= check_decode(kernel, fn, "hd128-g3", fmt, 12, 4, 128, {1, 64, 999}, 0, fp16_contract);
      ok &= check_decode(kernel, fn, "hd64-g7", fmt, 14, 2, 64, {2, 65, 1500}, 0, fp16_contract);
    }
  } catch (const std::exception& e) {
    fail("check " + kernel + " " + fmt_name(fmt) + ": " + e.what());
    ok = false;
  }
  return ok;
}

void bench_decode(KvFormat fmt, int64_t S, int64_t ctx, const std::string& kernel, DecodeFn fn,
                  json& results) {
  const std::string shape = "Hq=32,Hkv=8,D=128";
  try {
    DecodeProblem p(fmt, 32, 8, 128,
                    std::vector<int32_t>(static_cast<size_t>(S), static_cast<int32_t>(ctx)), 99);
    DeviceBuffer<float> out(static_cast<size_t>(S * 32 * 128));
    const double us = time_us([&] { p.run(fn, out.data(), 0); }, 3, g_iters);
    const double tbps = p.bytes() / (us * 1e-6) / 1e12;
    std::printf("%-34s batch=%-4lld ctx=%-6lld %10.1f us %8.3f TB/s\n",
                (kernel + "_" + fmt_name(fmt)).c_str(), static_cast<long long>(S),
                static_cast<long long>(ctx), us, tbps);
    results.push_back(result(kernel, shape, S, ctx, fmt_name(fmt), us, "tbps", tbps, "qserve.cpp"));
  } catch (const std::exception& e) {
    fail(kernel + " " + fmt_name(fmt) + " batch=" + std::to_string(S) +
         " ctx=" + std::to_string(ctx) + ": " + e.what());
  }
  qserve::cuda::DeviceAllocator::global().trim();
}

// decode_attention_mma with W warps per CTA forced (the plan's choice is the plain row).
template <int W>
void decode_mma_forced(const float* q, const uint16_t* k16, const uint16_t* v16,
                       const qserve::cuda::PagedKvDevice& cache,
                       const qserve::cuda::VarlenBatchDevice& batch, int64_t num_heads,
                       int64_t window, float* out, void* ws, size_t ws_bytes, cudaStream_t stream) {
  qserve::cuda::decode_attention_mma_warps(q, k16, v16, cache, batch, num_heads, window, out, ws,
                                           ws_bytes, stream, W);
}

// --split-sweep: decode_attention_mma at forced keys per split (DecodeFn has no context
// argument, hence the file-scope value).
int64_t g_split_keys = 0;
void decode_mma_forced_split(const float* q, const uint16_t* k16, const uint16_t* v16,
                             const qserve::cuda::PagedKvDevice& cache,
                             const qserve::cuda::VarlenBatchDevice& batch, int64_t num_heads,
                             int64_t window, float* out, void* ws, size_t ws_bytes,
                             cudaStream_t stream) {
  qserve::cuda::decode_attention_mma_split(q, k16, v16, cache, batch, num_heads, window, out, ws,
                                           ws_bytes, stream, g_split_keys);
}

void split_sweep(json& results) {
  for (KvFormat fmt : {KvFormat::kv4, KvFormat::kv8}) {
    for (const auto& [S, ctx] : {std::pair<int64_t, int64_t>{256, 1536}, {32, 8192}}) {
      const int64_t auto_keys = qserve::cuda::decode_attention_mma_split_keys(S, 8, ctx + 1, 132);
      std::printf("split sweep %s %lldx%lld: picker's keys per split %lld\n", fmt_name(fmt),
                  static_cast<long long>(S), static_cast<long long>(ctx),
                  static_cast<long long>(auto_keys));
      for (const int64_t keys : {256, 384, 512, 768, 1024, 1536, 2048, 4096}) {
        if (keys > ctx + 64) continue;
        g_split_keys = keys;
        bench_decode(fmt, S, ctx, "decode_attention_mma_split" + std::to_string(keys),
                     &decode_mma_forced_split, results);
      }
    }
  }
}

// ---- prefill ------------------------------------------------------------------------------
// Fresh prompts (no cached context): every key comes from the step's fp16 k16/v16, so the
// cache format does not matter (KV16 pages, never read); q is fp32 and K/V fp16 (the engine's
// interface: rope_kv_append's outputs). TFLOP/s counts the causal FLOPs once: 4 * D per
// visible (query head, key) pair. The tensor-core kernel (prefill_attention_tc) is timed
// beside the fp32 CUDA-core baseline (fewer runs: it is ~100x slower).
using PrefillFn = void (*)(const float*, const uint16_t*, const uint16_t*,
                           const qserve::cuda::PagedKvDevice&,
                           const qserve::cuda::VarlenBatchDevice&, int64_t, int64_t, float*,
                           cudaStream_t);

// The tensor-core kernel with 8 warps (256 rows) per CTA instead of the default 4.
void prefill_tc_w8(const float* q, const uint16_t* k16, const uint16_t* v16,
                   const qserve::cuda::PagedKvDevice& c, const qserve::cuda::VarlenBatchDevice& b,
                   int64_t hq, int64_t window, float* out, cudaStream_t stream) {
  qserve::cuda::prefill_attention_tc_warps(q, k16, v16, c, b, hq, window, out, 8, stream);
}

// The Hopper wgmma kernel's variants besides its default (block_n 128, 3 stages, no ping-pong).
template <int kBlockN, int kStages, bool kPingpong>
void prefill_wgmma(const float* q, const uint16_t* k16, const uint16_t* v16,
                   const qserve::cuda::PagedKvDevice& c, const qserve::cuda::VarlenBatchDevice& b,
                   int64_t hq, int64_t window, float* out, cudaStream_t stream) {
  qserve::cuda::prefill_attention_wgmma_variant(q, k16, v16, c, b, hq, window, out, kBlockN,
                                                kStages, kPingpong, stream);
}

// q rounded to fp16 and back (RN11 for |q| >= 2^-14; q is in [-1, 1] here): the q the
// tensor-core kernel computes with, so the baseline fed this q is its tight reference.
__global__ void round_f16_kernel(const float* in, float* out, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    out[i] = __half2float(__float2half_rn(in[i]));
  }
}

struct PrefillProblem {
  int64_t hq = 32, hkv = 8, d = 128, S, n, T;
  DeviceBuffer<float> q, out;
  DeviceBuffer<uint16_t> k16, v16;
  DeviceBuffer<uint8_t> kp, vp;
  DeviceBuffer<int32_t> d_off, d_nt, d_cl, d_bt;
  int64_t pps;
  std::vector<int64_t> lens;  // tokens per sequence (n = the longest)

  PrefillProblem(int64_t S_, int64_t n_)
      : PrefillProblem(std::vector<int64_t>(static_cast<size_t>(S_), n_)) {}
  explicit PrefillProblem(std::vector<int64_t> lens_)
      : S(static_cast<int64_t>(lens_.size())),
        n(*std::max_element(lens_.begin(), lens_.end())),
        T(std::accumulate(lens_.begin(), lens_.end(), int64_t{0})),
        lens(std::move(lens_)) {
    q = DeviceBuffer<float>(static_cast<size_t>(T * hq * d));
    out = DeviceBuffer<float>(static_cast<size_t>(T * hq * d));
    k16 = DeviceBuffer<uint16_t>(static_cast<size_t>(T * hkv * d));
    v16 = DeviceBuffer<uint16_t>(static_cast<size_t>(T * hkv * d));
    fill_f32_kernel<<<kFillGrid, kFillBlock>>>(q.data(), q.size(), 31, -1.0f, 1.0f);
    fill_f16_kernel<<<kFillGrid, kFillBlock>>>(k16.data(), k16.size(), 32, -1.0f, 1.0f);
    fill_f16_kernel<<<kFillGrid, kFillBlock>>>(v16.data(), v16.size(), 33, -1.0f, 1.0f);
    qserve::cuda::check_launch("bench fill prefill inputs");
    const int64_t pb = qserve::cuda::kv_page_bytes(KvFormat::kv16, hkv, d);
    kp = DeviceBuffer<uint8_t>(static_cast<size_t>(pb));
    vp = DeviceBuffer<uint8_t>(static_cast<size_t>(pb));
    std::vector<int32_t> off(static_cast<size_t>(S)), nt(static_cast<size_t>(S)),
        cl(static_cast<size_t>(S), 0);
    for (int64_t s = 0, o = 0; s < S; ++s) {
      off[static_cast<size_t>(s)] = static_cast<int32_t>(o);
      nt[static_cast<size_t>(s)] = static_cast<int32_t>(lens[static_cast<size_t>(s)]);
      o += lens[static_cast<size_t>(s)];
    }
    pps = (n + 63) / 64;
    std::vector<int32_t> table(static_cast<size_t>(S * pps), 0);
    d_off = qserve::cuda::to_device(off);
    d_nt = qserve::cuda::to_device(nt);
    d_cl = qserve::cuda::to_device(cl);
    d_bt = qserve::cuda::to_device(table);
  }
  qserve::cuda::PagedKvDevice cache() {
    qserve::cuda::PagedKvDevice c;
    c.format = KvFormat::kv16;
    c.kv_heads = static_cast<int32_t>(hkv);
    c.head_dim = static_cast<int32_t>(d);
    c.k_pool = kp.data();
    c.v_pool = vp.data();
    c.num_pages = 1;
    return c;
  }
  qserve::cuda::VarlenBatchDevice batch() {
    qserve::cuda::VarlenBatchDevice b;
    b.num_seqs = static_cast<int32_t>(S);
    b.token_offset = d_off.data();
    b.num_tokens = d_nt.data();
    b.context_len = d_cl.data();
    b.block_table = d_bt.data();
    b.block_stride = static_cast<int32_t>(pps);
    b.max_num_tokens = static_cast<int32_t>(n);
    b.max_total_len = static_cast<int32_t>(n);
    return b;
  }
  void run(PrefillFn fn, const float* qq, float* o, int64_t window = 0) {
    fn(qq, k16.data(), v16.data(), cache(), batch(), hq, window, o, nullptr);
  }
  double flops() const {
    double pairs = 0.0;
    for (int64_t m : lens)
      pairs += static_cast<double>(hq) * (static_cast<double>(m) * (m + 1) / 2.0);
    return pairs * 4.0 * static_cast<double>(d);
  }
};

// The tensor-core kernel against the baseline fed fp16-rounded q (2 x 1024 tokens): each is
// within max|V| (2^-11 + 3e-5 + 2^-21 B) resp. max|V| (3e-5 + 2^-21 B) of the CPU reference on
// that q (ops_cuda_attention.h), so they agree within the sum; |q|, |K|, |V| <= 1 here.
// lens: tokens per sequence (ragged batches allowed); window as prefill_attention's.
bool check_prefill(const std::string& kernel, PrefillFn fn,
                   std::vector<int64_t> lens = {1024, 1024}, int64_t window = 0) {
  std::string name;
  for (int64_t m : lens) name += (name.empty() ? "" : "/") + std::to_string(m);
  if (window > 0) name += ",window" + std::to_string(window);
  try {
    PrefillProblem p(std::move(lens));
    DeviceBuffer<float> q16(p.q.size()), want(p.out.size());
    round_f16_kernel<<<kFillGrid, kFillBlock>>>(p.q.data(), q16.data(), p.q.size());
    qserve::cuda::check_launch("bench round q");
    p.out.fill_bytes(0xFF, nullptr);  // NaN: an unwritten element fails
    want.fill_bytes(0xFF, nullptr);
    p.run(fn, p.q.data(), p.out.data(), window);
    // A fault inside the kernel is reported here, as this check's FAIL.
    const cudaError_t ke = cudaDeviceSynchronize();
    if (ke != cudaSuccess) {
      (void)cudaGetLastError();
      fail("check " + kernel + " " + name + ": kernel error " + cudaGetErrorName(ke) + " (" +
           cudaGetErrorString(ke) + ")");
      return false;
    }
    p.run(&qserve::cuda::prefill_attention_baseline, q16.data(), want.data(), window);
    const std::vector<float> g = qserve::cuda::to_host(p.out), w = qserve::cuda::to_host(want);
    const double B = 1.0 / std::sqrt(static_cast<double>(p.d)) * static_cast<double>(p.d);
    const double tol = std::ldexp(1.0, -11) + 2.0 * (3e-5 + std::ldexp(1.0, -21) * B);
    double max_err = 0.0;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      const double e = std::fabs(static_cast<double>(g[i]) - w[i]);
      if (!std::isfinite(g[i]) || !std::isfinite(w[i]) || e > tol) {
        if (bad++ == 0) first = i;
      }
      if (std::isfinite(e)) max_err = std::max(max_err, e);
    }
    const bool ok = bad == 0;
    std::printf("CHECK %s %s vs baseline(fp16 q): max_abs_err=%.3g tol=%.3g %s\n", kernel.c_str(),
                name.c_str(), max_err, tol, ok ? "PASS" : "FAIL");
    if (!ok) {
      fail("check " + kernel + " " + name + ": " + std::to_string(bad) + " bad elements, first " +
           std::to_string(first) + " got " + std::to_string(g[first]) + " want " +
           std::to_string(w[first]));
    }
    return ok;
  } catch (const std::exception& e) {
    fail("check " + kernel + " " + name + ": " + e.what());
    return false;
  }
}

void bench_prefill(int64_t S, int64_t n, const std::string& kernel, PrefillFn fn, int warmup,
                   int iters, json& results) {
  try {
    PrefillProblem p(S, n);
    const double us = time_us([&] { p.run(fn, p.q.data(), p.out.data()); }, warmup, iters);
    const double tflops = p.flops() / (us * 1e-6) / 1e12;
    std::printf("%-34s batch=%-4lld tokens=%-5lld %10.1f us %8.3f TFLOP/s\n",
                (kernel + "_fp16").c_str(), static_cast<long long>(S), static_cast<long long>(n),
                us, tflops);
    results.push_back(result(kernel, "Hq=32,Hkv=8,D=128,causal", S, n, "fp16-kv,fp32-q", us,
                             "tflops", tflops, "qserve.cpp"));
  } catch (const std::exception& e) {
    fail(kernel + " fp16 batch=" + std::to_string(S) + " tokens=" + std::to_string(n) + ": " +
         e.what());
  }
  qserve::cuda::DeviceAllocator::global().trim();
}

void bench_prefill_all(bool check, json& results) {
  const bool tc_ok =
      !check || check_prefill("prefill_attention_tc", &qserve::cuda::prefill_attention_tc);
  if (!tc_ok) std::printf("SKIP prefill_attention_tc: failed --check, not timed\n");
  const bool w8_ok = !check || check_prefill("prefill_attention_tc_w8", &prefill_tc_w8);
  if (!w8_ok) std::printf("SKIP prefill_attention_tc_w8: failed --check, not timed\n");
  for (const auto& [S, n] :
       {std::pair<int64_t, int64_t>{4, 4096}, {1, 8192}, {8, 2048}, {16, 1024}}) {
    if (tc_ok) {
      bench_prefill(S, n, "prefill_attention_tc", &qserve::cuda::prefill_attention_tc, 3, g_iters,
                    results);
    }
    if (w8_ok) {
      bench_prefill(S, n, "prefill_attention_tc_w8", &prefill_tc_w8, 3, g_iters, results);
    }
    // The baseline is ~0.1-0.3 s per run at these sizes: one warm-up, 10 timed runs.
    bench_prefill(S, n, "prefill_attention_baseline", &qserve::cuda::prefill_attention_baseline, 1,
                  10, results);
  }
  // The Hopper wgmma kernel (prefill_attention_wgmma: block_n 128, 3 stages, or the variant
  // QSERVE_PREFILL_WGMMA names) and its other variants, last: a fault there leaves a sticky CUDA
  // error that fails everything after it, so it cannot cost the rows above. With --check each
  // variant is first compared with the baseline on 2 x 1024, a ragged 1000/517/77 batch and a
  // windowed ragged batch, and timed only if all three pass.
  if (!qserve::cuda::prefill_attention_wgmma_supported(KvFormat::kv16, 32, 8, 128)) {
    std::printf("SKIP prefill_attention_wgmma: needs a compute capability 9.0 device\n");
  } else {
    const std::pair<const char*, PrefillFn> variants[] = {
        {"prefill_attention_wgmma", &qserve::cuda::prefill_attention_wgmma},
        {"prefill_attention_wgmma_bn128s2", &prefill_wgmma<128, 2, false>},
        {"prefill_attention_wgmma_bn128s3pp", &prefill_wgmma<128, 3, true>},
        {"prefill_attention_wgmma_bn64s4", &prefill_wgmma<64, 4, false>}};
    for (const auto& [name, fn] : variants) {
      const bool ok =
          !check || (check_prefill(name, fn) && check_prefill(name, fn, {1000, 517, 77}) &&
                     check_prefill(name, fn, {300, 1000, 64}, 100));
      if (!ok) {
        std::printf("SKIP %s: failed --check, not timed\n", name);
        continue;
      }
      for (const auto& [S, n] :
           {std::pair<int64_t, int64_t>{4, 4096}, {1, 8192}, {8, 2048}, {16, 1024}}) {
        bench_prefill(S, n, name, fn, 3, g_iters, results);
      }
    }
  }
  // bf16: this engine's chunk K/V are fp16 (rope_kv_append's k16/v16) and the tc kernel runs
  // fp16 operands, which have the same tensor-core rate as bf16: the fp16 rows stand for the
  // issue's "bf16 causal" target.
  std::printf("SKIP prefill_attention bf16: K/V are fp16 in this engine (same MMA rate as bf16)\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool check = false;
  bool prefill_only = false;  // skip the decode section (GPU time is scarce)
  bool split_sweep_only = false;
  bool decode_only = false;  // skip the prefill section
  const std::string command = qserve::bench::command_line(argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--check") {
      check = true;
    } else if (a == "--prefill-only") {
      prefill_only = true;
    } else if (a == "--decode-only") {
      decode_only = true;
    } else if (a == "--split-sweep") {
      split_sweep_only = true;
    } else if (a == "--iters" && i + 1 < argc) {
      g_iters = std::max(30, std::atoi(argv[++i]));
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--check] [--prefill-only | --decode-only] [--split-sweep] [--json PATH] "
          "[--iters N>=30]\n",
          argv[0]);
      return 2;
    }
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("FAIL no CUDA device visible\n");
    return 1;
  }
  const auto t_start = std::chrono::steady_clock::now();
  json results = json::array();
  try {
    results.push_back(copy_peer());
  } catch (const std::exception& e) {
    fail(std::string("memcpy_d2d: ") + e.what());
  }
  qserve::cuda::DeviceAllocator::global().trim();

  if (split_sweep_only) {
    split_sweep(results);
    prefill_only = true;
  }
  for (KvFormat fmt : {KvFormat::kv4, KvFormat::kv8}) {
    if (prefill_only) break;
    const bool mma_ok = !check || run_checks(fmt, "decode_attention_mma",
                                             &qserve::cuda::decode_attention_mma, true, true);
    if (!mma_ok) {
      std::printf("SKIP decode_attention_mma_%s: failed --check, not timed\n", fmt_name(fmt));
    }
    // 8-warp CTAs (KV4 only): checked on their own at every case (forced), then timed forced at
    // both shapes beside the forced 4-warp form.
    const bool w8 = fmt == KvFormat::kv4;
    const bool w8_ok = w8 && (!check || run_checks(fmt, "decode_attention_mma_w8",
                                                   &decode_mma_forced<8>, true, true));
    if (w8 && !w8_ok) {
      std::printf("SKIP decode_attention_mma_w8_%s: failed --check, not timed\n", fmt_name(fmt));
    }
    const bool tc_ok =
        !check || run_checks(fmt, "decode_attention_tc", &qserve::cuda::decode_attention_tc, true);
    if (!tc_ok) {
      std::printf("SKIP decode_attention_tc_%s: failed --check, not timed\n", fmt_name(fmt));
    }
    const bool fast_ok = !check || run_checks(fmt, "decode_attention_fast",
                                              &qserve::cuda::decode_attention_fast, false);
    if (!fast_ok) {
      std::printf("SKIP decode_attention_fast_%s: failed --check, not timed\n", fmt_name(fmt));
    }
    for (const auto& [S, ctx] : {std::pair<int64_t, int64_t>{256, 1536}, {32, 8192}}) {
      if (mma_ok) {
        bench_decode(fmt, S, ctx, "decode_attention_mma", &qserve::cuda::decode_attention_mma,
                     results);
        if (w8)
          bench_decode(fmt, S, ctx, "decode_attention_mma_w4", &decode_mma_forced<4>, results);
      }
      if (w8_ok)
        bench_decode(fmt, S, ctx, "decode_attention_mma_w8", &decode_mma_forced<8>, results);
      if (tc_ok) {
        bench_decode(fmt, S, ctx, "decode_attention_tc", &qserve::cuda::decode_attention_tc,
                     results);
      }
      if (fast_ok) {
        bench_decode(fmt, S, ctx, "decode_attention_fast", &qserve::cuda::decode_attention_fast,
                     results);
      }
      bench_decode(fmt, S, ctx, "decode_attention_baseline",
                   &qserve::cuda::decode_attention_baseline, results);
    }
    // The engine's large decode batches (issue 9: 512 and 1,024 sequences at contexts 1,024 to
    // 1,536, one split).
    if (mma_ok) {
      for (const auto& [S, ctx] :
           {std::pair<int64_t, int64_t>{512, 1280}, {1024, 1280}, {1024, 1536}}) {
        bench_decode(fmt, S, ctx, "decode_attention_mma", &qserve::cuda::decode_attention_mma,
                     results);
      }
    }
  }
  if (!decode_only) bench_prefill_all(check, results);

  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::printf("total %.1f s, %d failure(s)\n", secs, g_failures);
  const json doc = qserve::bench::results_document(command, results);
  if (!json_path.empty() && !qserve::bench::write_json(json_path, doc)) {
    fail("cannot write " + json_path);
  }
  return g_failures == 0 ? 0 : 1;
}
