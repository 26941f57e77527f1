// bench_gemm: our quantized GEMMs (W4A8 per-channel, W4A8 g128, W8A8) beside cuBLASLt bf16,
// fp8 e4m3 and int8 on Llama-3-8B's linear shapes, in one run on one GPU.
//
//   bench_gemm [--check] [--quick] [--json PATH] [--m 1,16,...] [--shapes qkv,o,gate_up,down]
//              [--reps N] [--warmup N] [--no-flush]
//
// Method: random data generated on the device (never all-zero: zeros let the tensor cores idle
// and flatter the time), every kernel timed with CUDA events around each run, the median of
// `reps` (default 30, >= 30 unless --reps/--quick lower it) runs after `warmup` runs. Before each
// timed run the L2 cache (60 MB on the H200) is flushed by reading a 256 MB buffer, outside the
// timed interval, so small weights are not served from L2 (--no-flush turns this off). Until
// 2026-11-30 the flush overwrote the buffer (--flush-write keeps that): it left the L2 dirty and
// its write-back ran inside the timed interval, adding a fixed cost to every kernel and peer.
// cuBLASLt's algorithm is chosen once per (type, shape) from its heuristic and cached; when a
// type/shape has no algorithm (or every candidate fails) the case reports "n/a" and the run
// continues. Every failure prints one line and the benchmark moves on to the next case.
//
// --check: before timing a layer, each of our kernels is verified bit-exactly (they are specified
// bit-exact, ops_cuda.h) at M = 7 against the CPU reference (src/quant) and at M = 133 (not a
// multiple of any tile) against cuBLASLt int8 accumulators + the CPU epilogue (CPU reference on
// a subset of rows if cuBLASLt has no int8 algorithm). The W8A8 check also runs each sm90 kernel
// variant explicitly. A kernel that fails its check is not timed at that layer ("check_failed"),
// so a fast wrong kernel cannot be reported.
//
// Reported: µs (median), TOP/s = 2·M·N·K / t, TB/s = nominal bytes of the format's weights +
// activations (+ their scales) / t — W4 counts 0.5 byte per weight (the small-M W4 kernel reads
// exactly that packed layout; the large-M W4 paths read 1-byte codes / expanded int8 weights and
// the simple fallback 1-byte codes, so their real traffic is higher), outputs are not counted
// — and, for our kernels, the speed ratio peer_µs / our_µs to each cuBLASLt peer (> 1: ours is
// faster). JSON (--json): {device, commit, date, command, settings, results: [flat objects]}.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gemm_w4a8_fast.h"
#include "backend/cuda/gemm_w8a8_sm90.h"
#include "backend/cuda/ops_cuda.h"
#include "core/error.h"
#include "quant/gemm_w4a8.h"
#include "quant/gemm_w8a8.h"
#include "quant/weights.h"

#ifndef QSERVE_GIT_COMMIT
#define QSERVE_GIT_COMMIT "unknown"
#endif

namespace {

using qserve::cuda::DeviceBuffer;
using qserve::cuda::to_host;

// ---------------------------------------------------------------------------------------------
// Device-side random data (seeded hash, so runs are reproducible and generation is fast even for
// the 117M-element gate_up weights).
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float unit(uint64_t h) {  // [0, 1)
  return static_cast<float>(h >> 40) * 0x1p-24f;
}

enum class Fill : uint8_t {
  kInt8NonZero,  // int8 uniform in [-127, 127] \ {0}
  kCode4,        // uint8 4-bit codes 0..15
  kS2Scale,      // int8 1..17 (g128: 15 * s2 <= 255, quant::validate's domain)
  kInt8Full,     // int8 -128..127 (g128 zeros)
  kF16Range,     // fp16 uniform in [lo, hi]
  kBf16Signed,   // bf16 uniform in +-[0.01, 1]
  kFp8Signed,    // e4m3 uniform in +-[0.05, 2]
};

__global__ void fill_kernel(void* p, int64_t n, uint64_t seed, Fill kind, float lo, float hi) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = mix64(seed * 0x100000001b3ull + static_cast<uint64_t>(i));
    const float sign = (h & 1) ? -1.0f : 1.0f;
    switch (kind) {
      case Fill::kInt8NonZero: {
        int v = static_cast<int>((h >> 8) % 254) - 127;  // -127..126
        if (v >= 0) ++v;                                 // skip 0 -> -127..-1, 1..127
        static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v);
        break;
      }
      case Fill::kCode4:
        static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>((h >> 8) & 15);
        break;
      case Fill::kS2Scale:
        static_cast<int8_t*>(p)[i] = static_cast<int8_t>(1 + (h >> 8) % 17);
        break;
      case Fill::kInt8Full:
        static_cast<int8_t*>(p)[i] = static_cast<int8_t>(static_cast<int>((h >> 8) & 255) - 128);
        break;
      case Fill::kF16Range:
        static_cast<__half*>(p)[i] = __float2half_rn(lo + (hi - lo) * unit(h));
        break;
      case Fill::kBf16Signed:
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(sign * (0.01f + 0.99f * unit(h)));
        break;
      case Fill::kFp8Signed: {
        const float v = sign * (0.05f + 1.95f * unit(h));
        static_cast<__nv_fp8_storage_t*>(p)[i] =
            __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
        break;
      }
    }
  }
}

void fill(void* p, int64_t n, uint64_t seed, Fill kind, float lo = 0.0f, float hi = 1.0f) {
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 132 * 32);
  fill_kernel<<<static_cast<unsigned>(blocks), 256>>>(p, n, seed, kind, lo, hi);
  qserve::cuda::check_launch("bench fill");
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt peers, algorithm cached per (type, M, N, K).
// ---------------------------------------------------------------------------------------------

enum class Peer : uint8_t { kBf16, kFp8, kInt8 };
const char* peer_kernel(Peer p) {
  return p == Peer::kBf16  ? "cublaslt_bf16"
         : p == Peer::kFp8 ? "cublaslt_fp8_e4m3"
                           : "cublaslt_int8";
}
const char* peer_precision(Peer p) {
  return p == Peer::kBf16 ? "bf16" : p == Peer::kFp8 ? "fp8_e4m3" : "int8";
}

// A named wrapper: nvcc 13.0's front end crashes (internal error in find_allocated_name_reference)
// when a std::vector destroys elements of an anonymous-struct typedef such as
// cublasLtMatmulHeuristicResult_t.
struct Heuristic {
  cublasLtMatmulHeuristicResult_t r;
};

// One cached cuBLASLt problem: descriptors, the heuristic's candidates, and which one works.
struct LtPlan {
  std::string why_not;  // non-empty: n/a, with the reason
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  std::vector<Heuristic> algos;
  int chosen = -1;  // index into algos that ran successfully; -1: not yet tried
  ~LtPlan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

class LtPeers {
 public:
  LtPeers() : scale_a_(1), scale_b_(1) {
    const float one = 1.0f;  // per-tensor fp8 scales (a value of 1 keeps the numbers plain)
    scale_a_.copy_from_host(std::span<const float>(&one, 1), nullptr);
    scale_b_.copy_from_host(std::span<const float>(&one, 1), nullptr);
  }

  // y[M, N] = x[M, K] W[N, K]^T. bf16: bf16 in/out, fp32 accumulate; fp8: e4m3 in, per-tensor
  // scales, bf16 out; int8: s8 in, s32 out. Returns "" on success, else why it is n/a.
  std::string run(Peer p, const void* x, const void* w, void* y, int64_t m, int64_t n, int64_t k,
                  cudaStream_t stream) {
    LtPlan& plan = get(p, m, n, k);
    if (!plan.why_not.empty()) return plan.why_not;
    const int first = plan.chosen >= 0 ? plan.chosen : 0;
    const int last = plan.chosen >= 0 ? plan.chosen : static_cast<int>(plan.algos.size()) - 1;
    std::string err;
    for (int i = first; i <= last; ++i) {
      cublasStatus_t st;
      if (p == Peer::kInt8) {
        const int32_t alpha = 1, beta = 0;
        st = cublasLtMatmul(lt_.handle(), plan.desc, &alpha, w, plan.a, x, plan.b, &beta, y, plan.c,
                            y, plan.c, &plan.algos[static_cast<size_t>(i)].r.algo, lt_.workspace(),
                            lt_.workspace_bytes(), stream);
      } else {
        const float alpha = 1.0f, beta = 0.0f;
        st = cublasLtMatmul(lt_.handle(), plan.desc, &alpha, w, plan.a, x, plan.b, &beta, y, plan.c,
                            y, plan.c, &plan.algos[static_cast<size_t>(i)].r.algo, lt_.workspace(),
                            lt_.workspace_bytes(), stream);
      }
      if (st == CUBLAS_STATUS_SUCCESS) {
        plan.chosen = i;
        return "";
      }
      err = std::string("cublasLtMatmul: ") + cublasLtGetStatusString(st);
    }
    if (plan.chosen < 0) plan.why_not = "every heuristic algorithm failed (" + err + ")";
    return plan.why_not.empty() ? err : plan.why_not;
  }

 private:
  LtPlan& get(Peer p, int64_t m, int64_t n, int64_t k) {
    const auto key = std::make_tuple(static_cast<int>(p), m, n, k);
    auto it = plans_.find(key);
    if (it != plans_.end()) return *it->second;
    auto plan = std::make_unique<LtPlan>();
    build(*plan, p, m, n, k);
    return *plans_.emplace(key, std::move(plan)).first->second;
  }

