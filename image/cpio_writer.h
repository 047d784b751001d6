// A reproducible cpio "newc" archive written through libarchive: entries sorted
// by path, uid/gid 0, one fixed mtime, sequential inode numbers, correct link
// counts, no compression and no block padding. The same entries always give
// the same bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"

namespace appliance::image {

enum class EntryType { kDirectory, kRegular, kCharDevice };

struct ArchiveEntry {
  std::string path;  // relative ("etc/appliance"), no leading '/', no "." or ".." components
  EntryType type = EntryType::kRegular;
  unsigned mode = 0;                   // permission bits only (<= 07777)
  std::span<const uint8_t> data;      // regular files: the content (not owned)
  unsigned rdev_major = 0;            // character devices
  unsigned rdev_minor = 0;
};

// newc stores sizes and times in 32 bits.
inline constexpr uint64_t kMaxNewcFileBytes = 0xffffffffULL;
inline constexpr int64_t kMaxNewcTime = 0xffffffffLL;
inline constexpr size_t kMaxArchivePathBytes = 4095;

// True if `path` can name an archive entry (see ArchiveEntry::path).
bool IsValidArchivePath(std::string_view path);

// Adds a directory entry (mode `mode`) for every ancestor of an entry that has none.
void AddMissingParentDirectories(std::vector<ArchiveEntry>& entries, unsigned mode);

// Checks the entries (paths valid and unique, every parent present as a
// directory, sizes and modes in range), sorts them by path and writes the
// archive to `out_path` (atomically: a temp file renamed into place, mode 0644).
Status WriteNewcArchive(std::vector<ArchiveEntry> entries, int64_t mtime, const std::string& out_path);

}  // namespace appliance::image
