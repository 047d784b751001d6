#include "image/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

namespace appliance::image {

namespace {

ExitInfo FromWaitStatus(int status) {
  ExitInfo info;
  if (WIFEXITED(status)) {
    info.exited = true;
    info.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    info.signal = WTERMSIG(status);
  }
  return info;
}

// In the child, after fork: only async-signal-safe calls.
[[noreturn]] void ChildFail(int report_fd, int err) {
  ssize_t ignored = ::write(report_fd, &err, sizeof(err));
  (void)ignored;
  ::_exit(127);
}

void ChildDup(int fd, int target, int report_fd) {
  if (fd < 0) return;
  if (fd == target) {
    int flags = ::fcntl(fd, F_GETFD);
    if (flags < 0 || ::fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0) ChildFail(report_fd, errno);
    return;
  }
  if (::dup2(fd, target) < 0) ChildFail(report_fd, errno);
}

}  // namespace

std::string ExitInfo::Describe() const {
  if (exited) return "exit status " + std::to_string(code);
  if (signal != 0) return "killed by signal " + std::to_string(signal) + " (" + strsignal(signal) + ")";
  return "ended abnormally";
}

StatusOr<Pipe> MakePipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return PosixError("pipe2");
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept : pid_(std::exchange(other.pid_, -1)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    Kill();
    pid_ = std::exchange(other.pid_, -1);
  }
  return *this;
}

ChildProcess::~ChildProcess() { Kill(); }

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

StatusOr<ChildProcess> ChildProcess::Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) {
  if (argv.empty()) return Status::Error("spawn: empty argv");
  // Everything the child needs is prepared before fork.
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  if (options.env) {
    for (const std::string& e : *options.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
  UniqueFd dev_null;
  int stdin_fd = options.stdin_fd;
  if (stdin_fd == -2) {
    dev_null.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!dev_null.valid()) return PosixError("open /dev/null");
    stdin_fd = dev_null.get();
  }
  ASSIGN_OR_RETURN(Pipe report, MakePipe());
  const pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) return PosixError("fork for " + argv[0]);
  if (pid == 0) {
    int rfd = report.write.get();
    if (options.die_with_parent) {
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) ChildFail(rfd, errno);
      if (::getppid() != parent) ::_exit(127);  // the parent already died
    }
    if (options.new_process_group && ::setpgid(0, 0) != 0) ChildFail(rfd, errno);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ChildDup(stdin_fd, 0, rfd);
    ChildDup(options.stdout_fd, 1, rfd);
    ChildDup(options.stderr_fd, 2, rfd);
    if (options.env) {
      ::execvpe(args[0], args.data(), envp.data());
    } else {
      ::execvp(args[0], args.data());
    }
    ChildFail(rfd, errno);
  }

  ChildProcess child(pid);
  report.write.reset();
  int err = 0;
  ssize_t n;
  do {
    n = ::read(report.read.get(), &err, sizeof(err));
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof(err))) {
    child.Kill();  // reaps it
    return PosixError("execute " + argv[0], err);
  }
  return child;
}

StatusOr<std::optional<ExitInfo>> ChildProcess::Poll() {
  if (pid_ <= 0) return Status::Error("poll: no child process");
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return PosixError("waitpid " + std::to_string(pid_));
  if (r == 0) return std::optional<ExitInfo>();
  pid_ = -1;
  return std::optional<ExitInfo>(FromWaitStatus(status));
}

StatusOr<std::optional<ExitInfo>> ChildProcess::WaitFor(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    ASSIGN_OR_RETURN(std::optional<ExitInfo> info, Poll());
    if (info) return info;
    if (std::chrono::steady_clock::now() >= deadline) return std::optional<ExitInfo>();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

StatusOr<ExitInfo> ChildProcess::Wait() {
  if (pid_ <= 0) return Status::Error("wait: no child process");
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return PosixError("waitpid " + std::to_string(pid_));
  pid_ = -1;
  return FromWaitStatus(status);
}

StatusOr<CapturedRun> RunCapture(const std::vector<std::string>& argv, size_t max_output,
                                 std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(Pipe out, MakePipe());
  ASSIGN_OR_RETURN(Pipe err, MakePipe());
  SpawnOptions opts;
  opts.stdout_fd = out.write.get();
  opts.stderr_fd = err.write.get();
  ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn(argv, opts));
  out.write.reset();
  err.write.reset();

  CapturedRun result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true;
  bool err_open = true;
  char buf[65536];
  while (out_open || err_open) {
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return Status::Error(argv[0] + ": no result after " + std::to_string(timeout.count()) + " ms (killed)");
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    pollfd fds[2] = {{out_open ? out.read.get() : -1, POLLIN, 0}, {err_open ? err.read.get() : -1, POLLIN, 0}};
    int r = ::poll(fds, 2, static_cast<int>(std::min<long long>(left, 1000)));
    if (r < 0) {
      if (errno == EINTR) continue;
      return PosixError("poll");
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return PosixError("read output of " + argv[0]);
      }
      if (n == 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      std::string& dst = i == 0 ? result.out : result.err;
      if (dst.size() + static_cast<size_t>(n) > max_output) {
        return Status::Error(argv[0] + ": more than " + std::to_string(max_output) + " bytes of output (killed)");
      }
      dst.append(buf, static_cast<size_t>(n));
    }
  }
  auto now = std::chrono::steady_clock::now();
  auto left = deadline > now ? std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now)
                             : std::chrono::milliseconds(0);
  ASSIGN_OR_RETURN(std::optional<ExitInfo> info, child.WaitFor(left));
  if (!info) return Status::Error(argv[0] + ": did not exit after closing its output (killed)");
  result.exit = *info;
  return result;
}

}  // namespace appliance::image
