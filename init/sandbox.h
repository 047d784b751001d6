// The runtime's sandbox, applied in the forked child just before it executes
// the verified runtime. Order follows runc: namespaces, fds, rlimits,
// no_new_privs, capabilities and uid, seccomp as close to exec as possible,
// exec by fd.
#pragma once

#include <sys/types.h>

#include <string>
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

// The seccomp filter (libseccomp), installed on the calling thread: the
// runtime can create no socket of any family (AF_VSOCK is not covered by
// network namespaces), nor bind/connect/listen, nor ptrace, mount, load
// modules, touch keyrings, enter namespaces or use io_uring/bpf/perf.
// Calls from any other architecture kill the process.
Status InstallSeccompFilter();

}  // namespace appliance::init
