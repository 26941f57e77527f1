// The large-M per-channel W4A8 GEMM on Hopper (gemm_w4a8_fast.h): the CUTLASS 3 wgmma kernel of
// gemm_w8a8_sm90.cu's kLargeM configuration (128x128x128 tiles, 2x1 cluster, ping-pong,
// persistent) run on the 1-byte codes Q (0..15 are valid int8 values, so the natural q array is
// directly the B operand), with QServe's per-channel epilogue as an epilogue visitor tree:
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
#include <string>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_buffer.h"
#include "backend/cuda/gemm_w4a8_fast.h"

#if defined(QSERVE_HAVE_CUTLASS)
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

// GEMM M = tokens, N = channels: channel vectors are row broadcasts, token vectors column
// broadcasts.
template <typename TileShape>
struct PerChannelEvt {
  using RowVec = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, ElementScale,
                                                             ElementCompute>;
  // Alignment 1: element-wise predicated loads (M need not be a multiple of 8).
  using ColVec = cutlass::epilogue::fusion::Sm90ColBroadcast<
      0, TileShape, ElementScale, ElementCompute, Stride<_1, _0, _0>, 1>;
  using Mul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementCompute,
                                                     ElementCompute, kRound>;
  using ScaledAcc =
      cutlass::epilogue::fusion::Sm90EVT<Mul, cutlass::epilogue::fusion::Sm90AccFetch, RowVec>;
  using ZeroTerm = cutlass::epilogue::fusion::Sm90EVT<Mul, RowVec, ColVec>;
  using Out = cutlass::epilogue::fusion::Sm90Compute<FmaNegC, ElementOut, ElementCompute, kRound>;
  using Tree = cutlass::epilogue::fusion::Sm90EVT<Out, ColVec, ScaledAcc, ZeroTerm>;

  static typename Tree::Arguments args(const uint16_t* a_scale, const uint16_t* a_sum,
                                       const uint16_t* s1, const uint16_t* s1_szeros) {
    auto h = [](const uint16_t* p) { return reinterpret_cast<const ElementScale*>(p); };
    return typename Tree::Arguments{
        {h(a_scale), ElementScale(0), {}},  // ColVec a_scale
        {                                    // ScaledAcc
         {},                                 //   AccFetch
         {h(s1), ElementScale(0), {}},       //   RowVec s1
         {}},                                //   Mul
        {                                    // ZeroTerm
         {h(s1_szeros), ElementScale(0), {}},  // RowVec s1_szeros
         {h(a_sum), ElementScale(0), {}},      // ColVec a_sum
         {}},                                  // Mul
        {}};                                   // Out
  }
};

using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_2, _1, _1>;
using Evt = PerChannelEvt<TileShape>;
using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute, void,
    cutlass::layout::RowMajor, kAlignOut, ElementOut, cutlass::layout::RowMajor, kAlignOut,
    cutlass::epilogue::TmaWarpSpecialized, typename Evt::Tree>::CollectiveOp;
using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, cutlass::layout::RowMajor,
    kAlignAB, ElementAB, cutlass::layout::ColumnMajor, kAlignAB, ElementAcc, TileShape,
    ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::KernelTmaWarpSpecializedPingpong>::CollectiveOp;
using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                    CollectiveEpilogue,
                                                    cutlass::gemm::PersistentScheduler>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

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
                                      const uint16_t* a_sum, int64_t m,
                                      const W4PerChannelView& w, const uint16_t* y) {
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
typename Gemm::Arguments make_args(const int8_t* aq, const uint16_t* a_scale,
                                   const uint16_t* a_sum, int64_t m, const W4PerChannelView& w,
                                   uint16_t* y, int device) {
  using StrideA = typename Kernel::StrideA;
  using StrideB = typename Kernel::StrideB;
  using StrideC = typename Kernel::StrideC;
  using StrideD = typename Kernel::StrideD;
  const int gm = static_cast<int>(m), gn = static_cast<int>(w.n), gk = static_cast<int>(w.k);
  cutlass::KernelHardwareInfo hw;
  hw.device_id = device;
  hw.sm_count = device_info(device).sm_count;
  return typename Gemm::Arguments{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {gm, gn, gk, 1},
      {aq, packed_stride<StrideA>(gm, gk), reinterpret_cast<const int8_t*>(w.q),
       packed_stride<StrideB>(gn, gk)},
      {Evt::args(a_scale, a_sum, w.s1_scales, w.s1_szeros), nullptr,
       packed_stride<StrideC>(gm, gn), reinterpret_cast<ElementOut*>(y),
       packed_stride<StrideD>(gm, gn)},
      hw};
}

}  // namespace
#endif  // QSERVE_HAVE_CUTLASS

size_t w4a8_per_channel_sm90_workspace_bytes(int64_t m, int64_t n, int64_t k) {
#if !defined(QSERVE_HAVE_CUTLASS)
  (void)m, (void)n, (void)k;
  return 0;
#else
  int device = 0;
  if (m < 1 || n < 1 || k < 1 || cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  if (!device_info(device).sm90) return 0;
  const W4PerChannelView w{n, k, nullptr, nullptr, nullptr, nullptr};
  return Gemm::get_workspace_size(make_args(nullptr, nullptr, nullptr, m, w, nullptr, device));
#endif
}

bool gemm_w4a8_per_channel_sm90(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                                int64_t m, const W4PerChannelView& w, uint16_t* y,
                                cudaStream_t stream, const GemmWorkspace* user_ws) {
  if (!w4a8_per_channel_sm90_applicable(aq, a_scale, a_sum, m, w, y)) return false;
#if !defined(QSERVE_HAVE_CUTLASS)
  (void)stream;
  (void)user_ws;
  return false;
#else
  int device = 0;
  cuda_check(cudaGetDevice(&device), "gemm_w4a8_per_channel_sm90");
  const typename Gemm::Arguments args = make_args(aq, a_scale, a_sum, m, w, y, device);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  const size_t ws_bytes = Gemm::get_workspace_size(args);
  void* ws = nullptr;
  if (user_ws != nullptr) {
    check(ws_bytes == 0 || (user_ws->data != nullptr && user_ws->bytes >= ws_bytes),
          "gemm_w4a8_per_channel_sm90: caller workspace of " + std::to_string(user_ws->bytes) +
              " bytes, need " + std::to_string(ws_bytes) + " (" + shape(m, w.n, w.k) + ")");
    ws = ws_bytes == 0 ? nullptr : user_ws->data;
  } else {
    ws = workspace(ws_bytes, device);
  }
  const std::string detail = shape(m, w.n, w.k);
  const cutlass::Status init = gemm.initialize(args, ws, stream);
  check(init == cutlass::Status::kSuccess, "gemm_w4a8_per_channel_sm90: initialize failed (" +
                                               detail + "): " + cutlassGetStatusString(init));
  const cutlass::Status run = gemm.run(stream);
  check(run == cutlass::Status::kSuccess, "gemm_w4a8_per_channel_sm90: launch failed (" + detail +
                                              "): " + cutlassGetStatusString(run));
  check_launch("gemm_w4a8_per_channel_sm90", detail);
  return true;
#endif
}

}  // namespace qserve::cuda
