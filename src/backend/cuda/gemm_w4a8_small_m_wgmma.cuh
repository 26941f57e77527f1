// The wgmma variant of the small-M W4A8 kernel (included by gemm_w4a8_fast.cu, which owns the
// packed layout, the launch plumbing and the cluster reduction it shares with the mma.sync one).
//
// Why: at M = 33..64 the mma.sync kernel issues 16 m16n8k32 MMAs and 8 activation loads per
// 16-byte weight load and becomes instruction/latency bound (2x slower than the weight stream).
// One wgmma m64nNk32 does a warpgroup's 64 channels x N tokens x 32 of K in one instruction.
//
// Operands. A = weights, from registers: wgmma's register fragment of A for m64nNk32 (8-bit) is,
// per warp of the warpgroup, the mma.m16n8k32 A fragment of its 16 rows, so the packed layout
// (gemm_w4a8_fast.h) feeds it unchanged: lane (g, t) holds rows g / g + 8 and, in the packed K
// permutation, activation bytes 64b + 16t + 8s + 4r .. +3 at A register 2r / 2r + 1 of K-step s.
// B = activations [token][K] (K-major, as 8-bit wgmma requires), staged in shared memory in the
// no-swizzle ("interleave") canonical layout: per 64-wide K block, 4 planes of 16 logical K
// bytes; in a plane, 8-token groups of 8 rows x 16 bytes (128 B). The packed permutation is
// applied while staging: 32-bit word w of the 16-byte activation chunk t goes to plane w, word t
// (a 4x4 word transpose), which puts logical K-step s, register r of lane t's A exactly on the
// activation bytes it multiplies. Descriptor of K-step s: start = plane 2s, leading byte offset
// (next 16 K bytes) = one plane = N * 16 B, stride byte offset (next 8 tokens) = 128 B.
//
// Pipeline. Each lane keeps 8 K blocks of weights in flight (a register ring, as the mma.sync
// kernel). Activations are staged 8 K blocks (a chunk) at a time into two shared buffers; while
// the MMAs of chunk c run, chunk c + 1 is staged one K block behind them (each block's load is
// issued before a block's MMAs and stored after the next block's). Per K block: convert (LOP3s;
// g128: byte-wise Q * s2 + z), 2 wgmmas, commit, wait (the A registers are reused).
// (Staging the CTA's whole K slice up front with 4-byte cp.async instead was measured 1.3-2x
// slower on the H200: the staging is not overlapped with anything.)

namespace wgmma_small_m {

constexpr int kBlocksPerChunk = 8;  // weight ring depth (K blocks in flight per lane)

// Shared-memory matrix descriptor, no swizzle (layout type 0), base offset 0.
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return static_cast<uint64_t>((addr >> 4) & 0x3FFF) |
         (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32);
}

__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wait_all() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Generic-proxy shared-memory writes become visible to the async proxy (wgmma's operand reads).
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_m64n8k32(int32_t (&d)[4], const uint32_t (&a)[4],
                                               uint64_t desc) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k32.s32.s8.s8 "
      "{%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, %8, p;\n"
      "}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
}

__device__ __forceinline__ void wgmma_m64n16k32(int32_t (&d)[8], const uint32_t (&a)[4],
                                                uint64_t desc) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, "
      "{%8, %9, %10, %11}, %12, p;\n"
      "}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),
        "+r"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
}

__device__ __forceinline__ void wgmma_m64n32k32(int32_t (&d)[16], const uint32_t (&a)[4],
                                                uint64_t desc) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16, %17, %18, %19}, %20, p;\n"
      "}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),
        "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]),
        "+r"(d[14]), "+r"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
}

__device__ __forceinline__ void wgmma_m64n64k32(int32_t (&d)[32], const uint32_t (&a)[4],
                                                uint64_t desc) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p;\n"
      "}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]),
        "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]),
        "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]),
        "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]),
        "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "n"(1));
}

template <int N>
__device__ __forceinline__ void mma(int32_t (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (N == 8)
    wgmma_m64n8k32(d, a, desc);
  else if constexpr (N == 16)
    wgmma_m64n16k32(d, a, desc);
  else if constexpr (N == 32)
    wgmma_m64n32k32(d, a, desc);
  else
    wgmma_m64n64k32(d, a, desc);
}

}  // namespace wgmma_small_m

// Dynamic shared memory of the wgmma kernel for `tokens` (8 MT): two staged chunks of
// kBlocksPerChunk K blocks, later reused for the int32 partial tile (always smaller).
__host__ __device__ constexpr int64_t small_m_wgmma_smem_bytes(int64_t tokens) {
  return 2 * wgmma_small_m::kBlocksPerChunk * tokens * 64;
}

