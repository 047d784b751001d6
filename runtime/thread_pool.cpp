#include "runtime/thread_pool.h"

#include <immintrin.h>

#include <chrono>

namespace appliance::runtime {
namespace {

// How long a waiting thread spins before it sleeps: long enough to bridge the
// gaps between the jobs of one token, short enough not to steal much CPU from
// other processes when the machine is busy.
constexpr auto kSpinTime = std::chrono::microseconds(20);

// Spins until pred() or kSpinTime passed; returns pred().
template <typename Pred>
bool SpinUntil(Pred pred) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (pred()) return true;
    _mm_pause();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > kSpinTime) return pred();
  }
}

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

void ThreadPool::RunTasks(uint32_t generation, int thread) {
  uint64_t v = claim_.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(v >> 32) != generation) return;  // a later job already started
    const uint32_t task = static_cast<uint32_t>(v);
    // The task count must be this job's: Run() publishes the next job's
    // count before its claim word, so a thread that read a finished job's
    // claim word and then the next job's (larger) count would otherwise
    // claim a task past the end of the finished job, run the next job's
    // function on it and count it among the next job's done tasks.
    const uint64_t count = tasks_.load(std::memory_order_acquire);
    if (static_cast<uint32_t>(count >> 32) != generation) return;
    const uint32_t n_tasks = static_cast<uint32_t>(count);
    if (task >= n_tasks) return;
    if (!claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // The claimed task keeps the job (and job_) alive until done_ counts it.
    (*job_)(task, thread);
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_tasks) done_.notify_one();
    v = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::WorkerLoop(int thread) {
  uint32_t seen = 0;
  for (;;) {
    if (!SpinUntil([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
      generation_.wait(seen, std::memory_order_acquire);
    }
    const uint32_t gen = generation_.load(std::memory_order_acquire);
    if (gen == seen) continue;  // spurious wake-up
    seen = gen;
    if (stop_.load(std::memory_order_acquire)) return;
    RunTasks(gen, thread);
  }
}

void ThreadPool::Run(int64_t n_tasks, TaskFn fn) {
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  const uint32_t n = static_cast<uint32_t>(n_tasks);
  const uint32_t gen = ++last_generation_;
  job_ = &fn;
  tasks_.store(static_cast<uint64_t>(gen) << 32 | n, std::memory_order_release);
  done_.store(0, std::memory_order_relaxed);
  claim_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_release);  // publishes the job
  generation_.store(gen, std::memory_order_release);
  generation_.notify_all();  // a syscall only when some worker sleeps
  RunTasks(gen, 0);
  // Every task is claimed now; wait for the ones other threads are running.
  uint32_t done = done_.load(std::memory_order_acquire);
  if (done != n && !SpinUntil([&] { return (done = done_.load(std::memory_order_acquire)) == n; })) {
    while (done != n) {
      done_.wait(done, std::memory_order_acquire);
      done = done_.load(std::memory_order_acquire);
    }
  }
}

}  // namespace appliance::runtime
