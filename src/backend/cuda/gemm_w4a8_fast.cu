// Fast W4A8 building blocks (gemm_w4a8_fast.h): the packer, the g128 expansion, the bias add and
// the small-M kernels (the mma.sync one here; the wgmma and row-tile ones in
// gemm_w4a8_small_m_{wgmma,ktile}.cuh, included below). See the header for the packed layout and
// the numerics.
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

#include <algorithm>
#include <mutex>
#include <string>
#include <unordered_map>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemm_w4a8_epilogue.cuh"
#include "backend/cuda/pdl.h"
#include "backend/cuda/pdl_device.cuh"
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

constexpr int kSmRows = 128;  // output channels per CTA (8 row tiles of 16)
constexpr int kSmTiles = kSmRows / 16;
constexpr int kMaxSplits = 8;  // portable cluster size

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

// MT token tiles of 8; RT row tiles of 16 per warp (8 / RT warps, so a CTA is always 128
// channels and the packed layout and the cluster reduction do not depend on RT: RT = 2 reuses
// each activation fragment for two weight tiles, halving the activation loads per MMA); U = K
// blocks per row tile in the weight ring (U * RT 16-byte cp.async copies in flight per lane
// into the lane's own shared-memory slots: the slot a block is consumed from is refilled with
// block + U before the block's MMAs run; in shared memory rather than registers so the depth
// does not cost registers and the copies stay in flight whatever the compiler schedules).
// The end of both small-M kernels: every CTA of the cluster has its int32 partial tile
// part[token][row in CTA] (kTok x 128) in shared memory; after a cluster barrier each CTA sums
// 1/splits of the tile over all the cluster's shared memories (DSMEM) and runs the epilogue on
// it. Integer addition is exact, so the split changes no bit.
template <int kTok, int kThreads, typename Epilogue>
__device__ __forceinline__ void cluster_reduce_epilogue(const SmallMParams& p, int32_t* part,
                                                        const Epilogue& epi) {
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  // Only the tokens that exist are reduced (M = 1 reduces 128 sums, not 8 * 128).
  const int tok_used = static_cast<int>(p.m < kTok ? p.m : kTok);
  const int elems = tok_used * kSmRows;
  const int e0 = elems * rank / p.splits, e1 = elems * (rank + 1) / p.splits;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kSmRows;
  // The first element's epilogue operands (L2 hits: prefetched at kernel start) are loaded
  // before the barrier, so their latency hides behind the wait for the cluster's slowest CTA.
  int e = e0 + static_cast<int>(threadIdx.x);
  typename Epilogue::Operands ops{};
  if (e < e1 && n0 + e % kSmRows < p.n) ops = epi.load(e / kSmRows, n0 + e % kSmRows);
  cluster.sync();  // all partial tiles of the cluster are in shared memory
  for (bool first = true; e < e1; e += kThreads, first = false) {
    const int64_t tok = e / kSmRows;
    const int64_t n = n0 + e % kSmRows;
    if (n >= p.n) continue;
    if (!first) ops = epi.load(tok, n);
    // All the cluster's loads of the element first, then the sum: one DSMEM round trip instead
    // of one per split (the order of integer additions changes no bit).
    int32_t v[kMaxSplits];
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s)
      v[s] = s < p.splits ? cluster.map_shared_rank(part, s)[e] : 0;
    int32_t sum = 0;
#pragma unroll
    for (int s = 0; s < kMaxSplits; ++s) sum += v[s];
    epi.finish(tok, n, sum, ops);
  }
  cluster.sync();  // no CTA leaves while another still reads its shared memory
}

// CTAs per SM the registers must allow: 16 warps, except 12 for the largest accumulator set
// (MT 8 with RT 2: 64 accumulators + the ring would spill at 128 registers).
template <int MT, int RT>
constexpr int small_m_min_blocks() {
  return RT == 2 && MT == 8 ? 3 : 2 * RT;
}

// 16-byte cp.async into shared memory; src_bytes 0 writes zeros (tokens past M).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ uint4 lds128(const void* p) {
  uint4 v;
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(a));
  return v;
}

