#include "init/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <linux/securebits.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <memory>

#include "init/system.h"

namespace appliance::init {
namespace {

// Syscalls the runtime never needs and that would let it reach out of the
// sandbox; each fails with EPERM.
constexpr const char* kDeniedSyscalls[] = {
    "socket", "socketpair", "socketcall", "bind", "connect", "listen", "accept", "accept4",
    "sendmsg", "sendto", "recvmsg", "recvfrom", "sendmmsg", "recvmmsg", "getsockopt", "setsockopt",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig", "fspick",
    "bpf", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "keyctl", "add_key", "request_key", "unshare", "setns", "personality", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    "syslog", "iopl", "ioperm", "quotactl", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setgroups", "setfsuid", "setfsgid", "capset", "name_to_handle_at", "open_by_handle_at", "lookup_dcookie",
    "vhangup", "uselib", "_sysctl", "nfsservctl",
};

struct SeccompCtxDeleter {
  void operator()(void* ctx) const { seccomp_release(static_cast<scmp_filter_ctx>(ctx)); }
};

[[noreturn]] void Fail(const Status& status) {
  Log("FATAL: runtime sandbox: " + status.message());
  _exit(127);
}

void Check(const Status& status) {
  if (!status.ok()) Fail(status);
}

Status Errno(const char* what) { return PosixError(what); }

// Puts `fd` at `target`, leaving it open across exec.
Status PlaceFd(int fd, int target) {
  if (fd == target) {
    int flags = ::fcntl(fd, F_GETFD);
    if (flags < 0 || ::fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) != 0) return Errno("fcntl clear FD_CLOEXEC");
    return Status::Ok();
  }
  if (::dup2(fd, target) < 0) return Errno("dup2");
  return Status::Ok();
}

Status DropCapabilitiesAndUid() {
  // Bounding set first: it needs CAP_SETPCAP, which the uid switch removes.
  for (cap_value_t cap = 0; cap <= CAP_LAST_CAP; ++cap) {
    if (cap_drop_bound(cap) != 0 && errno != EINVAL) return Errno("drop bounding capability");
  }
  if (cap_reset_ambient() != 0) return Errno("clear ambient capabilities");
  if (::prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
                                     SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE |
                                     SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED) != 0) {
    return Errno("set securebits");
  }
  if (::setgroups(0, nullptr) != 0) return Errno("setgroups");
  if (::setresgid(kRuntimeGid, kRuntimeGid, kRuntimeGid) != 0) return Errno("setresgid");
  if (::setresuid(kRuntimeUid, kRuntimeUid, kRuntimeUid) != 0) return Errno("setresuid");
  // Leaving uid 0 cleared permitted/effective; clear inheritable too and check.
  std::unique_ptr<std::remove_pointer_t<cap_t>, int (*)(void*)> empty(cap_init(), cap_free);
  if (!empty || cap_set_proc(empty.get()) != 0) return Errno("clear capability sets");
  std::unique_ptr<std::remove_pointer_t<cap_t>, int (*)(void*)> now(cap_get_proc(), cap_free);
  if (!now || cap_compare(now.get(), empty.get()) != 0) return Status::Error("capabilities still held after drop");
  return Status::Ok();
}

}  // namespace

Status InstallSeccompFilter() {
  std::unique_ptr<void, SeccompCtxDeleter> ctx(seccomp_init(SCMP_ACT_ALLOW));
  if (!ctx) return Status::Error("seccomp_init failed");
  // Only the native architecture is in the filter; a syscall made through any
  // other ABI (i386 int 0x80, x32) kills the process.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc != 0) {
    return PosixError("seccomp bad-arch action", -rc);
  }
  for (const char* name : kDeniedSyscalls) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not a syscall on this architecture
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0); rc != 0) {
      return PosixError(std::string("seccomp rule for ") + name, -rc);
    }
  }
  if (int rc = seccomp_load(ctx.get()); rc != 0) return PosixError("seccomp_load", -rc);
  return Status::Ok();
}

void ExecInSandbox(const SandboxSpec& spec) {
  // A fresh network namespace holds only a down loopback device; a private
  // mount namespace lets the runtime's view of the root be read-only while
  // init's stays as it is.
  if (::unshare(CLONE_NEWNET | CLONE_NEWNS) != 0) Fail(Errno("unshare(CLONE_NEWNET | CLONE_NEWNS)"));
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) Fail(Errno("make mounts private"));
  struct ReadOnlyMount {
    const char* path;
    unsigned long flags;  // a bind remount replaces the per-mount flags, so restate them
  };
  for (const ReadOnlyMount& m : {ReadOnlyMount{"/", MS_NOSUID | MS_NODEV},
                                 ReadOnlyMount{"/run", MS_NOSUID | MS_NODEV | MS_NOEXEC}}) {
    if (::mount(nullptr, m.path, nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | m.flags, nullptr) != 0) {
      Fail(Errno((std::string("remount read-only ") + m.path).c_str()));
    }
  }

  // Move the handed-over fds above the targets first so dup2 cannot clobber one with another.
  int channel = ::fcntl(spec.channel_fd, F_DUPFD_CLOEXEC, 10);
  int model = ::fcntl(spec.model_fd, F_DUPFD_CLOEXEC, 10);
  int executable = ::fcntl(spec.executable_fd, F_DUPFD_CLOEXEC, 10);
  if (channel < 0 || model < 0 || executable < 0) Fail(Errno("F_DUPFD"));
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0) Fail(Errno("open /dev/null"));
  Check(PlaceFd(devnull, STDIN_FILENO));
  Check(PlaceFd(channel, kChannelFd));
  Check(PlaceFd(model, kModelFd));
  if (::dup2(executable, kModelFd + 1) < 0) Fail(Errno("dup2 executable"));
  const int exec_fd = kModelFd + 1;
  // Everything else init held (the root dir fd, other verified files) is closed.
  if (::syscall(SYS_close_range, exec_fd + 1, ~0U, 0) != 0) Fail(Errno("close_range"));
  if (::fcntl(exec_fd, F_SETFD, FD_CLOEXEC) != 0) Fail(Errno("fcntl exec fd"));

  const struct rlimit no_core = {0, 0};
  if (::setrlimit(RLIMIT_CORE, &no_core) != 0) Fail(Errno("setrlimit(RLIMIT_CORE)"));
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) Fail(Errno("prctl(PR_SET_NO_NEW_PRIVS)"));
  Check(DropCapabilitiesAndUid());
  Check(InstallSeccompFilter());

  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  char* envp[] = {nullptr};  // no inherited LD_* or anything else
  ::syscall(SYS_execveat, exec_fd, "", argv.data(), envp, AT_EMPTY_PATH);
  Fail(Errno("execveat runtime"));
}

}  // namespace appliance::init