// MT token tiles of 8 (N = 8 MT tokens); 2 warpgroups x 64 channels = 128 channels per CTA.
template <int MT, bool kG128, typename Epilogue>
__global__ void __launch_bounds__(256, 2) w4a8_small_m_wgmma_kernel(SmallMParams p, Epilogue epi) {
  namespace wg = wgmma_small_m;
  constexpr int kN = 8 * MT;
  constexpr int kU = wg::kBlocksPerChunk;  // weight ring depth
  constexpr int kBlockBytes = kN * 64;     // one staged K block
  extern __shared__ __align__(128) uint8_t smem[];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int64_t tile = static_cast<int64_t>(blockIdx.y) * kSmTiles + warp;  // 16-row tile
  const bool tile_ok = tile < p.n / 16;
  const int64_t nkb = p.k / 64;
  const int split = static_cast<int>(blockIdx.x);
  const int64_t kb0 = nkb * split / p.splits, kb1 = nkb * (split + 1) / p.splits;

  int32_t acc[kN / 2];
#pragma unroll
  for (int i = 0; i < kN / 2; ++i) acc[i] = 0;

  // Weight ring prologue (before anything else: the longest latency).
  const uint4* wp = p.packed + (tile_ok ? tile : 0) * nkb * 32 + lane;
  uint4 ring[kU] = {};
#pragma unroll
  for (int u = 0; u < kU; ++u)
    if (tile_ok && kb0 + u < kb1) ring[u] = ld_stream(wp + (kb0 + u) * 32);

  // As w4a8_small_m_kernel: weights in flight, then wait for the activations (pdl.h).
  pdl_wait();
  pdl_trigger();
  epi.prefetch(static_cast<int64_t>(blockIdx.y) * kSmRows, kSmRows, p.m);

  // Activation staging, one K block at a time: thread q < 4 N moves token q / 4, 16-byte part
  // q % 4 of a block (a token's 64 bytes are 4 adjacent threads: coalesced loads; a warp's
  // stores to one plane fill 128 contiguous bytes: no bank conflicts).
  constexpr int kBufBytes = kU * kBlockBytes;  // one chunk
  const bool stager = static_cast<int>(threadIdx.x) < 4 * kN;
  const int s_tok = static_cast<int>(threadIdx.x) / 4, s_part = static_cast<int>(threadIdx.x) % 4;
  const int8_t* s_src = p.aq + (s_tok < p.m ? s_tok : 0) * p.k + 16 * s_part;
  const auto load_block = [&](int64_t b) {
    uint4 v = make_uint4(0, 0, 0, 0);
    if (stager && s_tok < p.m && b < kb1) v = __ldg(reinterpret_cast<const uint4*>(s_src + b * 64));
    return v;
  };
  const auto store_block = [&](uint8_t* blk, const uint4& v) {
    if (!stager) return;
    uint8_t* base = blk + (s_tok / 8) * 128 + (s_tok % 8) * 16 + 4 * s_part;
    // Word w of physical part s_part -> plane w, word s_part (see the header comment).
    *reinterpret_cast<uint32_t*>(base + 0 * kN * 16) = v.x;
    *reinterpret_cast<uint32_t*>(base + 1 * kN * 16) = v.y;
    *reinterpret_cast<uint32_t*>(base + 2 * kN * 16) = v.z;
    *reinterpret_cast<uint32_t*>(base + 3 * kN * 16) = v.w;
  };

#pragma unroll
  for (int bb = 0; bb < kU; ++bb) store_block(smem + bb * kBlockBytes, load_block(kb0 + bb));
  wg::fence_proxy_async();
  __syncthreads();

  int cur = 0;
  for (int64_t kbc = kb0; kbc < kb1; kbc += kU) {
    // The next chunk is staged one block behind the MMAs: block bb's load is issued before
    // block bb's MMAs and stored after block bb + 1's (latency hidden, 8 registers).
    const bool more = kbc + kU < kb1;
    uint8_t* next = smem + (cur ^ 1) * kBufBytes;
    const uint8_t* buf = smem + cur * kBufBytes;
    uint4 pending = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int bb = 0; bb < kU; ++bb) {
      const uint4 loaded = more ? load_block(kbc + kU + bb) : make_uint4(0, 0, 0, 0);
      const int64_t b = kbc + bb;
      if (b < kb1) {
        const uint4 wv = ring[bb];
        if (tile_ok && b + kU < kb1) ring[bb] = ld_stream(wp + (b + kU) * 32);
        uint32_t a[8];
        convert_packed_block<kG128>(wv, b, tile_ok ? tile : 0, g, p, a);
        const uint32_t a0[4] = {a[0], a[1], a[2], a[3]};
        const uint32_t a1[4] = {a[4], a[5], a[6], a[7]};
        const uint8_t* blk = buf + bb * kBlockBytes;
        wg::fence();
        wg::mma<kN>(acc, a0, wg::smem_desc(blk, kN * 16, 128));
        wg::mma<kN>(acc, a1, wg::smem_desc(blk + 2 * kN * 16, kN * 16, 128));
        wg::commit();
        wg::wait_all();
      }
      // The other buffer was last read by the previous chunk's wgmmas, all waited for before
      // the barrier that ended it.
      if (more && bb > 0) store_block(next + (bb - 1) * kBlockBytes, pending);
      pending = loaded;
    }
    if (more) store_block(next + (kU - 1) * kBlockBytes, pending);
    wg::fence_proxy_async();
    __syncthreads();
    cur ^= 1;
  }
  // (The loop ended on a barrier after the last wgmma wait: the partial tile reuses the memory.)

  int32_t* part = reinterpret_cast<int32_t*>(smem);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    store_c_tile(part, kSmRows, 8 * mt + 2 * t, warp * 16 + g, acc[4 * mt + 0], acc[4 * mt + 1],
                 acc[4 * mt + 2], acc[4 * mt + 3]);
  cluster_reduce_epilogue<kN, 256>(p, part, epi);
}
