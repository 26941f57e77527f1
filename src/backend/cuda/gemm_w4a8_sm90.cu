// The large-M per-channel W4A8 GEMM on Hopper (gemm_w4a8_fast.h): CUTLASS 3 wgmma kernels
// (kLargeM: gemm_w8a8_sm90.cu's 128x128x128 tiles, 2x1 cluster, ping-pong, persistent; for
// M of a few hundred tokens, where 128x128 tiles leave ping-pong's second consumer warp group
// without a tile or the last wave part-empty, a 64-row ping-pong and a swapped
// stream-K variant: W4A8Sm90Variant) run on the 1-byte codes Q (0..15 are valid int8 values,
// so the natural q array is directly the weight operand), with QServe's per-channel epilogue as an
// epilogue visitor tree:
//
//   scaled_acc = float_RN(acc) * float(s1[n])                  (fp32 RN)
//   zero_term  = float(s1_szeros[n]) * float(a_sum[m])         (fp32 RN)
//   y          = fp16_RN( fma_RN(float(a_scale[m]), scaled_acc, -zero_term) )
//
// which is quant::w4a8_per_channel_output's operation sequence: the two products are separate
// multiplies nodes (rounded, nothing to contract them into), the FMA is an explicit __fmaf_rn.
// The int32 accumulators are exact, so y is bit-identical to the CPU reference.
#include <cuda_runtime.h>

#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/env_override.h"
#include "backend/cuda/gemm_sm90_tile_order.h"
#include "backend/cuda/gemm_w4a8_fast.h"
#include "backend/cuda/pdl.h"

#if defined(QSERVE_HAVE_CUTLASS)
// Programmatic dependent launch (pdl.h): CUTLASS_GDC_ENABLED compiles the kernels' waits
// (griddepcontrol.wait before the producers' first loads), so they may be launched while the
// kernel before them finishes. Not CUTLASS_ENABLE_GDC_FOR_SM90, which would also let the next
// kernel launch from their last tile: with it, CUTLASS 4.2's stream-K scheduler does not
// compile (is_last_tile, a const member, passes a member to a non-const reference).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CUTLASS_GDC_ENABLED 1
#endif
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/kernel_hardware_info.h"
#endif

namespace qserve::cuda {

#if defined(QSERVE_HAVE_CUTLASS)

namespace {

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

struct Sm90Info {
  bool sm90 = false;
  int sm_count = 0;
};

Sm90Info device_info(int dev) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<int, Sm90Info>();  // never freed (teardown order)
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(dev);
  if (it != cache->end()) return it->second;
  Sm90Info info;
  int major = 0, minor = 0, sms = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess) {
    info.sm90 = major == 9 && minor == 0;  // sm_90a code runs on 9.0 only
    info.sm_count = sms;
  } else {
    (void)cudaGetLastError();
  }
  (*cache)[dev] = info;
  return info;
}

}  // namespace

namespace {

using namespace cute;  // NOLINT: CuTe's shape literals (_128, ...) are the idiom

std::string shape(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
}

using ElementAB = int8_t;
using ElementAcc = int32_t;
using ElementCompute = float;
using ElementOut = cutlass::half_t;
using ElementScale = cutlass::half_t;
constexpr int kAlignAB = 16;
constexpr int kAlignOut = 8;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// fma_RN(a, b, -c), element-wise. Sm90Compute instantiates ComputeFn<Array<float, N>> for the
// fragments (and ComputeFn<float> only to look for an Arguments member).
template <class T>
struct FmaNegC {
  CUTLASS_DEVICE T operator()(T const& a, T const& b, T const& c) const {
    return __fmaf_rn(a, b, -c);
  }
};
template <int N>
struct FmaNegC<cutlass::Array<float, N>> {
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& a,
                                                     cutlass::Array<float, N> const& b,
                                                     cutlass::Array<float, N> const& c) const {
    cutlass::Array<float, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = __fmaf_rn(a[i], b[i], -c[i]);
    return r;
  }
};

