// Verifies a directory tree (the booted image's root, or an unpacked image)
// against a manifest: every listed file present, a regular file with one link,
// the listed size and mode, and the listed SHA-256 computed from the open fd;
// nothing else present except allowed directories and device nodes.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/status.h"
#include "manifests/manifest.h"

namespace appliance::manifest {

// At most this many threads hash at once (TreePolicy::hash_threads).
inline constexpr unsigned kMaxHashThreads = 16;
// Files opened and waiting to be hashed at once: bounds the open descriptors
// (PID 1 runs with the kernel's default RLIMIT_NOFILE of 1024).
inline constexpr size_t kMaxPendingHashJobs = 64;

struct TreePolicy {
  // Paths never examined (the manifest).
  std::set<std::string> exempt_files = {"etc/appliance/manifest.json"};
  // Directories holding the signatures: each entry must be a regular file with
  // one link (not examined here: signatures.h reads and checks them); anything
  // else inside, a subdirectory included, is refused.
  std::set<std::string> exempt_dirs = {"etc/appliance/signatures"};
  // Empty directories that may exist unlisted (mount points).
  std::set<std::string> mount_points = {"dev", "proc", "sys", "run", "tmp"};
  // Character devices allowed unlisted, path -> (major, minor).
  std::map<std::string, std::pair<unsigned, unsigned>> allowed_char_devices = {{"dev/console", {5, 1}}};
  // Listed files whose verified fd the caller wants back (to exec or map that same fd).
  std::set<std::string> keep_open;
  // Threads hashing files in parallel: 0 = one per CPU this process may run
  // on (sched_getaffinity), at most kMaxHashThreads; 1 = the calling thread only.
  unsigned hash_threads = 0;
  // How a file's content reaches SHA-256: mapped from its verified fd
  // (Sha256MappedFile: no copy) or read() into a buffer (Sha256Fd). The
  // mapping is the faster (bench/verify_bench); either hashes that same fd.
  enum class HashMethod { kMap, kRead };
  HashMethod hash_method = HashMethod::kMap;
  // If set, every byte hashed is counted here (from the hashing threads), so
  // another thread can show progress.
  std::atomic<uint64_t>* progress = nullptr;
};

// The number of hashing threads `policy` asks for, resolved.
unsigned HashThreads(const TreePolicy& policy);

// `root_fd` is an O_DIRECTORY fd of the tree's root. Does not cross into other
// filesystems (a different st_dev is refused as unlisted). On success returns
// the kept fds (positioned at offset 0), keyed by path.
//
// Each listed file is checked (type, links, size, mode) and opened while the
// tree is walked; its content is hashed from that open fd by one of the
// hashing threads. The first problem in walk order is reported whichever
// thread found it, so the error does not depend on timing.
//
// Stops at the first problem; the error names the path and the check, e.g.
// "usr/bin/x: not listed in the manifest", "lib/a.so: symbolic link refused",
// "models/m.gguf: hard link refused (2 links)", "etc/y: missing",
// "models/model.gguf: sha256 mismatch (manifest <hex>, file <hex>)".
// Entries are visited in sorted order, so the reported problem is deterministic.
// Mount points must be plain empty directories of the root filesystem: call this
// before mounting anything over them (a mounted /proc has another st_dev).
StatusOr<std::map<std::string, UniqueFd>> VerifyTree(int root_fd, const Manifest& m, const TreePolicy& policy);

// The other direction, for building images: hashes every regular file under
// `root_fd` into a sorted file list (size, permission bits, SHA-256, role)
// that VerifyTree accepts for the same tree and policy. Refuses exactly what
// VerifyTree would refuse (symlinks, hard links, devices other than the
// allowed ones, fifos, sockets, other filesystems, empty directories that are
// not mount points); exempt files are skipped. The role of a path is
// `roles.at(path)` if present, else DefaultRoleForPath(); a file with neither,
// or a `roles` key that is not a file of the tree, is an error.
StatusOr<std::vector<FileEntry>> ScanTree(int root_fd, const TreePolicy& policy,
                                          const std::map<std::string, std::string>& roles = {});

}  // namespace appliance::manifest
