// ThreadPool::parallel_for: exact coverage for many sizes and grains, chunk sizes, nesting
// without deadlock, concurrent callers, and exceptions.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

namespace qserve {
namespace {

// Runs parallel_for(n, grain) and checks every index is visited exactly once and every chunk but
// the last one has at least `grain` items.
void check_coverage(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::atomic<int> bad_chunks{0};
  pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
    if (!(0 <= b && b < e && e <= n)) ++bad_chunks;
    if (e < n && e - b < std::max<int64_t>(grain, 1)) ++bad_chunks;
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  ASSERT_EQ(bad_chunks.load(), 0) << "n=" << n << " grain=" << grain;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1)
        << "n=" << n << " grain=" << grain << " i=" << i;
  }
}

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 4, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {-3, 0, 1, 2, 3, 7, 8, 9, 31, 63, 64, 65, 100, 1000, 4097, 100003}) {
      for (int64_t grain : {-1, 0, 1, 2, 3, 7, 64, 1000, 100000}) check_coverage(pool, n, grain);
    }
  }
}

TEST(ThreadPool, RepeatedJobsOnOnePool) {
  ThreadPool pool(4);
  for (int rep = 0; rep < 2000; ++rep) check_coverage(pool, 1 + rep % 97, 1 + rep % 5);
}

TEST(ThreadPool, NestedCallsDoNotDeadlock) {
  ThreadPool pool(4);
  constexpr int64_t kOuter = 16, kInner = 50, kInnermost = 3;
  std::vector<std::atomic<int>> hits(kOuter * kInner * kInnermost);
  pool.parallel_for(kOuter, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t i = b0; i < e0; ++i) {
      pool.parallel_for(kInner, 1, [&](int64_t b1, int64_t e1) {
        for (int64_t j = b1; j < e1; ++j) {
          pool.parallel_for(kInnermost, 1, [&](int64_t b2, int64_t e2) {
            for (int64_t k = b2; k < e2; ++k) hits[(i * kInner + j) * kInnermost + k]++;
          });
        }
      });
    }
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);

  // A body that uses another pool works too.
  ThreadPool other(3);
  std::atomic<int64_t> total{0};
  pool.parallel_for(8, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      other.parallel_for(100, 1, [&](int64_t b2, int64_t e2) { total += e2 - b2; });
    }
  });
  EXPECT_EQ(total.load(), 800);
}

TEST(ThreadPool, ConcurrentCallersAreSerialisedCorrectly) {
  ThreadPool pool(4);
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int rep = 0; rep < 200; ++rep) {
        const int64_t n = 50 + t * 13 + rep % 7;
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.parallel_for(n, 2, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
        });
        for (auto& h : hits) {
          if (h.load() != 1) ++failures;
        }
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(ThreadPool, ExceptionsPropagateAndThePoolStaysUsable) {
  ThreadPool pool(4);
  for (int rep = 0; rep < 50; ++rep) {
    std::atomic<int64_t> done{0};
    EXPECT_THROW(pool.parallel_for(1000, 1,
                                   [&](int64_t b, int64_t e) {
                                     done += e - b;
                                     if (b <= 500 && 500 < e) throw std::runtime_error("boom");
                                   }),
                 std::runtime_error);
    // Every chunk still ran (no worker was left holding a dangling job).
    EXPECT_EQ(done.load(), 1000);
    check_coverage(pool, 333, 3);
  }
  // Serial path (n <= grain) throws directly.
  EXPECT_THROW(pool.parallel_for(4, 10, [](int64_t, int64_t) { throw std::logic_error("x"); }),
               std::logic_error);
}

TEST(ThreadPool, GlobalPoolWorks) {
  ThreadPool& g = ThreadPool::global();
  EXPECT_GE(g.size(), 1);
  EXPECT_EQ(&g, &ThreadPool::global());
  check_coverage(g, 12345, 16);
}

}  // namespace
}  // namespace qserve