  void build(LtPlan& plan, Peer p, int64_t m, int64_t n, int64_t k) {
    const auto fail = [&](const char* what, cublasStatus_t st) {
      plan.why_not = std::string(what) + ": " + cublasLtGetStatusString(st);
    };
    const cublasComputeType_t compute = p == Peer::kInt8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
    const cudaDataType_t scale_t = p == Peer::kInt8 ? CUDA_R_32I : CUDA_R_32F;
    const cudaDataType_t in_t = p == Peer::kBf16  ? CUDA_R_16BF
                                : p == Peer::kFp8 ? CUDA_R_8F_E4M3
                                                  : CUDA_R_8I;
    const cudaDataType_t out_t = p == Peer::kInt8 ? CUDA_R_32I : CUDA_R_16BF;
    cublasStatus_t st = cublasLtMatmulDescCreate(&plan.desc, compute, scale_t);
    if (st != CUBLAS_STATUS_SUCCESS) return fail("MatmulDescCreate", st);
    // Row-major y = x W^T is column-major y^T (N x M) = W^T(op T of K x N) * x^T (K x M): "TN",
    // the layout cuBLASLt's int8 and fp8 kernels require.
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    if (p == Peer::kFp8) {
      const void* sa = scale_a_.data();
      const void* sb = scale_b_.data();
      st = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa,
                                          sizeof(sa));
      if (st != CUBLAS_STATUS_SUCCESS) return fail("A_SCALE_POINTER", st);
      st = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb,
                                          sizeof(sb));
      if (st != CUBLAS_STATUS_SUCCESS) return fail("B_SCALE_POINTER", st);
    }
    const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    if ((st = cublasLtMatrixLayoutCreate(&plan.a, in_t, u(k), u(n), k)) != CUBLAS_STATUS_SUCCESS)
      return fail("layout A", st);
    if ((st = cublasLtMatrixLayoutCreate(&plan.b, in_t, u(k), u(m), k)) != CUBLAS_STATUS_SUCCESS)
      return fail("layout B", st);
    if ((st = cublasLtMatrixLayoutCreate(&plan.c, out_t, u(n), u(m), n)) != CUBLAS_STATUS_SUCCESS)
      return fail("layout C", st);
    cublasLtMatmulPreference_t pref = nullptr;
    if ((st = cublasLtMatmulPreferenceCreate(&pref)) != CUBLAS_STATUS_SUCCESS)
      return fail("PreferenceCreate", st);
    const uint64_t ws = lt_.workspace_bytes();
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof(ws));
    constexpr int kMaxAlgos = 8;
    cublasLtMatmulHeuristicResult_t res[kMaxAlgos] = {};
    int returned = 0;
    st = cublasLtMatmulAlgoGetHeuristic(lt_.handle(), plan.desc, plan.a, plan.b, plan.c, plan.c,
                                        pref, kMaxAlgos, res, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS) return fail("no algorithm (heuristic)", st);
    for (int i = 0; i < returned && i < kMaxAlgos; ++i) {
      if (res[i].state == CUBLAS_STATUS_SUCCESS) plan.algos.push_back(Heuristic{res[i]});
    }
    if (plan.algos.empty()) plan.why_not = "no algorithm for this type/shape";
  }

  qserve::cuda::CublasLt lt_;
  DeviceBuffer<float> scale_a_, scale_b_;
  std::map<std::tuple<int, int64_t, int64_t, int64_t>, std::unique_ptr<LtPlan>> plans_;
};

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------

struct Settings {
  std::vector<int64_t> ms = {1, 16, 64, 128, 256, 1024, 4096, 8192};
  std::vector<std::string> shapes = {"qkv", "o", "gate_up", "down"};
  int reps = 30;
  int warmup = 5;
  bool flush = true;
  bool flush_write = false;
  bool check = false;
  bool quick = false;
  std::string json_path;
  bool tune_small_m = false;
  bool floor = false;
  bool tune_large_m = false;
  bool tune_tile_order = false;
  std::string tune_out;  // the tuned table (.inc) to write
};

// Reads `n` 16-byte words (L1 bypassed) and XOR-folds them into one word per thread so nothing
// is elided, kUnroll independent loads in flight per thread per round. The L2 flush before each
// timed run (kUnroll = 1: the L2 then holds clean lines of that buffer, none of the timed
// kernel's operands) and --floor's bare weight reads.
template <int kUnroll>
__global__ void read_fold_kernel(const uint4* __restrict__ buf, size_t n, uint32_t* sink) {
  uint32_t x = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  for (; i + (kUnroll - 1) * stride < n; i += kUnroll * stride) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                   : "=r"(v[u].x), "=r"(v[u].y), "=r"(v[u].z), "=r"(v[u].w)
                   : "l"(buf + i + u * stride));
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) x ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = buf[i];
    x ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (x == 0x9E3779B9u) sink[0] = x;  // practically never; keeps the loads alive
}

class Timer {
 public:
  // flush_write: overwrite the buffer (memset) instead of reading it. A write flush leaves up to
  // the whole L2 dirty, and its write-back then runs inside the next timed interval (tens of µs
  // of HBM traffic that a real decode step does not have), so reading is the default.
  Timer(cudaStream_t s, bool flush, bool flush_write = false)
      : stream_(s), flush_(flush ? size_t{256} << 20 : 0), flush_write_(flush_write) {
    if (flush) {
      QSERVE_CUDA_CHECK(cudaMemsetAsync(flush_.data(), 0x5A, flush_.bytes(), stream_),
                        "bench flush buffer");
      sink_ = DeviceBuffer<uint32_t>(1);
    }
    QSERVE_CUDA_CHECK(cudaEventCreate(&start_), "bench event");
    QSERVE_CUDA_CHECK(cudaEventCreate(&stop_), "bench event");
  }
  ~Timer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  // Median µs of `reps` runs of fn after `warmup` runs. fn returns "" or an error (n/a) text.
  std::string time(const std::function<std::string()>& fn, int warmup, int reps, double* us) {
    for (int i = 0; i < warmup; ++i) {
      const std::string e = fn();
      if (!e.empty()) return e;
    }
    QSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_), "bench warm-up");
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
      if (!flush_.empty() && flush_write_) {
        QSERVE_CUDA_CHECK(cudaMemsetAsync(flush_.data(), i & 0xff, flush_.bytes(), stream_),
                          "bench L2 flush");
      } else if (!flush_.empty()) {
        read_fold_kernel<1><<<1056, 512, 0, stream_>>>(
            reinterpret_cast<const uint4*>(flush_.data()), flush_.bytes() / 16, sink_.data());
        QSERVE_CUDA_CHECK(cudaGetLastError(), "bench L2 flush");
      }
      QSERVE_CUDA_CHECK(cudaEventRecord(start_, stream_), "bench event");
      const std::string e = fn();
      QSERVE_CUDA_CHECK(cudaEventRecord(stop_, stream_), "bench event");
      if (!e.empty()) return e;
      QSERVE_CUDA_CHECK(cudaEventSynchronize(stop_), "bench run");
      float ms = 0.0f;
      QSERVE_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_), "bench event");
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    const size_t h = t.size() / 2;
    *us = 1e3 * (t.size() % 2 ? t[h] : 0.5 * (static_cast<double>(t[h - 1]) + t[h]));
    return "";
  }

 private:
  cudaStream_t stream_;
  DeviceBuffer<uint8_t> flush_;
  bool flush_write_ = false;
  DeviceBuffer<uint32_t> sink_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// One layer's operands (device), generated once and reused for every M.
// ---------------------------------------------------------------------------------------------

struct Layer {
  std::string name;
  int64_t n, k;
};

struct Operands {
  int64_t n = 0, k = 0, max_m = 0;
  // weights
  DeviceBuffer<uint8_t> q4;          // [n, k] codes (shared by per-channel and g128)
  DeviceBuffer<uint16_t> s1, szero;  // per-channel [n]
  DeviceBuffer<uint16_t> g_s1;       // g128 [n]
  DeviceBuffer<int8_t> s2, z2;       // g128 [n, k/128]
  DeviceBuffer<int8_t> w8;           // [n, k]
  DeviceBuffer<uint16_t> dq;         // [n]
  DeviceBuffer<uint16_t> w_bf16;     // [n, k]
  DeviceBuffer<uint8_t> w_fp8;       // [n, k]
  // activations (max_m rows) and outputs
  DeviceBuffer<int8_t> aq;
  DeviceBuffer<uint16_t> a_scale, a_sum;
  DeviceBuffer<uint16_t> x_bf16;
  DeviceBuffer<uint8_t> x_fp8;
  // Outputs [max_m, n] (scratch: written through const Operands&, hence mutable).
  mutable DeviceBuffer<uint16_t> y16;  // fp16 / bf16
  mutable DeviceBuffer<int32_t> y32;   // int32

  DeviceBuffer<uint8_t> q4_packed;  // the small-M kernel's layout of q4 (w4a8_pack_codes)
  DeviceBuffer<int8_t> g_w8;        // g128 expanded int8 weights (what upload() caches)

  qserve::cuda::W4PerChannelView w4pc() const {
    return {n, k, q4.data(), s1.data(), szero.data(), q4_packed.data()};
  }
  qserve::cuda::W4G128View w4g() const {
    return {n, k, q4.data(), g_s1.data(), s2.data(), z2.data(), q4_packed.data(), g_w8.data()};
  }
  qserve::cuda::W8PerChannelView w8v() const { return {n, k, w8.data(), dq.data()}; }
};

