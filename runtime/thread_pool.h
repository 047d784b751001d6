// A small persistent thread pool for the forward pass.
//
// Run(n_tasks, fn) calls fn(task, thread) for every task in [0, n_tasks) on
// the caller plus the workers and returns when all are done. Tasks are claimed
// one at a time from a counter tagged with the job's generation (and checked
// against a task count tagged likewise), so a worker that wakes late can never
// claim a task of a later job, and the caller waits
// only for tasks someone actually claimed: when the machine is oversubscribed
// and a worker is not scheduled, the caller simply runs every task itself.
// Callers make each task's result independent of the thread that runs it
// (per-thread scratch is indexed by `thread`), so results do not depend on the
// thread count.
//
// Idle workers spin for ~20 us (decode issues dozens of jobs per token, each a
// few microseconds apart), then sleep on a futex (std::atomic::wait), so an
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
  static constexpr int64_t kMaxTasks = 0xffffffff;

  // n_threads counts the caller: 1 means no worker threads at all.
  explicit ThreadPool(int n_threads);
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool();

  int size() const { return n_threads_; }

  // n_tasks <= kMaxTasks. Not reentrant: fn must not call Run() on this pool.
  void Run(int64_t n_tasks, TaskFn fn);

  template <typename F>
  void For(int64_t n_tasks, F&& f) {
    std::remove_reference_t<F>& ref = f;
    Run(n_tasks, TaskFn(ref));
  }

 private:
  void WorkerLoop(int thread);
  void RunTasks(uint32_t generation, int thread);

  const int n_threads_;
  std::vector<std::thread> workers_;
  uint32_t last_generation_ = 0;  // caller-side copy

  // The current job. job_ is written before claim_ is published (release) and
  // only read by a thread that has claimed one of the job's tasks.
  const TaskFn* job_ = nullptr;
  std::atomic<uint64_t> tasks_{0};       // generation << 32 | number of tasks
  std::atomic<uint64_t> claim_{0};       // generation << 32 | next task index
  std::atomic<uint32_t> done_{0};        // tasks of the current job finished
  std::atomic<uint32_t> generation_{0};  // futex word sleeping workers wait on
  std::atomic<bool> stop_{false};
};

}  // namespace appliance::runtime
