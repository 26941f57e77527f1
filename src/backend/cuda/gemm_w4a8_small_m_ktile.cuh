// The row-tile variant of the small-M W4A8 kernel (included by gemm_w4a8_fast.cu, which owns the
// packed layout and the launch plumbing; the conversion and the MMAs are the mma.sync kernel's).
//
// Why: the cluster kernels split K across the CTAs of a thread-block cluster and reduce through
// distributed shared memory behind cluster barriers. On qkv / o at M <= 16 that tail (wait for the
// cluster's slowest CTA, one DSMEM round trip, the epilogue, a second barrier) was ~2 us of a
// ~7 us kernel (docs/kernels.md, "Twelfth session"). Here a CTA is RT (1 or 2) 16-row tiles and
// its 8 warps split K among themselves: each warp streams its K part of the tiles' weights
// through its lanes' cp.async ring and multiplies them with its own staged slice of the
// activations, and the split-K sum is 8 partial tiles in the CTA's shared memory behind one
// __syncthreads: no cluster, no cross-CTA traffic, and no CTA-wide barrier before the K loop (a
// warp waits for its own copies). The grid is N / (16 RT) CTAs: with one tile per CTA qkv has 384
// and o 256, the parallelism the cluster split gave them.

namespace ktile_small_m {

// A CTA's warps = its K parts (16 measured slower: docs/kernels.md); warp w's K blocks:
// [w * nkb / kWarps, (w + 1) * nkb / kWarps).
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
__host__ __device__ constexpr int64_t max_blocks(int64_t k) {
  return (k / 64 + kWarps - 1) / kWarps;
}

}  // namespace ktile_small_m

// Dynamic shared memory of the row-tile kernel: per warp its activation slice ([token][its K
// blocks], the mma.sync kernel's padded rows) and its lanes' weight ring (U x RT x 16 bytes per
// lane); the int32 partial tiles (8 warps x 16 RT rows x tokens) reuse the activation slices.
__host__ __device__ inline int64_t small_m_ktile_warp_bytes(int64_t tokens, int64_t k, int u,
                                                            int rt) {
  const int64_t act = tokens * small_m_act_row_bytes(ktile_small_m::max_blocks(k));
  return (act + int64_t{u} * rt * 512 + 127) / 128 * 128;
}
__host__ __device__ inline int64_t small_m_ktile_smem_bytes(int64_t tokens, int64_t k, int u,
                                                            int rt) {
  const int64_t all = ktile_small_m::kWarps * small_m_ktile_warp_bytes(tokens, k, u, rt);
  const int64_t part = int64_t{ktile_small_m::kWarps} * 16 * rt * tokens * 4;
  return all > part ? all : part;
}

