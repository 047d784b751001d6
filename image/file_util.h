// Small file helpers for the image tools: bounded reads, atomic writes, temp dirs.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/fd.h"
#include "base/status.h"

namespace appliance::image {

// Reads a whole regular file, refusing files larger than `max_bytes`.
StatusOr<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes);

// A new file written under a temporary name next to `path` and renamed over
// `path` by Commit(); removed on destruction if never committed.
class AtomicFile {
 public:
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  ~AtomicFile();

  static StatusOr<AtomicFile> Create(const std::string& path);
  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }
  // chmod `mode`, fsync, close, rename into place.
  Status Commit(unsigned mode);

 private:
  explicit AtomicFile(std::string path);
  std::string path_;
  std::string tmp_;
  UniqueFd fd_;
  bool committed_ = false;
};

// Writes `bytes` to `path` atomically (a temp file in the same directory,
// fsync, rename), with permission bits `mode`.
Status WriteFileAtomic(const std::string& path, std::span<const uint8_t> bytes, unsigned mode);
Status WriteFileAtomic(const std::string& path, std::string_view bytes, unsigned mode);

// Copies a regular file (following symlinks) to `dest` atomically.
Status CopyFileAtomic(const std::string& source, const std::string& dest, unsigned mode);

// Creates `path` and its missing parents (mode 0755); fine if it exists as a directory.
Status MakeDirs(const std::string& path);

// A directory created with mkdtemp and removed recursively on destruction.
class TempDir {
 public:
  TempDir() = default;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&& other) noexcept;
  ~TempDir();

  // `prefix` e.g. "/tmp/appliance-run." (XXXXXX is appended).
  static StatusOr<TempDir> Create(const std::string& prefix);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace appliance::image
