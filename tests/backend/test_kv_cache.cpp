// KVCacheF32 layout and bounds, kv_append placement and validation.
#include <gtest/gtest.h>

#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "core/error.h"
#include "reference.h"

namespace qserve {
namespace {

TEST(KVCache, AllocatesZeroedLayerSlotPosHeadDimLayout) {
  cpu::KVCacheF32 c;
  c.allocate(3, 2, 5, 2, 4);
  EXPECT_EQ(c.k.size(), 3u * 2 * 5 * 2 * 4);
  EXPECT_EQ(c.v.size(), c.k.size());
  for (float x : c.k) EXPECT_EQ(x, 0.0f);
  EXPECT_EQ(c.k_at(0, 0, 0), c.k.data());
  EXPECT_EQ(c.k_at(0, 0, 1) - c.k.data(), 8);
  EXPECT_EQ(c.k_at(0, 1, 0) - c.k.data(), 5 * 8);
  EXPECT_EQ(c.k_at(1, 0, 0) - c.k.data(), 2 * 5 * 8);
  EXPECT_EQ(c.v_at(2, 1, 4) - c.v.data(), static_cast<ptrdiff_t>(c.v.size()) - 8);
  const cpu::KVCacheF32& cc = c;
  EXPECT_EQ(cc.k_at(1, 1, 3), c.k_at(1, 1, 3));
}

TEST(KVCache, RejectsOutOfRangeIndicesAndBadSizes) {
  cpu::KVCacheF32 c;
  c.allocate(2, 2, 4, 1, 8);
  EXPECT_THROW(c.k_at(2, 0, 0), Error);
  EXPECT_THROW(c.k_at(0, 2, 0), Error);
  EXPECT_THROW(c.v_at(0, 0, 4), Error);
  EXPECT_THROW(c.v_at(0, -1, 0), Error);
  cpu::KVCacheF32 d;
  EXPECT_THROW(d.allocate(1, 1, 0, 1, 8), Error);
  EXPECT_THROW(d.allocate(1 << 20, 1 << 20, 1 << 20, 1 << 20, 128), Error);
}

TEST(KvAppend, WritesEachSequenceAtItsPositions) {
  cpu::KVCacheF32 c;
  c.allocate(2, 3, 8, 2, 3);
  const int64_t row = 6;
  // Seq A: 3 tokens into slot 2 at positions 0..2; seq B: 1 token into slot 0 at position 5.
  const SeqSpan seqs[] = {{0, 3, 0, 2}, {3, 1, 5, 0}};
  const auto k = test::random_floats(4 * row, 1), v = test::random_floats(4 * row, 2);
  cpu::kv_append(c, 1, seqs, k.data(), v.data());
  for (int64_t j = 0; j < 3; ++j) {
    for (int64_t e = 0; e < row; ++e) {
      EXPECT_EQ(c.k_at(1, 2, j)[e], k[j * row + e]);
      EXPECT_EQ(c.v_at(1, 2, j)[e], v[j * row + e]);
    }
  }
  for (int64_t e = 0; e < row; ++e) EXPECT_EQ(c.k_at(1, 0, 5)[e], k[3 * row + e]);
  // Nothing else was written.
  size_t nonzero = 0;
  for (float x : c.k) nonzero += x != 0.0f;
  EXPECT_EQ(nonzero, 4u * row);
}

TEST(KvAppend, RejectsASequenceThatExceedsTheCacheAndLeavesItUntouched) {
  cpu::KVCacheF32 c;
  c.allocate(1, 2, 4, 1, 2);
  const auto k = test::random_floats(10, 1);
  const SeqSpan ok{0, 1, 0, 0};
  const SeqSpan too_long{1, 2, 3, 1};  // positions 3, 4 in a 4-long cache
  const SeqSpan both[] = {ok, too_long};
  try {
    cpu::kv_append(c, 0, both, k.data(), k.data());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("5 tokens"), std::string::npos) << e.what();
  }
  for (float x : c.k) EXPECT_EQ(x, 0.0f);
  const SeqSpan bad_slot{0, 1, 0, 2};
  EXPECT_THROW(cpu::kv_append(c, 0, {&bad_slot, 1}, k.data(), k.data()), Error);
  EXPECT_THROW(cpu::kv_append(c, 1, {&ok, 1}, k.data(), k.data()), Error);
  const SeqSpan negative{0, 1, -1, 0};
  EXPECT_THROW(cpu::kv_append(c, 0, {&negative, 1}, k.data(), k.data()), Error);
}

}  // namespace
}  // namespace qserve
