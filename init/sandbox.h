// The runtime's sandbox, applied in the forked child just before it executes
// the verified runtime. Order follows runc: namespaces, fds, rlimits,
// no_new_privs, capabilities and uid, seccomp as close to exec as possible,
// exec by fd.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace appliance::init {

// The fds the runtime finds at exec (docs/architecture.md).
inline constexpr int kChannelFd = 3;
inline constexpr int kModelFd = 4;

// The unprivileged identity the runtime runs as (no entry in any passwd file
// is needed: the image has none).
inline constexpr uid_t kRuntimeUid = 1000;
inline constexpr gid_t kRuntimeGid = 1000;

struct SandboxSpec {
  int channel_fd = -1;     // becomes kChannelFd
  int model_fd = -1;       // becomes kModelFd
  int executable_fd = -1;  // executed with execveat(AT_EMPTY_PATH)
  std::vector<std::string> argv;
};

// Runs in the child after fork(). On any failure it logs the reason and
// _exit(127)s: a runtime that is not fully sandboxed never starts.
[[noreturn]] void ExecInSandbox(const SandboxSpec& spec);

// The seccomp filter (libseccomp), installed on the calling thread: an
// allowlist of what the runtime needs (memory, threads, clocks, reading files,
// the fds it was given); every other call — any socket (AF_VSOCK is not covered
// by network namespaces), ptrace, mount, module loading, namespaces, bpf,
// perf, io_uring, keyrings, setuid, fork — and any call through another
// architecture's ABI is trapped: not executed, SIGSYS, logged by the kernel.
// `exec_fd` >= 0 allows exactly one kind of exec: execveat(exec_fd, "", AT_EMPTY_PATH).
Status InstallSeccompFilter(int exec_fd);

// What PID 1 keeps once the runtime runs: the capabilities to power off
// (CAP_SYS_BOOT), signal the runtime (CAP_KILL) and read the kernel log
// (CAP_SYSLOG), nothing else in any set; and a seccomp filter admitting only
// the calls of its wait loop. Unexpected calls fail with EPERM rather than
// killing PID 1 (which would panic the kernel instead of powering off).
Status ConfineInit();

// From a kernel log line of a seccomp violation (audit type 1326), the
// syscall's name, number and ABI, e.g. "socket (41, native ABI)"; "" otherwise.
std::string DescribeSeccompViolation(std::string_view kernel_log_line);

}  // namespace appliance::init
