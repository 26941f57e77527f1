// Fast W4A8 building blocks (gemm_w4a8_fast.h): the packer, the g128 expansion, the bias add and
// the small-M kernel. See the header for the packed layout and the numerics.
//
// Small-M kernel. CTA = 8 warps = 128 output channels (one 16-row mma tile per warp) x all M
// tokens (MT tiles of 8) x one slice of K. The CTAs of one row block form a thread-block cluster
// of `splits` CTAs along K (split-K); each CTA leaves its int32 partial tile in shared memory,
// and after a cluster barrier each CTA sums 1/splits of the tile over all CTAs' shared memory
// (DSMEM) and runs the epilogue on it. Integer addition is exact (and associative mod 2^32 with
// an in-range result), so the split changes no bit.
// Per 64-wide K block a lane issues one 16-byte streaming load of packed weights (L1 bypassed)
// and one 16-byte load of activations per token tile (L1-cached: the 8 warps of the CTA read the
// same activation bytes), converts the 32 codes to int8 with two LOP3s per 8 codes (g128: plus
// the byte-wise (Q * s2 + z) mod 256), and runs 2 * MT mma.m16n8k32 s8 x s8 -> s32. U blocks of
// weights are loaded before any is used, so each warp keeps U * 512 bytes in flight.
#include "backend/cuda/gemm_w4a8_fast.h"

#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemm_w4a8_epilogue.cuh"
#include "quant/weights.h"

namespace qserve::cuda {

namespace {

namespace cg = cooperative_groups;

std::string shape(int64_t m, int64_t n, int64_t k) {
  return "M=" + std::to_string(m) + " N=" + std::to_string(n) + " K=" + std::to_string(k);
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

struct SmInfo {
  int major = 0;
  int sm_count = 0;
};

// Compute capability major and SM count of the current device, cached per device.
SmInfo sm_info() {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<int, SmInfo>();  // never freed (teardown order)
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return {};
  }
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(dev);
  if (it != cache->end()) return it->second;
  SmInfo info;
  if (cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    info = {};
  }
  (*cache)[dev] = info;
  return info;
}

// ---- packer ----

// One thread per 32-bit word of the packed layout (gemm_w4a8_fast.h).
__global__ void pack_codes_kernel(const uint8_t* __restrict__ q, int64_t n, int64_t k,
                                  uint32_t* __restrict__ packed) {
  const int64_t words = n * k / 8;
  const int64_t nkb = k / 64;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int w = static_cast<int>(i % 4);
    const int64_t chunk = i / 4;  // (T * nkb + b) * 32 + lane
    const int lane = static_cast<int>(chunk % 32);
    const int64_t tb = chunk / 32;
    const int64_t b = tb % nkb;
    const int64_t tile = tb / nkb;
    const int g = lane / 4, t = lane % 4, s = w / 2, r = w % 2;
    const int64_t kk = 64 * b + 16 * t + 8 * s + 4 * r;
    const uint8_t* lo = q + (16 * tile + g) * k + kk;
    const uint8_t* hi = lo + 8 * k;
    uint32_t v = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v |= static_cast<uint32_t>((lo[j] & 0x0F) | ((hi[j] & 0x0F) << 4)) << (8 * j);
    }
    packed[i] = v;
  }
}

// ---- g128 expansion ----

// Thread per 16 codes (k % 128 == 0, so 16 aligned codes share one group); vector loads and
// stores when both arrays are 16-byte aligned (kVec), bytes otherwise.
template <bool kVec>
__global__ void g128_expand_kernel(const uint8_t* __restrict__ q, const int8_t* __restrict__ s2,
                                   const int8_t* __restrict__ zeros, int64_t n, int64_t k,
                                   int8_t* __restrict__ w8) {
  const int64_t chunks = n * k / 16;
  const int64_t groups = k / quant::kGroupSize;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < chunks;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = 16 * i;
    const int64_t row = e / k;
    const int64_t g = row * groups + (e % k) / quant::kGroupSize;
    const uint32_t s = static_cast<uint8_t>(s2[g]);
    const uint32_t z4 = static_cast<uint32_t>(static_cast<uint8_t>(zeros[g])) * 0x01010101u;
    if constexpr (kVec) {
      const uint4 c = *reinterpret_cast<const uint4*>(q + e);
      uint4 o;
      o.x = detail::g128_bytes(c.x, s, z4);
      o.y = detail::g128_bytes(c.y, s, z4);
      o.z = detail::g128_bytes(c.z, s, z4);
      o.w = detail::g128_bytes(c.w, s, z4);
      *reinterpret_cast<uint4*>(w8 + e) = o;
    } else {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        w8[e + j] = static_cast<int8_t>(detail::g128_bytes(q[e + j], s, z4) & 0xFFu);
      }
    }
  }
}

