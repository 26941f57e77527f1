// Hopper (sm_90a) prefill attention on wgmma (FlashAttention-3 ideas; issue 8).
//
// Why: prefill_attention_tc (attention_prefill_tc.cu, FA2 on mma.sync m16n8k16) keeps every
// operand fragment in registers (255 per thread, 12% occupancy) and issues one MMA per
// 16 x 8 x 16 block plus the ldmatrix traffic that feeds it: the issue slots, not the tensor
// cores, bound it. wgmma.mma_async multiplies a 64 x N x 16 block per instruction, reads its
// shared-memory operands itself (no ldmatrix) and runs asynchronously, so the softmax of one
// tile can execute on the CUDA cores while the tensor cores do the previous tile's P.V.
//
// Contract: the same arithmetic as prefill_attention_tc (ops_cuda_attention.h): q scaled by a
// power of two and rounded to fp16 once, fp16 K/V (the step's k16/v16 and KV16 pages copied,
// KV4/KV8 pages dequantized bit-exactly as attention_kv_device.cuh), fp32 accumulation,
// p = exp2(s c - m c + 15) so the fp16 P is never subnormal, the fp32 row sum of the same p,
// GQA row packing, causal + sliding-window masks, keys past the sequence end zero-filled.
// Only the q scale's granularity differs: one power of two per 64-row warpgroup instead of per
// 128-row CTA (the bound is per element, so it is unchanged). head_dim 128 only.
//
// CTA = 384 threads = 3 warpgroups, 128 packed (token, head) rows of one (sequence, KV head):
//  - warpgroups 0 and 1: consumers, 64 rows each (wgmma's M);
//  - warpgroup 2: the producer. Its 128 threads stream K/V tiles of BN keys (128 by default)
//    into a ring of STAGES shared-memory stages with 16-byte cp.async (16 threads per 256-byte
//    row, 8 rows per instruction), zero-fill rows past the sequence end, and dequantize cached
//    KV4/KV8 pages synchronously (that chunked-prefill path is correct, not fast). Per stage
//    two mbarriers: "full" (128 producer arrivals, each also waiting for the thread's cp.asyncs
//    through cp.async.mbarrier.arrive) and "empty" (one arrival per consumer warp once its
//    wgmmas reading the stage completed).
//  - Registers: each SM sub-partition holds one warp of each warpgroup and 16384 registers, so
//    the launch allows 168 per thread; setmaxnreg moves them to the consumers (224; a consumer
//    uses ~186: S 64 + O 64 + P 32 + softmax state) from the producer (56). ptxas (CUDA 13.0)
//    honoured the raised limit only without a trap instruction in the kernel (with __trap() it
//    capped the consumers at 168 and spilled), hence the wait timeout below instead of a trap.
//  - Shared memory (BN = 128, 3 stages: 225 KiB): Q [128][128] fp16, per stage K and V
//    [BN][128] fp16, in the canonical 128-byte-swizzle layouts (16-byte chunk c of a 128-byte
//    row r at (c ^ (r & 7)) * 16, 1024-byte aligned atoms of 8 rows). Q and K are K-major
//    (two 64-channel column blocks, each [rows][128 B]; descriptor SBO = 1024, LBO unused = 16,
//    k-step = +32 B inside a column block). V is the B operand of P.V with the transpose bit
//    (MN-major: channels contiguous): atoms of 8 keys x 64 channels, channel-block stride
//    LBO = 1024 B, 8-key-group stride SBO = 2048 B (CuTe's tile_to_shape of
//    Layout_MN_SW128_Atom, whose make_gmma_desc gives exactly these fields).
//  - S = Q K^T: 8 x wgmma m64n{BN}k16, both operands from shared memory. O += P V: BN / 16 x
//    wgmma m64n128k16 with P from registers: the S accumulator fragment (rows g / g + 8,
//    columns 8j + 2t + {0,1}) repacked to fp16 pairs is exactly wgmma's register-A fragment
//    (FA2's trick, as in prefill_attention_tc).
//  - Schedule per consumer warpgroup (FA3's intra-warpgroup overlap): issue S_i, rescale O,
//    issue P_{i-1} V_{i-1}, wait for S_i only (wait_group 1), mask + online softmax of S_i in
//    place (fp32) while P_{i-1} V_{i-1} runs, wait for it, release stage i-1, pack P_i.
//    Registers: S 64 + O 64 + P 32 fp32/fp16x2 per thread at BN = 128.
//  - Optional ping-pong (template flag, bench variant "_pp"): named barriers make the two
//    warpgroups take turns issuing their wgmmas, so one warpgroup's softmax overlaps the other's
//    GEMMs (FA3's inter-warpgroup schedule).
//  - Masks as prefill_attention_tc: per element only in tiles touching the diagonal, the window
//    edge or the sequence end; tiles no row sees are never loaded. CTAs with more keys first.
//  - A wait on an mbarrier gives up after ~2^31 clocks (a lost arrival then yields wrong
//    results, which the checks catch, instead of a hung GPU).
// Variants (block_n, stages, pingpong) for the benchmark: (128, 3, off) is the default,
// (128, 2, off/on), (128, 3, on), (64, 4, off); QSERVE_PREFILL_WGMMA=bn128s2|bn128s2pp|
// bn128s3pp|bn64s4 overrides the default at run time (read once).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/attention_kv_device.cuh"
#include "backend/cuda/attention_prefill_common.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/env_override.h"
#include "backend/cuda/ops_cuda_attention.h"
#include "core/error.h"

