// Shared helpers of the runtime tests: paths into ../shared and file reading.
#pragma once

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace appliance::runtime::testing {

inline std::string SharedPath(const std::string& rel) { return std::string(APPLIANCE_SHARED_DIR) + "/" + rel; }
inline std::string ModelPath(const std::string& name) { return SharedPath("models/" + name); }

inline std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

}  // namespace appliance::runtime::testing