__global__ void add_bias_kernel(uint16_t* __restrict__ y, const uint16_t* __restrict__ bias,
                                int64_t total, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = __half_as_ushort(__hadd_rn(__ushort_as_half(y[i]), __ushort_as_half(bias[i % n])));
  }
}

unsigned grid_for(int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}

// ---- small-M kernel ----

constexpr int kSmWarps = 8;
constexpr int kSmThreads = kSmWarps * 32;
constexpr int kSmRows = kSmWarps * 16;  // output channels per CTA
constexpr int kMaxSplits = 8;           // portable cluster size

struct SmallMParams {
  const int8_t* aq;
  const uint4* packed;
  const int8_t* s2;     // g128 only
  const int8_t* zeros;  // g128 only
  int64_t m, n, k;
  int splits;
};

// 16-byte load that does not allocate in L1 (the weights are read once).
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

__device__ __forceinline__ void mma_s8(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <int MT, bool kG128, typename Epilogue>
__global__ void __launch_bounds__(kSmThreads, 2)
    w4a8_small_m_kernel(SmallMParams p, Epilogue epi) {
  constexpr int kTok = 8 * MT;
  constexpr int kU = MT >= 4 ? 4 : 8;  // K blocks of weights in flight per warp
  __shared__ int32_t part[kTok * kSmRows];  // [token][row in CTA]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t tile = static_cast<int64_t>(blockIdx.y) * kSmWarps + warp;
  const int64_t nkb = p.k / 64;
  const int split = static_cast<int>(blockIdx.x);
  const int64_t kb0 = nkb * split / p.splits, kb1 = nkb * (split + 1) / p.splits;

  int32_t acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0;

  if (tile < p.n / 16) {
    const uint4* wp = p.packed + tile * nkb * 32 + lane;
    // Lane (g, t) reads token 8*mt + g, bytes 64b + 16t .. +15 (its B registers, see header).
    const int8_t* xrow[MT];
    bool tok_ok[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int64_t tok = 8 * mt + g;
      tok_ok[mt] = tok < p.m;
      xrow[mt] = p.aq + (tok_ok[mt] ? tok : 0) * p.k + 16 * t;
    }
    const int64_t groups = p.k / quant::kGroupSize;
    const int64_t grow_lo = (16 * tile + g) * groups, grow_hi = grow_lo + 8 * groups;

    for (int64_t kb = kb0; kb < kb1; kb += kU) {
      uint4 wv[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (kb + u < kb1) wv[u] = ld_stream(wp + (kb + u) * 32);
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (kb + u >= kb1) continue;  // (not break: keeps the loop fully unrolled)
        const int64_t b = kb + u;
        // Low nibbles: row g; high nibbles: row g + 8. Words 2s + r -> a(2r), a(2r + 1).
        uint32_t a[8];
        const uint32_t words[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          a[2 * w] = words[w] & 0x0F0F0F0Fu;
          a[2 * w + 1] = (words[w] >> 4) & 0x0F0F0F0Fu;
        }
        if constexpr (kG128) {
          const int64_t grp = b / 2;  // 64-wide block inside one 128-wide group
          const uint32_t s_lo = static_cast<uint8_t>(__ldg(p.s2 + grow_lo + grp));
          const uint32_t s_hi = static_cast<uint8_t>(__ldg(p.s2 + grow_hi + grp));
          const uint32_t z_lo =
              static_cast<uint32_t>(static_cast<uint8_t>(__ldg(p.zeros + grow_lo + grp))) *
              0x01010101u;
          const uint32_t z_hi =
              static_cast<uint32_t>(static_cast<uint8_t>(__ldg(p.zeros + grow_hi + grp))) *
              0x01010101u;
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            a[2 * w] = detail::g128_bytes(a[2 * w], s_lo, z_lo);
            a[2 * w + 1] = detail::g128_bytes(a[2 * w + 1], s_hi, z_hi);
          }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          uint4 xv = make_uint4(0, 0, 0, 0);
          if (tok_ok[mt]) xv = __ldg(reinterpret_cast<const uint4*>(xrow[mt] + 64 * b));
          // K-step 0: a0..a3 = words 0, 1 (r = 0, 1); B = bytes 0..3, 4..7 of the lane's 16.
          mma_s8(acc[mt], a[0], a[1], a[2], a[3], xv.x, xv.y);
          // K-step 1: words 2, 3; B = bytes 8..11, 12..15.
          mma_s8(acc[mt], a[4], a[5], a[6], a[7], xv.z, xv.w);
        }
      }
    }
  }

  // C fragment: c0, c1 -> (row g, tokens 2t, 2t + 1), c2, c3 -> (row g + 8, same tokens).
  const int row = warp * 16 + g;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int tok = 8 * mt + 2 * t;
    part[tok * kSmRows + row] = acc[mt][0];
    part[(tok + 1) * kSmRows + row] = acc[mt][1];
    part[tok * kSmRows + row + 8] = acc[mt][2];
    part[(tok + 1) * kSmRows + row + 8] = acc[mt][3];
  }

  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // all partial tiles of the cluster are in shared memory
  const int rank = static_cast<int>(cluster.block_rank());
  constexpr int kElems = kTok * kSmRows;
  const int e0 = kElems * rank / p.splits, e1 = kElems * (rank + 1) / p.splits;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kSmRows;
  for (int e = e0 + static_cast<int>(threadIdx.x); e < e1; e += kSmThreads) {
    int32_t sum = 0;
    for (int s = 0; s < p.splits; ++s) sum += cluster.map_shared_rank(part, s)[e];
    const int64_t tok = e / kSmRows;
    const int64_t n = n0 + e % kSmRows;
    if (tok < p.m && n < p.n) epi(tok, n, sum);
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
}