// One 16-byte packed chunk of a lane (K block b of 16-row tile `tile`) -> its 8 A registers of
// int8 weights: low nibbles row g, high nibbles row g + 8; words 2s + r -> a(2r), a(2r + 1)
// (the packed layout, gemm_w4a8_fast.h); g128 adds the byte-wise (Q * s2 + z) mod 256 of the
// block's group. (The mma.sync kernel keeps its inline copy: moving it into a helper changed
// the RT = 2 kernels' generated code, which the tuned table was measured on; the wgmma and
// row-tile kernels use this one.)
template <bool kG128, typename Params>
__device__ __forceinline__ void convert_packed_block(const uint4& wv, int64_t b, int64_t tile,
                                                     int g, const Params& p, uint32_t (&a)[8]) {
  const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    a[2 * w] = words[w] & 0x0F0F0F0Fu;
    a[2 * w + 1] = (words[w] >> 4) & 0x0F0F0F0Fu;
  }
  if constexpr (kG128) {
    const int64_t groups = p.k / quant::kGroupSize;
    const int64_t grp = b / 2;  // 64-wide block inside one 128-wide group
    const int64_t grow_lo = (16 * tile + g) * groups, grow_hi = grow_lo + 8 * groups;
    const uint32_t s_lo = static_cast<uint8_t>(__ldg(p.s2 + grow_lo + grp));
    const uint32_t s_hi = static_cast<uint8_t>(__ldg(p.s2 + grow_hi + grp));
    const uint32_t z_lo =
        static_cast<uint32_t>(static_cast<uint8_t>(__ldg(p.zeros + grow_lo + grp))) * 0x01010101u;
    const uint32_t z_hi =
        static_cast<uint32_t>(static_cast<uint8_t>(__ldg(p.zeros + grow_hi + grp))) * 0x01010101u;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      a[2 * w] = detail::g128_bytes(a[2 * w], s_lo, z_lo);
      a[2 * w + 1] = detail::g128_bytes(a[2 * w + 1], s_hi, z_hi);
    }
  }
}

// One 16 x 8 int32 accumulator tile of a lane into part[token][row] (rows `stride` apart per
// token): the mma C fragment (and wgmma's, per warp) puts c0, c1 at (row g, tokens 2t, 2t + 1)
// and c2, c3 at (row g + 8, the same tokens); `row` = the tile's row g, `tok` = its token 2t.
__device__ __forceinline__ void store_c_tile(int32_t* part, int stride, int tok, int row,
                                             int32_t c0, int32_t c1, int32_t c2, int32_t c3) {
  part[tok * stride + row] = c0;
  part[(tok + 1) * stride + row] = c1;
  part[tok * stride + row + 8] = c2;
  part[(tok + 1) * stride + row + 8] = c3;
}

// One 64-wide K block of RT row tiles x MT token tiles: per token tile, the lane's 16 activation
// bytes (token 8 mt + g, bytes 16 t .. +15 of the block at `xs`, rows `row_bytes` apart) feed
// RT x 2 mma.m16n8k32 (each activation fragment used for every row tile).
template <int MT, int RT>
__device__ __forceinline__ void mma_token_tiles(int32_t (&acc)[RT][MT][4],
                                                const uint32_t (&a)[RT][8], const uint8_t* xs,
                                                int row_bytes) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const uint4 xv = lds128(xs + 8 * mt * row_bytes);
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      // K-step 0: a0..a3 = words 0, 1 (r = 0, 1); B = bytes 0..3, 4..7 of the lane's 16.
      mma_s8(acc[r][mt], a[r][0], a[r][1], a[r][2], a[r][3], xv.x, xv.y);
      // K-step 1: words 2, 3; B = bytes 8..11, 12..15.
      mma_s8(acc[r][mt], a[r][4], a[r][5], a[r][6], a[r][7], xv.z, xv.w);
    }
  }
}

