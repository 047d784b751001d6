#include "runtime/thread_pool.h"

#include <immintrin.h>

namespace appliance::runtime {
namespace {

// Roughly 20-50 microseconds of spinning before a worker sleeps: long enough
// to bridge the gaps between the jobs of one token, short enough not to burn
// a core while the server waits for requests.
constexpr int kSpinIterations = 20000;

inline void CpuRelax() { _mm_pause(); }

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  workers_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int t = 1; t < n_threads_; ++t) workers_.emplace_back([this, t] { WorkerLoop(t); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (std::thread& w : workers_) w.join();
}

void ThreadPool::Work(int thread) {
  const TaskFn& fn = *job_;
  for (;;) {
    const int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (task >= n_tasks_) break;
    fn(task, thread);
  }
}

void ThreadPool::WorkerLoop(int thread) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIterations; ++spin) {
      CpuRelax();
      gen = generation_.load(std::memory_order_acquire);
    }
    while (gen == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    if (stop_.load(std::memory_order_acquire)) return;
    Work(thread);
    if (busy_workers_.fetch_sub(1, std::memory_order_acq_rel) == 1) busy_workers_.notify_one();
  }
}

void ThreadPool::Run(int64_t n_tasks, TaskFn fn) {
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  job_ = &fn;
  n_tasks_ = n_tasks;
  next_task_.store(0, std::memory_order_relaxed);
  busy_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_acq_rel);  // publishes the job
  generation_.notify_all();
  Work(0);
  // Wait until every worker has left Work(): only then may job_ change.
  int busy = busy_workers_.load(std::memory_order_acquire);
  for (int spin = 0; busy != 0 && spin < kSpinIterations; ++spin) {
    CpuRelax();
    busy = busy_workers_.load(std::memory_order_acquire);
  }
  while (busy != 0) {
    busy_workers_.wait(busy, std::memory_order_acquire);
    busy = busy_workers_.load(std::memory_order_acquire);
  }
}

}  // namespace appliance::runtime