namespace qserve::cuda {

namespace {

using attn::kPage;
using attn::PageGeom;
using pf::dequant_chunk;
using pf::exp2_ftz;
using pf::pack_h2;
using pf::pack_halves;
using pf::smem_u32;
using pf::st_shared16;

constexpr int kD = 128;        // head_dim
constexpr int kWgRows = 64;    // packed rows per consumer warpgroup (wgmma M)
constexpr int kBM = 128;       // packed rows per CTA (2 consumer warpgroups)
constexpr int kThreads = 384;  // 2 consumer warpgroups + 1 producer warpgroup
constexpr int kProducerWg = 2;
// Registers per thread after setmaxnreg. Each SM sub-partition holds one warp of each
// warpgroup and 16384 registers: 32 * (kProducerRegs + 2 * kConsumerRegs) <= 16384.
constexpr int kProducerRegs = 56;
constexpr int kConsumerRegs = 224;
static_assert(kProducerRegs + 2 * kConsumerRegs <= 512, "register file of a sub-partition");
constexpr float kLog2e = 1.4426950408889634f;

template <int BN, int STAGES>
struct WgGeom {
  static_assert(BN == 64 || BN == 128, "BN");
  static constexpr int kQWgBytes = kWgRows * kD * 2;              // one warpgroup's Q slice
  static constexpr int kQBytes = kBM * kD * 2;                    // 32 KiB
  static constexpr int kTileBytes = BN * kD * 2;                  // one K (or V) tile
  static constexpr int kStageBytes = 2 * kTileBytes;              // K then V
  static constexpr int kBarOff = kQBytes + STAGES * kStageBytes;  // full[STAGES], empty[STAGES]
  static constexpr int kScratchOff = kBarOff + 2 * STAGES * 8;    // 8 floats (q max per warp)
  static constexpr int kSmemBytes = 1024 + kScratchOff + 8 * 4;   // + base alignment slack
  static constexpr int kSN = BN / 2;                              // S floats per thread
  static constexpr int kPK = BN / 16;                             // k-steps of P.V
};
static_assert(WgGeom<128, 3>::kSmemBytes <= 232448, "exceeds 227 KiB of shared memory");

struct WgArgs {
  const float* q;
  const uint16_t* k16;
  const uint16_t* v16;
  const uint8_t* k_pool;
  const uint8_t* v_pool;
  PageGeom geom;
  const int32_t* token_offset;
  const int32_t* num_tokens;
  const int32_t* context_len;
  const int32_t* block_table;
  int32_t block_stride;
  int format;  // KvFormat of the cached pages
  int num_heads;
  int kv_heads;
  int group;
  int window;
  float scale;
  float* out;
  // CTA order. 1 (the launch's choice): one-dimensional, (sequence, KV head)-major with each
  // head's row tiles heaviest first, so the CTAs resident together read one head's K/V and find
  // it in L2. Measured on the H200 against 0 (blockIdx.x = sequence x KV head, blockIdx.y = row
  // tile reversed: heaviest first over the whole grid, 32 heads' K/V in flight at 4 x 4096):
  // 480 vs 449 TFLOP/s at 4 x 4096, 523-561 vs 515-535 at 1 x 8192, 222 vs 179-184 at
  // 16 x 1024. 0 remains for grids past 2^31 - 1 CTAs.
  int combo_major;
  int row_tiles;
};

// ---- small PTX wrappers -------------------------------------------------------------------
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile(
      "{\n"
      ".reg .b64 st;\n"
      "mbarrier.arrive.shared::cta.b64 st, [%0];\n"
      "}\n" ::"r"(bar)
      : "memory");
}
// Arrives on `bar` once all cp.asyncs issued so far by this thread have completed (the pending
// count is raised by one now, so a separate mbar_arrive is still needed: CUTLASS's pattern).
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Waits for the completion of the phase with parity `parity`. A wait that lasts ~2^31 clocks
// (about a second; a real one lasts microseconds) means a lost arrival: the thread marks itself
// `dead`, stops waiting from then on and finishes with garbage, so a broken pipeline ends the
// launch with wrong results (which every check catches) instead of hanging the GPU. (__trap()
// here would make ptxas ignore setmaxnreg and cap the consumers at 168 registers.)
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity, bool& dead) {
  if (dead) return;
  long long start = 0;
  for (bool first = true;; first = false) {
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done) return;
    const long long now = clock64();
    if (first) start = now;
    if (now - start > (1ll << 31)) {
      dead = true;
      return;
    }
  }
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
__device__ __forceinline__ void named_bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// Generic-proxy shared-memory writes (st.shared, cp.async) become visible to wgmma's reads.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins register values in program order around the asynchronous wgmmas: the compiler sees the
// wgmma asm write its accumulators at issue, so reads after wgmma_wait must not be hoisted.
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
  }
}

