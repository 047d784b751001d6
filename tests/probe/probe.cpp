// appliance-probe: a test-only stand-in for the runtime (never part of a
// release image). Init starts it exactly as it starts the runtime — same
// sandbox, same fds — and it tries every way out of that sandbox, reporting
// one JSON line per attempt on the channel, then the sandbox state the kernel
// reports for it. Then it answers {"op":"shutdown"} like the runtime does.
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/audit.h>
#include <ucontext.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

constexpr int kChannelFd = 3;

// The filter traps forbidden calls with SIGSYS. The runtime has no handler and
// dies; the probe records which call was trapped and lets it return EPERM, so
// it can go on to the next attempt.
volatile sig_atomic_t g_trapped_syscall = -1;
volatile sig_atomic_t g_trapped_arch = 0;

void OnSigsys(int, siginfo_t* info, void* context) {
  g_trapped_syscall = info->si_syscall;
  g_trapped_arch = static_cast<sig_atomic_t>(info->si_arch);
  static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RAX] = -EPERM;
}

void Send(const nlohmann::json& j) {
  std::string line = j.dump() + "\n";
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(kChannelFd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(2);
    done += static_cast<size_t>(n);
  }
}

std::string ErrnoName(int err) {
  switch (err) {
    case 0: return "succeeded";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    case ENOENT: return "ENOENT";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    default: return std::string("errno ") + std::to_string(err) + " (" + std::strerror(err) + ")";
  }
}

struct Attempt {
  std::string name;
  std::set<int> refusals;  // errno values that count as "refused"
  std::function<long()> call;
};

long Socket(int family, int type) { return ::socket(family, type, 0); }

// An i386 `int 0x80` socketcall from a 64-bit process: the kernel has IA32
// emulation, so only the filter's architecture pin stops it.
long LegacyAbiSocketcall() {
  long ret;
  unsigned long args[3] = {AF_INET, SOCK_STREAM, 0};
  // i386 socketcall = 102, SYS_SOCKET = 1.
  asm volatile("int $0x80" : "=a"(ret) : "a"(102), "b"(1), "c"(args) : "memory");
  if (ret < 0) {
    errno = static_cast<int>(-ret);
    return -1;
  }
  return ret;
}

std::vector<Attempt> Attempts() {
  const std::set<int> eperm = {EPERM};
  std::vector<Attempt> a;
  struct Family {
    const char* name;
    int family;
    int type;
  };
  for (Family f : {Family{"AF_INET", AF_INET, SOCK_STREAM}, Family{"AF_INET6", AF_INET6, SOCK_DGRAM},
                   Family{"AF_PACKET", AF_PACKET, SOCK_RAW}, Family{"AF_NETLINK", AF_NETLINK, SOCK_RAW},
                   Family{"AF_VSOCK", AF_VSOCK, SOCK_STREAM}, Family{"AF_UNIX", AF_UNIX, SOCK_STREAM},
                   Family{"AF_ALG", AF_ALG, SOCK_SEQPACKET}, Family{"AF_BLUETOOTH", AF_BLUETOOTH, SOCK_STREAM},
                   Family{"AF_XDP", AF_XDP, SOCK_RAW}, Family{"AF_CAN", AF_CAN, SOCK_RAW},
                   Family{"AF_TIPC", AF_TIPC, SOCK_RDM}, Family{"AF_KEY", AF_KEY, SOCK_RAW}}) {
    a.push_back({std::string("socket(") + f.name + ")", eperm, [f] { return Socket(f.family, f.type); }});
  }
  a.push_back({"socketpair(AF_UNIX)", eperm, [] { int sv[2]; return long{::socketpair(AF_UNIX, SOCK_STREAM, 0, sv)}; }});
  a.push_back({"bind(vsock)", eperm, [] {
                 sockaddr_vm addr{};
                 addr.svm_family = AF_VSOCK;
                 addr.svm_cid = VMADDR_CID_ANY;
                 addr.svm_port = 1234;
                 return long{::bind(kChannelFd, reinterpret_cast<sockaddr*>(&addr), sizeof addr)};
               }});
  a.push_back({"connect(vsock host)", eperm, [] {
                 sockaddr_vm addr{};
                 addr.svm_family = AF_VSOCK;
                 addr.svm_cid = VMADDR_CID_HOST;
                 addr.svm_port = 1234;
                 return long{::connect(kChannelFd, reinterpret_cast<sockaddr*>(&addr), sizeof addr)};
               }});
  a.push_back({"listen", eperm, [] { return long{::listen(kChannelFd, 1)}; }});
  a.push_back({"ptrace(TRACEME)", eperm, [] { return ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr); }});
  a.push_back({"ptrace(ATTACH init)", eperm, [] { return ::ptrace(PTRACE_ATTACH, 1, nullptr, nullptr); }});
  a.push_back({"mount(tmpfs)", eperm, [] { return long{::mount("none", "/tmp", "tmpfs", 0, nullptr)}; }});
  a.push_back({"umount2(/proc)", eperm, [] { return long{::umount2("/proc", MNT_DETACH)}; }});
  a.push_back({"finit_module", eperm, [] { return ::syscall(SYS_finit_module, 0, "", 0); }});
  a.push_back({"init_module", eperm, [] { return ::syscall(SYS_init_module, nullptr, 0, ""); }});
  a.push_back({"delete_module", eperm, [] { return ::syscall(SYS_delete_module, "virtio_net", 0); }});
  a.push_back({"unshare(NEWNET)", eperm, [] { return long{::unshare(CLONE_NEWNET)}; }});
  a.push_back({"unshare(NEWUSER)", eperm, [] { return long{::unshare(CLONE_NEWUSER)}; }});
  a.push_back({"setns", eperm, [] { return long{::setns(kChannelFd, 0)}; }});
  a.push_back({"bpf", eperm, [] { return ::syscall(SYS_bpf, 0, nullptr, 0); }});
  a.push_back({"perf_event_open", eperm, [] { return ::syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0); }});
  a.push_back({"userfaultfd", eperm, [] { return ::syscall(SYS_userfaultfd, 0); }});
  a.push_back({"io_uring_setup", eperm, [] { return ::syscall(SYS_io_uring_setup, 1, nullptr); }});
  a.push_back({"keyctl", eperm, [] { return ::syscall(SYS_keyctl, 0, 0, 0, 0, 0); }});
  a.push_back({"add_key", eperm, [] { return ::syscall(SYS_add_key, "user", "k", "v", 1, 0); }});
  a.push_back({"personality", eperm, [] { return long{::personality(PER_LINUX32)}; }});
  a.push_back({"kexec_load", eperm, [] { return ::syscall(SYS_kexec_load, 0, 0, nullptr, 0); }});
  a.push_back({"reboot", eperm, [] { return ::syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc, nullptr); }});
  a.push_back({"setuid(0)", eperm, [] { return long{::setuid(0)}; }});
  a.push_back({"chroot", eperm, [] { return long{::chroot("/tmp")}; }});
  a.push_back({"fork", eperm, [] {
                 pid_t pid = ::fork();
                 if (pid == 0) _exit(0);
                 return long{pid};
               }});
  a.push_back({"execve(/init)", eperm, [] { char* argv[] = {nullptr}; return long{::execve("/init", argv, argv)}; }});
  a.push_back({"int 0x80 socketcall (i386 ABI)", eperm, LegacyAbiSocketcall});
  a.push_back({"open(/dev/mem)", {EACCES, EPERM}, [] { return long{::open("/dev/mem", O_RDONLY)}; }});
  a.push_back({"open(/dev/kmsg) for writing", {EACCES, EPERM}, [] { return long{::open("/dev/kmsg", O_WRONLY)}; }});
  a.push_back({"create file in /", {EROFS, EACCES}, [] {
                 return long{::open("/etc/appliance/injected", O_WRONLY | O_CREAT | O_EXCL, 0644)};
               }});
  a.push_back({"write the model", {EROFS, EACCES}, [] { return long{::open("/models/model.gguf", O_WRONLY)}; }});
  return a;
}