// Bytes of one token's activation row in shared memory for `blocks` K blocks: 64 per block plus
// 64 of padding, so the 8 tokens of an mma B fragment (row stride = 64 mod 128) fall on distinct
// bank groups in every quarter-warp phase of the 16-byte loads.
__host__ __device__ constexpr int64_t small_m_act_row_bytes(int64_t blocks) {
  return blocks * 64 + 64;
}

// Dynamic shared memory of the mma.sync kernel: the CTA's activation slice (all its K blocks,
// staged once with cp.async; later reused for the int32 partial tile), then the weight ring:
// U stages of 16 bytes per thread and row tile (U * 4 KB per CTA whatever RT is).
__host__ __device__ inline int64_t small_m_act_region_bytes(int64_t tokens, int64_t k, int splits) {
  const int64_t nkb = k / 64;
  const int64_t blocks = (nkb + splits - 1) / splits;
  const int64_t act = tokens * small_m_act_row_bytes(blocks);
  const int64_t part = tokens * kSmRows * 4;
  return ((act > part ? act : part) + 127) / 128 * 128;
}
int64_t small_m_smem_bytes(int64_t tokens, int64_t k, int splits, int u) {
  return small_m_act_region_bytes(tokens, k, splits) + int64_t{u} * 256 * 16;
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
constexpr int64_t kSmallMSmemMax = 160 * 1024;  // leaves room for 1 CTA + L1 on a 228 KB SM

// One K block (b) of RT row tiles' packed weights into the lanes' ring slots dst(r) (16 bytes a
// lane, row tile r's stream at wp[r]) for the row tiles ok(r) admits, then one commit group
// (always, so "block j landed" stays wait_group(U - 1) when it is consumed).
template <int RT, typename Dst, typename Ok>
__device__ __forceinline__ void cp_async_weight_block(const uint4* const (&wp)[RT], int64_t b,
                                                      const Dst& dst, const Ok& ok) {
#pragma unroll
  for (int r = 0; r < RT; ++r)
    if (ok(r)) cp_async16(dst(r), wp[r] + b * 32, 16);
  cp_async_commit();
}

// The ring's first U K blocks (kb0 .. kb0 + U - 1, those below kb1) of the row tiles row_ok(r)
// admits, one commit group each: U blocks in flight per lane before anything is consumed.
template <int U, int RT, typename Slot, typename RowOk>
__device__ __forceinline__ void cp_async_weight_prologue(const uint4* const (&wp)[RT], int64_t kb0,
                                                         int64_t kb1, const Slot& slot,
                                                         const RowOk& row_ok) {
#pragma unroll
  for (int u = 0; u < U; ++u)
    cp_async_weight_block<RT>(
        wp, kb0 + u, [&](int r) { return slot(u, r); },
        [&](int r) { return kb0 + u < kb1 && row_ok(r); });
}

template <int MT, int RT, int U, bool kG128, typename Epilogue>
__global__ void __launch_bounds__(256 / RT, (small_m_min_blocks<MT, RT>()))
    w4a8_small_m_kernel(SmallMParams p, Epilogue epi) {
  constexpr int kWarps = kSmTiles / RT;
  constexpr int kThreads = kWarps * 32;
  constexpr int kTok = 8 * MT;
  extern __shared__ __align__(128) uint8_t smem[];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.y) * kSmTiles + warp * RT;
  const int64_t nkb = p.k / 64;
  const int split = static_cast<int>(blockIdx.x);
  const int64_t kb0 = nkb * split / p.splits, kb1 = nkb * (split + 1) / p.splits;
  const bool tile_ok0 = tile0 < p.n / 16;  // n % 128 == 0 is not required: n % 16 == 0
  const bool tile_ok1 = RT == 1 || tile0 + 1 < p.n / 16;

  int32_t acc[RT][MT][4] = {};

  // The CTA's activation slice and, behind it, the weight ring: each lane's own 16-byte slots
  // (stage u, row tile r), filled by cp.async and read back by the same lane, so no barrier.
  const int nblk = static_cast<int>(kb1 - kb0);
  const int row_bytes = static_cast<int>(small_m_act_row_bytes(nblk));
  uint8_t* wring = smem + small_m_act_region_bytes(kTok, p.k, p.splits);
  const auto wslot = [&](int u, int r) {
    return wring + ((u * RT + r) * kThreads + static_cast<int>(threadIdx.x)) * 16;
  };

  // Weights first (the longest latency): U K blocks in flight per lane from the start. One
  // commit group per block, always (empty ones too), so "block j landed" is wait_group(U - 1)
  // when block j is consumed.
  const uint4* wp[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) wp[r] = p.packed + (tile_ok0 ? tile0 + r : 0) * nkb * 32 + lane;
  const auto row_ok = [&](int r) { return tile_ok0 && (r == 0 || tile_ok1); };
  cp_async_weight_prologue<U, RT>(wp, kb0, kb1, wslot, row_ok);

  // The weights (written at load time) are in flight; the activations, their scales and sums
  // are the previous kernel's output (pdl.h).
  pdl_wait();
  pdl_trigger();
  epi.prefetch(static_cast<int64_t>(blockIdx.y) * kSmRows, kSmRows, p.m);

  // The CTA's activation slice [token][K blocks kb0..kb1), staged once (every token's B
  // fragment is then a conflict-free shared load instead of an L2 round trip per K block).
  for (int i = static_cast<int>(threadIdx.x); i < kTok * nblk * 4; i += kThreads) {
    const int tok = i / (nblk * 4), c = i % (nblk * 4);
    const bool ok = tok < p.m;
    cp_async16(smem + tok * row_bytes + 16 * c, p.aq + (ok ? tok : 0) * p.k + kb0 * 64 + 16 * c,
               ok ? 16 : 0);
  }
  cp_async_commit();
  cp_async_wait<0>();  // (the weight ring's groups too: the slice is needed before block 0)
  __syncthreads();

  if (tile_ok0) {
    const int64_t groups = p.k / quant::kGroupSize;
    // Lane (g, t) reads token 8*mt + g, bytes 64b + 16t .. +15 (its B registers, see header).
    const uint8_t* xs = smem + g * row_bytes + 16 * t;

    for (int64_t kb = kb0; kb < kb1; kb += U) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t b = kb + u;
        if (b >= kb1) continue;  // (not break: keeps the loop fully unrolled)
        cp_async_wait<U - 1>();  // block b's group (committed U groups ago) has landed
        uint4 wv[RT];
#pragma unroll
        for (int r = 0; r < RT; ++r) wv[r] = lds128(wslot(u, r));
        // Convert both row tiles first, then one activation fragment at a time (each used by
        // RT tiles): live registers stay at RT * 8 codes + one fragment beside the ring.
        // (Kept inline, not shared with the wgmma kernel's copy below: moving it into a helper
        // changed the RT = 2 kernels' generated code, which the tuned table was measured on.)
        uint32_t a[RT][8];
#pragma unroll
        for (int r = 0; r < RT; ++r) {
          // Low nibbles: row g; high nibbles: row g + 8. Words 2s + r -> a(2r), a(2r + 1).
          const uint32_t words[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            a[r][2 * w] = words[w] & 0x0F0F0F0Fu;
            a[r][2 * w + 1] = (words[w] >> 4) & 0x0F0F0F0Fu;
          }
          if constexpr (kG128) {
            const int64_t grp = b / 2;  // 64-wide block inside one 128-wide group
            const int64_t grow_lo = (16 * (tile0 + r) + g) * groups, grow_hi = grow_lo + 8 * groups;
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
              a[r][2 * w] = detail::g128_bytes(a[r][2 * w], s_lo, z_lo);
              a[r][2 * w + 1] = detail::g128_bytes(a[r][2 * w + 1], s_hi, z_hi);
            }
          }
        }
        // Refill the stage with block b + U (after the conversion consumed the slot's bytes).
        cp_async_weight_block<RT>(
            wp, b + U, [&](int r) { return wslot(u, r); },
            [&](int r) { return b + U < kb1 && row_ok(r); });
        mma_token_tiles<MT, RT>(acc, a, xs + (b - kb0) * 64, row_bytes);
      }
    }
  }
  __syncthreads();  // every activation read is done: the partial tile reuses the memory

  int32_t* part = reinterpret_cast<int32_t*>(smem);  // [token][row in CTA]
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      store_c_tile(part, kSmRows, 8 * mt + 2 * t, (warp * RT + r) * 16 + g, acc[r][mt][0],
                   acc[r][mt][1], acc[r][mt][2], acc[r][mt][3]);
  cluster_reduce_epilogue<kTok, kThreads>(p, part, epi);
}