Operands make_operands(int64_t n, int64_t k, int64_t max_m, uint64_t seed) {
  Operands o;
  o.n = n;
  o.k = k;
  o.max_m = max_m;
  const int64_t nk = n * k, mk = max_m * k, g = k / qserve::quant::kGroupSize;
  o.q4 = DeviceBuffer<uint8_t>(static_cast<size_t>(nk));
  fill(o.q4.data(), nk, seed + 1, Fill::kCode4);
  o.s1 = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  fill(o.s1.data(), n, seed + 2, Fill::kF16Range, 1e-3f, 3e-2f);
  o.szero = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  fill(o.szero.data(), n, seed + 3, Fill::kF16Range, 1e-3f, 0.4f);
  o.g_s1 = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  fill(o.g_s1.data(), n, seed + 4, Fill::kF16Range, 1e-4f, 1e-2f);
  o.s2 = DeviceBuffer<int8_t>(static_cast<size_t>(n * g));
  fill(o.s2.data(), n * g, seed + 5, Fill::kS2Scale);
  o.z2 = DeviceBuffer<int8_t>(static_cast<size_t>(n * g));
  fill(o.z2.data(), n * g, seed + 6, Fill::kInt8Full);
  o.w8 = DeviceBuffer<int8_t>(static_cast<size_t>(nk));
  fill(o.w8.data(), nk, seed + 7, Fill::kInt8NonZero);
  o.dq = DeviceBuffer<uint16_t>(static_cast<size_t>(n));
  fill(o.dq.data(), n, seed + 8, Fill::kF16Range, 1e-4f, 1e-2f);
  o.w_bf16 = DeviceBuffer<uint16_t>(static_cast<size_t>(nk));
  fill(o.w_bf16.data(), nk, seed + 9, Fill::kBf16Signed);
  o.w_fp8 = DeviceBuffer<uint8_t>(static_cast<size_t>(nk));
  fill(o.w_fp8.data(), nk, seed + 10, Fill::kFp8Signed);
  o.aq = DeviceBuffer<int8_t>(static_cast<size_t>(mk));
  fill(o.aq.data(), mk, seed + 11, Fill::kInt8NonZero);
  o.a_scale = DeviceBuffer<uint16_t>(static_cast<size_t>(max_m));
  fill(o.a_scale.data(), max_m, seed + 12, Fill::kF16Range, 1e-3f, 0.5f);
  o.a_sum = DeviceBuffer<uint16_t>(static_cast<size_t>(max_m));
  fill(o.a_sum.data(), max_m, seed + 13, Fill::kF16Range, -200.0f, 200.0f);
  o.x_bf16 = DeviceBuffer<uint16_t>(static_cast<size_t>(mk));
  fill(o.x_bf16.data(), mk, seed + 14, Fill::kBf16Signed);
  o.x_fp8 = DeviceBuffer<uint8_t>(static_cast<size_t>(mk));
  fill(o.x_fp8.data(), mk, seed + 15, Fill::kFp8Signed);
  o.y16 = DeviceBuffer<uint16_t>(static_cast<size_t>(max_m * n));
  o.y32 = DeviceBuffer<int32_t>(static_cast<size_t>(max_m * n));
  // The fast W4A8 paths' layouts, made as upload() makes them (gemm_w4a8_fast.h).
  if (qserve::cuda::w4a8_packable(n, k)) {
    o.q4_packed = DeviceBuffer<uint8_t>(static_cast<size_t>(nk / 2));
    qserve::cuda::w4a8_pack_codes(o.q4.data(), n, k, o.q4_packed.data(), nullptr);
  }
  if (k % qserve::quant::kGroupSize == 0) {
    o.g_w8 = DeviceBuffer<int8_t>(static_cast<size_t>(nk));
    qserve::cuda::w4a8_g128_expand(o.w4g(), o.g_w8.data(), nullptr);
  }
  QSERVE_CUDA_CHECK(cudaDeviceSynchronize(), "bench operands");
  return o;
}

// ---------------------------------------------------------------------------------------------
// Our kernels
// ---------------------------------------------------------------------------------------------

enum class Ours : uint8_t { kW4PerChannel, kW4G128, kW8A8 };
const char* ours_kernel(Ours k) {
  return k == Ours::kW4PerChannel ? "w4a8_per_channel" : k == Ours::kW4G128 ? "w4a8_g128" : "w8a8";
}
const char* ours_precision(Ours k) {
  return k == Ours::kW4PerChannel ? "w4a8" : k == Ours::kW4G128 ? "w4a8-g128" : "w8a8";
}

void run_ours(Ours kind, const Operands& o, int64_t m, uint16_t* y, cudaStream_t s) {
  switch (kind) {
    case Ours::kW4PerChannel:
      qserve::cuda::gemm_w4a8_per_channel(o.aq.data(), o.a_scale.data(), o.a_sum.data(), m,
                                          o.w4pc(), nullptr, y, nullptr, s);
      break;
    case Ours::kW4G128:
      qserve::cuda::gemm_w4a8_g128(o.aq.data(), o.a_scale.data(), m, o.w4g(), nullptr, y, nullptr,
                                   s);
      break;
    case Ours::kW8A8:
      qserve::cuda::gemm_w8a8(o.aq.data(), o.a_scale.data(), m, o.w8v(), y, nullptr, s);
      break;
  }
}

// Which implementation gemm_w8a8 runs for these operands (for the report).
std::string ours_path(Ours kind, const Operands& o, int64_t m) {
  if (kind == Ours::kW4PerChannel)
    return qserve::cuda::gemm_w4a8_per_channel_path(o.aq.data(), o.a_scale.data(), o.a_sum.data(),
                                                    m, o.w4pc(), o.y16.data());
  if (kind == Ours::kW4G128)
    return qserve::cuda::gemm_w4a8_g128_path(o.aq.data(), o.a_scale.data(), m, o.w4g(),
                                             o.y16.data());
  if (qserve::cuda::w8a8_sm90_applicable(o.aq.data(), o.a_scale.data(), m, o.w8v(), o.y16.data()))
    return qserve::cuda::w8a8_sm90_variant_name(qserve::cuda::w8a8_sm90_choose(m, o.n));
  return "simple_dp4a";
}

// Nominal bytes moved: weights in their format + activations (+ scales); outputs not counted.
double traffic_bytes(const std::string& precision, int64_t m, int64_t n, int64_t k) {
  const double nk = static_cast<double>(n) * k, mk = static_cast<double>(m) * k;
  if (precision == "w4a8") return nk / 2 + 4.0 * n + mk + 4.0 * m;
  if (precision == "w4a8-g128") return nk / 2 + 2.0 * n + 2.0 * nk / 128 + mk + 2.0 * m;
  if (precision == "w8a8") return nk + 2.0 * n + mk + 2.0 * m;
  if (precision == "bf16") return 2 * nk + 2 * mk;
  return nk + mk;  // fp8, int8
}

// ---------------------------------------------------------------------------------------------
// --check: bit-exact verification of our kernels
// ---------------------------------------------------------------------------------------------

// Host copies of one layer's operands (as the CPU reference structs) for the checks.
struct HostRef {
  qserve::quant::W4PerChannel w4pc;
  qserve::quant::W4G128 w4g;
  qserve::quant::W8PerChannel w8;
  std::vector<int8_t> g128_w8;  // [n, k] the g128 weights as int8 (for cuBLASLt's accumulators)
  std::vector<int8_t> aq;       // [check_m, k]
  std::vector<uint16_t> a_scale, a_sum;
};

HostRef host_ref(const Operands& o, int64_t rows) {
  HostRef h;
  const size_t nk = static_cast<size_t>(o.n * o.k), g = static_cast<size_t>(o.n * o.k / 128);
  h.w4pc.n = h.w4g.n = h.w8.n = o.n;
  h.w4pc.k = h.w4g.k = h.w8.k = o.k;
  h.w4pc.q = to_host(o.q4.data(), nk);
  h.w4pc.s1_scales = to_host(o.s1.data(), static_cast<size_t>(o.n));
  h.w4pc.s1_szeros = to_host(o.szero.data(), static_cast<size_t>(o.n));
  h.w4g.q = h.w4pc.q;
  h.w4g.s1_scales = to_host(o.g_s1.data(), static_cast<size_t>(o.n));
  h.w4g.s2_scales = to_host(o.s2.data(), g);
  h.w4g.s2_zeros = to_host(o.z2.data(), g);
  h.w8.w = to_host(o.w8.data(), nk);
  h.w8.dequant_scale = to_host(o.dq.data(), static_cast<size_t>(o.n));
  qserve::quant::validate(h.w4pc);
  qserve::quant::validate(h.w4g);
  qserve::quant::validate(h.w8);
  h.g128_w8.resize(nk);
  for (int64_t r = 0; r < o.n; ++r)
    qserve::quant::g128_int8_row(h.w4g, r, h.g128_w8.data() + r * o.k);
  h.aq = to_host(o.aq.data(), static_cast<size_t>(rows * o.k));
  h.a_scale = to_host(o.a_scale.data(), static_cast<size_t>(rows));
  h.a_sum = to_host(o.a_sum.data(), static_cast<size_t>(rows));
  return h;
}

