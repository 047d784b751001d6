// appliance-sandbox-bench: is the sealed runtime slower? `appliance-runtime
// generate` run inside the sandbox init applies against the same binary
// unsandboxed: same model, same arguments, same fds, in --runs rounds of one
// run each (the order flips every round); each slowdown is the median over
// rounds of the round's sandboxed / unsandboxed figure. Must run as root (as
// init).
//
//   appliance-sandbox-bench --runtime BIN --model M [--threads N] [--max-tokens 128] [--runs 21] [--json]
//
// The defaults: one run of the d768 model is ~0.4 s, and on a shared 2-core
// machine single runs move by more than the 2% measured; 21 rounds of 128
// tokens keep the median within about 1% (7 rounds of 64 tokens put one
// bench run in five at +11.6%).
//
// Sandboxed: the child calls init's ExecInSandbox() (init/sandbox.cpp, the
// code PID 1 runs): new network + mount namespaces, read-only root and /run,
// fds 3 (channel) and 4 (model) and nothing else, RLIMIT_CORE 0,
// no_new_privs, every capability dropped, uid/gid 1000, the seccomp
// allowlist, exec by fd with an empty environment. One host-only step comes
// first: in a private mount namespace, a tmpfs on /run, which init mounts in
// the appliance (MountEarlyFilesystems) and ExecInSandbox remounts read-only;
// the host's /run is not a mount point.
// Unsandboxed: the same fds, the same execveat by fd with an empty
// environment, nothing else.
// In both, the runtime opens the model as /proc/self/fd/4 — by the fd init
// hands over, as in the appliance.
//
// Reported per mode: wall time from fork to exit (exec, loading, prefill,
// decode), the runtime's CPU time (user + system, all threads: what seccomp's
// per-syscall filtering would add to, and steadier than wall time on a
// machine other work shares), and the runtime's own decode rate (its --json
// timings). A child
// killed by SIGSYS means the seccomp filter refused a call generate makes:
// the syscall is named from the kernel log (audit type 1326).
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"
#include "base/status.h"
#include "init/sandbox.h"
#include "init/system.h"

namespace appliance::bench {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxOutputBytes = 16u << 20;  // the child's --json output

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

struct Options {
  std::string runtime, model, prompt = "Once upon a time";
  int threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 16u));  // as appliance-runtime
  int64_t max_tokens = 128;
  int runs = 21;
  bool json = false;
};

struct Sample {
  double wall_s = 0;
  double cpu_s = 0;           // user + system time of the runtime, all threads
  double generate_tok_s = 0;  // the runtime's own figure
};

[[noreturn]] void ChildFail(const char* what) {
  init::Log(std::string("sandbox bench child: ") + PosixError(what).message());
  _exit(127);
}

// The child, after fork: stdout to the pipe, then one of the two execs.
[[noreturn]] void Child(bool sandboxed, int out_fd, const init::SandboxSpec& spec) {
  if (::dup2(out_fd, STDOUT_FILENO) < 0) ChildFail("dup2 stdout");
  if (sandboxed) {
    if (::unshare(CLONE_NEWNS) != 0) ChildFail("unshare(CLONE_NEWNS)");
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ChildFail("make mounts private");
    if (::mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=16m") != 0) {
      ChildFail("mount tmpfs on /run");
    }
    init::ExecInSandbox(spec);
  }
  // The same fd numbers as ExecInSandbox gives the runtime (sources moved
  // above the targets first so one cannot clobber another).
  const int channel = ::fcntl(spec.channel_fd, F_DUPFD_CLOEXEC, 10);
  const int model = ::fcntl(spec.model_fd, F_DUPFD_CLOEXEC, 10);
  const int executable = ::fcntl(spec.executable_fd, F_DUPFD_CLOEXEC, 10);
  const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (channel < 0 || model < 0 || executable < 0 || devnull < 0 || ::dup2(devnull, STDIN_FILENO) < 0 ||
      ::dup2(channel, init::kChannelFd) < 0 || ::dup2(model, init::kModelFd) < 0) {
    ChildFail("place fds");
  }
  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  char* envp[] = {nullptr};
  ::syscall(SYS_execveat, executable, "", argv.data(), envp, AT_EMPTY_PATH);
  ChildFail("execveat runtime");
}