#include "backend/cuda/gemm_w4a8_small_m_ktile.cuh"
#include "backend/cuda/gemm_w4a8_small_m_wgmma.cuh"

int64_t token_tiles(int64_t m) {
  return m <= 8 ? 1 : (m <= 16 ? 2 : (m <= 32 ? 4 : 8));
}

struct TunedEntry {
  bool g128;
  int mt;
  int64_t n, k;
  int rt, u, splits;
  bool wgmma;
  bool ktile = false;  // (entries written before the row-tile kernel have 8 fields)
};

// The tuned table (bench_gemm --tune-small-m writes this file; docs/kernels.md).
constexpr TunedEntry kTuned[] = {
#include "backend/cuda/gemm_w4a8_small_m_tuned.inc"
    {false, 0, 0, 0, 0, 0, 0, false},  // sentinel (mt 0 never matches): the table may be empty
};

// One launch of a small-M kernel: grid (splits, 128-channel row blocks), each column of
// `splits` CTAs one thread-block cluster (the split-K reduction runs over its shared memories).
template <typename Kernel, typename Epilogue>
void launch_clusters(Kernel kernel, const SmallMParams& p, const Epilogue& epi, int threads,
                     int64_t smem_bytes, cudaStream_t stream, const char* what) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(p.splits),
                     static_cast<unsigned>((p.n + kSmRows - 1) / kSmRows), 1);
  cfg.blockDim = dim3(static_cast<unsigned>(threads), 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(smem_bytes);
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(p.splits);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  add_pdl_attribute(cfg, attr);
  cuda_check(cudaLaunchKernelEx(&cfg, kernel, p, epi), what, shape(p.m, p.n, p.k));
}

