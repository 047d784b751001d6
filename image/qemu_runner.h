// appliance-image run: boots an image folder under QEMU (TCG) with ttyS0 as the
// console (kept in a log file) and ttyS1 as the job channel (a Unix socket),
// and either waits (interactive) or drives a batch of jobs over the channel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace appliance::image {

struct QemuConfig {
  std::string qemu = "qemu-system-x86_64";
  std::string kernel;
  std::string initrd;
  std::string cmdline;
  std::string channel_socket;
  unsigned memory_mb = 1024;
  unsigned cpus = 2;
};

// The QEMU command line. Pure. Console on stdio (a pipe read by the runner),
// channel on a listening Unix socket, no monitor, no default devices, no reboot.
std::vector<std::string> QemuArgv(const QemuConfig& config);

inline constexpr unsigned kMinMemoryMb = 128;
inline constexpr unsigned kMaxMemoryMb = 256 * 1024;

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
};

// Batch mode: OK only if every job got its "done", the appliance answered the
// shutdown and init's last power-off line says "clean". Reply lines go to
// stdout, progress and diagnostics to stderr. Interactive mode: OK if the VM
// powered off cleanly.
Status RunImage(const RunOptions& options);

}  // namespace appliance::image