// Reference y for rows [r0, r0 + rows) from int32 accumulators acc [rows, n].
std::vector<uint16_t> epilogue(Ours kind, const HostRef& h, const int32_t* acc, int64_t r0,
                               int64_t rows) {
  const int64_t n = h.w8.n;
  std::vector<uint16_t> y(static_cast<size_t>(rows * n));
  switch (kind) {
    case Ours::kW4PerChannel:
      qserve::quant::w4a8_per_channel_epilogue(acc, rows, &h.a_scale[static_cast<size_t>(r0)],
                                               &h.a_sum[static_cast<size_t>(r0)], h.w4pc, nullptr,
                                               y.data());
      break;
    case Ours::kW4G128:
      qserve::quant::w4a8_g128_epilogue(acc, rows, &h.a_scale[static_cast<size_t>(r0)], h.w4g,
                                        nullptr, y.data());
      break;
    case Ours::kW8A8:
      qserve::quant::w8a8_epilogue(acc, rows, &h.a_scale[static_cast<size_t>(r0)], h.w8, y.data());
      break;
  }
  return y;
}

// CPU reference accumulators of rows [r0, r0 + rows).
std::vector<int32_t> cpu_acc(Ours kind, const HostRef& h, int64_t r0, int64_t rows) {
  const int64_t n = h.w8.n, k = h.w8.k;
  std::vector<int32_t> acc(static_cast<size_t>(rows * n));
  const int8_t* a = h.aq.data() + r0 * k;
  switch (kind) {
    case Ours::kW4PerChannel:
      qserve::quant::w4a8_per_channel_accumulate(a, rows, h.w4pc, acc.data());
      break;
    case Ours::kW4G128:
      qserve::quant::w4a8_g128_accumulate(a, rows, h.w4g, acc.data());
      break;
    case Ours::kW8A8:
      qserve::quant::w8a8_accumulate(a, rows, h.w8, acc.data());
      break;
  }
  return acc;
}

// Compares got rows [r0, r0+rows) of a [*, n] fp16 output with want; prints one line.
bool compare_rows(const std::string& what, const std::vector<uint16_t>& got, int64_t n, int64_t r0,
                  int64_t rows, const std::vector<uint16_t>& want) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < rows * n; ++i) {
    if (got[static_cast<size_t>(r0 * n + i)] != want[static_cast<size_t>(i)]) {
      if (first < 0) first = i;
      ++bad;
    }
  }
  if (bad == 0) {
    std::printf("CHECK PASS %s rows=[%lld,%lld) bit-exact\n", what.c_str(),
                static_cast<long long>(r0), static_cast<long long>(r0 + rows));
  } else {
    std::printf(
        "CHECK FAIL %s rows=[%lld,%lld) mismatches=%lld first=(m=%lld,n=%lld) got=0x%04x "
        "want=0x%04x\n",
        what.c_str(), static_cast<long long>(r0), static_cast<long long>(r0 + rows),
        static_cast<long long>(bad), static_cast<long long>(r0 + first / n),
        static_cast<long long>(first % n), got[static_cast<size_t>(r0 * n + first)],
        want[static_cast<size_t>(first)]);
  }
  return bad == 0;
}

// Verifies `launch` (which writes o.y16 for m rows) for `kind`; returns false on any mismatch.
// Small m: the CPU reference on all rows. Otherwise cuBLASLt int8 accumulators of the same
// operands + the CPU epilogue on all rows, or, if cuBLASLt has no int8 algorithm, the CPU
// reference on the first and last 8 rows.
bool check_one(const std::string& what, Ours kind, const Operands& o, const HostRef& h, int64_t m,
               const std::function<void()>& launch, LtPeers& lt, cudaStream_t s) {
  const size_t yn = static_cast<size_t>(m * o.n);
  QSERVE_CUDA_CHECK(cudaMemsetAsync(o.y16.data(), 0xFF, yn * 2, s), "check poison");  // NaN
  launch();
  QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "check run");
  const std::vector<uint16_t> got = to_host(o.y16.data(), yn, s);
  if (m <= 16) {
    const std::vector<int32_t> acc = cpu_acc(kind, h, 0, m);
    return compare_rows(what + " vs CPU", got, o.n, 0, m, epilogue(kind, h, acc.data(), 0, m));
  }
  // cuBLASLt int8 accumulators of aq against the kernel's int8 weights.
  std::optional<DeviceBuffer<int8_t>> g128;
  const void* wdev = o.w8.data();
  if (kind == Ours::kW4PerChannel) wdev = o.q4.data();  // codes 0..15 are valid int8 values
  if (kind == Ours::kW4G128) {
    g128.emplace(qserve::cuda::to_device(h.g128_w8, s));
    wdev = g128->data();
  }
  const std::string na = lt.run(Peer::kInt8, o.aq.data(), wdev, o.y32.data(), m, o.n, o.k, s);
  if (na.empty()) {
    QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "check cublaslt int8");
    const std::vector<int32_t> acc = to_host(o.y32.data(), yn, s);
    return compare_rows(what + " vs cuBLASLt-int8+CPU-epilogue", got, o.n, 0, m,
                        epilogue(kind, h, acc.data(), 0, m));
  }
  std::printf("CHECK note: cuBLASLt int8 n/a at M=%lld (%s); CPU reference on 16 rows\n",
              static_cast<long long>(m), na.c_str());
  bool ok = true;
  for (const int64_t r0 : {int64_t{0}, m - 8}) {
    const std::vector<int32_t> acc = cpu_acc(kind, h, r0, 8);
    ok =
        compare_rows(what + " vs CPU", got, o.n, r0, 8, epilogue(kind, h, acc.data(), r0, 8)) && ok;
  }
  return ok;
}

// All checks of one layer. Returns, per kernel, whether it passed.
std::map<Ours, bool> check_layer(const Layer& L, const Operands& o, LtPeers& lt, cudaStream_t s) {
  std::map<Ours, bool> pass;
  const int64_t check_ms[] = {7, 133};
  const HostRef h = host_ref(o, std::min<int64_t>(o.max_m, 133));
  for (const Ours kind : {Ours::kW4PerChannel, Ours::kW4G128, Ours::kW8A8}) {
    bool ok = true;
    for (const int64_t m : check_ms) {
      if (m > o.max_m) continue;
      const std::string what = std::string(ours_kernel(kind)) + " " + L.name +
                               " M=" + std::to_string(m) + " path=" + ours_path(kind, o, m);
      try {
        ok = check_one(
                 what, kind, o, h, m, [&] { run_ours(kind, o, m, o.y16.data(), s); }, lt, s) &&
             ok;
        if (kind == Ours::kW8A8) {  // each sm90 variant explicitly, whatever dispatch picks
          for (const auto v : {qserve::cuda::W8A8Sm90Variant::kSmallMSwapAB,
                               qserve::cuda::W8A8Sm90Variant::kLargeM,
                               qserve::cuda::W8A8Sm90Variant::kCoop128x256}) {
            const std::string vw = std::string("w8a8 ") + L.name + " M=" + std::to_string(m) +
                                   " variant=" + qserve::cuda::w8a8_sm90_variant_name(v);
            if (!qserve::cuda::w8a8_sm90_applicable(o.aq.data(), o.a_scale.data(), m, o.w8v(),
                                                    o.y16.data())) {
              std::printf("CHECK skip %s: sm90 kernel not applicable here (compiled=%d)\n",
                          vw.c_str(), qserve::cuda::w8a8_sm90_compiled() ? 1 : 0);
              continue;
            }
            bool launched = true;
            ok = check_one(
                     vw, kind, o, h, m,
                     [&] {
                       launched = qserve::cuda::gemm_w8a8_sm90(o.aq.data(), o.a_scale.data(), m,
                                                               o.w8v(), o.y16.data(), s, v);
                     },
                     lt, s) &&
                 ok;
            if (!launched) {
              std::printf("CHECK FAIL %s: CUTLASS declined the problem (can_implement)\n",
                          vw.c_str());
              ok = false;
            }
          }
        }
      } catch (const std::exception& e) {
        std::printf("CHECK ERROR %s: %s\n", what.c_str(), e.what());
        ok = false;
      }
    }
    pass[kind] = ok;
  }
  return pass;
}

// ---------------------------------------------------------------------------------------------
// --tune-small-m: the small-M W4A8 kernel's launch configurations, per shape and token bucket
// ---------------------------------------------------------------------------------------------

// Every configuration the kernel has (gemm_w4a8_fast.h) for this k.
std::vector<qserve::cuda::W4A8SmallMConfig> small_m_configs(int64_t m, int64_t k) {
  std::vector<qserve::cuda::W4A8SmallMConfig> v;
  for (const auto& [rt, u] :
       {std::pair{1, 4}, std::pair{1, 8}, std::pair{1, 16}, std::pair{2, 2}, std::pair{2, 4}}) {
    for (const int s : {1, 2, 4, 8}) {
      const qserve::cuda::W4A8SmallMConfig c{rt, u, s, false};
      if (qserve::cuda::w4a8_small_m_config_valid(c, m, k)) v.push_back(c);
    }
  }
  for (const int s : {1, 2, 4, 8}) {
    const qserve::cuda::W4A8SmallMConfig c{1, 8, s, true};
    if (qserve::cuda::w4a8_small_m_config_valid(c, m, k)) v.push_back(c);
  }
  for (const auto& [rt, u, w] : {std::tuple{1, 4, 8}, std::tuple{1, 8, 8}, std::tuple{2, 4, 8}}) {
    const qserve::cuda::W4A8SmallMConfig c{rt, u, w, false, true};  // (row-tile: splits = warps)
    if (qserve::cuda::w4a8_small_m_config_valid(c, m, k)) v.push_back(c);
  }
  return v;
}