// Shared-memory matrix descriptor: 128-byte swizzle (layout type 1), base offset 0.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) |
         (static_cast<uint64_t>((lbo >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFFu) << 32) | (1ull << 62);
}

// Byte offset of 16-byte chunk c (channels 8c..8c+7) of row r in a K-major [rows][128] fp16
// tile: two 64-channel column blocks of [rows][128 B], 128-byte swizzle.
template <int ROWS>
__device__ __forceinline__ uint32_t kmajor_off(int r, int c) {
  return static_cast<uint32_t>((c >> 3) * (ROWS * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}
// The V tile (MN-major for P.V): 8-key groups of 2048 B, each 2 channel blocks of 1024 B
// (8 keys x 128 B, 128-byte swizzle).
__device__ __forceinline__ uint32_t vtile_off(int r, int c) {
  return static_cast<uint32_t>((r >> 3) * 2048 + (c >> 3) * 1024 + (r & 7) * 128 +
                               (((c & 7) ^ (r & 7)) << 4));
}

// ---- wgmma wrappers (f16 inputs, f32 accumulators) ---------------------------------------
// D (64 x 64 fp32) (+)= A (64 x 16, smem) * B (64 x 16, smem), both K-major.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                   int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// D (64 x 128 fp32) (+)= A (64 x 16, smem) * B (128 x 16, smem), both K-major.
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t desc_a,
                                                    uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}

// D (64 x 128 fp32) += A (64 x 16, registers) * B (16 x 128, smem, MN-major: tnspB = 1).
__device__ __forceinline__ void wgmma_m64n128k16_rs_tb(float (&d)[64], const uint32_t (&a)[4],
                                                       uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(1));
}

template <int BN>
__device__ __forceinline__ void wgmma_s(float (&d)[BN / 2], uint64_t da, uint64_t db, int acc) {
  if constexpr (BN == 128) {
    wgmma_m64n128k16_ss(d, da, db, acc);
  } else {
    wgmma_m64n64k16_ss(d, da, db, acc);
  }
}

// ---- the producer warp: K/V tiles of BN keys into the stage ring ---------------------------
template <int BN, int STAGES>
__device__ __forceinline__ void produce(const WgArgs& a, uint32_t kv_s, uint32_t full_bar,
                                        uint32_t empty_bar, int seq, int kvh, int tok0, int ctx,
                                        int total, int t_first, int ntiles, int ptid) {
  using Geo = WgGeom<BN, STAGES>;
  const int c = ptid & 15;     // 16-byte chunk of a 256-byte row
  const int rsub = ptid >> 4;  // rows rsub, rsub + 8, ... (so r & 7 == rsub)
  const int64_t row_stride = static_cast<int64_t>(a.kv_heads) * kD;  // elements per token
  // Chunk c of the chunk's token j: k16[(tok0 + j) * Hkv * D + kvh * D + 8c].
  const int64_t chunk0 = (static_cast<int64_t>(tok0) * a.kv_heads + kvh) * kD + 8 * c;
  const uint16_t* kg = a.k16 + chunk0;
  const uint16_t* vg = a.v16 + chunk0;
  const int32_t* bt = a.block_table + static_cast<int64_t>(seq) * a.block_stride;
  bool dead = false;
  for (int it = 0; it < ntiles; ++it) {
    const int st = it % STAGES;
    // Stage st last held tile it - STAGES; wait until every consumer warp released it.
    if (it >= STAGES) mbar_wait(empty_bar + 8 * st, ((it / STAGES) & 1) ^ 1, dead);
    const uint32_t kd = kv_s + st * Geo::kStageBytes, vd = kd + Geo::kTileBytes;
    const int kb = (t_first + it) * BN;
    if (kb >= ctx && kb + BN <= total) {
      // Every key of the tile is one of the chunk's own fp16 rows (fresh prompts: all tiles
      // but the last).
      const int64_t e0 = static_cast<int64_t>(kb - ctx + rsub) * row_stride;
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) {
        const int r = 8 * i + rsub;
        const int64_t e = e0 + static_cast<int64_t>(8 * i) * row_stride;
        cp_async16(kd + kmajor_off<BN>(r, c), kg + e);
        cp_async16(vd + vtile_off(r, c), vg + e);
      }
    } else {
      for (int i = 0; i < BN / 8; ++i) {
        const int r = 8 * i + rsub;
        const int pos = kb + r;
        const uint32_t ko = kd + kmajor_off<BN>(r, c), vo = vd + vtile_off(r, c);
        if (pos >= total) {
          // Past the sequence end: only masked scores (P = 0) meet these rows; zeros keep
          // 0 * V finite.
          st_shared16(ko, make_uint4(0, 0, 0, 0));
          st_shared16(vo, make_uint4(0, 0, 0, 0));
        } else if (pos >= ctx) {
          const int64_t e = static_cast<int64_t>(pos - ctx) * row_stride;
          cp_async16(ko, kg + e);
          cp_async16(vo, vg + e);
        } else {
          // Cached context (chunked prefill) from the pages.
          const int64_t page = bt[pos / kPage];
          const uint8_t* kp = a.k_pool + page * a.geom.page_bytes;
          const uint8_t* vp = a.v_pool + page * a.geom.page_bytes;
          const int slot = pos % kPage;
          if (a.format == static_cast<int>(KvFormat::kv16)) {
            const int64_t e = a.geom.data_offset(kvh, slot) + 16 * c;
            cp_async16(ko, kp + e);
            cp_async16(vo, vp + e);
          } else if (a.format == static_cast<int>(KvFormat::kv8)) {
            st_shared16(ko, dequant_chunk<KvFormat::kv8>(kp, a.geom, kvh, slot, c));
            st_shared16(vo, dequant_chunk<KvFormat::kv8>(vp, a.geom, kvh, slot, c));
          } else {
            st_shared16(ko, dequant_chunk<KvFormat::kv4>(kp, a.geom, kvh, slot, c));
            st_shared16(vo, dequant_chunk<KvFormat::kv4>(vp, a.geom, kvh, slot, c));
          }
        }
      }
    }
    // The phase completes when all 128 threads arrived and their cp.asyncs landed; the plain
    // arrive (release) also publishes the st.shared zeros / dequantized rows.
    mbar_arrive_cp_async(full_bar + 8 * st);
    mbar_arrive(full_bar + 8 * st);
  }
  cp_async_wait_all();
}

