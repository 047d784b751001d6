// The runtime's seccomp filter, installed in a forked child on the host: every
// way out it must close fails with EPERM, and ordinary work still runs.
#include "init/sandbox.h"

#include <linux/vm_sockets.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace appliance::init {
namespace {

struct Attempt {
  const char* name;
  std::function<long()> call;
};

// Runs every attempt under the filter in a child; returns one errno per attempt
// (0 = the call succeeded).
std::vector<int> RunFiltered(const std::vector<Attempt>& attempts) {
  int pipe_fds[2];
  EXPECT_EQ(::pipe(pipe_fds), 0);
  pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_fds[0]);
    if (!InstallSeccompFilter().ok()) _exit(3);
    for (const Attempt& a : attempts) {
      errno = 0;
      long rc = a.call();
      int err = rc < 0 ? errno : 0;
      if (::write(pipe_fds[1], &err, sizeof err) != sizeof err) _exit(4);
    }
    _exit(0);
  }
  ::close(pipe_fds[1]);
  std::vector<int> errors;
  int err = 0;
  while (::read(pipe_fds[0], &err, sizeof err) == sizeof err) errors.push_back(err);
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  return errors;
}

TEST(SeccompFilterTest, DeniesEveryWayOut) {
  const std::vector<Attempt> attempts = {
      {"socket(AF_INET)", [] { return long{::socket(AF_INET, SOCK_STREAM, 0)}; }},
      {"socket(AF_INET6)", [] { return long{::socket(AF_INET6, SOCK_DGRAM, 0)}; }},
      {"socket(AF_PACKET)", [] { return long{::socket(AF_PACKET, SOCK_RAW, 0)}; }},
      {"socket(AF_NETLINK)", [] { return long{::socket(AF_NETLINK, SOCK_RAW, 0)}; }},
      {"socket(AF_VSOCK)", [] { return long{::socket(AF_VSOCK, SOCK_STREAM, 0)}; }},
      {"socket(AF_UNIX)", [] { return long{::socket(AF_UNIX, SOCK_STREAM, 0)}; }},
      {"socketpair(AF_UNIX)", [] { int sv[2]; return long{::socketpair(AF_UNIX, SOCK_STREAM, 0, sv)}; }},
      {"connect", [] { sockaddr_vm a{}; return long{::connect(0, reinterpret_cast<sockaddr*>(&a), sizeof a)}; }},
      {"bind", [] { sockaddr_vm a{}; return long{::bind(0, reinterpret_cast<sockaddr*>(&a), sizeof a)}; }},
      {"listen", [] { return long{::listen(0, 1)}; }},
      {"ptrace", [] { return ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr); }},
      {"mount", [] { return long{::mount("none", "/tmp", "tmpfs", 0, nullptr)}; }},
      {"unshare", [] { return long{::unshare(CLONE_NEWNET)}; }},
      {"setns", [] { return long{::setns(0, CLONE_NEWNET)}; }},
  };
  std::vector<int> errors = RunFiltered(attempts);
  ASSERT_EQ(errors.size(), attempts.size());
  for (size_t i = 0; i < attempts.size(); ++i) {
    EXPECT_EQ(errors[i], EPERM) << attempts[i].name << " gave " << std::strerror(errors[i]);
  }
}

TEST(SeccompFilterTest, LeavesOrdinaryWorkAlone) {
  const std::vector<Attempt> attempts = {
      {"getpid", [] { return long{::getpid()}; }},
      {"pipe", [] { int p[2]; long rc = ::pipe(p); ::close(p[0]); ::close(p[1]); return rc; }},
      {"fork+wait", [] {
         pid_t p = ::fork();
         if (p == 0) _exit(0);
         int st = 0;
         return long{::waitpid(p, &st, 0)};
       }},
  };
  std::vector<int> errors = RunFiltered(attempts);
  ASSERT_EQ(errors.size(), attempts.size());
  for (size_t i = 0; i < attempts.size(); ++i) EXPECT_EQ(errors[i], 0) << attempts[i].name;
}

}  // namespace
}  // namespace appliance::init
