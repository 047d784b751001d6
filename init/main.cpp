// appliance-init: PID 1 of the sealed image.
//
// One readable sequence, then one loop (after tini): verify the image, mount
// the early filesystems, open the job channel, start the runtime in its
// sandbox, then wait for signals — reap every child, stop on SIGTERM/SIGINT,
// power off when the runtime ends. Every failure prints its reason and powers
// the machine off; this process never returns from main (that panics the kernel).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>

#include "init/build_config.h"
#include "init/image_check.h"
#include "init/sandbox.h"
#include "init/system.h"

namespace appliance::init {
namespace {

constexpr int kStopGraceSeconds = 5;

[[noreturn]] void Fatal(const Status& status) {
  Log("FATAL: " + status.message());
  PowerOff(/*clean=*/false);
}

sigset_t HandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGPWR, SIGUSR1, SIGUSR2}) sigaddset(&set, sig);
  return set;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "stopped";
}

// Names every seccomp violation the kernel recorded (the runtime is the only
// process under a filter), so the console says which call was refused.
void LogSeccompViolations() {
  constexpr size_t kMaxReported = 64;
  for (const std::string& line : KernelLogLines("type=1326", kMaxReported)) {
    const std::string what = DescribeSeccompViolation(line);
    if (!what.empty()) Log("seccomp refused a call by the runtime: " + what);
  }
}

// Reaps every exited child; returns true (and the status) if `runtime` was among them.
bool ReapChildren(pid_t runtime, int* runtime_status) {
  bool runtime_ended = false;
  int status = 0;
  for (pid_t pid; (pid = ::waitpid(-1, &status, WNOHANG)) > 0;) {
    if (pid == runtime) {
      runtime_ended = true;
      *runtime_status = status;
    }
  }
  return runtime_ended;
}

// SIGTERM to the runtime, then SIGKILL after the grace period; reaps it.
void StopRuntime(pid_t runtime, const sigset_t& signals) {
  ::kill(runtime, SIGTERM);
  const struct timespec tick = {1, 0};
  for (int waited = 0; waited < kStopGraceSeconds; ++waited) {
    int status = 0;
    if (ReapChildren(runtime, &status)) {
      Log("runtime " + DescribeExit(status));
      return;
    }
    ::sigtimedwait(&signals, nullptr, &tick);
  }
  Log("runtime did not stop within " + std::to_string(kStopGraceSeconds) + " s; killing it");
  ::kill(runtime, SIGKILL);
  int status = 0;
  ::waitpid(runtime, &status, 0);
}

[[noreturn]] void Run() {
  const sigset_t signals = HandledSignals();
  // Signals are only ever taken synchronously by the loop below.
  ::sigprocmask(SIG_BLOCK, &signals, nullptr);
  EnsureConsoleFds();
  Log(std::string("starting; integrity level ") + kIntegrityLevel + ", " + std::to_string(kPinnedKeys.size()) +
      " pinned key(s)");
  if (::getpid() != 1) Fatal(Status::Error("not running as PID 1"));
  RouteCtrlAltDelToInit();

  // Verify before mounting anything, so the walk sees exactly the image the kernel unpacked.
  UniqueFd root(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) Fatal(PosixError("open /"));
  const struct timespec t0 = [] { struct timespec t{}; ::clock_gettime(CLOCK_MONOTONIC, &t); return t; }();
  BootPolicy policy{{kPinnedKeys.begin(), kPinnedKeys.end()}, kIntegrityLevel, kMinManifestVersion};
  auto image = VerifyImage(root.get(), policy);
  if (!image.ok()) Fatal(image.status().Context("image verification"));
  struct timespec t1 {};
  ::clock_gettime(CLOCK_MONOTONIC, &t1);
  uint64_t bytes = 0;
  for (const auto& file : image->manifest.files) bytes += file.size;
  const double ms = static_cast<double>(t1.tv_sec - t0.tv_sec) * 1e3 + static_cast<double>(t1.tv_nsec - t0.tv_nsec) / 1e6;
  char summary[160];
  std::snprintf(summary, sizeof summary, "manifest verified: %zu files, %.1f MB in %.0f ms; version %llu; ",
                image->manifest.files.size(), static_cast<double>(bytes) / 1e6, ms,
                static_cast<unsigned long long>(image->manifest.manifest_version));
  // Every key whose signature verified (16 hex digits of each id), against the threshold.
  std::string signers;
  for (const std::string& id : image->signer_key_ids) signers += (signers.empty() ? "" : ",") + id.substr(0, 16);
  Log(summary + std::to_string(image->signer_key_ids.size()) + " valid signatures, threshold " +
      std::to_string(policy.signature_threshold) + " (" + signers + ")");
  root.reset();

  if (Status s = MountEarlyFilesystems(); !s.ok()) Fatal(s);
  EnsureConsoleFds();
  if (Status s = LoadModulesThenLock(image->modules); !s.ok()) Fatal(s);
  image->modules.clear();
  auto channel = OpenChannel(image->config.channel);
  if (!channel.ok()) Fatal(channel.status());

  const pid_t runtime = ::fork();
  if (runtime < 0) Fatal(PosixError("fork runtime"));
  if (runtime == 0) {
    const sigset_t none = [] { sigset_t s; sigemptyset(&s); return s; }();
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ExecInSandbox({channel->get(), image->model.get(), image->executable.get(), image->config.argv});
  }
  // The runtime holds its own copies; init keeps nothing it does not need.
  channel->reset();
  image->model.reset();
  image->executable.reset();
  Log("runtime started as pid " + std::to_string(runtime));
  if (Status s = ConfineInit(); !s.ok()) {
    Log("FATAL: " + s.message());
    StopRuntime(runtime, signals);
    PowerOff(/*clean=*/false);
  }

  for (;;) {
    siginfo_t info{};
    if (::sigwaitinfo(&signals, &info) < 0) continue;  // EINTR
    switch (info.si_signo) {
      case SIGCHLD: {
        int status = 0;
        if (!ReapChildren(runtime, &status)) break;
        const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        Log("runtime " + DescribeExit(status));
        LogSeccompViolations();
        PowerOff(clean);
      }
      case SIGTERM:
      case SIGINT:
      case SIGPWR:
        Log(std::string("got ") + strsignal(info.si_signo) + "; stopping the runtime");
        StopRuntime(runtime, signals);
        PowerOff(/*clean=*/true);
      default:
        Log(std::string("ignoring ") + strsignal(info.si_signo));
    }
  }
}

}  // namespace
}  // namespace appliance::init

int main() { appliance::init::Run(); }
