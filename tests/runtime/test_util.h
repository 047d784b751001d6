// Shared helpers of the runtime tests: paths into ../shared and file reading.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace appliance::runtime::testing {

inline std::string SharedPath(const std::string& rel) { return std::string(APPLIANCE_SHARED_DIR) + "/" + rel; }
inline std::string ModelPath(const std::string& name) { return SharedPath("models/" + name); }

// Whole file, or empty when it cannot be read (the tests then fail on content).
inline std::vector<uint8_t> ReadFile(const std::string& path) {
  std::vector<uint8_t> out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    uint8_t buf[65536];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
    std::fclose(f);
  }
  return out;
}

inline std::string ReadText(const std::string& path) {
  const std::vector<uint8_t> b = ReadFile(path);
  return std::string(b.begin(), b.end());
}

}  // namespace appliance::runtime::testing
