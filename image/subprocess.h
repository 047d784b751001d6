// Child processes owned by RAII guards: a ChildProcess that is still running
// when its owner goes away is killed (SIGKILL) and reaped, never left behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/status.h"

namespace appliance::image {

struct SpawnOptions {
  // fds for the child's stdin/stdout/stderr; -1 = inherit ours. An fd of -2
  // for stdin means /dev/null.
  int stdin_fd = -2;
  int stdout_fd = -1;
  int stderr_fd = -1;
  // Put the child in its own process group (terminal signals reach only us).
  bool new_process_group = false;
  // Kill the child (SIGKILL) if this process dies.
  bool die_with_parent = true;
  // Replace the environment (nullopt: inherit ours).
  std::optional<std::vector<std::string>> env;
};

// How a child ended.
struct ExitInfo {
  bool exited = false;  // normal exit (code valid) vs. killed by a signal
  int code = 0;
  int signal = 0;
  std::string Describe() const;  // "exit status 1", "killed by signal 9 (Killed)"
  bool success() const { return exited && code == 0; }
};

class ChildProcess {
 public:
  ChildProcess() = default;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ~ChildProcess();  // Kill() if still running

  // argv[0] is looked up in PATH if it has no '/'. Fails if exec fails (reported
  // through a close-on-exec pipe, so "No such file or directory" is an error here).
  static StatusOr<ChildProcess> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options);

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

  // Non-blocking: the exit info if the child has ended (and reaps it).
  StatusOr<std::optional<ExitInfo>> Poll();
  // Waits up to `timeout` for the child to end.
  StatusOr<std::optional<ExitInfo>> WaitFor(std::chrono::milliseconds timeout);
  // Blocks until the child ends.
  StatusOr<ExitInfo> Wait();
  // SIGKILL and reap. No-op if not running.
  void Kill();

 private:
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
};

// Runs argv to completion, capturing stdout (at most `max_output` bytes);
// stderr is captured into the error message on failure.
struct CapturedRun {
  ExitInfo exit;
  std::string out;
  std::string err;
};
StatusOr<CapturedRun> RunCapture(const std::vector<std::string>& argv, size_t max_output,
                                 std::chrono::milliseconds timeout);

// A pipe whose both ends are close-on-exec.
struct Pipe {
  UniqueFd read;
  UniqueFd write;
};
StatusOr<Pipe> MakePipe();

}  // namespace appliance::image