// Times every configuration at M = 8, 16, 32, 64 (the largest M of each token-tile bucket) for
// per-channel and g128; each is first checked bit-exact against the simple reference kernel's
// output for the same operands. Appends one JSON row per (case, configuration) and returns the
// table lines of the fastest configuration per case.
std::vector<std::string> tune_layer(const Layer& L, const Operands& o, Timer& timer,
                                    const Settings& st, cudaStream_t s, nlohmann::json& results) {
  std::vector<std::string> lines;
  const size_t max_y = static_cast<size_t>(o.max_m * o.n);
  for (const bool g128 : {false, true}) {
    for (const int64_t m : {int64_t{8}, int64_t{16}, int64_t{32}, int64_t{64}}) {
      if (m > o.max_m) continue;
      const size_t yn = static_cast<size_t>(m * o.n);
      // Reference: the simple kernel (it runs whenever acc_out is requested).
      if (g128)
        qserve::cuda::gemm_w4a8_g128(o.aq.data(), o.a_scale.data(), m, o.w4g(), nullptr,
                                     o.y16.data(), o.y32.data(), s);
      else
        qserve::cuda::gemm_w4a8_per_channel(o.aq.data(), o.a_scale.data(), o.a_sum.data(), m,
                                            o.w4pc(), nullptr, o.y16.data(), o.y32.data(), s);
      QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "tune reference");
      const std::vector<uint16_t> want = to_host(o.y16.data(), yn, s);
      (void)max_y;
      const auto launch = [&](const qserve::cuda::W4A8SmallMConfig& c) {
        const bool ok =
            g128 ? qserve::cuda::gemm_w4a8_g128_small_m(o.aq.data(), o.a_scale.data(), m, o.w4g(),
                                                        nullptr, o.y16.data(), s, &c)
                 : qserve::cuda::gemm_w4a8_per_channel_small_m(o.aq.data(), o.a_scale.data(),
                                                               o.a_sum.data(), m, o.w4pc(), nullptr,
                                                               o.y16.data(), s, &c);
        if (!ok) throw qserve::Error("small-M kernel declined the operands");
      };
      const qserve::cuda::W4A8SmallMConfig dflt =
          qserve::cuda::w4a8_small_m_config(g128, m, o.n, o.k);
      double best_us = 1e30, dflt_us = 0;
      qserve::cuda::W4A8SmallMConfig best{};
      for (const qserve::cuda::W4A8SmallMConfig& c : small_m_configs(m, o.k)) {
        std::string status = "ok";
        double us = 0;
        try {
          QSERVE_CUDA_CHECK(cudaMemsetAsync(o.y16.data(), 0xFF, yn * 2, s), "tune poison");
          launch(c);
          QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "tune check run");
          if (to_host(o.y16.data(), yn, s) != want) status = "check_failed";
          if (status == "ok") {
            const std::string e = timer.time(
                [&] {
                  launch(c);
                  return std::string();
                },
                st.warmup, st.reps, &us);
            if (!e.empty()) status = "error";
          }
        } catch (const std::exception& e) {
          std::printf("TUNE ERROR %s M=%lld rt=%d u=%d splits=%d: %s\n", L.name.c_str(),
                      static_cast<long long>(m), c.row_tiles_per_warp, c.k_blocks_in_flight,
                      c.splits, e.what());
          status = "error";
        }
        const bool is_default = c.row_tiles_per_warp == dflt.row_tiles_per_warp &&
                                c.k_blocks_in_flight == dflt.k_blocks_in_flight &&
                                c.splits == dflt.splits && c.wgmma == dflt.wgmma &&
                                c.ktile == dflt.ktile;
        nlohmann::json r = {{"kernel", g128 ? "w4a8_g128_small_m" : "w4a8_per_channel_small_m"},
                            {"shape", L.name},
                            {"M", m},
                            {"N", L.n},
                            {"K", L.k},
                            {"precision", g128 ? "w4a8-g128" : "w4a8"},
                            {"system", "qserve.cpp"},
                            {"row_tiles_per_warp", c.row_tiles_per_warp},
                            {"k_blocks_in_flight", c.k_blocks_in_flight},
                            {"splits", c.splits},
                            {"wgmma", c.wgmma},
                            {"ktile", c.ktile},
                            {"current_default", is_default},
                            {"status", status}};
        r["us"] = status == "ok" ? nlohmann::json(us) : nlohmann::json(nullptr);
        if (status == "ok")
          r["tbps"] = traffic_bytes(g128 ? "w4a8-g128" : "w4a8", m, L.n, L.k) / (us * 1e-6) / 1e12;
        results.push_back(r);
        std::printf("tune %-8s %-9s M=%-3lld %s rt=%d u=%d splits=%d %s %8.2f us%s\n",
                    L.name.c_str(), g128 ? "g128" : "per-chan", static_cast<long long>(m),
                    c.wgmma ? "wgmma" : (c.ktile ? "ktile" : "mma  "), c.row_tiles_per_warp,
                    c.k_blocks_in_flight, c.splits, status.c_str(), us,
                    is_default ? " (current)" : "");
        if (status != "ok") continue;
        if (is_default) dflt_us = us;
        if (us < best_us) {
          best_us = us;
          best = c;
        }
      }
      if (best_us < 1e29) {
        const int mt = m <= 8 ? 1 : (m <= 16 ? 2 : (m <= 32 ? 4 : 8));
        char line[256];
        std::snprintf(
            line, sizeof(line),
            "{%s, %d, %lld, %lld, %d, %d, %d, %s, %s},  // %s M<=%lld: %.2f us (was %.2f)",
            g128 ? "true" : "false", mt, static_cast<long long>(L.n), static_cast<long long>(L.k),
            best.row_tiles_per_warp, best.k_blocks_in_flight, best.splits,
            best.wgmma ? "true" : "false", best.ktile ? "true" : "false", L.name.c_str(),
            static_cast<long long>(m), best_us, dflt_us);
        lines.push_back(line);
        std::printf("TUNED %s\n", line);
      }
      std::fflush(stdout);
    }
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// --floor: what a small-M GEMM cannot beat in this harness (the fixed cost of one timed launch,
// and reading the packed 4-bit weights once from HBM after the L2 flush)
// ---------------------------------------------------------------------------------------------

__global__ void floor_empty_kernel(uint32_t* sink) {
  if (threadIdx.x == 1000000) sink[0] = 1;  // never; the launch is what is timed
}

void floor_layer(const Layer& L, const Operands& o, Timer& timer, const Settings& st,
                 cudaStream_t s, nlohmann::json& results) {
  int sms = 0;
  QSERVE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "sms");
  DeviceBuffer<uint32_t> sink(1);
  const size_t bytes = static_cast<size_t>(L.n * L.k / 2);
  const auto* words = reinterpret_cast<const uint4*>(o.q4_packed.data());
  const auto row = [&](const std::string& kernel, const std::string& what,
                       const std::function<void()>& launch) {
    double us = 0;
    const std::string e = timer.time(
        [&] {
          launch();
          QSERVE_CUDA_CHECK(cudaGetLastError(), "floor launch");
          return std::string();
        },
        st.warmup, st.reps, &us);
    if (!e.empty()) return;
    nlohmann::json r = {{"kernel", kernel}, {"shape", L.name}, {"N", L.n}, {"K", L.k},
                        {"bytes", bytes},   {"what", what},    {"us", us}, {"system", "floor"}};
    if (kernel != "empty") r["tbps"] = static_cast<double>(bytes) / (us * 1e-6) / 1e12;
    results.push_back(r);
    std::printf("floor %-8s %-12s %-20s %8.2f us", L.name.c_str(), kernel.c_str(), what.c_str(),
                us);
    if (kernel != "empty")
      std::printf("  %.2f TB/s of %.1f MB", static_cast<double>(bytes) / (us * 1e-6) / 1e12,
                  static_cast<double>(bytes) / 1e6);
    std::printf("\n");
  };
  row("empty", "1 CTA", [&] { floor_empty_kernel<<<1, 32, 0, s>>>(sink.data()); });
  row("empty", "SMs x 4 CTAs of 288",
      [&] { floor_empty_kernel<<<static_cast<unsigned>(4 * sms), 288, 0, s>>>(sink.data()); });
  for (const int ctas : {1, 2, 4, 8}) {
    for (const int threads : {256, 512}) {
      const unsigned grid = static_cast<unsigned>(ctas * sms);
      const std::string what = std::to_string(ctas) + "/SM x " + std::to_string(threads);
      row("read_ldg_u4", what,
          [&] { read_fold_kernel<4><<<grid, threads, 0, s>>>(words, bytes / 16, sink.data()); });
      row("read_ldg_u8", what,
          [&] { read_fold_kernel<8><<<grid, threads, 0, s>>>(words, bytes / 16, sink.data()); });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// --tune-large-m: the large-M per-channel W4A8 CUTLASS variants, per shape and M
// ---------------------------------------------------------------------------------------------

// Times every W4A8Sm90Variant at each M of st.ms (each first checked bit-exact against the
// simple reference kernel's output for the same operands). Appends one JSON row per (M,
// variant) and prints the fastest per M.
void tune_large_m_layer(const Layer& L, const Operands& o, Timer& timer, const Settings& st,
                        cudaStream_t s, nlohmann::json& results) {
  using qserve::cuda::W4A8Sm90Variant;
  for (const int64_t m : st.ms) {
    if (m < 1 || m > o.max_m) continue;
    const size_t yn = static_cast<size_t>(m * o.n);
    qserve::cuda::gemm_w4a8_per_channel(o.aq.data(), o.a_scale.data(), o.a_sum.data(), m, o.w4pc(),
                                        nullptr, o.y16.data(), o.y32.data(), s);
    QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "tune-large reference");
    const std::vector<uint16_t> want = to_host(o.y16.data(), yn, s);
    const W4A8Sm90Variant dflt = qserve::cuda::w4a8_sm90_choose(m, o.n, o.k);
    double best_us = 1e30;
    W4A8Sm90Variant best = W4A8Sm90Variant::kAuto;
    for (const W4A8Sm90Variant v : qserve::cuda::kW4A8Sm90Variants) {
      const auto launch = [&] {
        if (!qserve::cuda::gemm_w4a8_per_channel_sm90(o.aq.data(), o.a_scale.data(), o.a_sum.data(),
                                                      m, o.w4pc(), o.y16.data(), s, nullptr, v))
          throw qserve::Error("the sm90 variant declined the operands");
      };
      std::string status = "ok";
      double us = 0;
      try {
        QSERVE_CUDA_CHECK(cudaMemsetAsync(o.y16.data(), 0xFF, yn * 2, s), "tune poison");
        launch();
        QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "tune check run");
        if (to_host(o.y16.data(), yn, s) != want) status = "check_failed";
        if (status == "ok") {
          const std::string e = timer.time(
              [&] {
                launch();
                return std::string();
              },
              st.warmup, st.reps, &us);
          if (!e.empty()) status = "error";
        }
      } catch (const std::exception& e) {
        std::printf("TUNE ERROR %s M=%lld %s: %s\n", L.name.c_str(), static_cast<long long>(m),
                    qserve::cuda::w4a8_sm90_variant_name(v), e.what());
        status = "error";
      }
      const double tops = status == "ok" ? 2.0 * m * L.n * L.k / (us * 1e-6) / 1e12 : 0.0;
      nlohmann::json r = {{"kernel", "w4a8_per_channel_sm90"},
                          {"shape", L.name},
                          {"M", m},
                          {"N", L.n},
                          {"K", L.k},
                          {"precision", "w4a8"},
                          {"system", "qserve.cpp"},
                          {"variant", qserve::cuda::w4a8_sm90_variant_name(v)},
                          {"current_default", v == dflt},
                          {"status", status}};
      r["us"] = status == "ok" ? nlohmann::json(us) : nlohmann::json(nullptr);
      r["tops"] = status == "ok" ? nlohmann::json(tops) : nlohmann::json(nullptr);
      results.push_back(r);
      std::printf("tune-large %-20s M=%-5lld %-34s %-12s %9.2f us %7.0f TOP/s%s\n", L.name.c_str(),
                  static_cast<long long>(m), qserve::cuda::w4a8_sm90_variant_name(v),
                  status.c_str(), us, tops, v == dflt ? " (current)" : "");
      if (status == "ok" && us < best_us) {
        best_us = us;
        best = v;
      }
    }
    if (best_us < 1e29) {
      std::printf("BEST-LARGE %s M=%lld %s %.2f us\n", L.name.c_str(), static_cast<long long>(m),
                  qserve::cuda::w4a8_sm90_variant_name(best), best_us);
    }
    std::fflush(stdout);
  }
}

