// etc/appliance/runtime.json as the image builder writes it (docs/architecture.md).
// Pure: renders bytes, no I/O.
#pragma once

#include <string>
#include <vector>

#include "base/status.h"

namespace appliance::image {

inline constexpr const char* kRuntimeConfigPath = "etc/appliance/runtime.json";
inline constexpr const char* kRuntimePath = "usr/bin/appliance-runtime";
inline constexpr const char* kModelPath = "models/model.gguf";
inline constexpr const char* kChannelDevice = "/dev/ttyS1";
inline constexpr unsigned kMaxRuntimeThreads = 256;

struct RuntimeConfig {
  std::vector<std::string> argv;
  std::string channel;
  std::string executable;
  std::string model;
  std::vector<std::string> modules;  // kernel modules init loads, in order (omitted from the JSON if empty)
};

// The configuration of the standard image: the runtime serves the model on
// ttyS1 with `threads` threads (fd 3 = channel, fd 4 = model, opened by init);
// init first loads `modules` (image paths), in order.
StatusOr<RuntimeConfig> StandardRuntimeConfig(unsigned threads, std::vector<std::string> modules = {});

// Canonical rendering: keys sorted, 2-space indent, arrays on one line, trailing newline:
// {
//   "argv": ["appliance-runtime", "serve", ...],
//   "channel": "/dev/ttyS1",
//   "model": "models/model.gguf",
//   "modules": ["lib/modules/<release>/kernel/..."]   (only if there are modules)
// }
std::string RenderRuntimeConfig(const RuntimeConfig& config);

}  // namespace appliance::image
