// A small persistent thread pool for the forward pass.
//
// Run(n_tasks, fn) calls fn(task, thread) for every task in [0, n_tasks) on
// the caller plus the workers and returns when all are done. Tasks are handed
// out by an atomic counter; callers make each task's result independent of the
// thread that runs it (per-thread scratch is indexed by `thread`), so results
// do not depend on the thread count.
//
// Between jobs workers spin briefly (decode issues dozens of jobs per token,
// each a few microseconds), then sleep on a futex (std::atomic::wait) so an
// idle server costs no CPU. Run() does not allocate.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace appliance::runtime {

// A non-owning reference to a callable `void(int64_t task, int thread)`;
// unlike std::function it never allocates.
class TaskFn {
 public:
  template <typename F>
  TaskFn(F& f)  // NOLINT(google-explicit-constructor)
      : obj_(&f), call_([](void* o, int64_t task, int thread) { (*static_cast<F*>(o))(task, thread); }) {}
  void operator()(int64_t task, int thread) const { call_(obj_, task, thread); }

 private:
  void* obj_;
  void (*call_)(void*, int64_t, int);
};

class ThreadPool {
 public:
  // n_threads counts the caller: 1 means no worker threads at all.
  explicit ThreadPool(int n_threads);
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool();

  int size() const { return n_threads_; }

  // Not reentrant: fn must not call Run() on the same pool.
  void Run(int64_t n_tasks, TaskFn fn);

  // Convenience for lambdas.
  template <typename F>
  void For(int64_t n_tasks, F&& f) {
    std::remove_reference_t<F>& ref = f;
    Run(n_tasks, TaskFn(ref));
  }

 private:
  void WorkerLoop(int thread);
  void Work(int thread);

  const int n_threads_;
  std::vector<std::thread> workers_;

  // Job state, published by bumping generation_.
  const TaskFn* job_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  std::atomic<int> busy_workers_{0};
  std::atomic<uint32_t> generation_{0};  // 32-bit: a plain futex word
  std::atomic<bool> stop_{false};
};

}  // namespace appliance::runtime