// ---------------------------------------------------------------------------------------------
// --tune-tile-order: the persistent large-M kernels' tile walk (gemm_sm90_tile_order.h)
// ---------------------------------------------------------------------------------------------

// Counts the 16-bit words that differ between a and b (outputs of up to 3.8 GB: compared on the
// device rather than copied to the host for every tile order).
__global__ void count_differences_kernel(const uint16_t* __restrict__ a,
                                         const uint16_t* __restrict__ b, size_t n,
                                         unsigned long long* count) {
  unsigned long long c = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    c += a[i] != b[i];
  if (c != 0) atomicAdd(count, c);
}

unsigned long long count_differences(const uint16_t* a, const uint16_t* b, size_t n,
                                     cudaStream_t s) {
  DeviceBuffer<unsigned long long> count(1);
  QSERVE_CUDA_CHECK(cudaMemsetAsync(count.data(), 0, sizeof(unsigned long long), s), "diff count");
  count_differences_kernel<<<1024, 256, 0, s>>>(a, b, n, count.data());
  QSERVE_CUDA_CHECK(cudaGetLastError(), "diff count launch");
  unsigned long long h = 0;
  QSERVE_CUDA_CHECK(cudaMemcpyAsync(&h, count.data(), sizeof(h), cudaMemcpyDeviceToHost, s),
                    "diff count");
  QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "diff count");
  return h;
}

// Times the W4A8 per-channel and the W8A8 large-M CUTLASS kernels under every CUTLASS tile order
// (raster along M / along N x max swizzle 1, 2, 4, 8, and CUTLASS's default) at each M of st.ms;
// each run's output is first compared bit for bit with the first W4A8 (or W8A8) run's. One JSON row
// per (kernel, M, order); prints the fastest per (kernel, M).
void tune_tile_order_layer(const Layer& L, const Operands& o, Timer& timer, const Settings& st,
                           cudaStream_t s, nlohmann::json& results) {
  using qserve::cuda::Sm90TileOrder;
  using Raster = Sm90TileOrder::Raster;
  std::vector<Sm90TileOrder> orders = {Sm90TileOrder{}};  // CUTLASS's default first
  for (const Raster r : {Raster::kAlongN, Raster::kAlongM})
    for (const int sw : {1, 2, 4, 8}) orders.push_back(Sm90TileOrder{sw, r});
  using qserve::cuda::W4A8Sm90Variant;
  using qserve::cuda::W8A8Sm90Variant;
  // The W4A8 kernel in its persistent variants for large M, then the W8A8 (and g128) ones: one
  // entry per kernel, with the variant of the family it belongs to (w4 says which).
  struct Kernel {
    std::string name;
    bool w4;
    W4A8Sm90Variant v4;
    W8A8Sm90Variant v8;
  };
  std::vector<Kernel> kernels;
  for (const W4A8Sm90Variant v :
       {W4A8Sm90Variant::kLargeM, W4A8Sm90Variant::kCoop256x128, W4A8Sm90Variant::kCoop128x256})
    kernels.push_back({std::string("w4a8_per_channel_") + qserve::cuda::w4a8_sm90_variant_name(v),
                       true, v, W8A8Sm90Variant::kAuto});
  for (const W8A8Sm90Variant v : {W8A8Sm90Variant::kLargeM, W8A8Sm90Variant::kCoop128x256})
    kernels.push_back({std::string("w8a8_") + qserve::cuda::w8a8_sm90_variant_name(v), false,
                       W4A8Sm90Variant::kAuto, v});
  for (const int64_t m : st.ms) {
    if (m < 1 || m > o.max_m) continue;
    const size_t yn = static_cast<size_t>(m * o.n);
    DeviceBuffer<uint16_t> want_w4, want_w8;  // the first output of each weight set, on device
    for (const Kernel& kn : kernels) {
      const char* kernel = kn.name.c_str();
      const bool w4 = kn.w4;
      const Sm90TileOrder chosen = w4 ? qserve::cuda::w4a8_sm90_tile_order(kn.v4)
                                      : qserve::cuda::w8a8_sm90_tile_order(kn.v8);
      const auto launch = [&](const Sm90TileOrder& ord) {
        const bool ok = w4 ? qserve::cuda::gemm_w4a8_per_channel_sm90(
                                 o.aq.data(), o.a_scale.data(), o.a_sum.data(), m, o.w4pc(),
                                 o.y16.data(), s, nullptr, kn.v4, &ord)
                           : qserve::cuda::gemm_w8a8_sm90(o.aq.data(), o.a_scale.data(), m, o.w8v(),
                                                          o.y16.data(), s, kn.v8, nullptr, &ord);
        if (!ok) throw qserve::Error("the sm90 kernel declined the operands");
      };
      DeviceBuffer<uint16_t>& want = w4 ? want_w4 : want_w8;
      double best_us = 1e30;
      std::string best;
      for (const Sm90TileOrder& ord : orders) {
        const std::string name =
            "s" + std::to_string(ord.swizzle) + "_" + qserve::cuda::sm90_raster_name(ord.raster);
        const bool is_chosen = ord.swizzle == chosen.swizzle && ord.raster == chosen.raster;
        std::string status = "ok";
        double us = 0;
        try {
          QSERVE_CUDA_CHECK(cudaMemsetAsync(o.y16.data(), 0xFF, yn * 2, s), "tile-order poison");
          launch(ord);
          QSERVE_CUDA_CHECK(cudaStreamSynchronize(s), "tile-order check run");
          if (want.data() == nullptr) {
            want = DeviceBuffer<uint16_t>(yn);
            QSERVE_CUDA_CHECK(
                cudaMemcpyAsync(want.data(), o.y16.data(), yn * 2, cudaMemcpyDeviceToDevice, s),
                "tile-order reference");
          } else if (count_differences(want.data(), o.y16.data(), yn, s) != 0) {
            status = "check_failed";
          }
          if (status == "ok") {
            const std::string e = timer.time(
                [&] {
                  launch(ord);
                  return std::string();
                },
                st.warmup, st.reps, &us);
            if (!e.empty()) status = "error";
          }
        } catch (const std::exception& e) {
          std::printf("TUNE ERROR %s M=%lld %s %s: %s\n", L.name.c_str(), static_cast<long long>(m),
                      kernel, name.c_str(), e.what());
          status = "error";
        }
        const double tops = status == "ok" ? 2.0 * m * L.n * L.k / (us * 1e-6) / 1e12 : 0.0;
        nlohmann::json r = {{"kernel", kernel},
                            {"shape", L.name},
                            {"M", m},
                            {"N", L.n},
                            {"K", L.k},
                            {"precision", w4 ? "w4a8" : "w8a8"},
                            {"system", "qserve.cpp"},
                            {"tile_order", name},
                            {"current_default", is_chosen},
                            {"status", status}};
        r["us"] = status == "ok" ? nlohmann::json(us) : nlohmann::json(nullptr);
        r["tops"] = status == "ok" ? nlohmann::json(tops) : nlohmann::json(nullptr);
        results.push_back(r);
        std::printf("tile-order %-8s M=%-6lld %-22s %-14s %-12s %10.2f us %7.0f TOP/s%s\n",
                    L.name.c_str(), static_cast<long long>(m), kernel, name.c_str(), status.c_str(),
                    us, tops, is_chosen ? " (current)" : "");
        if (status == "ok" && us < best_us) {
          best_us = us;
          best = name;
        }
      }
      if (best_us < 1e29)
        std::printf("BEST-ORDER %s M=%lld %s %s %.2f us\n", L.name.c_str(),
                    static_cast<long long>(m), kernel, best.c_str(), best_us);
      std::fflush(stdout);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

std::vector<int64_t> parse_ints(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) v.push_back(std::stoll(item));
  }
  return v;
}
std::vector<std::string> parse_strs(const std::string& s) {
  std::vector<std::string> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) v.push_back(item);
  }
  return v;
}