// Over 48 KB of dynamic shared memory needs the opt-in, once per kernel: the static belongs to
// this instantiation (one per kernel; its initializer runs once, thread-safely).
template <auto kKernel>
void small_m_smem_opt_in(const SmallMParams& p, const char* what) {
  static const cudaError_t status = cudaFuncSetAttribute(
      kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmallMSmemMax));
  cuda_check(status, what, shape(p.m, p.n, p.k));
}

template <int MT, int RT, int U, bool kG128, typename Epilogue>
void launch_small_m_cfg(const SmallMParams& p, const Epilogue& epi, cudaStream_t stream) {
  constexpr auto kernel = w4a8_small_m_kernel<MT, RT, U, kG128, Epilogue>;
  small_m_smem_opt_in<kernel>(p, "gemm_w4a8 small-M smem attribute");
  launch_clusters(kernel, p, epi, 256 / RT, small_m_smem_bytes(8 * MT, p.k, p.splits, U), stream,
                  "gemm_w4a8 small-M launch");
}

template <int MT, bool kG128, typename Epilogue>
void launch_small_m_wgmma(const SmallMParams& p, const Epilogue& epi, cudaStream_t stream) {
  constexpr auto kernel = w4a8_small_m_wgmma_kernel<MT, kG128, Epilogue>;
  const int64_t smem_bytes = small_m_wgmma_smem_bytes(8 * MT);
  small_m_smem_opt_in<kernel>(p, "gemm_w4a8 small-M wgmma smem attribute");
  launch_clusters(kernel, p, epi, 256, smem_bytes, stream, "gemm_w4a8 small-M wgmma launch");
}