// ---- the kernel ---------------------------------------------------------------------------
template <int BN, int STAGES, bool PP>
__global__ void __launch_bounds__(kThreads, 1) prefill_wgmma_kernel(WgArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Geo = WgGeom<BN, STAGES>;
  constexpr int SN = Geo::kSN, PK = Geo::kPK;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // The 128-byte swizzle pattern repeats every 1024 bytes of *address*: align the base.
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  float* scratch = reinterpret_cast<float*>(smem_raw + (base - raw) + Geo::kScratchOff);
  const uint32_t q_s = base, kv_s = base + Geo::kQBytes;
  const uint32_t full_bar = base + Geo::kBarOff, empty_bar = full_bar + 8 * STAGES;

  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  int combo, tile;
  if (a.combo_major) {
    const int b = static_cast<int>(blockIdx.x);
    combo = b / a.row_tiles;
    tile = a.row_tiles - 1 - (b - combo * a.row_tiles);
  } else {
    combo = static_cast<int>(blockIdx.x);
    tile = static_cast<int>(gridDim.y) - 1 - static_cast<int>(blockIdx.y);
  }
  const int seq = combo / a.kv_heads;
  const int kvh = combo % a.kv_heads;
  const int G = a.group;
  const int n = a.num_tokens[seq];
  const int r0 = tile * kBM;  // first packed row of the CTA
  if (r0 >= n * G) return;    // uniform over the CTA, before any barrier
  const int ctx = a.context_len[seq];
  const int tok0 = a.token_offset[seq];
  const int total = ctx + n;
  const int j_first = r0 / G;
  const int j_last = (min(n * G, r0 + kBM) - 1) / G;
  // Keys any valid row of the CTA can see: [kv_lo, kv_hi), in tiles t_first .. + ntiles - 1.
  const int kv_lo = attn::first_key(ctx + j_first, a.window);
  const int kv_hi = ctx + j_last + 1;
  const int t_first = kv_lo / BN;
  const int ntiles = (kv_hi - 1) / BN - t_first + 1;

  if (tid == 0) {
    for (int st = 0; st < STAGES; ++st) {
      mbar_init(full_bar + 8 * st, 128);  // the producer warpgroup's threads
      mbar_init(empty_bar + 8 * st, 8);   // the consumer warps
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (warp >= 4 * kProducerWg) {
    setmaxnreg_dec<kProducerRegs>();
    produce<BN, STAGES>(a, kv_s, full_bar, empty_bar, seq, kvh, tok0, ctx, total, t_first, ntiles,
                        tid - 128 * kProducerWg);
    return;
  }
  setmaxnreg_inc<kConsumerRegs>();

  // ---- consumer warpgroup wg: packed rows wr0 .. wr0 + 63 ------------------------------------
  const int wg = warp >> 2, wi = warp & 3, wtid = tid & 127;
  const int g = lane >> 2, t = lane & 3;
  const int wr0 = r0 + wg * kWgRows;
  const int rows_valid = max(0, min(kWgRows, n * G - wr0));
  const uint32_t qw_s = q_s + wg * Geo::kQWgBytes;

  // q: max|q| of the warpgroup's rows, a power-of-two scale, fp16, swizzled K-major.
  auto q_src = [&](int row) {
    const int R = wr0 + row, j = R / G, h = R - j * G;
    return a.q + ((static_cast<int64_t>(tok0) + j) * a.num_heads + kvh * G + h) * kD;
  };
  // The warpgroup's 64 x 128 fp32 slice in registers (8 chunks of 8 values per thread), every
  // load issued before any use: one DRAM round trip per CTA instead of a dependent chain of
  // loads and a second pass over the slice (at 1,024-token sequences each CTA has ~4.5 key
  // tiles of work, so this prologue was a large share of it).
  constexpr int kQChunks = kWgRows * 16 / 128;
  float4 qx[kQChunks], qy[kQChunks];
#pragma unroll
  for (int i = 0; i < kQChunks; ++i) {
    const int idx = wtid + 128 * i;
    const int row = idx >> 4, c = idx & 15;
    qx[i] = qy[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row < rows_valid) {
      const float4* p = reinterpret_cast<const float4*>(q_src(row) + 8 * c);
      qx[i] = p[0];
      qy[i] = p[1];
    }
  }
  float qmax = 0.0f;
#pragma unroll
  for (int i = 0; i < kQChunks; ++i) {
    const float4 x = qx[i], y = qy[i];
    qmax = fmaxf(qmax, fmaxf(fmaxf(fabsf(x.x), fabsf(x.y)), fmaxf(fabsf(x.z), fabsf(x.w))));
    qmax = fmaxf(qmax, fmaxf(fmaxf(fabsf(y.x), fabsf(y.y)), fmaxf(fabsf(y.z), fabsf(y.w))));
  }
  for (int off = 16; off > 0; off >>= 1) {
    qmax = fmaxf(qmax, __shfl_xor_sync(0xffffffffu, qmax, off));
  }
  if (lane == 0) scratch[warp] = qmax;
  named_bar_sync(1 + wg, 128);
  qmax = fmaxf(fmaxf(scratch[4 * wg], scratch[4 * wg + 1]),
               fmaxf(scratch[4 * wg + 2], scratch[4 * wg + 3]));
  int e = 0;
  if (qmax > 0.0f && isfinite(qmax)) {
    int ex = 0;
    (void)frexpf(qmax, &ex);  // qmax = f 2^ex, f in [0.5, 1): 2^(15-ex) maps it to [2^14, 2^15)
    e = min(max(15 - ex, -120), 120);
  }
  const float q_mul = scalbnf(1.0f, e);
#pragma unroll
  for (int i = 0; i < kQChunks; ++i) {
    const int idx = wtid + 128 * i;
    const int row = idx >> 4, c = idx & 15;
    uint4 v = make_uint4(0, 0, 0, 0);  // padding rows: q = 0 (finite scores, never stored)
    if (row < rows_valid) {
      const float4 x = qx[i], y = qy[i];
      v.x = pack_h2(__fmul_rn(x.x, q_mul), __fmul_rn(x.y, q_mul));
      v.y = pack_h2(__fmul_rn(x.z, q_mul), __fmul_rn(x.w, q_mul));
      v.z = pack_h2(__fmul_rn(y.x, q_mul), __fmul_rn(y.y, q_mul));
      v.w = pack_h2(__fmul_rn(y.z, q_mul), __fmul_rn(y.w, q_mul));
    }
    st_shared16(qw_s + kmajor_off<kWgRows>(row, c), v);
  }
  fence_proxy_async();  // the st.shared above are read by wgmma (async proxy)
  named_bar_sync(1 + wg, 128);
  // exp2 argument per score: s * c - m * c + 15 (see prefill_attention_tc).
  const float c_exp = __fmul_rn(scalbnf(a.scale, -e), kLog2e);

  // Positions of this thread's two rows (g and g + 8 of warp wi's 16) and their first keys.
  // Padding rows get positions past the end (harmless: finite keys, never stored).
  int rp[2], lo[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int R = wr0 + wi * 16 + hf * 8 + g;
    rp[hf] = ctx + R / G;
    lo[hf] = attn::first_key(rp[hf], a.window);
  }
  // A tile [kb, kb + BN) needs no per-element mask when every valid row sees all of it.
  const int pos_min = ctx + wr0 / G;
  const int pos_max = ctx + (wr0 + max(rows_valid, 1) - 1) / G;
  const int win_lo = a.window > 0 ? attn::first_key(pos_max, a.window) : 0;

  // Descriptors: Q and K K-major (LBO unused = 16 B, SBO = 8 rows x 128 B); V MN-major
  // (LBO = next 64-channel block, 1024 B; SBO = next 8 keys, 2048 B). Offsets are added to the
  // start-address field (bits 0-13, in 16-byte units; shared addresses < 2^18, no carry).
  const uint64_t dq0 = sw128_desc(qw_s, 16, 1024);
  const uint64_t dk0 = sw128_desc(kv_s, 16, 1024);
  const uint64_t dv0 = sw128_desc(kv_s + Geo::kTileBytes, 1024, 2048);

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
  float s[SN];
#pragma unroll
  for (int i = 0; i < SN; ++i) s[i] = 0.0f;
  uint32_t p[PK][4];
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  float alpha[2] = {1.0f, 1.0f};

  // S = Q K^T of stage st (8 k-steps of 16 channels; the first overwrites S).
  auto issue_s = [&](int st) {
    const uint64_t dk = dk0 + static_cast<uint64_t>((st * Geo::kStageBytes) >> 4);
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      const int qo = (ks >> 2) * (kWgRows * 128) + (ks & 3) * 32;
      const int ko = (ks >> 2) * (BN * 128) + (ks & 3) * 32;
      wgmma_s<BN>(s, dq0 + static_cast<uint64_t>(qo >> 4), dk + static_cast<uint64_t>(ko >> 4),
                  ks > 0 ? 1 : 0);
    }
  };
  // O += P V of stage st (BN / 16 k-steps of 16 keys).
  auto issue_pv = [&](int st) {
    const uint64_t dv = dv0 + static_cast<uint64_t>((st * Geo::kStageBytes) >> 4);
#pragma unroll
    for (int kk = 0; kk < PK; ++kk) {
      wgmma_m64n128k16_rs_tb(o, p[kk], dv + static_cast<uint64_t>((kk * 4096) >> 4));
    }
  };
  // Mask + online softmax of S in place (fp32 p); alpha = the factor O must be rescaled by.
  auto softmax = [&](int kb) {
    if (kb + BN - 1 > pos_min || kb < win_lo) {
#pragma unroll
      for (int j = 0; j < SN / 4; ++j) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int kp = kb + 8 * j + 2 * t + u;
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            if (kp > rp[hf] || kp < lo[hf]) s[4 * j + 2 * hf + u] = -INFINITY;
          }
        }
      }
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < SN / 4; ++j) {
        mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[hf], mx);
      // A row with no visible key yet keeps m = -inf; use 0 so exp2 sees -inf, not NaN.
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      alpha[hf] = m_new == m_run[hf] ? 1.0f : exp2_ftz(__fmul_rn(m_run[hf] - m_use, c_exp));
      m_run[hf] = m_new;
      const float moff = fmaf(m_use, c_exp, -15.0f);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < SN / 4; ++j) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const float pv = exp2_ftz(fmaf(s[4 * j + 2 * hf + u], c_exp, -moff));
          s[4 * j + 2 * hf + u] = pv;
          sum += pv;
        }
      }
      // This thread's share (its columns); quad-summed in the epilogue.
      l_run[hf] = fmaf(l_run[hf], alpha[hf], sum);
    }
  };
  // O *= alpha, skipped (warp-uniformly) when no row of the warp changed its max.
  auto rescale = [&]() {
    const bool any = alpha[0] != 1.0f || alpha[1] != 1.0f;
    if (__any_sync(0xffffffffu, any)) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        o[4 * j] *= alpha[0];
        o[4 * j + 1] *= alpha[0];
        o[4 * j + 2] *= alpha[1];
        o[4 * j + 3] *= alpha[1];
      }
    }
  };
  // P as fp16 A fragments: k-step kk = accumulator column blocks 2kk, 2kk + 1.
  auto pack = [&]() {
#pragma unroll
    for (int kk = 0; kk < PK; ++kk) {
      p[kk][0] = pack_h2(s[8 * kk + 0], s[8 * kk + 1]);  // row g,     keys 16kk + 2t
      p[kk][1] = pack_h2(s[8 * kk + 2], s[8 * kk + 3]);  // row g + 8, keys 16kk + 2t
      p[kk][2] = pack_h2(s[8 * kk + 4], s[8 * kk + 5]);  // row g,     keys 16kk + 8 + 2t
      p[kk][3] = pack_h2(s[8 * kk + 6], s[8 * kk + 7]);  // row g + 8, keys 16kk + 8 + 2t
    }
  };
  // Ping-pong: warpgroup w issues its wgmmas only after the other one issued its previous
  // batch (named barriers 3 + w, 256 threads: 128 bar.sync + 128 bar.arrive). Issue phases:
  // S_0; then S_i + P_{i-1} V_{i-1} for i = 1 .. ntiles - 1; then the last P V. Warpgroup 1
  // opens warpgroup 0's first turn and skips its arrive after its last phase, so every
  // arrival is matched.
  if constexpr (PP) {
    if (wg == 1) named_bar_arrive(3, 256);
  }
  auto turn_begin = [&]() {
    if constexpr (PP) named_bar_sync(3 + wg, 256);
  };
  auto turn_end = [&](bool last) {
    if constexpr (PP) {
      if (!(last && wg == 1)) named_bar_arrive(3 + (wg ^ 1), 256);
    } else {
      (void)last;
    }
  };

  // Tile 0.
  bool dead = false;
  mbar_wait(full_bar, 0, dead);
  fence_proxy_async();
  turn_begin();
  wgmma_fence();
  issue_s(0);
  wgmma_commit();
  turn_end(false);
  wgmma_wait<0>();
  reg_fence(s);
  softmax(t_first * BN);
  pack();
  for (int it = 1; it < ntiles; ++it) {
    const int st = it % STAGES, pst = (it - 1) % STAGES;
    mbar_wait(full_bar + 8 * st, static_cast<uint32_t>((it / STAGES) & 1), dead);
    fence_proxy_async();
    turn_begin();
    wgmma_fence();
    issue_s(st);
    wgmma_commit();
    rescale();  // O holds tiles < i - 1 (their wgmmas completed): bring it to m_{i-1}
    wgmma_fence();
    issue_pv(pst);
    wgmma_commit();
    turn_end(false);
    wgmma_wait<1>();  // S_i done; P_{i-1} V_{i-1} may still run during the softmax
    reg_fence(s);
    softmax((t_first + it) * BN);
    wgmma_wait<0>();
    reg_fence(o);
    reg_fence(p);
    __syncwarp();
    if (lane == 0) mbar_arrive(empty_bar + 8 * pst);  // this warp is done with tile i - 1
    pack();
  }
  turn_begin();
  rescale();
  wgmma_fence();
  issue_pv((ntiles - 1) % STAGES);
  wgmma_commit();
  turn_end(true);
  wgmma_wait<0>();
  reg_fence(o);

  // ---- epilogue: O / l, fp32 rows of [T, Hq, D] ----------------------------------------------
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float l = l_run[hf];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = wi * 16 + hf * 8 + g;
    if (row < rows_valid) {
      const float inv = 1.0f / l;
      const int R = wr0 + row, j = R / G, h = R - j * G;
      float* dst = a.out + ((static_cast<int64_t>(tok0) + j) * a.num_heads + kvh * G + h) * kD;
#pragma unroll
      for (int nb = 0; nb < 16; ++nb) {
        *reinterpret_cast<float2*>(dst + nb * 8 + 2 * t) =
            make_float2(o[4 * nb + 2 * hf] * inv, o[4 * nb + 2 * hf + 1] * inv);
      }
    }
  }