// The epilogue tree. Without kSwap the GEMM is y = aq * W^T (M = tokens, N = channels): channel
// vectors are row broadcasts, token vectors column broadcasts. With kSwap it is y^T = W * aq^T
// (M = channels, N = tokens) and the roles swap. Token vectors are read element-wise (alignment
// 1: M need not be a multiple of 8); channel vectors as 8-wide rows when they are row
// broadcasts (N % 8 == 0 is required anyway).
template <typename TileShape, bool kSwap>
struct PerChannelEvt {
  using RowB =
      cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, ElementScale, ElementCompute,
                                                  Stride<_0, _1, _0>, kSwap ? 1 : 8>;
  using ColB = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, ElementScale,
                                                           ElementCompute, Stride<_1, _0, _0>, 1>;
  using ChanVec = std::conditional_t<kSwap, ColB, RowB>;
  using TokVec = std::conditional_t<kSwap, RowB, ColB>;
  using Mul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementCompute,
                                                     ElementCompute, kRound>;
  using ScaledAcc =
      cutlass::epilogue::fusion::Sm90EVT<Mul, cutlass::epilogue::fusion::Sm90AccFetch, ChanVec>;
  using ZeroTerm = cutlass::epilogue::fusion::Sm90EVT<Mul, ChanVec, TokVec>;
  using Out = cutlass::epilogue::fusion::Sm90Compute<FmaNegC, ElementOut, ElementCompute, kRound>;
  using Tree = cutlass::epilogue::fusion::Sm90EVT<Out, TokVec, ScaledAcc, ZeroTerm>;

  static typename Tree::Arguments args(const uint16_t* a_scale, const uint16_t* a_sum,
                                       const uint16_t* s1, const uint16_t* s1_szeros) {
    auto h = [](const uint16_t* p) { return reinterpret_cast<const ElementScale*>(p); };
    return typename Tree::Arguments{{h(a_scale), ElementScale(0), {}},     // TokVec a_scale
                                    {                                      // ScaledAcc
                                     {},                                   //   AccFetch
                                     {h(s1), ElementScale(0), {}},         //   ChanVec s1
                                     {}},                                  //   Mul
                                    {                                      // ZeroTerm
                                     {h(s1_szeros), ElementScale(0), {}},  // ChanVec s1_szeros
                                     {h(a_sum), ElementScale(0), {}},      // TokVec a_sum
                                     {}},                                  // Mul
                                    {}};                                   // Out
  }
};

// One CUTLASS instantiation. kSwap: A = W, B = aq, D = y^T (column-major channels x tokens,
// which is y row-major).
template <typename TileShape, typename ClusterShape, typename KernelSchedule,
          typename EpilogueSchedule, typename TileScheduler, bool kSwap_>
struct Config {
  static constexpr bool kSwap = kSwap_;
  using Evt = PerChannelEvt<TileShape, kSwap>;
  using LayoutD =
      std::conditional_t<kSwap, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute, void, LayoutD,
      kAlignOut, ElementOut, LayoutD, kAlignOut, EpilogueSchedule,
      typename Evt::Tree>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, cutlass::layout::RowMajor,
      kAlignAB, ElementAB, cutlass::layout::ColumnMajor, kAlignAB, ElementAcc, TileShape,
      ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// The variants (gemm_w4a8_fast.h, W4A8Sm90Variant).
using LargeM =
    Config<Shape<_128, _128, _128>, Shape<_2, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized,
           cutlass::gemm::PersistentScheduler, false>;
using Pingpong64 =
    Config<Shape<_64, _128, _128>, Shape<_2, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized,
           cutlass::gemm::PersistentScheduler, false>;
using SwapStreamK =
    Config<Shape<_128, _64, _128>, Shape<_1, _1, _1>,
           cutlass::gemm::KernelTmaWarpSpecializedCooperative,
           cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler, true>;

using Coop256x128 = Config<
    Shape<_256, _128, _128>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
    cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::PersistentScheduler, false>;
using Coop128x256 = Config<
    Shape<_128, _256, _128>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
    cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::PersistentScheduler, false>;
using Coop128x192 = Config<
    Shape<_128, _192, _128>, Shape<_2, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
    cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::PersistentScheduler, false>;
using CoopStreamK = Config<
    Shape<_128, _128, _128>, Shape<_1, _1, _1>, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
    cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler, false>;

template <typename Stride>
Stride packed_stride(int rows, int cols) {
  Stride s{};
  if constexpr (cute::is_static_v<decltype(cute::get<1>(Stride{}))>) {  // row-major
    cute::get<0>(s) = static_cast<int64_t>(cols);
  } else {  // column-major
    cute::get<1>(s) = static_cast<int64_t>(rows);
  }
  cute::get<2>(s) = static_cast<int64_t>(rows) * cols;
  return s;
}

// Grow-only device workspace per device (the persistent scheduler's, usually 0 bytes). Growing
// synchronizes the device first, so no in-flight kernel still uses the old block.
void* workspace(size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  static std::mutex mu;
  static auto* buffers = new std::unordered_map<int, DeviceBuffer<uint8_t>>();  // never freed
  std::lock_guard<std::mutex> lock(mu);
  DeviceBuffer<uint8_t>& b = (*buffers)[device];
  if (b.bytes() < bytes) {
    cuda_check(cudaDeviceSynchronize(), "gemm_w4a8_per_channel_sm90 workspace",
               "bytes=" + std::to_string(bytes));
    b = DeviceBuffer<uint8_t>(bytes);
  }
  return b.data();
}

}  // namespace

