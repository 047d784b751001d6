// A read-only private mapping of a whole file, owned (munmap on destruction).
// Mapping from an already-open fd lets callers map exactly the fd they hashed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "base/status.h"

namespace appliance {

class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  ~MappedFile();

  // Maps the file at `path` (the fd is closed after mapping).
  static StatusOr<MappedFile> Open(const std::string& path);
  // Maps the file open on `fd` (not taken over). `name` is used in errors.
  static StatusOr<MappedFile> FromFd(int fd, const std::string& name);

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace appliance
