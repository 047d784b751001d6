// A small test helper: read an initramfs (cpio newc) into memory, edit its
// entries, and write it back with libarchive, so the tamper tests can build
// images that differ from a good one in exactly one way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace appliance::tamper {

enum class Kind { kFile, kDirectory, kSymlink, kCharDevice };

struct Entry {
  std::string path;
  Kind kind = Kind::kFile;
  unsigned perm = 0644;
  std::string data;     // kFile: the content
  std::string target;   // kSymlink: where it points
  unsigned rdev_major = 0;
  unsigned rdev_minor = 0;
  // Hard links: entries with the same non-zero `link_group` share one inode
  // (written with one inode number and nlink = the group's size), which the
  // kernel's initramfs unpacker turns into hard links.
  unsigned link_group = 0;
};

StatusOr<std::vector<Entry>> ReadArchive(const std::string& path);
// Entries are written in the order given, every one with mtime `mtime` and
// uid/gid 0; each gets its own inode number unless it is in a link group.
Status WriteArchive(const std::string& path, const std::vector<Entry>& entries, int64_t mtime = 0);

// The entry named `path`, or nullptr.
Entry* Find(std::vector<Entry>& entries, const std::string& path);
// Removes the entries named `path`; returns how many there were.
size_t Remove(std::vector<Entry>& entries, const std::string& path);

}  // namespace appliance::tamper
