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
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>

#include "init/system.h"

namespace appliance::init {
namespace {

// The runtime's allowlist: memory, threads, clocks, reading its files and
// reading/writing the fds it was given. Everything else — every socket call,
// ptrace, mount, module loading, namespaces, bpf, perf, io_uring, keyrings,
// kexec, setuid, fork — is trapped (see InstallSeccompFilter).
constexpr const char* kAllowedSyscalls[] = {
    // memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mbind", "get_mempolicy", "set_mempolicy",
    // threads, signals, time
    "futex", "set_robust_list", "get_robust_list", "rseq", "sched_yield", "sched_getaffinity",
    "sched_setaffinity", "gettid", "getpid", "tgkill", "exit", "exit_group", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "sigaltstack", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres",
    "gettimeofday", "getrusage", "sysinfo", "prlimit64", "getrandom", "set_tid_address", "arch_prctl",
    // files: the channel and model fds, libraries, /proc and /sys reads (the root is read-only)
    "read", "write", "readv", "writev", "pread64", "openat", "close", "fstat", "newfstatat", "statx", "lseek",
    "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents64", "fcntl", "poll", "ppoll",
    "uname", "getcwd", "getuid", "geteuid", "getgid", "getegid",
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

Status InstallSeccompFilter(int exec_fd) {
  // A disallowed call is trapped: it does not run, the thread gets SIGSYS
  // (which kills the runtime: it has no handler) and, with the log flag, the
  // kernel records it (audit type 1326, syscall number) for init to name.
  std::unique_ptr<void, SeccompCtxDeleter> ctx(seccomp_init(SCMP_ACT_TRAP));
  if (!ctx) return Status::Error("seccomp_init failed");
  auto check = [](int rc, const std::string& what) { return rc == 0 ? Status::Ok() : PosixError("seccomp " + what, -rc); };
  // Only the native architecture is in the filter; a call through any other
  // ABI (i386 int 0x80, x32) is trapped before any rule is looked at.
  RETURN_IF_ERROR(check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_TRAP), "bad-arch action"));
  RETURN_IF_ERROR(check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_LOG, 1), "log flag"));
  for (const char* name : kAllowedSyscalls) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) return Status::Error(std::string("seccomp: unknown syscall ") + name);
    RETURN_IF_ERROR(check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0), std::string("allow ") + name));
  }
  // Threads, not processes: clone only with CLONE_THREAD; clone3's flags sit
  // in memory a filter cannot read, so it answers ENOSYS and glibc uses clone.
  RETURN_IF_ERROR(check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                                         SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD)),
                        "allow clone(CLONE_THREAD)"));
  RETURN_IF_ERROR(check(seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0), "clone3"));
  // isatty() and the terminal size, nothing else of ioctl.
  for (unsigned long request : {static_cast<unsigned long>(TCGETS), static_cast<unsigned long>(TIOCGWINSZ)}) {
    RETURN_IF_ERROR(check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1, SCMP_A1(SCMP_CMP_EQ, request)),
                          "allow ioctl"));
  }
  // The one exec init itself makes: the verified runtime, by its fd.
  if (exec_fd >= 0) {
    RETURN_IF_ERROR(check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(execveat), 2,
                                           SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(exec_fd)),
                                           SCMP_A4(SCMP_CMP_EQ, AT_EMPTY_PATH)),
                          "allow execveat(exec fd)"));
  }
  RETURN_IF_ERROR(check(seccomp_load(ctx.get()), "load"));
  return Status::Ok();
}

Status ConfineInit() {
  static constexpr cap_value_t kKept[] = {CAP_SYS_BOOT, CAP_KILL, CAP_SYSLOG};
  auto kept = [](cap_value_t cap) {
    for (cap_value_t k : kKept) {
      if (k == cap) return true;
    }
    return false;
  };
  for (cap_value_t cap = 0; cap <= CAP_LAST_CAP; ++cap) {
    if (!kept(cap) && cap_drop_bound(cap) != 0 && errno != EINVAL) return Errno("init: drop bounding capability");
  }
  std::unique_ptr<std::remove_pointer_t<cap_t>, int (*)(void*)> caps(cap_init(), cap_free);
  if (!caps) return Errno("init: cap_init");
  if (cap_set_flag(caps.get(), CAP_PERMITTED, std::size(kKept), kKept, CAP_SET) != 0 ||
      cap_set_flag(caps.get(), CAP_EFFECTIVE, std::size(kKept), kKept, CAP_SET) != 0 ||
      cap_set_proc(caps.get()) != 0) {
    return Errno("init: keep only CAP_SYS_BOOT, CAP_KILL, CAP_SYSLOG");
  }

  std::unique_ptr<void, SeccompCtxDeleter> ctx(seccomp_init(SCMP_ACT_ERRNO(EPERM)));
  if (!ctx) return Status::Error("init: seccomp_init failed");
  static constexpr const char* kInitSyscalls[] = {
      "rt_sigtimedwait", "rt_sigprocmask", "rt_sigreturn", "wait4", "waitid", "kill", "reboot", "sync",
      "write", "read", "openat", "close", "clock_gettime", "nanosleep", "clock_nanosleep", "getpid",
      "brk", "mmap", "munmap", "mremap", "madvise", "exit_group", "pause",
  };
  for (const char* name : kInitSyscalls) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) return Status::Error(std::string("init seccomp: unknown syscall ") + name);
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0); rc != 0) {
      return PosixError(std::string("init seccomp: allow ") + name, -rc);
    }
  }
  if (int rc = seccomp_load(ctx.get()); rc != 0) return PosixError("init seccomp: load", -rc);
  return Status::Ok();
}

std::string DescribeSeccompViolation(std::string_view kernel_log_line) {
  const auto pos = kernel_log_line.find(" syscall=");
  if (kernel_log_line.find("type=1326") == std::string_view::npos || pos == std::string_view::npos) return "";
  // Only refusals: the logged ERRNO answers (code=0x5....: clone3 -> ENOSYS, glibc falls back) are by design.
  if (kernel_log_line.find(" code=0x5") != std::string_view::npos) return "";
  const std::string number(kernel_log_line.substr(pos + 9, kernel_log_line.find(' ', pos + 9) - (pos + 9)));
  if (number.empty() || number.find_first_not_of("0123456789") != std::string::npos || number.size() > 6) return "";
  const int nr = std::stoi(number);
  std::string arch = "native";
  if (kernel_log_line.find(" arch=40000003") != std::string_view::npos) arch = "i386";
  char* name = seccomp_syscall_resolve_num_arch(arch == "i386" ? SCMP_ARCH_X86 : SCMP_ARCH_NATIVE, nr);
  std::string result = std::string(name != nullptr ? name : "unknown") + " (" + number + ", " + arch + " ABI)";
  std::free(name);
  return result;
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
  Check(InstallSeccompFilter(exec_fd));

  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  char* envp[] = {nullptr};  // no inherited LD_* or anything else
  ::syscall(SYS_execveat, exec_fd, "", argv.data(), envp, AT_EMPTY_PATH);
  Fail(Errno("execveat runtime"));
}

}  // namespace appliance::init