#else
  (void)a;
  __trap();  // sm_90a only (prefill_attention_wgmma_supported() is false elsewhere)
#endif
}

// ---- host side ----------------------------------------------------------------------------

template <int BN, int STAGES, bool PP>
void launch_wg(const WgArgs& a, int num_seqs, int kv_heads, int row_tiles, cudaStream_t stream) {
  constexpr int smem = WgGeom<BN, STAGES>::kSmemBytes;
  // Idempotent and cheap; needed once per instantiation for > 48 KiB of dynamic smem.
  QSERVE_CUDA_CHECK(cudaFuncSetAttribute(prefill_wgmma_kernel<BN, STAGES, PP>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                    "prefill_attention_wgmma smem attribute");
  const int64_t combos = static_cast<int64_t>(num_seqs) * kv_heads;
  WgArgs b = a;
  b.row_tiles = row_tiles;
  b.combo_major = combos * row_tiles <= 0x7fffffff ? 1 : 0;
  const dim3 grid = b.combo_major
                        ? dim3(static_cast<unsigned>(combos * row_tiles), 1)
                        : dim3(static_cast<unsigned>(combos), static_cast<unsigned>(row_tiles));
  prefill_wgmma_kernel<BN, STAGES, PP><<<grid, kThreads, smem, stream>>>(b);
}

bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// The default variant, or the one QSERVE_PREFILL_WGMMA names (read once; an unknown name
// throws, naming the variable).
PrefillWgmmaVariant default_variant() {
  static const PrefillWgmmaVariant v =
      env_override("QSERVE_PREFILL_WGMMA", parse_prefill_wgmma_variant)
          .value_or(PrefillWgmmaVariant{});
  return v;
}

}  // namespace

