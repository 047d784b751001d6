// appliance-image run: boots an image folder under QEMU (TCG) with ttyS0 as the
// console (kept in a log file) and ttyS1 as the job channel (a Unix socket),
// and either waits (interactive) or drives a batch of jobs over the channel.
// Optionally attaches a NIC whose every frame (both directions) is captured to
// a pcap file, for the isolation proof (image/README.md, "Isolation proof").
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace appliance::image {

// The CPU model QEMU emulates by default (image/README.md, "CPU model"): the
// x86-64 baseline. Without AVX2 the runtime and OpenBLAS pick their SSE
// kernels from CPUID, which TCG emulates about ten times faster than AVX2/FMA,
// with the same results; the manifest's SHA-256 is faster too. Among the
// models without AVX2 that were as fast, kvm64 was the one that never failed
// to boot. (qemu64 cannot be used: OpenBLAS runs 3DNow! code on it: SIGILL.)
inline constexpr const char* kDefaultCpu = "kvm64";

struct QemuConfig {
  std::string qemu = "qemu-system-x86_64";
  std::string cpu = kDefaultCpu;
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  std::string channel_socket;
  // Non-empty: attach a virtio-net NIC on a restricted user-mode backend and
  // dump every frame through it to this pcap file.
  std::string capture_pcap;
  // Non-empty (with capture_pcap): a QMP socket, to ask QEMU whether the guest
  // driver took the NIC.
  std::string qmp_socket;
  unsigned memory_mb = 1024;
  unsigned cpus = 2;
};

// The QEMU command line. Pure. Console on stdio (a pipe read by the runner),
// channel on a listening Unix socket, no monitor, no default devices, no reboot.
std::vector<std::string> QemuArgv(const QemuConfig& config);

// The NIC's QEMU ids (fixed: the runner asks QMP about exactly this device).
inline constexpr std::string_view kNicDeviceId = "nic0";
inline constexpr std::string_view kNicVirtioPath = "/machine/peripheral/nic0/virtio-backend";

// Checks a --cpu value: a model name optionally followed by QEMU feature
// options ("qemu64", "Haswell-v4", "max,-avx2"): letters, digits and ._-+=,
// only, starting with a letter or digit.
Status CheckCpuModel(std::string_view cpu);

inline constexpr unsigned kMinMemoryMb = 128;
inline constexpr unsigned kMaxMemoryMb = 256 * 1024;

// ---------------------------------------------------------------------------
// pcap (libpcap's classic format): a 24-byte global header, then per packet a
// 16-byte record header and the captured bytes. Either byte order, microsecond
// (0xa1b2c3d4) or nanosecond (0xa1b23c4d) timestamps.
struct PcapSummary {
  uint64_t packets = 0;
  uint64_t captured_bytes = 0;  // sum of the records' captured lengths
  uint32_t snaplen = 0;
  uint32_t linktype = 0;        // 1 = Ethernet
};
inline constexpr uint64_t kPcapGlobalHeaderBytes = 24;
inline constexpr uint64_t kPcapRecordHeaderBytes = 16;
// A record longer than this is corrupt whatever the snaplen says.
inline constexpr uint32_t kMaxPcapRecordBytes = 1u << 20;

// Parses a whole capture held in memory. Pure; every length is checked
// against the snaplen, the record bound and the end of the buffer.
StatusOr<PcapSummary> ParsePcap(std::span<const uint8_t> bytes);
// The same for a file, read record header by record header (packet data is
// skipped, never loaded), so a large capture costs no memory.
StatusOr<PcapSummary> ReadPcapFile(const std::string& path);

struct RunOptions {
  std::string image_dir;
  std::string console_log;     // default: image_dir/console.log
  bool console_stderr = false; // also copy the console to stderr, live
  std::string jobs_file;       // empty: interactive
  std::string socket_path;     // empty: a fresh temp dir's channel.sock
  double timeout_s = 600;      // whole run; 0 = none
  double ready_timeout_s = 300; // batch: QEMU start to the ready event; 0 = none
  unsigned memory_mb = 1024;
  std::string qemu = "qemu-system-x86_64";
  std::string cpu = kDefaultCpu;
  std::string capture_nic;     // pcap path; empty: no NIC at all
  bool expect_no_packets = false; // with capture_nic: fail unless the guest bound the NIC and 0 packets passed
};

// Batch mode: OK only if every job got its "done", the appliance answered the
// shutdown and init's last power-off line says "clean". Reply lines go to
// stdout, progress and diagnostics to stderr. Interactive mode: OK if the VM
// powered off by itself and init's last power-off line says "clean".
// With capture_nic, additionally fails if the capture cannot be read, and with
// expect_no_packets if it holds any packet or the guest never bound the NIC.
Status RunImage(const RunOptions& options);

}  // namespace appliance::image