#endif  // QSERVE_HAVE_CUTLASS

bool w4a8_per_channel_sm90_applicable(const int8_t* aq, const uint16_t* a_scale,
                                      const uint16_t* a_sum, int64_t m, const W4PerChannelView& w,
                                      const uint16_t* y) {
#if !defined(QSERVE_HAVE_CUTLASS)
  (void)aq, (void)a_scale, (void)a_sum, (void)m, (void)w, (void)y;
  return false;
#else
  if (m < 1 || w.n < 8 || w.k < 16 || w.n % 8 != 0 || w.k % 16 != 0) return false;
  // The CPU reference's exact-int32 bound for codes 0..15, and int problem sizes.
  if (w.k > (int64_t{1} << 31) / (128 * 15) - 1 || w.n > (int64_t{1} << 30) ||
      m > (int64_t{1} << 30))
    return false;
  if (aq == nullptr || a_scale == nullptr || a_sum == nullptr || w.q == nullptr ||
      w.s1_scales == nullptr || w.s1_szeros == nullptr || y == nullptr)
    return false;
  // TMA bases, and the row-broadcast vectors (read with 8-wide vectors).
  if (!aligned16(aq) || !aligned16(w.q) || !aligned16(y) || !aligned16(w.s1_scales) ||
      !aligned16(w.s1_szeros))
    return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return device_info(dev).sm90;
#endif
}

#if defined(QSERVE_HAVE_CUTLASS)
namespace {

// The CUTLASS arguments, shared by the launch and the workspace query so both size alike.
template <typename Cfg>
typename Cfg::Gemm::Arguments make_args(const int8_t* aq, const uint16_t* a_scale,
                                        const uint16_t* a_sum, int64_t m, const W4PerChannelView& w,
                                        uint16_t* y, int device, const Sm90TileOrder& order) {
  using Kernel = typename Cfg::Kernel;
  using StrideA = typename Kernel::StrideA;
  using StrideB = typename Kernel::StrideB;
  using StrideC = typename Kernel::StrideC;
  using StrideD = typename Kernel::StrideD;
  // kSwap: GEMM M = channels (A = W), N = tokens (B = aq).
  const int tok = static_cast<int>(m), ch = static_cast<int>(w.n), gk = static_cast<int>(w.k);
  const int gm = Cfg::kSwap ? ch : tok, gn = Cfg::kSwap ? tok : ch;
  const auto* wq = reinterpret_cast<const int8_t*>(w.q);
  cutlass::KernelHardwareInfo hw;
  hw.device_id = device;
  hw.sm_count = device_info(device).sm_count;
  typename Cfg::Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {gm, gn, gk, 1},
      {Cfg::kSwap ? wq : aq, packed_stride<StrideA>(gm, gk), Cfg::kSwap ? aq : wq,
       packed_stride<StrideB>(gn, gk)},
      {Cfg::Evt::args(a_scale, a_sum, w.s1_scales, w.s1_szeros), nullptr,
       packed_stride<StrideC>(gm, gn), reinterpret_cast<ElementOut*>(y),
       packed_stride<StrideD>(gm, gn)},
      hw};
  set_tile_order(args.scheduler, order);
  return args;
}

template <typename Cfg>
size_t config_workspace_bytes(int64_t m, int64_t n, int64_t k, int device) {
  const W4PerChannelView w{n, k, nullptr, nullptr, nullptr, nullptr};
  return Cfg::Gemm::get_workspace_size(
      make_args<Cfg>(nullptr, nullptr, nullptr, m, w, nullptr, device, Sm90TileOrder{}));
}