PrefillWgmmaVariant parse_prefill_wgmma_variant(const std::string& name) {
  struct Named {
    const char* name;
    PrefillWgmmaVariant v;
  };
  static constexpr Named kNamed[] = {{"bn128s3", {128, 3, false}},
                                     {"bn128s2", {128, 2, false}},
                                     {"bn128s3pp", {128, 3, true}},
                                     {"bn128s2pp", {128, 2, true}},
                                     {"bn64s4", {64, 4, false}}};
  std::string names;
  for (const Named& n : kNamed) {
    if (name == n.name) return n.v;
    names += std::string(names.empty() ? "" : ", ") + n.name;
  }
  throw Error("unknown prefill wgmma variant '" + name + "' (expected one of: " + names + ")");
}

bool prefill_attention_wgmma_supported(KvFormat format, int64_t num_heads, int64_t kv_heads,
                                       int64_t head_dim) {
  if (format != KvFormat::kv4 && format != KvFormat::kv8 && format != KvFormat::kv16) return false;
  if (head_dim != kD) return false;
  if (kv_heads <= 0 || kv_heads > 65535 || num_heads <= 0 || num_heads % kv_heads != 0) {
    return false;
  }
  const int64_t g = num_heads / kv_heads;
  if (g < 1 || g > 8) return false;
  // sm_90a code runs on compute capability 9.0 only.
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    return false;
  }
  return major == 9 && minor == 0;
}