// RT 16-row tiles per CTA (RT = 2: each activation fragment feeds both weight tiles, half the
// CTAs and half the activation bytes staged per weight byte).
template <int MT, int RT, int U, bool kG128, typename Epilogue>
__global__ void __launch_bounds__(ktile_small_m::kThreads, (RT * MT >= 8 ? 1 : 2))
    w4a8_small_m_ktile_kernel(SmallMParams p, Epilogue epi) {
  namespace kt = ktile_small_m;
  constexpr int kTok = 8 * MT;
  extern __shared__ __align__(128) uint8_t smem[];

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t tile0 = static_cast<int64_t>(blockIdx.x) * RT;  // first 16-row tile
  const int tiles = static_cast<int>(p.n / 16 - tile0 < RT ? p.n / 16 - tile0 : RT);
  constexpr int kRows = 16 * RT;
  // Row tile r of the CTA (past the last tile: the first, whose reads are valid and unused).
  const auto tile_of = [&](int r) { return tile0 + (r < tiles ? r : 0); };
  const int64_t nkb = p.k / 64;
  const int64_t kb0 = nkb * warp / kt::kWarps, kb1 = nkb * (warp + 1) / kt::kWarps;
  const int nblk = static_cast<int>(kb1 - kb0);
  const int row_bytes = static_cast<int>(small_m_act_row_bytes(nblk));
  uint8_t* wbase = smem + warp * small_m_ktile_warp_bytes(kTok, p.k, U, RT);
  uint8_t* ring = wbase + kTok * row_bytes;  // (the slice is sized for this warp's blocks)
  const auto slot = [&](int u, int r) { return ring + ((u * RT + r) * 32 + lane) * 16; };

  // Weights first: U K blocks in flight per lane and tile, one commit group per block (empty
  // ones too).
  const uint4* wp[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) wp[r] = p.packed + tile_of(r) * nkb * 32 + lane;
  const auto row_ok = [&](int r) { return r < tiles; };
  cp_async_weight_prologue<U, RT>(wp, kb0, kb1, slot, row_ok);
  pdl_wait();
  pdl_trigger();
  epi.prefetch(tile0 * 16, kRows, p.m);  // the epilogue operands into L2

  // The warp's activation slice [token][its K blocks]; tokens past M read zeros.
  for (int i = lane; i < kTok * nblk * 4; i += 32) {
    const int tok = i / (nblk * 4), c = i % (nblk * 4);
    const bool ok = tok < p.m;
    cp_async16(wbase + tok * row_bytes + 16 * c, p.aq + (ok ? tok : 0) * p.k + kb0 * 64 + 16 * c,
               ok ? 16 : 0);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();  // the lanes' copies are visible to the whole warp

  int32_t acc[RT][MT][4] = {};
  const uint8_t* xs = wbase + g * row_bytes + 16 * t;
  for (int64_t kb = kb0; kb < kb1; kb += U) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t b = kb + u;
      if (b >= kb1) continue;
      cp_async_wait<U - 1>();
      uint32_t a[RT][8];
#pragma unroll
      for (int r = 0; r < RT; ++r)
        convert_packed_block<kG128>(lds128(slot(u, r)), b, tile_of(r), g, p, a[r]);
      cp_async_weight_block<RT>(
          wp, b + U, [&](int r) { return slot(u, r); },
          [&](int r) { return b + U < kb1 && row_ok(r); });
      mma_token_tiles<MT, RT>(acc, a, xs + (b - kb0) * 64, row_bytes);
    }
  }

  // The epilogue operands of this thread's output before the barrier (their latency hides
  // behind the wait for the CTA's slowest warp).
  const int tok_used = static_cast<int>(p.m < kTok ? p.m : kTok);
  const int e = static_cast<int>(threadIdx.x);  // output (token e / kRows, row e % kRows)
  const int outs = tok_used * kRows;
  const auto valid = [&](int o) { return o % kRows < 16 * tiles; };
  typename Epilogue::Operands ops{};
  if (e < outs && valid(e)) ops = epi.load(e / kRows, tile0 * 16 + e % kRows);
  __syncthreads();  // every warp's activation reads are done: the partial tiles reuse the memory
  int32_t* part = reinterpret_cast<int32_t*>(smem) + warp * kRows * kTok;  // [token][row]
#pragma unroll
  for (int r = 0; r < RT; ++r)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      store_c_tile(part, kRows, 8 * mt + 2 * t, 16 * r + g, acc[r][mt][0], acc[r][mt][1],
                   acc[r][mt][2], acc[r][mt][3]);
  __syncthreads();
  const int32_t* parts = reinterpret_cast<const int32_t*>(smem);
  for (int o = e; o < outs; o += kt::kThreads) {
    if (!valid(o)) continue;
    int32_t sum = 0;
#pragma unroll
    for (int w = 0; w < kt::kWarps; ++w) sum += parts[w * kRows * kTok + o];
    if (o != e) ops = epi.load(o / kRows, tile0 * 16 + o % kRows);
    epi.finish(o / kRows, tile0 * 16 + o % kRows, sum, ops);
  }
}
