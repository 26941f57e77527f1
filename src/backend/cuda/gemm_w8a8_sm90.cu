// The Hopper W8A8 GEMM (see gemm_w8a8_sm90.h for the contract and the numerics).
//
// Operands in CUTLASS terms. Row-major y[M, N] = aq[M, K] * W[N, K]^T is a "TN" GEMM: A = aq is
// K-major (RowMajor), B = W is K-major (ColumnMajor K x N), D = y RowMajor. int8 wgmma needs both
// operands K-major, which this layout gives without any copy.
//  - kLargeM: exactly that, 128x128x128 CTA tiles (128 bytes of K = one 128B-swizzled TMA box),
//    a 2x1 cluster so the weight tile is multicast to two CTAs, the ping-pong warp-specialized
//    kernel (one producer warp group issuing TMA, two consumer warp groups alternating between
//    MMA and epilogue) and CUTLASS's persistent tile scheduler.
//  - kSmallMSwapAB: for decode-sized M the token dimension is tiny, while wgmma's M side is at
//    least 64 rows. So compute y^T[N, M] = W[N, K] * aq[M, K]^T instead: A = W (K-major), B = aq
//    (K-major), D = y^T, which is column-major N x M with leading dimension N = y row-major.
//    128 (channels) x 64 (tokens) x 128 tiles, the cooperative kernel and the stream-K scheduler,
//    which splits the K loop across SMs when there are fewer output tiles than SMs (Llama-3-8B's
//    o_proj at M <= 64 has 32 tiles for 132 SMs). Partial sums are int32 and exact, so the split
//    cannot change a bit of the result.
// In both, the epilogue is an EVT: Compute(multiplies -> fp16 RN)(Compute(multiplies -> fp32)
// (dequant_scale broadcast, a_scale broadcast), acc). Broadcast vectors are read as fp16 and
// converted exactly to fp32; the int32 accumulator is converted to fp32 with round-to-nearest.
//
// Built only when CMake found the CUTLASS headers (QSERVE_HAVE_CUTLASS); otherwise this file
// contains the fallbacks that report "not compiled".
#include "backend/cuda/gemm_w8a8_sm90.h"

#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gemm_sm90_tile_order.h"
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

const char* w8a8_sm90_variant_name(W8A8Sm90Variant v) {
  switch (v) {
    case W8A8Sm90Variant::kAuto:
      return "auto";
    case W8A8Sm90Variant::kLargeM:
      return "sm90_wgmma_128x128x128_pingpong";
    case W8A8Sm90Variant::kSmallMSwapAB:
      return "sm90_wgmma_swapab_128x64x128_streamk";
    case W8A8Sm90Variant::kCoop128x256:
      return "sm90_wgmma_128x256x128_coop";
    case W8A8Sm90Variant::kCoop128x192:
      return "sm90_wgmma_128x192x128_coop";
  }
  return "?";
}

W8A8Sm90Variant w8a8_sm90_choose(int64_t m, int64_t n, int64_t sms) {
  // Up to two 64-token tiles the swapped kernel reads each weight tile at most twice (mostly
  // from L2) and keeps all SMs busy through stream-K; beyond that the 128x128 tiles win, up to
  // prefill-sized steps, where 128x256 tiles with a swizzled walk do, and except where 128x192
  // tiles fit one wave and 128x128 ones do not (as for W4A8 per-channel, whose main loop this
  // is: gemm_w4a8_sm90.cu, w4a8_sm90_choose).
  if (m <= 128) return W8A8Sm90Variant::kSmallMSwapAB;
  if (n > 0 && sm90_one_wave_128x192(m, n, sms)) return W8A8Sm90Variant::kCoop128x192;
  return m >= kSm90WideTileMinRows ? W8A8Sm90Variant::kCoop128x256 : W8A8Sm90Variant::kLargeM;
}

Sm90TileOrder w8a8_sm90_tile_order(W8A8Sm90Variant v) {
  if (v == W8A8Sm90Variant::kCoop128x256) return kSm90WideTileOrder;
  return Sm90TileOrder{};
}

namespace {

struct DeviceInfo {
  bool sm90 = false;
  int sm_count = 0;
};

// Compute capability and SM count of the current device, cached per device id.
DeviceInfo current_device_info() {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<int, DeviceInfo>();  // never freed (teardown order)
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return {};
  }
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(dev);
  if (it != cache->end()) return it->second;
  DeviceInfo info;
  int major = 0, minor = 0, sms = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess) {
    // sm_90a code runs on compute capability 9.0 only (the "a" features are not forward
    // compatible), so 9.x with x != 0 is excluded too.
    info.sm90 = major == 9 && minor == 0;
    info.sm_count = sms;
  } else {
    (void)cudaGetLastError();
  }
  (*cache)[dev] = info;
  return info;
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

