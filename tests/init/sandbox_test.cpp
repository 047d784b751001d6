// The runtime's seccomp filter, installed in a forked child on the host: every
// way out it must close fails with EPERM, and ordinary work still runs.
#include "init/sandbox.h"

#include <linux/vm_sockets.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
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
    if (!InstallSeccompFilter(-1).ok()) _exit(3);
    // Trapped calls report EPERM back, as the probe in the VM does.
    struct sigaction sa {};
    sa.sa_sigaction = [](int, siginfo_t*, void* context) {
      static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RAX] = -EPERM;
    };
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSYS, &sa, nullptr);
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
      {"fork", [] { pid_t p = ::fork(); if (p == 0) _exit(0); return long{p}; }},
      {"execve", [] { char* argv[] = {nullptr}; return long{::execve("/bin/true", argv, argv)}; }},
  };
  std::vector<int> errors = RunFiltered(attempts);
  ASSERT_EQ(errors.size(), attempts.size());
  for (size_t i = 0; i < attempts.size(); ++i) {
    EXPECT_EQ(errors[i], EPERM) << attempts[i].name << " gave " << std::strerror(errors[i]);
  }
}

TEST(SeccompFilterTest, NamesViolationsFromTheKernelLog) {
  EXPECT_EQ(DescribeSeccompViolation("6,412,3012,-;audit: type=1326 audit(1.2:3): auid=4294967295 uid=1000 gid=1000 "
                                     "ses=4294967295 subj=unconfined pid=88 comm=\"appliance-runt\" exe=\"/x\" sig=31 "
                                     "arch=c000003e syscall=41 compat=0 ip=0x7f code=0x30000"),
            "socket (41, native ABI)");
  EXPECT_EQ(DescribeSeccompViolation("audit: type=1326 sig=31 arch=40000003 syscall=102 compat=1"),
            "socketcall (102, i386 ABI)");
  EXPECT_EQ(DescribeSeccompViolation("audit: type=1400 syscall=41 "), "");
  EXPECT_EQ(DescribeSeccompViolation("audit: type=1326 arch=c000003e syscall=435 compat=0 code=0x50026"), "");
  EXPECT_EQ(DescribeSeccompViolation("audit: type=1326 syscall=99999999999 "), "");
}

TEST(SeccompFilterTest, LeavesOrdinaryWorkAlone) {
  const std::vector<Attempt> attempts = {
      {"getpid", [] { return long{::getpid()}; }},
      {"read a file", [] {
         int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
         char buf[64];
         long rc = fd < 0 ? -1 : ::read(fd, buf, sizeof buf);
         ::close(fd);
         return rc;
       }},
      {"mmap", [] {
         void* p = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
         return p == MAP_FAILED ? -1L : long{::munmap(p, 1 << 20)};
       }},
      {"thread", [] {
         pthread_t t;
         if (pthread_create(&t, nullptr, [](void*) -> void* { return nullptr; }, nullptr) != 0) return -1L;
         return long{pthread_join(t, nullptr)};
       }},
  };
  std::vector<int> errors = RunFiltered(attempts);
  ASSERT_EQ(errors.size(), attempts.size());
  for (size_t i = 0; i < attempts.size(); ++i) EXPECT_EQ(errors[i], 0) << attempts[i].name;
}

}  // namespace
}  // namespace appliance::init
