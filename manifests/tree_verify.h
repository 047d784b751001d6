// Verifies a directory tree (the booted image's root, or an unpacked image)
// against a manifest: every listed file present, a regular file with one link,
// the listed size and mode, and the listed SHA-256 computed from the open fd;
// nothing else present except allowed directories and device nodes.
#pragma once

#include <map>
#include <set>
#include <string>

#include "base/fd.h"
#include "base/status.h"
#include "manifests/manifest.h"

namespace appliance::manifest {

struct TreePolicy {
  // Paths never examined (the manifest and its signature).
  std::set<std::string> exempt_files = {"etc/appliance/manifest.json", "etc/appliance/manifest.sig"};
  // Empty directories that may exist unlisted (mount points).
  std::set<std::string> mount_points = {"dev", "proc", "sys", "run", "tmp"};
  // Character devices allowed unlisted, path -> (major, minor).
  std::map<std::string, std::pair<unsigned, unsigned>> allowed_char_devices = {{"dev/console", {5, 1}}};
  // Listed files whose verified fd the caller wants back (to exec or map that same fd).
  std::set<std::string> keep_open;
};

// `root_fd` is an O_DIRECTORY fd of the tree's root. Does not cross into other
// filesystems (a different st_dev is refused as unlisted). On success returns
// the kept fds (positioned at offset 0), keyed by path.
StatusOr<std::map<std::string, UniqueFd>> VerifyTree(int root_fd, const Manifest& m, const TreePolicy& policy);

}  // namespace appliance::manifest