// Runs one configuration; `user_ws` (may be null) replaces the grow-only workspace.
template <typename Cfg>
bool run_config(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum, int64_t m,
                const W4PerChannelView& w, uint16_t* y, cudaStream_t stream, int device,
                const GemmWorkspace* user_ws, W4A8Sm90Variant v, const Sm90TileOrder& order) {
  using Gemm = typename Cfg::Gemm;
  const typename Gemm::Arguments args = make_args<Cfg>(aq, a_scale, a_sum, m, w, y, device, order);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  const size_t ws_bytes = Gemm::get_workspace_size(args);
  const std::string detail = shape(m, w.n, w.k) + " variant=" + w4a8_sm90_variant_name(v) +
                             " swizzle=" + std::to_string(order.swizzle) +
                             " raster=" + sm90_raster_name(order.raster);
  void* ws = nullptr;
  if (user_ws != nullptr) {
    check(ws_bytes == 0 || (user_ws->data != nullptr && user_ws->bytes >= ws_bytes),
          "gemm_w4a8_per_channel_sm90: caller workspace of " + std::to_string(user_ws->bytes) +
              " bytes, need " + std::to_string(ws_bytes) + " (" + detail + ")");
    ws = ws_bytes == 0 ? nullptr : user_ws->data;
  } else {
    ws = workspace(ws_bytes, device);
  }
  const cutlass::Status init = gemm.initialize(args, ws, stream);
  check(init == cutlass::Status::kSuccess, "gemm_w4a8_per_channel_sm90: initialize failed (" +
                                               detail + "): " + cutlassGetStatusString(init));
  const cutlass::Status run = gemm.run(stream, /*cuda_adapter=*/nullptr, pdl_enabled());
  check(run == cutlass::Status::kSuccess, "gemm_w4a8_per_channel_sm90: launch failed (" + detail +
                                              "): " + cutlassGetStatusString(run));
  check_launch("gemm_w4a8_per_channel_sm90", detail);
  return true;
}

}  // namespace
#endif  // QSERVE_HAVE_CUTLASS

const char* w4a8_sm90_variant_name(W4A8Sm90Variant v) {
  switch (v) {
    case W4A8Sm90Variant::kAuto:
      return "auto";
    case W4A8Sm90Variant::kLargeM:
      return "sm90_128x128x128_pingpong_2x1";
    case W4A8Sm90Variant::kPingpong64:
      return "sm90_64x128x128_pingpong_2x1";
    case W4A8Sm90Variant::kSwapStreamK:
      return "sm90_swapab_128x64x128_streamk";
    case W4A8Sm90Variant::kCoop256x128:
      return "sm90_256x128x128_coop_2x1";
    case W4A8Sm90Variant::kCoop128x256:
      return "sm90_128x256x128_coop_2x1";
    case W4A8Sm90Variant::kCoop128x192:
      return "sm90_128x192x128_coop_2x1";
    case W4A8Sm90Variant::kCoopStreamK:
      return "sm90_128x128x128_coop_streamk";
  }
  return "?";
}

W4A8Sm90Variant w4a8_sm90_variant_from_name(const std::string& name) {
  std::string names;
  for (const W4A8Sm90Variant v : kW4A8Sm90Variants) {
    if (name == w4a8_sm90_variant_name(v)) return v;
    names += std::string(names.empty() ? "" : ", ") + w4a8_sm90_variant_name(v);
  }
  throw Error("unknown W4A8 sm90 variant '" + name + "' (expected one of: " + names + ")");
}

namespace {

// QSERVE_W4A8_SM90_LARGE=<variant name> (w4a8_sm90_variant_name, e.g.
// sm90_256x128x128_coop_2x1) replaces the kernel for M >= 4096 in the whole process: for
// end-to-end A/B runs (bench_gemm times single GEMMs). Read once; an unknown name is an error.
std::optional<W4A8Sm90Variant> large_m_env_override() {
  static const std::optional<W4A8Sm90Variant> cached =
      env_override("QSERVE_W4A8_SM90_LARGE", w4a8_sm90_variant_from_name);
  return cached;
}

}  // namespace

