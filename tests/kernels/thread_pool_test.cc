// ThreadPool under concurrent callers: every index of every loop runs exactly once, loops return
// only when their work is done, and nested loops on the same pool finish.
#include "kernels/common/thread_pool.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tensorprep::kernels {
namespace {

TEST(ThreadPool, SizeCountsTheCaller) {
  EXPECT_EQ(ThreadPool(1).size(), 1);
  EXPECT_EQ(ThreadPool(3).size(), 3);
  EXPECT_GE(ThreadPool(0).size(), 1);
}

TEST(ThreadPool, EveryIndexOnceForManySizes) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.ParallelFor(n, [&](int64_t i) { hits[i].fetch_add(1); });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[i].load(), 1) << threads << " " << n << " " << i;
    }
  }
}

TEST(ThreadPool, ManyConcurrentCallers) {
  ThreadPool pool(3);
  constexpr int kCallers = 12;
  constexpr int kRounds = 40;
  std::atomic<int> failures{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        const int64_t n = 1 + (t * 37 + r * 11) % 300;
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.ParallelFor(n, [&](int64_t i) {
          hits[i].fetch_add(1);
          if (i % 17 == 0) std::this_thread::yield();  // vary the interleaving
        });
        // ParallelFor has returned: all of this loop's work must be visible and complete.
        for (int64_t i = 0; i < n; ++i) {
          if (hits[i].load() != 1) failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(ThreadPool, NestedLoopsOnTheSamePool) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(20 * 30);
  pool.ParallelFor(20, [&](int64_t i) {
    pool.ParallelFor(30, [&](int64_t j) { hits[i * 30 + j].fetch_add(1); });
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPool, NullPoolRunsInline) {
  const std::thread::id me = std::this_thread::get_id();
  int64_t sum = 0;
  ParallelFor(nullptr, 100, [&](int64_t i) {
    EXPECT_EQ(std::this_thread::get_id(), me);
    sum += i;
  });
  EXPECT_EQ(sum, 4950);
}

TEST(ThreadPool, UsesWorkersForLongLoops) {
  ThreadPool pool(3);
  std::atomic<int> inside{0};
  std::atomic<int> most{0};
  pool.ParallelFor(3, [&](int64_t) {
    const int now = inside.fetch_add(1) + 1;
    int prev = most.load();
    while (now > prev && !most.compare_exchange_weak(prev, now)) {
    }
    // Hold the index until another thread joins (or a generous deadline passes).
    for (int spin = 0; spin < 2000 && most.load() < 2; ++spin) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    inside.fetch_sub(1);
  });
  EXPECT_GE(most.load(), 2);
}

TEST(ThreadPool, DestroysWhileIdleAfterWork) {
  for (int k = 0; k < 50; ++k) {
    auto pool = std::make_unique<ThreadPool>(4);
    std::atomic<int> count{0};
    pool->ParallelFor(10, [&](int64_t) { count.fetch_add(1); });
    EXPECT_EQ(count.load(), 10);
    pool.reset();
  }
}

}  // namespace
}  // namespace tensorprep::kernels