// The newest seccomp refusal in the kernel log, named; "" if none.
std::string LastSeccompViolation() {
  std::string last;
  for (const std::string& line : init::KernelLogLines("type=1326", 100000)) {
    const std::string named = init::DescribeSeccompViolation(line);
    if (!named.empty()) last = named;
  }
  return last;
}

StatusOr<Sample> RunOnce(bool sandboxed, const init::SandboxSpec& spec) {
  const char* mode = sandboxed ? "sandboxed" : "unsandboxed";
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return PosixError("pipe");
  UniqueFd read_end(out[0]), write_end(out[1]);
  const auto t0 = Clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) return PosixError("fork");
  if (pid == 0) Child(sandboxed, write_end.get(), spec);
  write_end.reset();
  std::string output;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (output.size() + static_cast<size_t>(n) > kMaxOutputBytes) {
      ::kill(pid, SIGKILL);
      break;
    }
    output.append(buf, static_cast<size_t>(n));
  }
  int wstatus = 0;
  struct rusage usage {};
  while (::wait4(pid, &wstatus, 0, &usage) < 0) {
    if (errno != EINTR) return PosixError("wait4");
  }
  Sample s;
  s.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  auto secs = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; };
  s.cpu_s = secs(usage.ru_utime) + secs(usage.ru_stime);
  if (WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGSYS) {
    const std::string call = LastSeccompViolation();
    return Status::Error(std::string(mode) + " runtime killed by SIGSYS: the seccomp filter refused " +
                         (call.empty() ? "a call (not found in the kernel log)" : call));
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return Status::Error(std::string(mode) + " runtime failed (wait status " + std::to_string(wstatus) + ")");
  }
  const Json j = Json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("timings") || !j["timings"].is_object() ||
      !j["timings"].contains("tokens_per_s") || !j["timings"]["tokens_per_s"].is_number()) {
    return Status::Error(std::string(mode) + " runtime printed no JSON result with timings.tokens_per_s");
  }
  s.generate_tok_s = j["timings"]["tokens_per_s"].get<double>();
  return s;
}

std::vector<double> LoadAverage() {
  double avg[3] = {0, 0, 0};
  if (::getloadavg(avg, 3) != 3) return {};
  return {avg[0], avg[1], avg[2]};
}