// From bench_gemm --tune-large-m on the H200 (bench/results/2026-11-30-gemm-large-m-tune-h200.json,
// Llama-3-8B shapes, M = 65..4096):
//  - The 2x1 clusters pair M tiles: an odd count of them (M = 384 with 128-row tiles, M = 192
//    with 64-row ones) leaves half a cluster idle and costs up to 1.4x; avoid odd counts.
//  - M >= 512: the 128x128 ping-pong kernel wins on every shape (64-row tiles lose 10-30% once
//    every SM has two tiles).
//  - M < 512, K >= 2N (down): the swapped stream-K kernel (the long K split over the SMs) wins
//    up to 1.5x (M = 256: 28.0 vs 40.4 us).
//  - M < 512 otherwise: 64-row ping-pong tiles (twice the tiles, both consumer warp groups busy):
//    o M = 256 12.5 vs 17.2 us, gate_up M = 128 37.0 vs 63.9 us; within 5% of the best at
//    M = 256 on qkv and gate_up; with an odd count of 64-row tiles the swapped kernel.
//  - 129..256 tokens on 70B-class linears (N and K >= 8192, 67-470 MB of 1-byte codes): the
//    128x128 kernel. One 2x1 cluster of 128-row tiles covers all the tokens, so each weight tile
//    is read from HBM once (multicast) while the 64-row and swapped kernels read it several
//    times, and at these sizes the weight stream is the bound. bench_gemm --tune-large-m
//    --shapes llama-2-70b.* (2026-11-30-gemm-large-m-tune-70b-h200-s5.json), M = 240, us,
//    128x128 / 64-row / swapped: qkv 46.7 / 46.9 / 46.1, o 28.1 / 35.3 / 33.3, gate_up 158.7 /
//    217.7 / 204.3, down 77.7 / 106.7 / 92.9. From 257 tokens every variant reads the weights
//    at least twice (M = 263: gate_up 524 / 433 / 397 us); the swapped kernel stays best there.
//  - M >= 32768 (the engine's prefill steps of ~64k rows): the 128x256 cooperative kernel with
//    8-wide swizzled tiles walking along N (w4a8_sm90_tile_order). End to end (b512, 1024-token
//    prompts, one device call, alternating): prefill 7.17 / 7.23 s with the 128x128 kernel,
//    7.24 / 7.36 s with only the 8-wide swizzle, 6.79 s with 256x128 tiles, 6.59 s with
//    128x256 (-8.5%). Single-GEMM timings at these sizes (bench_gemm --tune-tile-order) move by
//    up to 20% with the GPU's power state between runs of identical configurations, so the rule
//    follows the sustained end-to-end figure; 4k-16k rows stay on the 128x128 kernel (mixed
//    single-GEMM results: 128x256 faster on gate_up / down, slower on qkv / o at 16k).
//  - 257..1023 tokens where 128x128 tiles need more than one wave on the SMs and 128x192 tiles
//    fit in one: the 128x192 cooperative kernel (seventh session, bench_gemm --tune-large-m
//    --m 256,384,512,768,1024, 2026-11-30-gemm-large-m-tune-h200-s7.json; us, best other /
//    128x192): qkv M = 384 24.8 / 23.1, qkv M = 512 27.1 / 22.8 (the b512 decode step),
//    o and down M = 768 27.1 / 22.9 and 74.6 / 57.6; where 128x128 tiles already fit one wave
//    (o M = 512: 18.1 / 22.4) or neither fits (gate_up) it loses. Not measured on 70B-class
//    shapes (the rule starts above 256 tokens, past their weights-once case above).
W4A8Sm90Variant w4a8_sm90_choose(int64_t m, int64_t n, int64_t k, int64_t sms) {
  const auto even_tiles = [m](int64_t rows) { return ((m + rows - 1) / rows) % 2 == 0; };
  if (m >= 4096) {
    if (const std::optional<W4A8Sm90Variant> v = large_m_env_override()) return *v;
  }
  if (m >= kSm90WideTileMinRows) return W4A8Sm90Variant::kCoop128x256;
  if (sm90_one_wave_128x192(m, n, sms)) return W4A8Sm90Variant::kCoop128x192;
  if (m >= 512) {
    if (m >= 1024 || even_tiles(128)) return W4A8Sm90Variant::kLargeM;
    return even_tiles(64) ? W4A8Sm90Variant::kPingpong64 : W4A8Sm90Variant::kLargeM;
  }
  if (m > 128 && m <= 256 && n >= 8192 && k >= 8192) return W4A8Sm90Variant::kLargeM;
  if (k >= 2 * n) return W4A8Sm90Variant::kSwapStreamK;
  if (m <= 128 || even_tiles(64)) return W4A8Sm90Variant::kPingpong64;
  return W4A8Sm90Variant::kSwapStreamK;
}