std::string ReadFile(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main() {
  struct sigaction sa {};
  sa.sa_sigaction = OnSigsys;
  sa.sa_flags = SA_SIGINFO;
  ::sigaction(SIGSYS, &sa, nullptr);

  Send({{"event", "ready"}, {"model", "appliance-probe"}});
  bool all_refused = true;
  for (const Attempt& attempt : Attempts()) {
    g_trapped_syscall = -1;
    errno = 0;
    long rc = attempt.call();
    const int err = rc < 0 ? errno : 0;
    std::string result = ErrnoName(err);
    bool refused = rc < 0 && attempt.refusals.count(err) > 0;
    if (g_trapped_syscall >= 0) {
      result = "trapped by seccomp (SIGSYS, syscall " + std::to_string(g_trapped_syscall) +
               (g_trapped_arch == static_cast<sig_atomic_t>(AUDIT_ARCH_I386) ? ", i386 ABI)" : ")");
      refused = true;
    }
    all_refused &= refused;
    Send({{"event", "probe"}, {"attempt", attempt.name}, {"result", result}, {"refused", refused}});
  }

  nlohmann::json status = nlohmann::json::object();
  std::istringstream lines(ReadFile("/proc/self/status"));
  for (std::string line; std::getline(lines, line);) {
    for (const char* key : {"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                            "Seccomp", "Seccomp_filters"}) {
      const std::string prefix = std::string(key) + ":";
      if (line.rfind(prefix, 0) == 0) {
        std::string value = line.substr(prefix.size());
        value.erase(0, value.find_first_not_of(" \t"));
        status[key] = value;
      }
    }
  }
  // /proc/self/net/dev lists the interfaces of the probe's own network namespace.
  nlohmann::json interfaces = nlohmann::json::array();
  std::istringstream net(ReadFile("/proc/self/net/dev"));
  for (std::string line; std::getline(net, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    interfaces.push_back(name);
  }
  Send({{"event", "probe-status"}, {"status", status}, {"interfaces", interfaces}, {"all_refused", all_refused}});

  // Then behave like the runtime on shutdown, so `appliance-image run --jobs` can end the boot cleanly.
  std::string buffer;
  char chunk[512];
  for (;;) {
    ssize_t n = ::read(kChannelFd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 1;
    buffer.append(chunk, static_cast<size_t>(n));
    if (buffer.find("\"shutdown\"") != std::string::npos) {
      Send({{"event", "shutdown"}});
      return 0;
    }
    if (buffer.find('\n') != std::string::npos) {
      Send({{"id", nullptr}, {"event", "error"}, {"error", "appliance-probe answers only shutdown"}});
      buffer.clear();
    }
  }
}