// The row-tile kernel: one CTA per 16-row tile, no cluster.
template <int MT, int RT, int U, bool kG128, typename Epilogue>
void launch_small_m_ktile(const SmallMParams& p, const Epilogue& epi, cudaStream_t stream) {
  constexpr auto kernel = w4a8_small_m_ktile_kernel<MT, RT, U, kG128, Epilogue>;
  small_m_smem_opt_in<kernel>(p, "gemm_w4a8 small-M row-tile smem attribute");
  cuda_check(
      launch_pdl(kernel, dim3(static_cast<unsigned>((p.n / 16 + RT - 1) / RT)),
                 dim3(ktile_small_m::kThreads),
                 static_cast<size_t>(small_m_ktile_smem_bytes(8 * MT, p.k, U, RT)), stream, p, epi),
      "gemm_w4a8 small-M row-tile launch", shape(p.m, p.n, p.k));
}

template <int MT, bool kG128, typename Epilogue>
void launch_small_m_mt(const SmallMParams& p, const W4A8SmallMConfig& c, const Epilogue& epi,
                       cudaStream_t stream) {
  if (c.wgmma) return launch_small_m_wgmma<MT, kG128>(p, epi, stream);
  if (c.ktile) {  // (splits = the CTA's warps, its K parts: 8)
    if (c.row_tiles_per_warp == 2) return launch_small_m_ktile<MT, 2, 4, kG128>(p, epi, stream);
    if (c.k_blocks_in_flight == 4) return launch_small_m_ktile<MT, 1, 4, kG128>(p, epi, stream);
    return launch_small_m_ktile<MT, 1, 8, kG128>(p, epi, stream);
  }
  if (c.row_tiles_per_warp == 1) {
    if (c.k_blocks_in_flight == 4) return launch_small_m_cfg<MT, 1, 4, kG128>(p, epi, stream);
    if (c.k_blocks_in_flight == 16) return launch_small_m_cfg<MT, 1, 16, kG128>(p, epi, stream);
    return launch_small_m_cfg<MT, 1, 8, kG128>(p, epi, stream);
  }
  if (c.k_blocks_in_flight == 2) return launch_small_m_cfg<MT, 2, 2, kG128>(p, epi, stream);
  return launch_small_m_cfg<MT, 2, 4, kG128>(p, epi, stream);
}

template <bool kG128, typename Epilogue>
void launch_small_m(SmallMParams p, const W4A8SmallMConfig& c, const Epilogue& epi,
                    cudaStream_t stream) {
  p.splits = c.splits;
  switch (token_tiles(p.m)) {
    case 1:
      return launch_small_m_mt<1, kG128>(p, c, epi, stream);
    case 2:
      return launch_small_m_mt<2, kG128>(p, c, epi, stream);
    case 4:
      return launch_small_m_mt<4, kG128>(p, c, epi, stream);
    default:
      return launch_small_m_mt<8, kG128>(p, c, epi, stream);
  }
}

bool small_m_ok(const int8_t* aq, int64_t m, int64_t n, int64_t k, const uint8_t* packed,
                const uint16_t* y) {
  if (packed == nullptr || aq == nullptr || y == nullptr) return false;
  if (m < 1 || m > kW4A8SmallMMax || !w4a8_packable(n, k)) return false;
  // Exact int32 range (as the CPU reference's check) and the grid's y limit.
  if (k > (int64_t{1} << 31) / (128 * 128) - 1 || (n + kSmRows - 1) / kSmRows > 65535) return false;
  if (!aligned16(aq) || !aligned16(packed)) return false;
  return sm_info().major >= 9;  // thread-block clusters
}

// The configuration to run: the caller's (validated), else the tuned table's, else the default.
W4A8SmallMConfig resolve_config(bool g128, int64_t m, int64_t n, int64_t k,
                                const W4A8SmallMConfig* forced) {
  if (forced != nullptr) {
    check(w4a8_small_m_config_valid(*forced, m, k),
          "gemm_w4a8 small-M: invalid configuration (mma.sync: row tiles 1|2, K blocks in flight "
          "4|8|16 with 1 row tile or 2|4 with 2, activation slice <= 160 KB of shared memory; "
          "wgmma: 1 row tile, 8 K blocks; splits 1..8 and <= k/64; row-tile (ktile): 1 row tile "
          "with 4|8 K blocks or 2 with 4 K blocks; splits = its 8 warps; slices <= 160 KB), " +
              shape(m, n, k));
    return *forced;
  }
  return w4a8_small_m_config(g128, m, n, k);
}

}  // namespace

