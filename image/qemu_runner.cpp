#include "image/qemu_runner.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "image/channel.h"
#include "image/console_log.h"
#include "image/file_util.h"
#include "image/line_framer.h"
#include "image/subprocess.h"

namespace appliance::image {

using Clock = std::chrono::steady_clock;

std::vector<std::string> QemuArgv(const QemuConfig& c) {
  std::vector<std::string> argv = {c.qemu,
                                   "-accel", "tcg",
                                   "-cpu", c.cpu,
                                   "-smp", std::to_string(c.cpus),
                                   "-m", std::to_string(c.memory_mb),
                                   "-kernel", c.kernel,
                                   "-initrd", c.initrd,
                                   "-append", c.cmdline,
                                   "-nographic",
                                   "-no-reboot",
                                   "-nodefaults",
                                   "-monitor", "none",
                                   // ttyS0: the console, on QEMU's stdout (a pipe the runner reads).
                                   "-chardev", "stdio,id=console,signal=off",
                                   "-serial", "chardev:console",
                                   // ttyS1: the job channel, a listening Unix socket.
                                   "-chardev", "socket,id=channel,path=" + c.channel_socket + ",server=on,wait=off",
                                   "-serial", "chardev:channel"};
  if (!c.capture_pcap.empty()) {
    // A NIC on user-mode networking with restrict=on: nothing the guest sends
    // can leave the host. ipv6=off: the backend never originates a frame of its
    // own (with IPv6 on, slirp sends an unsolicited router advertisement every
    // few minutes), so every frame in the capture comes from a guest's send or
    // answers one. romfile= (none): no PXE firmware that could send at boot.
    // filter-dump sees every frame in both directions, before the backend.
    argv.insert(argv.end(), {"-netdev", "user,id=n0,restrict=on,ipv6=off",
                             "-device", "virtio-net-pci,netdev=n0,id=" + std::string(kNicDeviceId) + ",romfile=",
                             "-object", "filter-dump,id=f0,netdev=n0,file=" + c.capture_pcap});
    if (!c.qmp_socket.empty()) {
      argv.insert(argv.end(), {"-qmp", "unix:" + c.qmp_socket + ",server=on,wait=off"});
    }
  }
  return argv;
}

Status CheckCpuModel(std::string_view cpu) {
  if (cpu.empty()) return Status::Error("--cpu: empty CPU model");
  if (cpu.size() > 256) return Status::Error("--cpu: longer than 256 characters");
  auto alnum = [](char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'); };
  if (!alnum(cpu.front())) return Status::Error("--cpu '" + std::string(cpu) + "': must start with a letter or digit");
  for (char ch : cpu) {
    if (!alnum(ch) && std::string_view("._-+=,").find(ch) == std::string_view::npos) {
      return Status::Error("--cpu '" + std::string(cpu) + "': only letters, digits and ._-+=, are allowed");
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// pcap

namespace {

constexpr uint32_t kPcapMagicMicros = 0xa1b2c3d4;
constexpr uint32_t kPcapMagicNanos = 0xa1b23c4d;

uint32_t LoadU32(const uint8_t* p, bool big_endian) {
  if (big_endian) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  }
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

uint16_t LoadU16(const uint8_t* p, bool big_endian) {
  return big_endian ? static_cast<uint16_t>((p[0] << 8) | p[1]) : static_cast<uint16_t>(p[0] | (p[1] << 8));
}

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

// The parser proper, over a source of `size` bytes that `read_at(offset, out)`
// fills exactly (offset + out.size() <= size is guaranteed by the caller here).
template <typename ReadAt>
StatusOr<PcapSummary> ParsePcapFrom(uint64_t size, ReadAt&& read_at) {
  if (size < kPcapGlobalHeaderBytes) {
    return Status::Error(std::to_string(size) + " bytes, shorter than the " + std::to_string(kPcapGlobalHeaderBytes) +
                         "-byte pcap header");
  }
  std::array<uint8_t, kPcapGlobalHeaderBytes> header {};
  RETURN_IF_ERROR(read_at(0, std::span<uint8_t>(header)));
  bool big_endian = false;
  const uint32_t magic = LoadU32(header.data(), false);
  if (magic == kPcapMagicMicros || magic == kPcapMagicNanos) {
    big_endian = false;
  } else if (LoadU32(header.data(), true) == kPcapMagicMicros || LoadU32(header.data(), true) == kPcapMagicNanos) {
    big_endian = true;
  } else {
    return Status::Error("not a pcap file (magic " + Hex32(magic) + ")");
  }
  const uint16_t major = LoadU16(header.data() + 4, big_endian);
  if (major != 2) return Status::Error("pcap version " + std::to_string(major) + ", expected 2");
  PcapSummary summary;
  summary.snaplen = LoadU32(header.data() + 16, big_endian);
  summary.linktype = LoadU32(header.data() + 20, big_endian);

  uint64_t offset = kPcapGlobalHeaderBytes;
  while (offset < size) {
    auto where = [&summary, offset] {
      return "record " + std::to_string(summary.packets + 1) + " at offset " + std::to_string(offset);
    };
    if (size - offset < kPcapRecordHeaderBytes) {
      return Status::Error(where() + ": truncated record header (" + std::to_string(size - offset) + " bytes left)");
    }
    std::array<uint8_t, kPcapRecordHeaderBytes> record {};
    RETURN_IF_ERROR(read_at(offset, std::span<uint8_t>(record)));
    const uint32_t captured = LoadU32(record.data() + 8, big_endian);
    const uint32_t original = LoadU32(record.data() + 12, big_endian);
    if (captured > kMaxPcapRecordBytes) {
      return Status::Error(where() + ": captured length " + std::to_string(captured) + " exceeds the bound of " +
                           std::to_string(kMaxPcapRecordBytes));
    }
    if (summary.snaplen != 0 && captured > summary.snaplen) {
      return Status::Error(where() + ": captured length " + std::to_string(captured) + " exceeds the snaplen " +
                           std::to_string(summary.snaplen));
    }
    if (captured > original) {
      return Status::Error(where() + ": captured length " + std::to_string(captured) + " exceeds the packet length " +
                           std::to_string(original));
    }
    const uint64_t left = size - offset - kPcapRecordHeaderBytes;
    if (captured > left) {
      return Status::Error(where() + ": truncated packet data (" + std::to_string(captured) + " bytes, " +
                           std::to_string(left) + " left)");
    }
    offset += kPcapRecordHeaderBytes + captured;
    ++summary.packets;
    summary.captured_bytes += captured;
  }
  return summary;
}

}  // namespace

StatusOr<PcapSummary> ParsePcap(std::span<const uint8_t> bytes) {
  return ParsePcapFrom(bytes.size(), [bytes](uint64_t offset, std::span<uint8_t> out) {
    std::memcpy(out.data(), bytes.data() + offset, out.size());
    return Status::Ok();
  });
}

StatusOr<PcapSummary> ReadPcapFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return PosixError("open " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat " + path);
  if (!S_ISREG(st.st_mode)) return Status::Error(path + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(std::max<off_t>(st.st_size, 0));
  StatusOr<PcapSummary> summary = ParsePcapFrom(size, [&](uint64_t offset, std::span<uint8_t> out) -> Status {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd.get(), out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return PosixError("read " + path);
      if (n == 0) return Status::Error("file shrank while reading");
      done += static_cast<size_t>(n);
    }
    return Status::Ok();
  });
  if (!summary.ok()) return summary.status().Context(path);
  return summary;
}

namespace {

constexpr uint64_t kMaxJobsFileBytes = 64ULL << 20;
constexpr uint64_t kMaxCmdlineBytes = 4096;
constexpr auto kConnectRetry = std::chrono::milliseconds(20);
constexpr auto kTick = std::chrono::milliseconds(100);
constexpr auto kPowerOffGrace = std::chrono::seconds(60);
constexpr auto kChannelLossGrace = std::chrono::seconds(10);
constexpr size_t kReportTailLines = 20;
constexpr auto kNicCheckInterval = std::chrono::seconds(1);
constexpr auto kQmpTimeout = std::chrono::seconds(5);
// QEMU creates the QMP socket before the guest starts; failing to connect
// for this long after the start means something else is wrong.
constexpr auto kQmpConnectGrace = std::chrono::seconds(30);
constexpr size_t kMaxQmpMessageBytes = 1 << 20;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string Fixed2(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f", v);
  return buf;
}

void WriteStdout(std::string_view line) {
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void WriteStderr(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

// ---------------------------------------------------------------------------
// Signals: SIGINT/SIGTERM/SIGHUP end the run (and kill QEMU); SIGPIPE ignored.
int g_signal_write_fd = -1;

extern "C" void OnRunSignal(int sig) {
  int saved = errno;
  unsigned char b = static_cast<unsigned char>(sig);
  ssize_t ignored = ::write(g_signal_write_fd, &b, 1);
  (void)ignored;
  errno = saved;
}

class SignalGuard {
 public:
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;
  ~SignalGuard() {
    for (size_t i = 0; i < kSignals.size(); ++i) ::sigaction(kSignals[i], &old_[i], nullptr);
    ::sigaction(SIGPIPE, &old_pipe_, nullptr);
    g_signal_write_fd = -1;
  }

  static StatusOr<std::unique_ptr<SignalGuard>> Install() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return PosixError("pipe2");
    std::unique_ptr<SignalGuard> g(new SignalGuard(UniqueFd(fds[0]), UniqueFd(fds[1])));
    g_signal_write_fd = g->write_.get();
    struct sigaction sa {};
    sa.sa_handler = OnRunSignal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < kSignals.size(); ++i) ::sigaction(kSignals[i], &sa, &g->old_[i]);
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    ::sigaction(SIGPIPE, &ign, &g->old_pipe_);
    return g;
  }

  int read_fd() const { return read_.get(); }
  // The first signal received, if any.
  std::optional<int> Take() {
    unsigned char b = 0;
    if (::read(read_.get(), &b, 1) == 1) return static_cast<int>(b);
    return std::nullopt;
  }

 private:
  static constexpr std::array<int, 3> kSignals = {SIGINT, SIGTERM, SIGHUP};
  SignalGuard(UniqueFd r, UniqueFd w) : read_(std::move(r)), write_(std::move(w)) {}
  UniqueFd read_;
  UniqueFd write_;
  std::array<struct sigaction, 3> old_ {};
  struct sigaction old_pipe_ {};
};

// ---------------------------------------------------------------------------
struct Job {
  size_t line_no = 0;
  std::string line;
  nlohmann::json id;
};

struct JobsFile {
  std::vector<Job> jobs;
  std::string shutdown_line = R"({"op":"shutdown"})";
};

StatusOr<JobsFile> ReadJobs(const std::string& path) {
  StatusOr<std::string> text = ReadFileBounded(path, kMaxJobsFileBytes);
  if (!text.ok()) return text.status().Context("jobs file");
  JobsFile out;
  std::string_view rest = *text;
  size_t line_no = 0;
  bool shutdown_seen = false;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    std::string where = path + " line " + std::to_string(line_no);
    if (shutdown_seen) return Status::Error(where + ": a job after the shutdown request");
    if (IsShutdownRequest(line)) {
      shutdown_seen = true;
      out.shutdown_line = std::string(line);
      continue;
    }
    // Sent as is (even when it is not valid JSON: the appliance must answer with an error).
    out.jobs.push_back(Job{line_no, std::string(line), RequestId(line)});
  }
  return out;
}

std::string DescribeId(const nlohmann::json& id) { return id.is_null() ? "(no id)" : id.dump(); }

bool SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  return flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

// Removes a socket file the run created at a caller-chosen path.
class UnlinkGuard {
 public:
  explicit UnlinkGuard(std::string path) : path_(std::move(path)) {}
  UnlinkGuard(const UnlinkGuard&) = delete;
  UnlinkGuard& operator=(const UnlinkGuard&) = delete;
  ~UnlinkGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------
// A minimal QMP client: greeting, capability negotiation, then one command at
// a time, each waited for with a deadline; asynchronous events are skipped.
class QmpClient {
 public:
  static StatusOr<QmpClient> Connect(const std::string& path, Clock::time_point deadline) {
    ASSIGN_OR_RETURN(UniqueFd fd, ConnectUnix(path));
    QmpClient client(std::move(fd));
    ASSIGN_OR_RETURN(nlohmann::json greeting, client.ReadMessage(deadline));
    if (!greeting.contains("QMP")) return Status::Error("QMP: unexpected greeting " + greeting.dump().substr(0, 200));
    ASSIGN_OR_RETURN(nlohmann::json ignored, client.Execute({{"execute", "qmp_capabilities"}}, deadline));
    (void)ignored;
    return client;
  }

  // The command's "return" value, or its "error" as an error.
  StatusOr<nlohmann::json> Execute(const nlohmann::json& command, Clock::time_point deadline) {
    const std::string name = command.value("execute", std::string("?"));
    if (Status s = SendAll(fd_.get(), command.dump() + "\n", deadline); !s.ok()) return s.Context("QMP " + name);
    for (;;) {
      StatusOr<nlohmann::json> msg = ReadMessage(deadline);
      if (!msg.ok()) return msg.status().Context(name);
      if (msg->contains("event")) continue;
      if (auto r = msg->find("return"); r != msg->end()) return *r;
      if (auto e = msg->find("error"); e != msg->end()) {
        std::string desc = e->is_object() && e->contains("desc") && (*e)["desc"].is_string()
                               ? (*e)["desc"].get<std::string>()
                               : e->dump();
        return Status::Error("QMP " + name + ": " + desc);
      }
      return Status::Error("QMP " + name + ": unexpected reply " + msg->dump().substr(0, 200));
    }
  }

 private:
  explicit QmpClient(UniqueFd fd) : fd_(std::move(fd)) {}

  StatusOr<nlohmann::json> ReadMessage(Clock::time_point deadline) {
    for (;;) {
      if (std::optional<std::string> line = framer_.Next()) {
        nlohmann::json j = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object()) return Status::Error("QMP: not a JSON object: " + line->substr(0, 200));
        return j;
      }
      if (framer_.failed()) return Status::Error("QMP: message longer than " + std::to_string(kMaxQmpMessageBytes));
      auto now = Clock::now();
      if (now >= deadline) return Status::Error("QMP: no answer in time");
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
      pollfd p{fd_.get(), POLLIN, 0};
      int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(ms, 1000)));
      if (r < 0 && errno != EINTR) return PosixError("QMP: poll");
      if (r <= 0) continue;
      char buf[16384];
      ssize_t n = ::read(fd_.get(), buf, sizeof(buf));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0) return PosixError("QMP: read");
      if (n == 0) return Status::Error("QMP: connection closed by QEMU");
      // An overlong message fails the framer; the top of the loop reports it
      // after the complete messages before it.
      if (!framer_.Feed(std::string_view(buf, static_cast<size_t>(n))).ok()) continue;
    }
  }

  UniqueFd fd_;
  LineFramer framer_{kMaxQmpMessageBytes};
};

// True if x-query-virtio-status says the guest driver finished setting the
// device up ("VIRTIO_CONFIG_S_DRIVER_OK: ..." among status.statuses).
bool VirtioDriverOk(const nlohmann::json& status) {
  if (!status.is_object()) return false;
  auto st = status.find("status");
  if (st == status.end() || !st->is_object()) return false;
  auto list = st->find("statuses");
  if (list == st->end() || !list->is_array()) return false;
  for (const nlohmann::json& s : *list) {
    if (s.is_string() && s.get<std::string>().rfind("VIRTIO_CONFIG_S_DRIVER_OK", 0) == 0) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
class Session {
 public:
  Session(const RunOptions& o, SignalGuard& signals) : o_(o), signals_(signals) {}

  Status Run();

 private:
  enum class State { kConnecting, kWaitReady, kInJob, kShutdownSent, kWaitExit, kInteractive };

  Status Prepare();
  Status Loop();
  Status Finish();
  void OnConsole(std::string_view bytes);
  void OnReply(const std::string& line);
  void StartNextJob();
  void Queue(std::string_view line) {
    out_.append(line);
    out_.push_back('\n');
  }
  void Problem(std::string p) { problems_.push_back(std::move(p)); }
  const char* StateName() const;
  void DrainChannel();
  void DrainConsole(bool until_eof);
  void CheckNic(Clock::time_point now);
  void ReportCapture(std::vector<std::string>& problems);

  const RunOptions& o_;
  SignalGuard& signals_;
  bool batch_ = false;
  JobsFile jobs_;
  size_t next_job_ = 0;
  size_t jobs_done_ = 0;
  size_t jobs_failed_ = 0;

  QemuConfig qemu_config_;
  std::optional<TempDir> socket_dir_;
  std::optional<UnlinkGuard> socket_unlink_;
  std::string console_log_path_;
  UniqueFd console_log_;
  bool console_log_failed_ = false;
  ChildProcess qemu_;
  UniqueFd console_;  // QEMU's stdout
  bool console_eof_ = false;
  ConsoleScanner scanner_{kReportTailLines};
  bool init_seen_reported_ = false;

  UniqueFd channel_;
  LineFramer framer_{kMaxReplyLineBytes};
  std::string out_;  // bytes queued for the channel
  State state_ = State::kConnecting;
  bool got_shutdown_ = false;
  bool channel_closed_ = false;
  std::string channel_lost_while_;  // set when the channel closed before the shutdown handshake

  Clock::time_point start_;
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point ready_deadline_ = Clock::time_point::max();
  Clock::time_point exit_deadline_ = Clock::time_point::max();
  std::optional<ExitInfo> qemu_exit_;
  std::vector<std::string> problems_;

  // --capture-nic
  bool capture_ = false;
  std::optional<TempDir> qmp_dir_;
  std::optional<QmpClient> qmp_;
  Clock::time_point next_nic_check_ = Clock::time_point::min();
  bool nic_ready_ = false;
  std::string nic_check_error_;  // set when asking QEMU failed for good
};

const char* Session::StateName() const {
  switch (state_) {
    case State::kConnecting:
      return "connecting to the channel socket";
    case State::kWaitReady:
      return "waiting for the runtime's ready event";
    case State::kInJob:
      return "waiting for a job's done/error reply";
    case State::kShutdownSent:
      return "waiting for the shutdown event";
    case State::kWaitExit:
      return "waiting for the VM to power off";
    case State::kInteractive:
      return "running interactively";
  }
  return "running";
}

Status Session::Prepare() {
  batch_ = !o_.jobs_file.empty();
  if (o_.image_dir.empty()) return Status::Error("no image folder given");
  if (o_.memory_mb < kMinMemoryMb || o_.memory_mb > kMaxMemoryMb) {
    return Status::Error("memory must be in [" + std::to_string(kMinMemoryMb) + ", " + std::to_string(kMaxMemoryMb) +
                         "] MiB, got " + std::to_string(o_.memory_mb));
  }
  if (!(o_.timeout_s >= 0) || !(o_.ready_timeout_s >= 0) || o_.timeout_s > 1e7 || o_.ready_timeout_s > 1e7) {
    return Status::Error("timeouts must be between 0 and 1e7 seconds");
  }
  RETURN_IF_ERROR(CheckCpuModel(o_.cpu));
  if (o_.expect_no_packets && o_.capture_nic.empty()) return Status::Error("--expect-no-packets needs --capture-nic");
  if (batch_) {
    ASSIGN_OR_RETURN(jobs_, ReadJobs(o_.jobs_file));
  }

  qemu_config_.qemu = o_.qemu;
  qemu_config_.cpu = o_.cpu;
  qemu_config_.memory_mb = o_.memory_mb;
  qemu_config_.kernel = o_.image_dir + "/vmlinuz";
  qemu_config_.initrd = o_.image_dir + "/initramfs.cpio";
  for (const std::string* p : {&qemu_config_.kernel, &qemu_config_.initrd}) {
    struct stat st {};
    if (::stat(p->c_str(), &st) != 0) return PosixError(*p).Context("image folder " + o_.image_dir);
    if (!S_ISREG(st.st_mode)) return Status::Error(*p + ": not a regular file");
  }
  StatusOr<std::string> cmdline = ReadFileBounded(o_.image_dir + "/cmdline", kMaxCmdlineBytes);
  if (!cmdline.ok()) return cmdline.status().Context("image folder " + o_.image_dir);
  std::string cl = *cmdline;
  while (!cl.empty() && (cl.back() == '\n' || cl.back() == '\r')) cl.pop_back();
  if (cl.empty() || cl.find('\n') != std::string::npos) {
    return Status::Error(o_.image_dir + "/cmdline: must be one non-empty line");
  }
  qemu_config_.cmdline = cl;

  if (o_.socket_path.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string base = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
    StatusOr<TempDir> dir = TempDir::Create(base + "/appliance-run.");
    if (!dir.ok()) return dir.status();
    socket_dir_.emplace(std::move(dir).value());
    qemu_config_.channel_socket = socket_dir_->path() + "/channel.sock";
  } else {
    struct stat st {};
    if (::lstat(o_.socket_path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) return Status::Error(o_.socket_path + ": exists and is not a socket");
    } else if (errno != ENOENT) {
      return PosixError("stat " + o_.socket_path);
    }
    qemu_config_.channel_socket = o_.socket_path;
    socket_unlink_.emplace(o_.socket_path);
  }
  if (qemu_config_.channel_socket.size() > kMaxUnixPathBytes) {
    return Status::Error("channel socket path " + qemu_config_.channel_socket + " is longer than " +
                         std::to_string(kMaxUnixPathBytes) + " bytes");
  }
  if (qemu_config_.channel_socket.find(',') != std::string::npos) {
    return Status::Error("channel socket path " + qemu_config_.channel_socket + " contains ',' (QEMU option syntax)");
  }

  capture_ = !o_.capture_nic.empty();
  if (capture_) {
    const std::string& pcap = o_.capture_nic;
    if (pcap.find(',') != std::string::npos) {
      return Status::Error("capture file " + pcap + " contains ',' (QEMU option syntax)");
    }
    struct stat st {};
    if (::lstat(pcap.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
      return Status::Error("capture file " + pcap + ": exists and is not a regular file");
    }
    // Emptied now, so a capture left from an earlier run can never be read as this one's.
    UniqueFd f(::open(pcap.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
    if (!f.valid()) return PosixError("open capture file " + pcap);
    qemu_config_.capture_pcap = pcap;

    const char* tmp = std::getenv("TMPDIR");
    std::string base = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
    StatusOr<TempDir> dir = TempDir::Create(base + "/appliance-qmp.");
    if (!dir.ok()) return dir.status();
    qmp_dir_.emplace(std::move(dir).value());
    qemu_config_.qmp_socket = qmp_dir_->path() + "/qmp.sock";
    if (qemu_config_.qmp_socket.size() > kMaxUnixPathBytes || qemu_config_.qmp_socket.find(',') != std::string::npos) {
      return Status::Error("QMP socket path " + qemu_config_.qmp_socket + " is too long or contains ','");
    }
  }

  console_log_path_ = o_.console_log.empty() ? o_.image_dir + "/console.log" : o_.console_log;
  console_log_.reset(::open(console_log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!console_log_.valid()) return PosixError("open console log " + console_log_path_);
  return Status::Ok();
}

void Session::OnConsole(std::string_view bytes) {
  if (console_log_.valid() && !console_log_failed_) {
    std::string_view rest = bytes;
    while (!rest.empty()) {
      ssize_t n = ::write(console_log_.get(), rest.data(), rest.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        WriteStderr("warning: writing the console log " + console_log_path_ + ": " + std::strerror(errno) + "\n");
        console_log_failed_ = true;
        break;
      }
      rest.remove_prefix(static_cast<size_t>(n));
    }
  }
  for (const std::string& line : scanner_.Feed(bytes)) {
    if (o_.console_stderr) WriteStderr("console: " + line + "\n");
  }
  if (scanner_.saw_init() && !init_seen_reported_) {
    init_seen_reported_ = true;
    WriteStderr("init started after " + Fixed2(Seconds(Clock::now() - start_)) + " s\n");
  }
}

void Session::DrainConsole(bool until_eof) {
  if (!console_.valid() || console_eof_) return;
  char buf[65536];
  auto limit = Clock::now() + std::chrono::seconds(5);
  for (;;) {
    ssize_t n = ::read(console_.get(), buf, sizeof(buf));
    if (n > 0) {
      OnConsole(std::string_view(buf, static_cast<size_t>(n)));
      continue;
    }
    if (n == 0) {
      console_eof_ = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN && until_eof && Clock::now() < limit) {
      pollfd p{console_.get(), POLLIN, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    break;
  }
  if (console_eof_) {
    for (const std::string& line : scanner_.Finish()) {
      if (o_.console_stderr) WriteStderr("console: " + line + "\n");
    }
  }
}

void Session::StartNextJob() {
  if (next_job_ < jobs_.jobs.size()) {
    Queue(jobs_.jobs[next_job_].line);
    ++next_job_;
    state_ = State::kInJob;
    return;
  }
  Queue(jobs_.shutdown_line);
  state_ = State::kShutdownSent;
}

void Session::OnReply(const std::string& line) {
  WriteStdout(line);
  StatusOr<Reply> reply = ParseReply(line);
  if (!reply.ok()) {
    Problem("unparseable reply on the channel: " + line.substr(0, 200));
    return;
  }
  const std::string& ev = reply->event;
  if (ev == "ready") {
    if (state_ == State::kWaitReady) {
      WriteStderr("ready after " + Fixed2(Seconds(Clock::now() - start_)) + " s\n");
      StartNextJob();
      return;
    }
    // A second ready: init restarted the runtime; a job in flight is lost.
    if (state_ == State::kInJob) {
      const Job& job = jobs_.jobs[next_job_ - 1];
      Problem("job " + DescribeId(job.id) + " (line " + std::to_string(job.line_no) +
              "): the runtime restarted (a second ready event) before it answered");
      ++jobs_failed_;
      StartNextJob();
      return;
    }
    Problem("unexpected ready event while " + std::string(StateName()));
    return;
  }
  if (ev == "done" || ev == "error") {
    if (state_ != State::kInJob) {
      Problem("unexpected " + ev + " reply while " + std::string(StateName()));
      return;
    }
    const Job& job = jobs_.jobs[next_job_ - 1];
    bool mine = reply->id == job.id || (ev == "error" && reply->id.is_null());
    if (!mine) {
      Problem(ev + " reply for id " + DescribeId(reply->id) + " while waiting for job " + DescribeId(job.id));
      return;
    }
    if (ev == "done") {
      ++jobs_done_;
    } else {
      ++jobs_failed_;
      std::string msg;
      auto e = reply->body.find("error");
      msg = (e != reply->body.end() && e->is_string()) ? e->get<std::string>() : reply->body.dump();
      Problem("job " + DescribeId(job.id) + " (line " + std::to_string(job.line_no) + "): error: " + msg);
    }
    StartNextJob();
    return;
  }
  if (ev == "shutdown") {
    if (state_ == State::kShutdownSent) {
      got_shutdown_ = true;
      state_ = State::kWaitExit;
      exit_deadline_ = Clock::now() + kPowerOffGrace;
      return;
    }
    Problem("unexpected shutdown event while " + std::string(StateName()));
    state_ = State::kWaitExit;
    exit_deadline_ = Clock::now() + kPowerOffGrace;
    return;
  }
  // "token" and any other event (diagnostic tools standing in for the runtime
  // emit their own) are printed above and need nothing more.
}

void Session::DrainChannel() {
  if (!channel_.valid() || channel_closed_) return;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(channel_.get(), buf, sizeof(buf));
    if (n > 0) {
      Status s = framer_.Feed(std::string_view(buf, static_cast<size_t>(n)));
      while (std::optional<std::string> line = framer_.Next()) OnReply(*line);
      if (!s.ok()) {
        Problem(s.Context("channel").message());
        channel_closed_ = true;
        return;
      }
      continue;
    }
    if (n == 0) {
      channel_closed_ = true;
      if (!framer_.pending().empty()) Problem("channel closed inside a line: " + std::string(framer_.pending().substr(0, 200)));
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      Problem(PosixError("read channel").message());
      channel_closed_ = true;
    }
    return;
  }
}

// Asks QEMU (QMP x-query-virtio-status) whether the guest's virtio-net driver
// took the NIC; once it has, or once asking failed for good, stops asking.
void Session::CheckNic(Clock::time_point now) {
  next_nic_check_ = now + kNicCheckInterval;
  if (!qmp_) {
    StatusOr<QmpClient> client = QmpClient::Connect(qemu_config_.qmp_socket, now + kQmpTimeout);
    if (!client.ok()) {
      if (now - start_ > kQmpConnectGrace) nic_check_error_ = client.status().message();
      return;
    }
    qmp_.emplace(std::move(client).value());
  }
  StatusOr<nlohmann::json> status = qmp_->Execute(
      {{"execute", "x-query-virtio-status"}, {"arguments", {{"path", std::string(kNicVirtioPath)}}}},
      Clock::now() + kQmpTimeout);
  if (!status.ok()) {
    nic_check_error_ = status.status().message();
    qmp_.reset();
    return;
  }
  if (VirtioDriverOk(*status)) {
    nic_ready_ = true;
    qmp_.reset();
    WriteStderr("nic: the guest's virtio-net driver is up (DRIVER_OK) after " + Fixed2(Seconds(Clock::now() - start_)) +
                " s\n");
  }
}

void Session::ReportCapture(std::vector<std::string>& problems) {
  if (!nic_ready_) {
    WriteStderr("nic: the guest never set the NIC up (no virtio-net DRIVER_OK seen" +
                (nic_check_error_.empty() ? std::string() : "; " + nic_check_error_) + ")\n");
    if (o_.expect_no_packets) {
      problems.push_back("--expect-no-packets: the guest never set its NIC up, so an empty capture would prove "
                         "nothing (does the image load virtio_pci and virtio_net?)");
    }
  }
  StatusOr<PcapSummary> capture = ReadPcapFile(o_.capture_nic);
  if (!capture.ok()) {
    problems.push_back(capture.status().Context("NIC capture").message());
    return;
  }
  WriteStderr("nic capture: " + std::to_string(capture->packets) + " packets (" + o_.capture_nic + ")\n");
  if (o_.expect_no_packets && capture->packets > 0) {
    problems.push_back("--expect-no-packets: the NIC capture " + o_.capture_nic + " holds " +
                       std::to_string(capture->packets) + " packet(s), " + std::to_string(capture->captured_bytes) +
                       " bytes");
  }
}

Status Session::Loop() {
  Clock::time_point next_connect = start_;
  for (;;) {
    // QEMU gone?
    if (!qemu_exit_) {
      ASSIGN_OR_RETURN(std::optional<ExitInfo> info, qemu_.Poll());
      if (info) qemu_exit_ = info;
    }
    if (qemu_exit_) {
      DrainConsole(/*until_eof=*/true);
      DrainChannel();
      if (batch_ && state_ != State::kWaitExit) Problem(std::string("the VM stopped while ") + StateName());
      if (batch_ && !channel_lost_while_.empty()) {
        Problem("the VM stopped while " + channel_lost_while_);
        channel_lost_while_.clear();
      }
      return Status::Ok();
    }
    if (std::optional<int> sig = signals_.Take()) {
      return Status::Error(std::string("interrupted by ") + strsignal(*sig) + " while " + StateName() + " (QEMU killed)");
    }
    auto now = Clock::now();
    if (now >= deadline_) {
      return Status::Error("timeout after " + Fixed2(Seconds(now - start_)) + " s while " + StateName() +
                           " (QEMU killed)");
    }
    if ((state_ == State::kConnecting || state_ == State::kWaitReady) && now >= ready_deadline_) {
      return Status::Error("no ready event after " + Fixed2(Seconds(now - start_)) + " s (QEMU killed)");
    }
    if (now >= exit_deadline_) {
      return Status::Error(std::string("the VM did not power off within ") +
                           std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kPowerOffGrace).count()) +
                           " s (QEMU killed)");
    }
    if (capture_ && !nic_ready_ && nic_check_error_.empty() && now >= next_nic_check_) CheckNic(now);
    if (channel_closed_ && state_ != State::kWaitExit && exit_deadline_ == Clock::time_point::max()) {
      // Usually QEMU is exiting; Finish() reports which of the two it was.
      channel_lost_while_ = StateName();
      state_ = State::kWaitExit;
      exit_deadline_ = now + kChannelLossGrace;
    }

    if (state_ == State::kConnecting && now >= next_connect) {
      StatusOr<UniqueFd> fd = ConnectUnix(qemu_config_.channel_socket);
      if (fd.ok()) {
        channel_ = std::move(fd).value();
        if (!SetNonBlocking(channel_.get())) return PosixError("fcntl channel O_NONBLOCK");
        state_ = State::kWaitReady;
      } else {
        next_connect = now + kConnectRetry;  // QEMU has not created the socket yet
      }
    }

    // Send what is queued.
    while (!out_.empty() && channel_.valid() && !channel_closed_) {
      ssize_t n = ::send(channel_.get(), out_.data(), out_.size(), MSG_NOSIGNAL);
      if (n > 0) {
        out_.erase(0, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      Problem(PosixError("send on the channel").message());
      channel_closed_ = true;
    }

    pollfd fds[3];
    nfds_t nfds = 0;
    int console_idx = -1;
    int channel_idx = -1;
    fds[nfds++] = {signals_.read_fd(), POLLIN, 0};
    if (console_.valid() && !console_eof_) {
      console_idx = static_cast<int>(nfds);
      fds[nfds++] = {console_.get(), POLLIN, 0};
    }
    if (channel_.valid() && !channel_closed_) {
      channel_idx = static_cast<int>(nfds);
      fds[nfds++] = {channel_.get(), static_cast<short>(POLLIN | (out_.empty() ? 0 : POLLOUT)), 0};
    }
    auto wait = state_ == State::kConnecting ? kConnectRetry : std::chrono::duration_cast<std::chrono::milliseconds>(kTick);
    int r = ::poll(fds, nfds, static_cast<int>(wait.count()));
    if (r < 0) {
      if (errno == EINTR) continue;
      return PosixError("poll");
    }
    if (console_idx >= 0 && fds[console_idx].revents != 0) DrainConsole(/*until_eof=*/false);
    if (channel_idx >= 0 && (fds[channel_idx].revents & (POLLIN | POLLHUP | POLLERR)) != 0) DrainChannel();
  }
}

Status Session::Run() {
  RETURN_IF_ERROR(Prepare());
  const std::vector<std::string> argv = QemuArgv(qemu_config_);
  ASSIGN_OR_RETURN(Pipe console_pipe, MakePipe());
  SpawnOptions spawn;
  spawn.stdout_fd = console_pipe.write.get();
  spawn.new_process_group = true;  // the terminal's ^C reaches us; we end QEMU
  spawn.die_with_parent = true;
  start_ = Clock::now();
  auto after = [this](double seconds) {
    return start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  };
  if (o_.timeout_s > 0) deadline_ = after(o_.timeout_s);
  if (batch_ && o_.ready_timeout_s > 0) ready_deadline_ = after(o_.ready_timeout_s);
  StatusOr<ChildProcess> child = ChildProcess::Spawn(argv, spawn);
  if (!child.ok()) return child.status().Context("start QEMU");
  qemu_ = std::move(child).value();
  console_pipe.write.reset();
  console_ = std::move(console_pipe.read);
  if (!SetNonBlocking(console_.get())) return PosixError("fcntl console O_NONBLOCK");

  if (batch_) {
    state_ = State::kConnecting;
    WriteStderr("booting " + o_.image_dir + " under QEMU (TCG, " + std::to_string(o_.memory_mb) + " MiB); console log " +
                console_log_path_ + "; " + std::to_string(jobs_.jobs.size()) + " job(s)\n");
  } else {
    state_ = State::kInteractive;
    std::string msg = "channel socket: " + qemu_config_.channel_socket + "\nconsole log: " + console_log_path_ + "\n";
    std::fwrite(msg.data(), 1, msg.size(), stdout);
    std::fflush(stdout);
  }

  Status loop = Loop();
  if (!loop.ok()) {
    qemu_.Kill();
    DrainConsole(/*until_eof=*/true);
    Problem(loop.message());
  }
  if (!channel_lost_while_.empty()) Problem("the channel closed while " + channel_lost_while_);
  return Finish();
}

Status Session::Finish() {
  const double total = Seconds(Clock::now() - start_);
  std::vector<std::string> problems = problems_;
  if (qemu_exit_ && !qemu_exit_->success()) problems.push_back("QEMU ended with " + qemu_exit_->Describe());
  if (batch_) {
    size_t unanswered = jobs_.jobs.size() - jobs_done_ - jobs_failed_;
    if (unanswered > 0) problems.push_back(std::to_string(unanswered) + " job(s) without a done/error reply");
    if (!got_shutdown_) problems.push_back("no shutdown event from the appliance");
  }
  const std::optional<std::string>& power = scanner_.power_off();
  if (!power) {
    problems.push_back("no 'appliance-init: power-off:' line on the console");
  } else if (*power != "clean") {
    problems.push_back("init powered off with '" + *power + "'");
  }
  std::string summary;
  if (batch_) {
    summary = "jobs: " + std::to_string(jobs_done_) + " done, " + std::to_string(jobs_failed_) + " failed, " +
              std::to_string(next_job_) + " of " + std::to_string(jobs_.jobs.size()) + " sent; ";
  }
  summary += "power-off: " + power.value_or("(none)") + "; " + Fixed2(total) + " s\n";
  if (capture_) ReportCapture(problems);
  WriteStderr(summary);
  if (problems.empty()) return Status::Ok();

  std::string msg;
  for (const std::string& p : problems) {
    if (!msg.empty()) msg += "; ";
    msg += p;
  }
  // The console explains VM-level failures; a job's error reply explains itself.
  const bool vm_failed = !power || *power != "clean" || scanner_.fatal() || scanner_.kernel_panic();
  if (scanner_.fatal()) {
    msg += "\nconsole: appliance-init: FATAL: " + *scanner_.fatal();
  } else if (scanner_.kernel_panic()) {
    msg += "\nconsole: Kernel panic - not syncing: " + *scanner_.kernel_panic();
  } else if (vm_failed && !scanner_.tail().empty()) {
    msg += "\nlast console lines (" + console_log_path_ + "):\n" + scanner_.TailText();
    if (!msg.empty() && msg.back() == '\n') msg.pop_back();
  }
  return Status::Error(msg);
}

}  // namespace

Status RunImage(const RunOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<SignalGuard> signals, SignalGuard::Install());
  Session session(options, *signals);
  return session.Run();
}

}  // namespace appliance::image