void usage() {
  std::printf(
      "usage: bench_gemm [--check] [--quick] [--json PATH] [--m 1,16,...] "
      "[--shapes qkv,o,gate_up,down] [--reps N] [--warmup N] [--no-flush] [--flush-write]\n"
      "  --flush-write  flush L2 by overwriting 256 MB (default: by reading it; see Timer)\n"
      "  --check   verify our kernels bit-exactly (CPU / cuBLASLt int8) before timing\n"
      "  --quick   M in {1, 64, 256, 4096}, 10 reps, 3 warm-ups\n"
      "  --shapes models  the linears of QServe's model set (llama-2-7b.qkv, ..., "
      "qwen1.5-72b.down)\n"
      "  --tune-small-m [--tune-out FILE]  time every launch configuration of the small-M W4A8\n"
      "            kernel (M = 8/16/32/64, per-channel and g128; each checked bit-exact first)\n"
      "            and write the fastest per case as "
      "src/backend/cuda/gemm_w4a8_small_m_tuned.inc\n"
      "  --floor   per shape: an empty launch and HBM reads of the packed 4-bit weights, timed\n"
      "            like the kernels (what a small-M GEMM cannot beat in this harness)\n"
      "  --tune-large-m  every large-M per-channel W4A8 CUTLASS variant at M = 65..4096\n"
      "  --tune-tile-order  the W4A8 and W8A8 large-M kernels under every CUTLASS tile order\n"
      "            (raster x swizzle; default M = 4096, 16384, 65536), each checked bit-exact\n");
}

// True if the CUDA context still works after an error (a sticky error kills it).
bool context_alive() {
  (void)cudaGetLastError();
  void* p = nullptr;
  if (cudaMalloc(&p, 256) != cudaSuccess) return false;
  const bool ok = cudaMemset(p, 0, 256) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess;
  cudaFree(p);
  return ok;
}

std::string fmt(double v, const char* f) {
  char b[64];
  std::snprintf(b, sizeof(b), f, v);
  return b;
}