#if defined(QSERVE_HAVE_CUTLASS)

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
constexpr int kAlignAB = 16;  // elements = 16 bytes (TMA)
constexpr int kAlignOut = 8;  // 8 fp16 = 16 bytes
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// The fused W8A8 epilogue. RowScale varies along the GEMM's N, ColScale along its M; which of
// dequant_scale / a_scale they hold depends on the variant.
template <typename TileShape>
struct W8A8Evt {
  using RowScale =
      cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, ElementScale, ElementCompute>;
  // Alignment 1: element-wise predicated loads. With the default (8 fp16) a vector straddling
  // the end of an M that is not a multiple of 8 would be read past the array's end.
  using ColScale =
      cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, ElementScale, ElementCompute,
                                                  Stride<_1, _0, _0>, 1>;
  // scale = float(row) * float(col), rounded to fp32.
  using ScaleMul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementCompute,
                                                          ElementCompute, kRound>;
  using Scale = cutlass::epilogue::fusion::Sm90EVT<ScaleMul, RowScale, ColScale>;
  // y = fp16_RN(scale * float_RN(acc)).
  using OutMul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementOut,
                                                        ElementCompute, kRound>;
  using Tree =
      cutlass::epilogue::fusion::Sm90EVT<OutMul, Scale, cutlass::epilogue::fusion::Sm90AccFetch>;

  static typename Tree::Arguments args(const uint16_t* row, const uint16_t* col) {
    const auto* r = reinterpret_cast<const ElementScale*>(row);
    const auto* c = reinterpret_cast<const ElementScale*>(col);
    return
        typename Tree::Arguments{{                           // Scale
                                  {r, ElementScale(0), {}},  // RowScale: ptr, null default, stride
                                  {c, ElementScale(0), {}},  // ColScale
                                  {}},                       // ScaleMul
                                 {},                         // AccFetch
                                 {}};                        // OutMul
  }
};

template <typename TileShape, typename ClusterShape, typename LayoutA, typename LayoutB,
          typename LayoutD, typename KernelSchedule, typename EpilogueSchedule,
          typename TileScheduler>
