// The syscalls PID 1 makes, each in one named place (minijail's util/system
// split: everything here touches the machine; config.cpp and image_check.cpp
// decide, these functions do).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/fd.h"
#include "base/status.h"

namespace appliance::init {

// One console line: "appliance-init: <message>\n", written with a single write(2).
void Log(std::string_view message);

// Makes sure fds 0, 1, 2 are open on /dev/console (the kernel opens them when
// the image has dev/console; if it did not, fall back once /dev is mounted).
void EnsureConsoleFds();

// /proc, /sys, /dev (devtmpfs), /run and /tmp (size-capped tmpfs).
Status MountEarlyFilesystems();

// Loads each kernel module from its verified fd (finit_module), in order, then
// disables module loading for the rest of the boot (kernel.modules_disabled).
Status LoadModulesThenLock(const std::vector<std::pair<std::string, UniqueFd>>& modules);

// The kernel log lines recorded since boot that contain `needle` (read from
// /dev/kmsg without blocking; at most `max_lines`).
std::vector<std::string> KernelLogLines(std::string_view needle, size_t max_lines);

// Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
void RouteCtrlAltDelToInit();

// Opens the job channel's tty in raw mode (no echo, no line discipline, 8-bit
// clean), as a file descriptor that init hands to the runtime.
StatusOr<UniqueFd> OpenChannel(const std::string& device);

// Syncs and powers the machine off. Never returns: PID 1 exiting panics the kernel.
[[noreturn]] void PowerOff(bool clean);

}  // namespace appliance::init