void prefill_attention_wgmma_variant(const float* q, const uint16_t* k16, const uint16_t* v16,
                                     const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                                     int64_t num_heads, int64_t window, float* out, int block_n,
                                     int stages, bool pingpong, cudaStream_t stream) {
  const int64_t hkv = cache.kv_heads, d = cache.head_dim, S = batch.num_seqs;
  const std::string shape = "S=" + std::to_string(S) + " Hq=" + std::to_string(num_heads) +
                            " Hkv=" + std::to_string(hkv) + " D=" + std::to_string(d) +
                            " max_num_tokens=" + std::to_string(batch.max_num_tokens) +
                            " block_n=" + std::to_string(block_n) +
                            " stages=" + std::to_string(stages) +
                            " pingpong=" + std::to_string(pingpong ? 1 : 0);
  check(prefill_attention_wgmma_supported(cache.format, num_heads, hkv, d),
        "prefill_attention_wgmma: needs an sm_90 device, head_dim 128 and Hq/Hkv in 1..8 (" +
            shape + ")");
  const bool known = (block_n == 128 && (stages == 2 || stages == 3)) ||
                     (block_n == 64 && stages == 4 && !pingpong);
  check(known,
        "prefill_attention_wgmma: variant must be block_n 128 with 2 or 3 stages, or "
        "block_n 64 with 4 stages (" +
            shape + ")");
  check(S >= 0 && S * hkv <= 0x7fffffff && batch.max_num_tokens >= 0,
        "prefill_attention_wgmma: sequences x KV heads must fit a grid dimension (" + shape + ")");
  if (S == 0 || batch.max_num_tokens == 0) return;
  const int64_t tiles =
      (static_cast<int64_t>(batch.max_num_tokens) * (num_heads / hkv) + kBM - 1) / kBM;
  check(tiles <= 65535,
        "prefill_attention_wgmma: max_num_tokens * Hq/Hkv must be <= 65535 * 128 (" + shape + ")");
  check(aligned16(q) && aligned16(k16) && aligned16(v16) && aligned16(cache.k_pool) &&
            aligned16(cache.v_pool) && aligned16(out),
        "prefill_attention_wgmma: q, k16, v16, out and the pools must be 16-byte aligned (" +
            shape + ")");

  WgArgs a{};
  a.q = q;
  a.k16 = k16;
  a.v16 = v16;
  a.k_pool = cache.k_pool;
  a.v_pool = cache.v_pool;
  a.geom = attn::make_geom(cache.format, static_cast<int>(hkv), static_cast<int>(d));
  a.token_offset = batch.token_offset;
  a.num_tokens = batch.num_tokens;
  a.context_len = batch.context_len;
  a.block_table = batch.block_table;
  a.block_stride = batch.block_stride;
  a.format = static_cast<int>(cache.format);
  a.num_heads = static_cast<int>(num_heads);
  a.kv_heads = static_cast<int>(hkv);
  a.group = static_cast<int>(num_heads / hkv);
  a.window = static_cast<int>(std::max<int64_t>(0, window));
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));  // as the reference
  a.out = out;

  const int ns = static_cast<int>(S), nh = static_cast<int>(hkv), nt = static_cast<int>(tiles);
  if (block_n == 64) {
    launch_wg<64, 4, false>(a, ns, nh, nt, stream);
  } else if (stages == 2) {
    if (pingpong) {
      launch_wg<128, 2, true>(a, ns, nh, nt, stream);
    } else {
      launch_wg<128, 2, false>(a, ns, nh, nt, stream);
    }
  } else {
    if (pingpong) {
      launch_wg<128, 3, true>(a, ns, nh, nt, stream);
    } else {
      launch_wg<128, 3, false>(a, ns, nh, nt, stream);
    }
  }
  check_launch("prefill_attention_wgmma", shape);
}

void prefill_attention_wgmma(const float* q, const uint16_t* k16, const uint16_t* v16,
                             const PagedKvDevice& cache, const VarlenBatchDevice& batch,
                             int64_t num_heads, int64_t window, float* out, cudaStream_t stream) {
  const PrefillWgmmaVariant v = default_variant();
  prefill_attention_wgmma_variant(q, k16, v16, cache, batch, num_heads, window, out, v.block_n,
                                  v.stages, v.pingpong, stream);
}

}  // namespace qserve::cuda