struct GemmConfig {
  using Evt = W8A8Evt<TileShape>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute, void, LayoutD,
      kAlignOut, ElementOut, LayoutD, kAlignOut, EpilogueSchedule,
      typename Evt::Tree>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, LayoutA, kAlignAB, ElementAB,
      LayoutB, kAlignAB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

using LargeM =
    GemmConfig<Shape<_128, _128, _128>, Shape<_2, _1, _1>, cutlass::layout::RowMajor,
               cutlass::layout::ColumnMajor, cutlass::layout::RowMajor,
               cutlass::gemm::KernelTmaWarpSpecializedPingpong,
               cutlass::epilogue::TmaWarpSpecialized, cutlass::gemm::PersistentScheduler>;
using Coop128x256 =
    GemmConfig<Shape<_128, _256, _128>, Shape<_2, _1, _1>, cutlass::layout::RowMajor,
               cutlass::layout::ColumnMajor, cutlass::layout::RowMajor,
               cutlass::gemm::KernelTmaWarpSpecializedCooperative,
               cutlass::epilogue::TmaWarpSpecializedCooperative,
               cutlass::gemm::PersistentScheduler>;
using Coop128x192 =
    GemmConfig<Shape<_128, _192, _128>, Shape<_2, _1, _1>, cutlass::layout::RowMajor,
               cutlass::layout::ColumnMajor, cutlass::layout::RowMajor,
               cutlass::gemm::KernelTmaWarpSpecializedCooperative,
               cutlass::epilogue::TmaWarpSpecializedCooperative,
               cutlass::gemm::PersistentScheduler>;
using SmallMSwapAB =
    GemmConfig<Shape<_128, _64, _128>, Shape<_1, _1, _1>, cutlass::layout::RowMajor,
               cutlass::layout::ColumnMajor, cutlass::layout::ColumnMajor,
               cutlass::gemm::KernelTmaWarpSpecializedCooperative,
               cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;

// Packed strides of a (rows, cols, batch=1) operand, as CUTLASS's tools/util packed_stride.hpp
// makes them (that header is outside include/, so it is not used): the static unit stride says
// which mode is contiguous.
template <typename Stride>
Stride packed_stride(int rows, int cols) {
  Stride s{};
  if constexpr (cute::is_static_v<decltype(cute::get<1>(Stride{}))>) {  // row-major, (ld, 1, batch)
    cute::get<0>(s) = static_cast<int64_t>(cols);
  } else {  // column-major, (1, ld, batch)
    cute::get<1>(s) = static_cast<int64_t>(rows);
  }
  cute::get<2>(s) = static_cast<int64_t>(rows) * cols;
  return s;
}

// Grow-only device workspace per device (CUTLASS's stream-K partials and barriers). Growing
// synchronizes the device first, so no in-flight kernel still uses the old block.
void* workspace(size_t bytes, int device) {
  if (bytes == 0) return nullptr;
  static std::mutex mu;
  static auto* buffers = new std::unordered_map<int, DeviceBuffer<uint8_t>>();  // never freed
  std::lock_guard<std::mutex> lock(mu);
  DeviceBuffer<uint8_t>& b = (*buffers)[device];
  if (b.bytes() < bytes) {
    cuda_check(cudaDeviceSynchronize(), "gemm_w8a8_sm90 workspace",
               "bytes=" + std::to_string(bytes));
    b = DeviceBuffer<uint8_t>(bytes);
  }
  return b.data();
}

// The CUTLASS arguments of one configuration for y[m, n] = aq[m, k] W[n, k]^T (`swap` selects
// the y^T formulation); shared by the launch and the workspace query so both size alike.
template <typename Config, bool kSwap>
typename Config::Gemm::Arguments make_args(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                                           const W8PerChannelView& w, uint16_t* y, int device,
                                           int sm_count, const Sm90TileOrder& order) {
  using Kernel = typename Config::Kernel;
  using StrideA = typename Kernel::StrideA;
  using StrideB = typename Kernel::StrideB;
  using StrideD = typename Kernel::StrideD;
  using StrideC = typename Kernel::StrideC;

  const int gm = static_cast<int>(kSwap ? w.n : m);
  const int gn = static_cast<int>(kSwap ? m : w.n);
  const int gk = static_cast<int>(w.k);
  const int8_t* ptr_a = kSwap ? w.w : aq;
  const int8_t* ptr_b = kSwap ? aq : w.w;
  // Row broadcast follows the GEMM's N, column broadcast its M.
  const uint16_t* row_scale = kSwap ? a_scale : w.dequant_scale;
  const uint16_t* col_scale = kSwap ? w.dequant_scale : a_scale;

  const StrideA stride_a = packed_stride<StrideA>(gm, gk);  // A: (M, K)
  const StrideB stride_b = packed_stride<StrideB>(gn, gk);  // B: (N, K)
  const StrideD stride_d = packed_stride<StrideD>(gm, gn);  // D: (M, N)
  const StrideC stride_c = packed_stride<StrideC>(gm, gn);

  cutlass::KernelHardwareInfo hw;
  hw.device_id = device;
  hw.sm_count = sm_count;

  typename Config::Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                        {gm, gn, gk, 1},
                                        {ptr_a, stride_a, ptr_b, stride_b},
                                        {Config::Evt::args(row_scale, col_scale), nullptr, stride_c,
                                         reinterpret_cast<ElementOut*>(y), stride_d},
                                        hw};
  set_tile_order(args.scheduler, order);
  return args;
}

template <typename Config, bool kSwap>
size_t config_workspace_bytes(int64_t m, int64_t n, int64_t k, int device, int sm_count) {
  const W8PerChannelView w{n, k, nullptr, nullptr};
  return Config::Gemm::get_workspace_size(
      make_args<Config, kSwap>(nullptr, nullptr, m, w, nullptr, device, sm_count, Sm90TileOrder{}));
}

// Runs one configuration; `user_ws` (may be null) replaces the grow-only workspace.
template <typename Config, bool kSwap>
bool run_config(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
                uint16_t* y, cudaStream_t stream, int device, int sm_count,
                const GemmWorkspace* user_ws, const Sm90TileOrder& order, W8A8Sm90Variant v) {
  using Gemm = typename Config::Gemm;
  const typename Gemm::Arguments args =
      make_args<Config, kSwap>(aq, a_scale, m, w, y, device, sm_count, order);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  const size_t ws_bytes = Gemm::get_workspace_size(args);
  void* ws = nullptr;
  if (user_ws != nullptr) {
    check(ws_bytes == 0 || (user_ws->data != nullptr && user_ws->bytes >= ws_bytes),
          "gemm_w8a8_sm90: caller workspace of " + std::to_string(user_ws->bytes) +
              " bytes, need " + std::to_string(ws_bytes) + " (" + shape(m, w.n, w.k) + ")");
    ws = ws_bytes == 0 ? nullptr : user_ws->data;
  } else {
    ws = workspace(ws_bytes, device);
  }
  const std::string detail = shape(m, w.n, w.k) + " variant=" + w8a8_sm90_variant_name(v);
  const cutlass::Status init = gemm.initialize(args, ws, stream);
  check(init == cutlass::Status::kSuccess,
        "gemm_w8a8_sm90: initialize failed (" + detail + "): " + cutlassGetStatusString(init));
  const cutlass::Status run = gemm.run(stream, /*cuda_adapter=*/nullptr, pdl_enabled());
  check(run == cutlass::Status::kSuccess,
        "gemm_w8a8_sm90: launch failed (" + detail + "): " + cutlassGetStatusString(run));
  check_launch("gemm_w8a8_sm90", detail);
  return true;
}

}  // namespace