// Split-K factor: enough CTAs for ~2 per SM, at most 8 (portable cluster), and >= 4 K blocks
// per CTA so each warp still has loads to overlap.
int choose_splits(int64_t n, int64_t k, int sm_count) {
  const int64_t row_blocks = (n + kSmRows - 1) / kSmRows;
  const int64_t nkb = k / 64;
  int s = 1;
  while (s < kMaxSplits && row_blocks * s < 2 * static_cast<int64_t>(sm_count) &&
         nkb / (2 * s) >= 4)
    s *= 2;
  return s;
}

template <int MT, bool kG128, typename Epilogue>
void launch_small_m_mt(const SmallMParams& p, const Epilogue& epi, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(p.splits),
                     static_cast<unsigned>((p.n + kSmRows - 1) / kSmRows), 1);
  cfg.blockDim = dim3(kSmThreads, 1, 1);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(p.splits);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cuda_check(cudaLaunchKernelEx(&cfg, w4a8_small_m_kernel<MT, kG128, Epilogue>, p, epi),
             "gemm_w4a8 small-M launch", shape(p.m, p.n, p.k));
}

template <bool kG128, typename Epilogue>
void launch_small_m(SmallMParams p, const Epilogue& epi, cudaStream_t stream) {
  p.splits = choose_splits(p.n, p.k, sm_info().sm_count);
  if (p.m <= 8) {
    launch_small_m_mt<1, kG128>(p, epi, stream);
  } else if (p.m <= 16) {
    launch_small_m_mt<2, kG128>(p, epi, stream);
  } else if (p.m <= 32) {
    launch_small_m_mt<4, kG128>(p, epi, stream);
  } else {
    launch_small_m_mt<8, kG128>(p, epi, stream);
  }
}

