// Kernel modules for the image: init loads the ones runtime.json lists (role
// "module", from their verified fds) and then locks module loading. Debian's
// package ships no modules.dep, so dependencies are read from each module's
// own .modinfo section ("depends=a,b").
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace appliance::image {

inline constexpr size_t kMaxModules = 256;
inline constexpr uint64_t kMaxModuleBytes = 64ULL << 20;

struct ModuleInfo {
  std::string name;                  // "name=" (empty if absent)
  std::vector<std::string> depends;  // "depends=" split on ','
};

// Module names compare with '-' and '_' equal (as modprobe does): "a-b" -> "a_b".
std::string NormalizeModuleName(std::string_view name);

// Parses the .modinfo section of an ELF64 little-endian kernel module. Pure;
// every offset and size is checked against the buffer. `what` names it in errors.
StatusOr<ModuleInfo> ParseModuleInfo(std::span<const uint8_t> elf, const std::string& what);

struct ModuleFile {
  std::string name;        // normalized module name
  std::string host_path;   // the .ko under KERNEL_DIR/modules/<release>/
  std::string image_path;  // lib/modules/<release>/kernel/.../<name>.ko
};

// The requested modules and everything they depend on, dependencies first
// (the order init loads them). `kernel_dir` is what scripts/fetch-kernel wrote
// (version, modules/<release>/). Modules built into the kernel (modules.builtin)
// need no file and are skipped; unknown names, dependency cycles and
// compressed modules are errors.
StatusOr<std::vector<ModuleFile>> ResolveModules(const std::string& kernel_dir, const std::vector<std::string>& names);

}  // namespace appliance::image