bool w4a8_packable(int64_t n, int64_t k) {
  return n > 0 && k > 0 && n % 16 == 0 && k % 64 == 0;
}

void w4a8_pack_codes(const uint8_t* q, int64_t n, int64_t k, uint8_t* packed, cudaStream_t stream) {
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
    g128_expand_kernel<true>
        <<<grid_for(chunks, 256), 256, 0, stream>>>(w.q, w.s2_scales, w.s2_zeros, w.n, w.k, w8);
  } else {
    g128_expand_kernel<false>
        <<<grid_for(chunks, 256), 256, 0, stream>>>(w.q, w.s2_scales, w.s2_zeros, w.n, w.k, w8);
  }
  check_launch("w4a8_g128_expand", shape(0, w.n, w.k));
}

void w4a8_add_bias(uint16_t* y, const uint16_t* bias, int64_t m, int64_t n, cudaStream_t stream) {
  if (m == 0 || bias == nullptr) return;
  add_bias_kernel<<<grid_for(m * n, 256), 256, 0, stream>>>(y, bias, m * n, n);
  check_launch("w4a8_add_bias", shape(m, n, 0));
}

bool w4a8_small_m_config_valid(const W4A8SmallMConfig& c, int64_t m, int64_t k) {
  if (m < 1 || m > kW4A8SmallMMax || (c.wgmma && c.ktile)) return false;
  // The row-tile kernel's `splits` are its warps (K parts inside the CTA; a part may be empty).
  if (c.ktile)
    return ((c.row_tiles_per_warp == 1 && c.splits == 8 &&
             (c.k_blocks_in_flight == 4 || c.k_blocks_in_flight == 8)) ||
            (c.row_tiles_per_warp == 2 && c.splits == 8 && c.k_blocks_in_flight == 4)) &&
           small_m_ktile_smem_bytes(8 * token_tiles(m), k, c.k_blocks_in_flight,
                                    c.row_tiles_per_warp) <= kSmallMSmemMax;
  if (c.splits < 1 || c.splits > kMaxSplits || c.splits > k / 64) return false;
  if (c.wgmma)
    return c.row_tiles_per_warp == 1 && c.k_blocks_in_flight == wgmma_small_m::kBlocksPerChunk;
  const bool rt_u =
      (c.row_tiles_per_warp == 1 &&
       (c.k_blocks_in_flight == 4 || c.k_blocks_in_flight == 8 || c.k_blocks_in_flight == 16)) ||
      (c.row_tiles_per_warp == 2 && (c.k_blocks_in_flight == 2 || c.k_blocks_in_flight == 4));
  return rt_u && small_m_smem_bytes(8 * token_tiles(m), k, c.splits, c.k_blocks_in_flight) <=
                     kSmallMSmemMax;
}

namespace {

uint64_t tuned_key(bool g128, int64_t mt, int64_t n, int64_t k) {
  return (static_cast<uint64_t>(g128) << 63) | (static_cast<uint64_t>(mt) << 56) |
         (static_cast<uint64_t>(n) << 28) | static_cast<uint64_t>(k);
}

// The tuned table indexed once (the first entry of a key wins, as in the file's order): every
// small-M GEMM call looks its shape up here.
const std::unordered_map<uint64_t, W4A8SmallMConfig>& tuned_index() {
  static const auto* index = [] {
    auto* m = new std::unordered_map<uint64_t, W4A8SmallMConfig>();  // never freed (teardown)
    for (const TunedEntry& e : kTuned) {
      if (e.mt == 0) continue;  // the sentinel
      m->emplace(tuned_key(e.g128, e.mt, e.n, e.k),
                 W4A8SmallMConfig{e.rt, e.u, e.splits, e.wgmma, e.ktile});
    }
    return m;
  }();
  return *index;
}

}  // namespace

