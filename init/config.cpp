#include "init/config.h"

#include <nlohmann/json.hpp>

#include "manifests/manifest.h"

namespace appliance::init {
namespace {

StatusOr<std::string> RequireString(const nlohmann::json& doc, const char* key) {
  auto it = doc.find(key);
  if (it == doc.end()) return Status::Error(std::string("missing key '") + key + "'");
  if (!it->is_string()) return Status::Error(std::string("'") + key + "' must be a string");
  std::string value = it->get<std::string>();
  if (value.empty() || value.size() > kMaxArgBytes) {
    return Status::Error(std::string("'") + key + "' must be 1.." + std::to_string(kMaxArgBytes) + " bytes");
  }
  return value;
}

}  // namespace

StatusOr<RuntimeConfig> ParseRuntimeConfig(std::span<const uint8_t> bytes) {
  if (bytes.size() > kMaxRuntimeConfigBytes) {
    return Status::Error("runtime config: " + std::to_string(bytes.size()) + " bytes, limit " +
                         std::to_string(kMaxRuntimeConfigBytes));
  }
  nlohmann::json doc = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return Status::Error("runtime config: not a JSON object");
  for (const auto& [key, value] : doc.items()) {
    if (key != "argv" && key != "channel" && key != "executable" && key != "model" && key != "modules") {
      return Status::Error("runtime config: unknown key '" + key + "'");
    }
  }

  RuntimeConfig config;
  auto argv = doc.find("argv");
  if (argv == doc.end() || !argv->is_array() || argv->empty() || argv->size() > kMaxArgs) {
    return Status::Error("runtime config: 'argv' must be an array of 1.." + std::to_string(kMaxArgs) + " strings");
  }
  for (const auto& arg : *argv) {
    if (!arg.is_string()) return Status::Error("runtime config: 'argv' entries must be strings");
    std::string s = arg.get<std::string>();
    if (s.size() > kMaxArgBytes || s.find('\0') != std::string::npos) {
      return Status::Error("runtime config: an 'argv' entry is over-long or holds a NUL byte");
    }
    config.argv.push_back(std::move(s));
  }
  struct StringField {
    const char* key;
    std::string* out;
  };
  for (const StringField& field : {StringField{"channel", &config.channel}, StringField{"executable", &config.executable},
                                   StringField{"model", &config.model}}) {
    auto value = RequireString(doc, field.key);
    if (!value.ok()) return value.status().Context("runtime config");
    *field.out = std::move(value).value();
  }
  if (config.channel.rfind("/dev/", 0) != 0 || config.channel.find("..") != std::string::npos) {
    return Status::Error("runtime config: 'channel' must be a device under /dev/, got '" + config.channel + "'");
  }
  for (const std::string* path : {&config.executable, &config.model}) {
    if (!manifest::IsValidPath(*path)) {
      return Status::Error("runtime config: '" + *path + "' is not a valid image path");
    }
  }
  if (auto modules = doc.find("modules"); modules != doc.end()) {
    if (!modules->is_array() || modules->size() > kMaxModules) {
      return Status::Error("runtime config: 'modules' must be an array of at most " + std::to_string(kMaxModules) +
                           " image paths");
    }
    for (const auto& module : *modules) {
      if (!module.is_string() || !manifest::IsValidPath(module.get<std::string>())) {
        return Status::Error("runtime config: 'modules' entries must be valid image paths");
      }
      config.modules.push_back(module.get<std::string>());
    }
  }
  return config;
}

}  // namespace appliance::init