Status Run(const Options& o) {
  if (::geteuid() != 0) return Status::Error("run as root: the sandbox needs the privileges init has");
  if (o.runs < 1 || o.max_tokens < 1 || o.threads < 1 || o.threads > 256) {
    return Status::Error("--runs, --max-tokens and --threads must be at least 1 (threads at most 256)");
  }
  UniqueFd exe(::open(o.runtime.c_str(), O_RDONLY | O_CLOEXEC));
  if (!exe.valid()) return PosixError("open " + o.runtime);
  UniqueFd model(::open(o.model.c_str(), O_RDONLY | O_CLOEXEC));
  if (!model.valid()) return PosixError("open " + o.model);
  // generate never uses the channel; it is there because init always hands one over.
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return PosixError("socketpair");
  UniqueFd channel(sv[0]), peer(sv[1]);
  const init::SandboxSpec spec{
      channel.get(), model.get(), exe.get(),
      {"appliance-runtime", "generate", "--model", "/proc/self/fd/" + std::to_string(init::kModelFd), "--prompt",
       o.prompt, "--max-tokens", std::to_string(o.max_tokens), "--temperature", "0", "--threads",
       std::to_string(o.threads), "--json"}};

  const std::vector<double> load_before = LoadAverage();
  // Warm-up: the page cache, and a first check that the sandboxed run works at all.
  for (bool sandboxed : {true, false}) RETURN_IF_ERROR(RunOnce(sandboxed, spec).status().Context("warm-up"));
  std::vector<double> wall[2], cpu[2], rate[2];  // [0] unsandboxed, [1] sandboxed
  for (int r = 0; r < o.runs; ++r) {
    for (int k = 0; k < 2; ++k) {
      const bool sandboxed = (r + k) % 2 == 1;  // alternate which goes first
      ASSIGN_OR_RETURN(Sample s, RunOnce(sandboxed, spec));
      wall[sandboxed].push_back(s.wall_s);
      cpu[sandboxed].push_back(s.cpu_s);
      rate[sandboxed].push_back(s.generate_tok_s);
    }
  }
  const double wall_u = Median(wall[0]), wall_s = Median(wall[1]);
  const double cpu_u = Median(cpu[0]), cpu_s = Median(cpu[1]);
  const double rate_u = Median(rate[0]), rate_s = Median(rate[1]);
  // The slowdowns compare the two runs of each round (back to back, so under
  // the same machine load) and take the median over rounds; the medians of
  // each mode's runs would also carry the drift between rounds, which on
  // this shared VM exceeds the 2% being measured. Positive = sandboxed slower.
  auto paired = [&](const std::vector<double>(&v)[2], bool higher_is_slower) {
    std::vector<double> pct;
    for (size_t r = 0; r < v[0].size(); ++r) {
      pct.push_back(higher_is_slower ? (v[1][r] / v[0][r] - 1) * 100 : (1 - v[1][r] / v[0][r]) * 100);
    }
    return Median(pct);
  };
  const double wall_pct = paired(wall, true);
  const double cpu_pct = paired(cpu, true);
  const double rate_pct = paired(rate, false);
  const std::vector<double> load_after = LoadAverage();

  if (o.json) {
    Json j;
    j["runtime"] = o.runtime;
    j["model"] = o.model;
    j["threads"] = o.threads;
    j["max_tokens"] = o.max_tokens;
    j["runs"] = o.runs;
    j["unsandboxed"] = {{"wall_s", wall_u}, {"cpu_s", cpu_u}, {"generate_tok_s", rate_u}, {"wall_s_all", wall[0]}};
    j["sandboxed"] = {{"wall_s", wall_s}, {"cpu_s", cpu_s}, {"generate_tok_s", rate_s}, {"wall_s_all", wall[1]}};
    j["sandbox_slowdown_wall_pct"] = wall_pct;
    j["sandbox_slowdown_cpu_pct"] = cpu_pct;
    j["sandbox_slowdown_generate_pct"] = rate_pct;
    j["load_average"] = {{"before", load_before}, {"after", load_after}};
    std::printf("%s\n", j.dump().c_str());
    return Status::Ok();
  }
  std::printf("appliance-runtime generate, %lld tokens, %d threads, %d rounds (one run per mode, alternating); load %.2f -> %.2f\n",
              static_cast<long long>(o.max_tokens), o.threads, o.runs, load_before.empty() ? -1.0 : load_before[0],
              load_after.empty() ? -1.0 : load_after[0]);
  std::printf("              wall s    cpu s   decode tok/s\n");
  std::printf("unsandboxed  %7.3f  %7.3f   %10.1f\n", wall_u, cpu_u, rate_u);
  std::printf("sandboxed    %7.3f  %7.3f   %10.1f\n", wall_s, cpu_s, rate_s);
  std::printf("sandbox slowdown (median per round): %+.2f%% wall, %+.2f%% cpu, %+.2f%% decode (positive = slower; acceptance <= 2%%)\n",
              wall_pct, cpu_pct, rate_pct);
  return Status::Ok();
}

}  // namespace
}  // namespace appliance::bench

int main(int argc, char** argv) {
  using namespace appliance::bench;
  Options o;
  CLI::App app{"appliance-runtime generate inside init's runtime sandbox against the same run unsandboxed"};
  app.add_option("--runtime", o.runtime, "appliance-runtime binary")->required();
  app.add_option("--model", o.model, "GGUF model")->required();
  app.add_option("--prompt", o.prompt, "Prompt")->capture_default_str();
  app.add_option("--threads", o.threads, "Runtime threads")->capture_default_str();
  app.add_option("--max-tokens", o.max_tokens, "Tokens to generate (greedy)")->capture_default_str();
  app.add_option("--runs", o.runs, "Timed runs per mode (the median is reported)")->capture_default_str();
  app.add_flag("--json", o.json, "One JSON object instead of the table");
  CLI11_PARSE(app, argc, argv);
  const appliance::Status s = Run(o);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.message().c_str());
    return 1;
  }
  return 0;
}
