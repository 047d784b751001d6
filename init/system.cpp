#include "init/system.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <string>

namespace appliance::init {

void Log(std::string_view message) {
  std::string line = "appliance-init: ";
  line += message;
  line += '\n';
  // One write per line so lines from init and the runtime never interleave mid-line.
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

void EnsureConsoleFds() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1) continue;
    int console = ::open("/dev/console", O_RDWR | O_NOCTTY);
    if (console < 0) return;  // nowhere to log to; keep booting, power-off still works
    if (console != fd) {
      ::dup2(console, fd);
      ::close(console);
    }
  }
}

Status MountEarlyFilesystems() {
  struct MountPoint {
    const char* source;
    const char* target;
    const char* type;
    unsigned long flags;
    const char* options;
  };
  static constexpr unsigned long kNoExecDev = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  static const MountPoint kMounts[] = {
      {"proc", "/proc", "proc", kNoExecDev, "hidepid=2"},
      {"sysfs", "/sys", "sysfs", kNoExecDev, nullptr},
      {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755"},
      {"tmpfs", "/run", "tmpfs", kNoExecDev, "mode=0755,size=16m"},
      {"tmpfs", "/tmp", "tmpfs", kNoExecDev, "mode=1777,size=64m"},
  };
  for (const MountPoint& m : kMounts) {
    if (::mount(m.source, m.target, m.type, m.flags, m.options) != 0) {
      return PosixError(std::string("mount ") + m.type + " on " + m.target);
    }
  }
  return Status::Ok();
}

Status LoadModulesThenLock(const std::vector<std::pair<std::string, UniqueFd>>& modules) {
  for (const auto& [path, fd] : modules) {
    // The fd is the one whose bytes were hashed: the kernel reads exactly the verified module.
    if (::syscall(SYS_finit_module, fd.get(), "", 0) != 0 && errno != EEXIST) return PosixError("load module " + path);
    Log("loaded module " + path);
  }
  UniqueFd lock(::open("/proc/sys/kernel/modules_disabled", O_WRONLY | O_CLOEXEC));
  if (!lock.valid() || ::write(lock.get(), "1", 1) != 1) return PosixError("set kernel.modules_disabled");
  return Status::Ok();
}

std::vector<std::string> KernelLogLines(std::string_view needle, size_t max_lines) {
  std::vector<std::string> lines;
  UniqueFd kmsg(::open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!kmsg.valid()) return lines;
  char record[8192];
  for (;;) {
    // Each read returns one record; EPIPE means records were overwritten, read on.
    ssize_t n = ::read(kmsg.get(), record, sizeof record - 1);
    if (n < 0 && errno == EPIPE) continue;
    if (n <= 0) break;
    std::string_view line(record, static_cast<size_t>(n));
    if (line.find(needle) == std::string_view::npos) continue;
    if (lines.size() == max_lines) break;
    lines.emplace_back(line);
  }
  return lines;
}

void RouteCtrlAltDelToInit() { ::reboot(RB_DISABLE_CAD); }

StatusOr<UniqueFd> OpenChannel(const std::string& device) {
  UniqueFd fd(::open(device.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!fd.valid()) return PosixError("open channel " + device);
  if (::isatty(fd.get())) {
    struct termios tio {};
    if (::tcgetattr(fd.get(), &tio) != 0) return PosixError("tcgetattr " + device);
    ::cfmakeraw(&tio);
    tio.c_cflag |= CLOCAL | CREAD;
    tio.c_cc[VMIN] = 1;
    tio.c_cc[VTIME] = 0;
    if (::cfsetspeed(&tio, B115200) != 0 || ::tcsetattr(fd.get(), TCSANOW, &tio) != 0) {
      return PosixError("tcsetattr " + device);
    }
    // Bytes the host sent before anyone listened belong to no job.
    ::tcflush(fd.get(), TCIFLUSH);
  }
  return fd;
}

void PowerOff(bool clean) {
  Log(clean ? "power-off: clean" : "power-off: failure");
  ::sync();
  ::reboot(RB_POWER_OFF);
  // reboot(2) only fails without CAP_SYS_BOOT; PID 1 must still never exit.
  Log("reboot(RB_POWER_OFF) failed; halting here");
  for (;;) ::pause();
}

}  // namespace appliance::init