W4A8SmallMConfig w4a8_small_m_config(bool g128, int64_t m, int64_t n, int64_t k) {
  const int64_t mt = token_tiles(m);
  if (n < (int64_t{1} << 28) && k < (int64_t{1} << 28)) {
    const auto& index = tuned_index();
    if (const auto it = index.find(tuned_key(g128, mt, n, k)); it != index.end()) {
      if (w4a8_small_m_config_valid(it->second, m, k)) return it->second;
    }
  }
  // No entry: what the H200 tuning chose most often. Up to 32 tokens the mma.sync kernel, 8 K
  // blocks in flight, split until about 2 CTAs per SM (its memory parallelism); above, the wgmma
  // kernel with about one CTA per SM. Splits shrink to what K and shared memory allow.
  const int64_t sms = sm_info().sm_count > 0 ? sm_info().sm_count : 132;
  const int64_t row_blocks = (n + kSmRows - 1) / kSmRows;
  const bool wgmma = token_tiles(m) == 8;
  const int64_t ctas = wgmma ? sms : 2 * sms;
  int s = 1;
  while (s < kMaxSplits && row_blocks * 2 * s <= ctas) s *= 2;
  W4A8SmallMConfig c{1, 8, s, wgmma};
  for (int up = s; up <= kMaxSplits; ++up) {  // more splits -> smaller activation slices
    c.splits = up;
    if (w4a8_small_m_config_valid(c, m, k)) return c;
  }
  for (c.splits = s; c.splits >= 1; --c.splits) {  // fewer K blocks than splits
    if (w4a8_small_m_config_valid(c, m, k)) return c;
  }
  // The mma.sync kernel's slice does not fit (a K over ~40k): the wgmma kernel streams its
  // activations and always fits (k >= 64 for any packable shape).
  return W4A8SmallMConfig{1, 8, static_cast<int>(std::min<int64_t>(kMaxSplits, k / 64)), true};
}

bool w4a8_small_m_applies(bool /*g128*/, int64_t m, int64_t n, int64_t k) {
  // w4a8_small_m_config() always returns a valid configuration (its last resort is the wgmma
  // kernel), so the shape alone decides.
  return m >= 1 && m <= kW4A8SmallMMax && w4a8_packable(n, k);
}

bool gemm_w4a8_per_channel_small_m(const int8_t* aq, const uint16_t* a_scale, const uint16_t* a_sum,
                                   int64_t m, const W4PerChannelView& w, const uint16_t* bias,
                                   uint16_t* y, cudaStream_t stream,
                                   const W4A8SmallMConfig* config) {
  if (!small_m_ok(aq, m, w.n, w.k, w.q_packed, y) || a_scale == nullptr || a_sum == nullptr)
    return false;
  const W4A8SmallMConfig c = resolve_config(false, m, w.n, w.k, config);
  const SmallMParams p{
      aq, reinterpret_cast<const uint4*>(w.q_packed), nullptr, nullptr, m, w.n, w.k, 1};
  const detail::W4PerChannelEpi epi{a_scale, a_sum, w.s1_scales, w.s1_szeros,
                                    bias,    y,     nullptr,     w.n};
  launch_small_m<false>(p, c, epi, stream);
  return true;
}

bool gemm_w4a8_g128_small_m(const int8_t* aq, const uint16_t* a_scale, int64_t m,
                            const W4G128View& w, const uint16_t* bias, uint16_t* y,
                            cudaStream_t stream, const W4A8SmallMConfig* config) {
  if (!small_m_ok(aq, m, w.n, w.k, w.q_packed, y) || a_scale == nullptr ||
      w.k % quant::kGroupSize != 0)
    return false;
  const W4A8SmallMConfig c = resolve_config(true, m, w.n, w.k, config);
  const SmallMParams p{
      aq, reinterpret_cast<const uint4*>(w.q_packed), w.s2_scales, w.s2_zeros, m, w.n, w.k, 1};
  const detail::W4G128Epi epi{a_scale, w.s1_scales, bias, y, nullptr, w.n};
  launch_small_m<true>(p, c, epi, stream);
  return true;
}

}  // namespace qserve::cuda