int run(int argc, char** argv) {
  Settings st;
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  bool reps_set = false, warm_set = false, ms_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw qserve::Error("bench_gemm: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--check")
      st.check = true;
    else if (a == "--quick")
      st.quick = true;
    else if (a == "--no-flush")
      st.flush = false;
    else if (a == "--flush-write")
      st.flush_write = true;
    else if (a == "--json")
      st.json_path = next();
    else if (a == "--m") {
      st.ms = parse_ints(next());
      ms_set = true;
    } else if (a == "--shapes")
      st.shapes = parse_strs(next());
    else if (a == "--reps") {
      st.reps = std::stoi(next());
      reps_set = true;
    } else if (a == "--warmup") {
      st.warmup = std::stoi(next());
      warm_set = true;
    } else if (a == "--tune-small-m")
      st.tune_small_m = true;
    else if (a == "--floor")
      st.floor = true;
    else if (a == "--tune-large-m")
      st.tune_large_m = true;
    else if (a == "--tune-tile-order")
      st.tune_tile_order = true;
    else if (a == "--tune-out")
      st.tune_out = next();
    else if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else {
      usage();
      throw qserve::Error("bench_gemm: unknown argument " + a);
    }
  }
  if (st.quick) {
    if (!ms_set) st.ms = {1, 64, 256, 4096};
    if (!reps_set) st.reps = 10;
    if (!warm_set) st.warmup = 3;
  }
  if (st.reps < 1 || st.warmup < 0 || st.ms.empty())
    throw qserve::Error("bench_gemm: bad settings");

  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::printf("bench_gemm: no CUDA device visible; nothing to measure\n");
    return 1;
  }
  cudaDeviceProp prop{};
  QSERVE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0), "bench device");
  const std::string device = std::string(prop.name) + " (cc " + std::to_string(prop.major) + "." +
                             std::to_string(prop.minor) + ", " +
                             std::to_string(prop.multiProcessorCount) + " SMs)";
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::printf("bench_gemm: %s, commit %s, %s\n", device.c_str(), QSERVE_GIT_COMMIT, date);
  std::printf("settings: reps=%d warmup=%d l2_flush=%s check=%s sm90_w8a8_compiled=%s\n", st.reps,
              st.warmup, st.flush ? (st.flush_write ? "write" : "read") : "off",
              st.check ? "on" : "off", qserve::cuda::w8a8_sm90_compiled() ? "yes" : "no");

  std::vector<Layer> all_layers = {
      {"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096}, {"down", 4096, 14336}};
  // The linears of QServe's README model set (fused qkv and gate_up, head_dim 128), for tuning
  // and reports beyond Llama-3-8B: `--shapes models` selects all of them (Mistral-7B's equal
  // Llama-3-8B's), `--shapes llama-2-70b.down,...` single ones.
  struct ModelDims {
    const char* name;
    int64_t hidden, inter, heads, kv_heads;
  };
  const ModelDims model_dims[] = {
      {"llama-2-7b", 4096, 11008, 32, 32}, {"llama-2-13b", 5120, 13824, 40, 40},
      {"llama-30b", 6656, 17920, 52, 52},  {"yi-34b", 7168, 20480, 56, 8},
      {"llama-2-70b", 8192, 28672, 64, 8}, {"qwen1.5-72b", 8192, 24576, 64, 64}};
  std::vector<std::string> model_layer_names;
  for (const ModelDims& d : model_dims) {
    const std::string p = std::string(d.name) + ".";
    const Layer ls[] = {{p + "qkv", (d.heads + 2 * d.kv_heads) * 128, d.hidden},
                        {p + "o", d.hidden, d.hidden},
                        {p + "gate_up", 2 * d.inter, d.hidden},
                        {p + "down", d.hidden, d.inter}};
    for (const Layer& l : ls) {
      all_layers.push_back(l);
      model_layer_names.push_back(l.name);
    }
  }
  if (st.shapes.size() == 1 && st.shapes[0] == "models") st.shapes = model_layer_names;
  if (st.tune_small_m) st.ms = {64};
  if (st.floor) st.ms = {1};
  if (st.tune_large_m && !ms_set) st.ms = {65, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096};
  if (st.tune_tile_order && !ms_set) st.ms = {4096, 16384, 65536};
  const int64_t max_m = *std::max_element(st.ms.begin(), st.ms.end());
  const int64_t alloc_m = st.check ? std::max<int64_t>(max_m, 133) : max_m;

  qserve::cuda::Stream stream;
  LtPeers lt;
  Timer timer(stream, st.flush, st.flush_write);
  nlohmann::json results = nlohmann::json::array();
  bool dead = false;
  std::vector<std::string> tuned_lines;
  const auto t0 = std::chrono::steady_clock::now();

  for (const std::string& want : st.shapes) {
    const auto it = std::find_if(all_layers.begin(), all_layers.end(),
                                 [&](const Layer& l) { return l.name == want; });
    if (it == all_layers.end()) {
      std::printf("skip: unknown shape '%s' (qkv, o, gate_up, down, MODEL.LAYER, models)\n",
                  want.c_str());
      continue;
    }
    const Layer& L = *it;
    std::optional<Operands> ops;
    try {
      ops.emplace(make_operands(L.n, L.k, alloc_m, 1000 * static_cast<uint64_t>(L.n) + L.k));
    } catch (const std::exception& e) {
      std::printf("ERROR %s: allocating/generating operands failed: %s\n", L.name.c_str(),
                  e.what());
      if (!context_alive()) {
        dead = true;
        break;
      }
      continue;
    }
    const Operands& o = *ops;
    if (st.tune_tile_order) {
      try {
        tune_tile_order_layer(L, o, timer, st, stream, results);
      } catch (const std::exception& e) {
        std::printf("ERROR %s: tile-order tuning failed: %s\n", L.name.c_str(), e.what());
        if (!context_alive()) {
          dead = true;
          break;
        }
      }
      continue;
    }
    if (st.tune_large_m) {
      try {
        tune_large_m_layer(L, o, timer, st, stream, results);
      } catch (const std::exception& e) {
        std::printf("ERROR %s: large-M tuning failed: %s\n", L.name.c_str(), e.what());
        if (!context_alive()) {
          dead = true;
          break;
        }
      }
      continue;
    }
    if (st.floor) {
      floor_layer(L, o, timer, st, stream, results);
      continue;
    }
    if (st.tune_small_m) {
      try {
        for (std::string& l : tune_layer(L, o, timer, st, stream, results))
          tuned_lines.push_back(std::move(l));
      } catch (const std::exception& e) {
        std::printf("ERROR %s: tuning failed: %s\n", L.name.c_str(), e.what());
        if (!context_alive()) {
          dead = true;
          break;
        }
      }
      continue;
    }
    std::map<Ours, bool> passed = {
        {Ours::kW4PerChannel, true}, {Ours::kW4G128, true}, {Ours::kW8A8, true}};
    if (st.check) {
      passed = check_layer(L, o, lt, stream);
      if (!context_alive()) {
        std::printf("FATAL: the CUDA context died during the checks of %s\n", L.name.c_str());
        dead = true;
        break;
      }
    }

    std::printf("\n%-8s %5s %-22s %-38s %10s %9s %8s %8s %8s %8s\n", "shape", "M", "kernel", "path",
                "us", "TOP/s", "TB/s", "xbf16", "xfp8", "xint8");
    for (const int64_t m : st.ms) {
      if (m < 1) continue;
      std::map<Peer, double> peer_us;
      std::vector<nlohmann::json> rows;
      const auto record = [&](const std::string& kernel, const std::string& precision,
                              const std::string& system, const std::string& path,
                              const std::string& status, double us) {
        nlohmann::json r = {{"kernel", kernel}, {"shape", L.name}, {"M", m},
                            {"N", L.n},         {"K", L.k},        {"precision", precision},
                            {"system", system}, {"path", path},    {"status", status}};
        if (status == "ok") {
          const double ops2 = 2.0 * m * L.n * L.k;
          r["us"] = us;
          r["tops"] = ops2 / (us * 1e-6) / 1e12;
          r["tbps"] = traffic_bytes(precision, m, L.n, L.k) / (us * 1e-6) / 1e12;
        } else {
          r["us"] = nullptr;
          r["tops"] = nullptr;
          r["tbps"] = nullptr;
        }
        rows.push_back(r);
      };
      // Peers first, so the ratios can be printed with our rows.
      for (const Peer p : {Peer::kBf16, Peer::kFp8, Peer::kInt8}) {
        if (dead) break;
        double us = 0;
        std::string status = "ok", err;
        try {
          const void* x = p == Peer::kBf16  ? static_cast<const void*>(o.x_bf16.data())
                          : p == Peer::kFp8 ? static_cast<const void*>(o.x_fp8.data())
                                            : static_cast<const void*>(o.aq.data());
          const void* w = p == Peer::kBf16  ? static_cast<const void*>(o.w_bf16.data())
                          : p == Peer::kFp8 ? static_cast<const void*>(o.w_fp8.data())
                                            : static_cast<const void*>(o.w8.data());
          void* y = p == Peer::kInt8 ? static_cast<void*>(o.y32.data())
                                     : static_cast<void*>(o.y16.data());
          err = timer.time([&] { return lt.run(p, x, w, y, m, L.n, L.k, stream); }, st.warmup,
                           st.reps, &us);
          if (!err.empty()) status = "n/a";
        } catch (const std::exception& e) {
          status = "error";
          err = e.what();
        }
        if (status == "ok")
          peer_us[p] = us;
        else
          std::printf("%-8s %5lld %-22s %s: %s\n", L.name.c_str(), static_cast<long long>(m),
                      peer_kernel(p), status == "n/a" ? "n/a" : "ERROR", err.c_str());
        record(peer_kernel(p), peer_precision(p), "cublaslt", "cublasLt heuristic", status, us);
        if (status == "error" && !context_alive()) dead = true;
      }
      for (const Ours kind : {Ours::kW4PerChannel, Ours::kW4G128, Ours::kW8A8}) {
        if (dead) break;
        const std::string path = ours_path(kind, o, m);
        if (!passed[kind]) {
          std::printf("%-8s %5lld %-22s not timed: failed --check\n", L.name.c_str(),
                      static_cast<long long>(m), ours_kernel(kind));
          record(ours_kernel(kind), ours_precision(kind), "qserve.cpp", path, "check_failed", 0);
          continue;
        }
        double us = 0;
        std::string status = "ok";
        try {
          const std::string e = timer.time(
              [&] {
                run_ours(kind, o, m, o.y16.data(), stream);
                return std::string();
              },
              st.warmup, st.reps, &us);
          if (!e.empty()) status = "error";
        } catch (const std::exception& e) {
          std::printf("%-8s %5lld %-22s ERROR: %s\n", L.name.c_str(), static_cast<long long>(m),
                      ours_kernel(kind), e.what());
          status = "error";
        }
        record(ours_kernel(kind), ours_precision(kind), "qserve.cpp", path, status, us);
        if (status != "ok") {
          if (!context_alive()) dead = true;
          continue;
        }
        const auto ratio = [&](Peer p) {
          const auto f = peer_us.find(p);
          return f == peer_us.end() ? std::string("n/a") : fmt(f->second / us, "%.2f");
        };
        rows.back()["vs_cublaslt_bf16"] = peer_us.count(Peer::kBf16)
                                              ? nlohmann::json(peer_us[Peer::kBf16] / us)
                                              : nlohmann::json(nullptr);
        rows.back()["vs_cublaslt_fp8_e4m3"] = peer_us.count(Peer::kFp8)
                                                  ? nlohmann::json(peer_us[Peer::kFp8] / us)
                                                  : nlohmann::json(nullptr);
        rows.back()["vs_cublaslt_int8"] = peer_us.count(Peer::kInt8)
                                              ? nlohmann::json(peer_us[Peer::kInt8] / us)
                                              : nlohmann::json(nullptr);
        const nlohmann::json& r = rows.back();
        std::printf("%-8s %5lld %-22s %-38s %10.1f %9.1f %8.3f %8s %8s %8s\n", L.name.c_str(),
                    static_cast<long long>(m), ours_kernel(kind), path.c_str(), us,
                    r["tops"].get<double>(), r["tbps"].get<double>(), ratio(Peer::kBf16).c_str(),
                    ratio(Peer::kFp8).c_str(), ratio(Peer::kInt8).c_str());
      }
      for (const nlohmann::json& r : rows) {
        if (r["system"] == "cublaslt" && r["status"] == "ok") {
          std::printf("%-8s %5lld %-22s %-38s %10.1f %9.1f %8.3f\n", L.name.c_str(),
                      static_cast<long long>(m), r["kernel"].get<std::string>().c_str(),
                      r["path"].get<std::string>().c_str(), r["us"].get<double>(),
                      r["tops"].get<double>(), r["tbps"].get<double>());
        }
        results.push_back(r);
      }
      std::fflush(stdout);
      if (dead) break;
    }
    if (dead) {
      std::printf(
          "FATAL: the CUDA context is unusable (sticky error); stopping, results so far "
          "are kept\n");
      break;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\nbench_gemm: %zu results in %.1f s\n", results.size(), secs);

  if (st.tune_small_m && !st.tune_out.empty()) {
    std::ofstream f(st.tune_out);
    f << "// Tuned launch configurations of the small-M W4A8 kernel (gemm_w4a8_fast.cu), one line "
         "per\n"
         "// {g128, token tiles (1: M <= 8, 2: <= 16, 4: <= 32, 8: <= 64), n, k, row tiles per "
         "warp,\n"
         "// K blocks in flight, splits, wgmma, ktile}. Generated by `bench_gemm --tune-small-m "
         "--tune-out FILE`\n"
         "// (median of "
      << st.reps
      << " runs, L2 flushed, each configuration checked bit-exact first)\n"
         "// on "
      << device << ", commit " << QSERVE_GIT_COMMIT << ", " << date
      << ".\n"
         "// Shapes not listed use the heuristic default. Regenerate on a new GPU.\n";
    for (const std::string& l : tuned_lines) f << l << "\n";
    if (!f) {
      std::printf("ERROR: could not write %s\n", st.tune_out.c_str());
      return 1;
    }
    std::printf("wrote %s (%zu entries)\n", st.tune_out.c_str(), tuned_lines.size());
  }
  if (!st.json_path.empty()) {
    nlohmann::json doc = {
        {"device", device},
        {"commit", QSERVE_GIT_COMMIT},
        {"date", date},
        {"command", command},
        {"settings",
         {{"reps", st.reps},
          {"warmup", st.warmup},
          {"l2_flush", st.flush},
          {"l2_flush_mode", st.flush ? (st.flush_write ? "write (memset)" : "read") : "off"},
          {"check", st.check},
          {"sm90_w8a8_compiled", qserve::cuda::w8a8_sm90_compiled()},
          {"statistic", "median of reps, CUDA events"},
          {"tbps_bytes",
           "nominal: format's weight bytes (W4 = 0.5 B/weight, + scales) + "
           "activation bytes (+ scales); outputs not counted"},
          {"ratios", "vs_*: peer_us / our_us (> 1: ours faster)"}}},
        {"results", results}};
    std::ofstream f(st.json_path);
    f << doc.dump(2) << "\n";
    if (!f) {
      std::printf("ERROR: could not write %s\n", st.json_path.c_str());
      return 1;
    }
    std::printf("wrote %s\n", st.json_path.c_str());
  }
  return dead ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::printf("bench_gemm: error: %s\n", e.what());
    return 1;
  }
}
