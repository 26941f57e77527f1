#include "engine/block_manager.h"

#include <gtest/gtest.h>

#include <set>

#include "core/error.h"

namespace qserve {
namespace {

TEST(BlockManager, PagesForTokens) {
  EXPECT_EQ(pages_for_tokens(0), 0);
  EXPECT_EQ(pages_for_tokens(1), 1);
  EXPECT_EQ(pages_for_tokens(64), 1);
  EXPECT_EQ(pages_for_tokens(65), 2);
  EXPECT_EQ(pages_for_tokens(1536), 24);  // QServe's benchmark: 1024 + 512 tokens
}

TEST(BlockManager, GrowIsAllOrNothingAndReleaseReturnsPages) {
  BlockManager bm(4, 0.0);
  PageTable a, b;
  ASSERT_TRUE(bm.grow(a, 130));  // 3 pages
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(bm.num_free(), 1);
  EXPECT_FALSE(bm.grow(b, 129));  // needs 3, 1 free: nothing taken
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(bm.num_free(), 1);
  ASSERT_TRUE(bm.grow(a, 192));  // still 3 pages
  EXPECT_EQ(a.size(), 3u);
  ASSERT_TRUE(bm.grow(a, 193));
  EXPECT_EQ(bm.num_free(), 0);
  std::set<int32_t> ids(a.begin(), a.end());
  EXPECT_EQ(ids.size(), 4u);  // distinct pages
  bm.release(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(bm.num_free(), 4);
}

TEST(BlockManager, WatermarkGuardsAdmissionOnly) {
  BlockManager bm(100, 0.05);  // 5 pages kept free at admission
  EXPECT_EQ(bm.watermark(), 5);
  EXPECT_TRUE(bm.can_ever_fit(95 * 64));
  EXPECT_FALSE(bm.can_ever_fit(96 * 64));
  PageTable a;
  EXPECT_TRUE(bm.can_admit(a, 95 * 64));
  ASSERT_TRUE(bm.grow(a, 95 * 64));
  PageTable b;
  EXPECT_FALSE(bm.can_admit(b, 1));  // would dip below the watermark
  EXPECT_TRUE(bm.grow(a, 100 * 64));  // a running sequence may use it
  EXPECT_EQ(bm.num_free(), 0);
}

TEST(BlockManager, SharedPagesAreFreedByTheLastOwner) {
  BlockManager bm(3, 0.0);
  PageTable a;
  ASSERT_TRUE(bm.grow(a, 100));
  PageTable b = bm.share(a);
  EXPECT_EQ(bm.refcount(a[0]), 2);
  bm.release(a);
  EXPECT_EQ(bm.num_free(), 1);
  EXPECT_EQ(bm.refcount(b[0]), 1);
  bm.release(b);
  EXPECT_EQ(bm.num_free(), 3);
}

TEST(BlockManager, RejectsBadUse) {
  EXPECT_THROW(BlockManager(0), Error);
  EXPECT_THROW(BlockManager(10, 1.0), Error);
  BlockManager bm(2, 0.0);
  PageTable bogus{1};
  EXPECT_THROW(bm.release(bogus), Error);  // never handed out
  PageTable out_of_range{7};
  EXPECT_THROW(bm.share(out_of_range), Error);
}

}  // namespace
}  // namespace qserve
