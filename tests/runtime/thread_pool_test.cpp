// The thread pool runs every task exactly once, on valid thread indices, for
// any task count, many times in a row (the generation tagging under churn).
#include "runtime/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace appliance::runtime {
namespace {

TEST(ThreadPool, RunsEveryTaskExactlyOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    std::vector<std::atomic<int>> hits(1000);
    std::atomic<int> bad_thread{0};
    for (int round = 0; round < 2000; ++round) {
      const int64_t n = round % 17 == 0 ? 0 : 1 + (round * 7919) % 1000;
      for (int64_t i = 0; i < n; ++i) hits[static_cast<size_t>(i)].store(0);
      pool.For(n, [&](int64_t task, int thread) {
        if (thread < 0 || thread >= threads) bad_thread.fetch_add(1);
        hits[static_cast<size_t>(task)].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "round " << round << " task " << i;
    }
    EXPECT_EQ(bad_thread.load(), 0);
  }
}

// Back-to-back jobs of different sizes, as MatMulEngine issues them (a few
// conversion tasks, then more row ranges): a worker still looking at the
// previous job must not take the next job's larger task count for its own
// (it would run a task twice and the caller would wait forever).
TEST(ThreadPool, AlternatingJobSizes) {
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> hits(8);
    for (int round = 0; round < 100000; ++round) {
      const int64_t n = round % 2 == 0 ? threads : 8;
      for (int64_t i = 0; i < n; ++i) hits[static_cast<size_t>(i)].store(0, std::memory_order_relaxed);
      pool.For(n, [&](int64_t task, int) { hits[static_cast<size_t>(task)].fetch_add(1, std::memory_order_relaxed); });
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "round " << round << " task " << i;
      }
    }
  }
}

TEST(ThreadPool, UsesTheWorkers) {
  ThreadPool pool(2);
  std::atomic<int> on_worker{0};
  for (int round = 0; round < 200 && on_worker.load() == 0; ++round) {
    pool.For(64, [&](int64_t, int thread) {
      volatile double x = 0;
      for (int i = 0; i < 20000; ++i) x = x + i;  // enough work for the worker to join
      if (thread == 1) on_worker.fetch_add(1);
    });
  }
  EXPECT_GT(on_worker.load(), 0);
}

}  // namespace
}  // namespace appliance::runtime
