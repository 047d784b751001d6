// etc/appliance/runtime.json: how init starts the runtime (docs/architecture.md).
// Pure parsing: the bytes come from the verified file's fd.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace appliance::init {

inline constexpr size_t kMaxRuntimeConfigBytes = 64 * 1024;
inline constexpr size_t kMaxArgs = 64;
inline constexpr size_t kMaxArgBytes = 1024;
inline constexpr size_t kMaxModules = 64;

struct RuntimeConfig {
  std::vector<std::string> argv;  // argv[0..]; passed as is, with an empty environment
  std::string channel;            // absolute device path of the job channel, e.g. /dev/ttyS1
  std::string executable;         // manifest path of the runtime binary (executed by its verified fd)
  std::string model;              // manifest path of the model (its verified fd is passed as fd 4)
  std::vector<std::string> modules;  // manifest paths of kernel modules (role module), loaded in this order
};

StatusOr<RuntimeConfig> ParseRuntimeConfig(std::span<const uint8_t> bytes);

}  // namespace appliance::init