bool small_m_ok(const int8_t* aq, int64_t m, int64_t n, int64_t k, const uint8_t* packed,
                const uint16_t* y) {
  if (packed == nullptr || aq == nullptr || y == nullptr) return false;
  if (m < 1 || m > kW4A8SmallMMax || !w4a8_packable(n, k)) return false;
  // Exact int32 range (as the CPU reference's check) and the grid's y limit.
  if (k > (int64_t{1} << 31) / (128 * 128) - 1 || (n + kSmRows - 1) / kSmRows > 65535)
    return false;
  if (!aligned16(aq) || !aligned16(packed)) return false;
  return sm_info().major >= 9;  // thread-block clusters
}

}  // namespace

bool w4a8_packable(int64_t n, int64_t k) {
  return n > 0 && k > 0 && n % 16 == 0 && k % 64 == 0;
}

void w4a8_pack_codes(const uint8_t* q, int64_t n, int64_t k, uint8_t* packed,
                     cudaStream_t stream) {
  check(w4a8_packable(n, k), "w4a8_pack_codes: n % 16 and k % 64 must be 0, " + shape(0, n, k));
  check(aligned16(packed), "w4a8_pack_codes: packed must be 16-byte aligned");
  const int64_t words = n * k / 8;
  pack_codes_kernel<<<grid_for(words, 256), 256, 0, stream>>>(q, n, k,
                                                              reinterpret_cast<uint32_t*>(packed));
  check_launch("w4a8_pack_codes", shape(0, n, k));
}

void w4a8_g128_expand(const W4G128View& w, int8_t* w8, cudaStream_t stream) {
  check(w.n > 0 && w.k > 0 && w.k % quant::kGroupSize == 0,
        "w4a8_g128_expand: k must be a positive multiple of 128, " + shape(0, w.n, w.k));
  const int64_t chunks = w.n * w.k / 16;
  if (aligned16(w.q) && aligned16(w8)) {
    g128_expand_kernel<true><<<grid_for(chunks, 256), 256, 0, stream>>>(w.q, w.s2_scales,
                                                                        w.s2_zeros, w.n, w.k, w8);
  } else {
    g128_expand_kernel<false><<<grid_for(chunks, 256), 256, 0, stream>>>(w.q, w.s2_scales,
                                                                         w.s2_zeros, w.n, w.k, w8);
  }
  check_launch("w4a8_g128_expand", shape(0, w.n, w.k));
}

void w4a8_add_bias(uint16_t* y, const uint16_t* bias, int64_t m, int64_t n, cudaStream_t stream) {
  if (m == 0 || bias == nullptr) return;
  add_bias_kernel<<<grid_for(m * n, 256), 256, 0, stream>>>(y, bias, m * n, n);
  check_launch("w4a8_add_bias", shape(m, n, 0));
}

bool gemm_w4a8_per_channel_small_m(const int8_t* aq, const uint16_t* a_scale,
                                   const uint16_t* a_sum, int64_t m, const W4PerChannelView& w,
                                   const uint16_t* bias, uint16_t* y, cudaStream_t stream) {
  if (!small_m_ok(aq, m, w.n, w.k, w.q_packed, y) || a_scale == nullptr || a_sum == nullptr)
    return false;
  const SmallMParams p{aq, reinterpret_cast<const uint4*>(w.q_packed), nullptr, nullptr, m, w.n,
                       w.k, 1};
  const detail::W4PerChannelEpi epi{a_scale, a_sum, w.s1_scales, w.s1_szeros, bias, y, nullptr,
                                    w.n};
  launch_small_m<false>(p, epi, stream);
  return true;
}

bool gemm_w4a8_g128_small_m(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                            const W4G128View& w, const uint16_t* bias, uint16_t* y,
                            cudaStream_t stream) {
  if (!small_m_ok(aq, m, w.n, w.k, w.q_packed, y) || a_scale == nullptr ||
      w.k % quant::kGroupSize != 0)
    return false;
  const SmallMParams p{aq, reinterpret_cast<const uint4*>(w.q_packed), w.s2_scales, w.s2_zeros,
                       m, w.n, w.k, 1};
  const detail::W4G128Epi epi{a_scale, w.s1_scales, bias, y, nullptr, w.n};
  launch_small_m<true>(p, epi, stream);
  return true;
}

}  // namespace qserve::cuda