bool w8a8_sm90_compiled() {
  return true;
}

#else  // !QSERVE_HAVE_CUTLASS

bool w8a8_sm90_compiled() {
  return false;
}

#endif

bool w8a8_sm90_applicable(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                          const W8PerChannelView& w, const uint16_t* y) {
  if (!w8a8_sm90_compiled()) return false;
  if (m < 1 || w.n < 8 || w.k < 16 || w.n % 8 != 0 || w.k % 16 != 0) return false;
  // The CPU reference's exact-int32 bound (|acc| <= k * 128 * 128 < 2^31), and int problem sizes.
  if (w.k > (int64_t{1} << 31) / (128 * 128) - 1 || w.n > (int64_t{1} << 30) ||
      m > (int64_t{1} << 30))
    return false;
  if (aq == nullptr || a_scale == nullptr || w.w == nullptr || w.dequant_scale == nullptr ||
      y == nullptr)
    return false;
  // TMA needs 16-byte aligned bases; the scale vectors are read element-wise (any alignment).
  if (!aligned16(aq) || !aligned16(w.w) || !aligned16(y)) return false;
  return current_device_info().sm90;
}

bool gemm_w8a8_sm90(const int8_t* aq, const uint16_t* a_scale, int64_t m, const W8PerChannelView& w,
                    uint16_t* y, cudaStream_t stream, W8A8Sm90Variant variant,
                    const GemmWorkspace* ws, const Sm90TileOrder* order) {
  if (!w8a8_sm90_applicable(aq, a_scale, m, w, y)) return false;
#if defined(QSERVE_HAVE_CUTLASS)
  int device = 0;
  cuda_check(cudaGetDevice(&device), "gemm_w8a8_sm90");
  const DeviceInfo info = current_device_info();
  if (variant == W8A8Sm90Variant::kAuto) variant = w8a8_sm90_choose(m, w.n, info.sm_count);
  if (variant == W8A8Sm90Variant::kSmallMSwapAB) {
    return run_config<SmallMSwapAB, true>(aq, a_scale, m, w, y, stream, device, info.sm_count, ws,
                                          Sm90TileOrder{}, variant);
  }
  const Sm90TileOrder o =
      order != nullptr ? *order : sm90_tile_order_or_env(w8a8_sm90_tile_order(variant));
  if (variant == W8A8Sm90Variant::kCoop128x256) {
    return run_config<Coop128x256, false>(aq, a_scale, m, w, y, stream, device, info.sm_count, ws,
                                          o, variant);
  }
  if (variant == W8A8Sm90Variant::kCoop128x192) {
    return run_config<Coop128x192, false>(aq, a_scale, m, w, y, stream, device, info.sm_count, ws,
                                          o, variant);
  }
  return run_config<LargeM, false>(aq, a_scale, m, w, y, stream, device, info.sm_count, ws, o,
                                   W8A8Sm90Variant::kLargeM);
#else
  (void)stream;
  (void)variant;
  (void)ws;
  (void)order;
  return false;
#endif
}

size_t gemm_w8a8_sm90_workspace_bytes(int64_t m, int64_t n, int64_t k, W8A8Sm90Variant variant) {
#if defined(QSERVE_HAVE_CUTLASS)
  const DeviceInfo info = current_device_info();
  if (!info.sm90 || m < 1 || n < 1 || k < 1) return 0;
  int device = 0;
  cuda_check(cudaGetDevice(&device), "gemm_w8a8_sm90_workspace_bytes");
  if (variant == W8A8Sm90Variant::kAuto) variant = w8a8_sm90_choose(m, n, info.sm_count);
  if (variant == W8A8Sm90Variant::kSmallMSwapAB) {
    return config_workspace_bytes<SmallMSwapAB, true>(m, n, k, device, info.sm_count);
  }
  if (variant == W8A8Sm90Variant::kCoop128x256) {
    return config_workspace_bytes<Coop128x256, false>(m, n, k, device, info.sm_count);
  }
  if (variant == W8A8Sm90Variant::kCoop128x192) {
    return config_workspace_bytes<Coop128x192, false>(m, n, k, device, info.sm_count);
  }
  return config_workspace_bytes<LargeM, false>(m, n, k, device, info.sm_count);
#else
  (void)m, (void)n, (void)k, (void)variant;
  return 0;
#endif
}

}  // namespace qserve::cuda