Sm90TileOrder w4a8_sm90_tile_order(W4A8Sm90Variant v) {
  // The 128x256 kernel's 8-wide swizzle is the order measured with it end to end (above); the
  // others keep CUTLASS's (an 8-wide swizzle alone did not speed up the 128x128 kernel's
  // prefill: 7.24 / 7.36 vs 7.17 / 7.23 s). The swapped stream-K kernel's M is the channels.
  if (v == W4A8Sm90Variant::kCoop128x256) return kSm90WideTileOrder;
  return Sm90TileOrder{};
}

size_t w4a8_per_channel_sm90_workspace_bytes(int64_t m, int64_t n, int64_t k,
                                             W4A8Sm90Variant variant) {
#if !defined(QSERVE_HAVE_CUTLASS)
  (void)m, (void)n, (void)k, (void)variant;
  return 0;
#else
  int device = 0;
  if (m < 1 || n < 1 || k < 1 || cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  if (!device_info(device).sm90) return 0;
  if (variant == W4A8Sm90Variant::kAuto) {
    variant = w4a8_sm90_choose(m, n, k, device_info(device).sm_count);
  }
  switch (variant) {
    case W4A8Sm90Variant::kPingpong64:
      return config_workspace_bytes<Pingpong64>(m, n, k, device);
    case W4A8Sm90Variant::kSwapStreamK:
      return config_workspace_bytes<SwapStreamK>(m, n, k, device);
    case W4A8Sm90Variant::kCoop256x128:
      return config_workspace_bytes<Coop256x128>(m, n, k, device);
    case W4A8Sm90Variant::kCoop128x256:
      return config_workspace_bytes<Coop128x256>(m, n, k, device);
    case W4A8Sm90Variant::kCoop128x192:
      return config_workspace_bytes<Coop128x192>(m, n, k, device);
    case W4A8Sm90Variant::kCoopStreamK:
      return config_workspace_bytes<CoopStreamK>(m, n, k, device);
    default:
      return config_workspace_bytes<LargeM>(m, n, k, device);
  }
#endif
}

bool gemm_w4a8_per_channel_sm90(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                                int64_t m, const W4PerChannelView& w, uint16_t* y,
                                cudaStream_t stream, const GemmWorkspace* user_ws,
                                W4A8Sm90Variant variant, const Sm90TileOrder* order) {
  if (!w4a8_per_channel_sm90_applicable(aq, a_scale, a_sum, m, w, y)) return false;
#if !defined(QSERVE_HAVE_CUTLASS)
  (void)stream, (void)user_ws, (void)variant, (void)order;
  return false;
#else
  int device = 0;
  cuda_check(cudaGetDevice(&device), "gemm_w4a8_per_channel_sm90");
  if (variant == W4A8Sm90Variant::kAuto) {
    variant = w4a8_sm90_choose(m, w.n, w.k, device_info(device).sm_count);
  }
  const Sm90TileOrder o =
      order != nullptr ? *order : sm90_tile_order_or_env(w4a8_sm90_tile_order(variant));
  switch (variant) {
    case W4A8Sm90Variant::kPingpong64:
      return run_config<Pingpong64>(aq, a_scale, a_sum, m, w, y, stream, device, user_ws, variant,
                                    o);
    case W4A8Sm90Variant::kSwapStreamK:
      return run_config<SwapStreamK>(aq, a_scale, a_sum, m, w, y, stream, device, user_ws, variant,
                                     o);
    case W4A8Sm90Variant::kCoop256x128:
      return run_config<Coop256x128>(aq, a_scale, a_sum, m, w, y, stream, device, user_ws, variant,
                                     o);
    case W4A8Sm90Variant::kCoop128x256:
      return run_config<Coop128x256>(aq, a_scale, a_sum, m, w, y, stream, device, user_ws, variant,
                                     o);
    case W4A8Sm90Variant::kCoop128x192:
      return run_config<Coop128x192>(aq, a_scale, a_sum, m, w, y, stream, device, user_ws, variant,
                                     o);
    case W4A8Sm90Variant::kCoopStreamK:
      return run_config<CoopStreamK>(aq, a_scale, a_sum, m, w, y, stream, device, user_ws, variant,
                                     o);
    default:
      return run_config<LargeM>(aq, a_scale, a_sum, m, w, y, stream, device, user_ws,
                                W4A8Sm90Variant::kLargeM, o);
  }
#endif
}

}  // namespace qserve::cuda
