#include "image/runtime_config.h"

#include <nlohmann/json.hpp>

namespace appliance::image {

StatusOr<RuntimeConfig> StandardRuntimeConfig(unsigned threads, std::vector<std::string> modules) {
  if (threads < 1 || threads > kMaxRuntimeThreads) {
    return Status::Error("runtime threads must be in [1, " + std::to_string(kMaxRuntimeThreads) + "], got " +
                         std::to_string(threads));
  }
  RuntimeConfig c;
  c.argv = {"appliance-runtime", "serve", "--model-fd", "4", "--channel-fd", "3", "--threads", std::to_string(threads)};
  c.channel = kChannelDevice;
  c.executable = kRuntimePath;
  c.model = kModelPath;
  c.modules = std::move(modules);
  return c;
}

std::string RenderRuntimeConfig(const RuntimeConfig& config) {
  // nlohmann::json(string).dump() gives a correctly escaped JSON string literal
  // (ensure_ascii off: UTF-8 passes through; invalid UTF-8 is replaced, never emitted raw).
  auto quote = [](const std::string& s) {
    return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  std::string out = "{\n  \"argv\": [";
  for (size_t i = 0; i < config.argv.size(); ++i) {
    if (i > 0) out += ", ";
    out += quote(config.argv[i]);
  }
  out += "],\n";
  out += "  \"channel\": " + quote(config.channel) + ",\n";
  out += "  \"executable\": " + quote(config.executable) + ",\n";
  out += "  \"model\": " + quote(config.model);
  if (!config.modules.empty()) {
    out += ",\n  \"modules\": [";
    for (size_t i = 0; i < config.modules.size(); ++i) {
      if (i > 0) out += ", ";
      out += quote(config.modules[i]);
    }
    out += "]";
  }
  out += "\n}\n";
  return out;
}

}  // namespace appliance::image
