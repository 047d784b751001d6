#include "manifests/tree_verify.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "manifests/crypto.h"

namespace appliance::manifest {
namespace {

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

const char* TypeName(mode_t mode) {
  if (S_ISREG(mode)) return "regular file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISLNK(mode)) return "symbolic link";
  if (S_ISFIFO(mode)) return "fifo";
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  return "file of unknown type";
}

std::string ModeString(uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", mode);
  return buf;
}

std::string DeviceString(unsigned major_number, unsigned minor_number) {
  return std::to_string(major_number) + ":" + std::to_string(minor_number);
}

std::string Join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "/" + name;
}

void AddAncestors(std::string_view path, std::set<std::string>* out) {
  for (size_t slash = path.find('/'); slash != std::string_view::npos; slash = path.find('/', slash + 1)) {
    out->emplace(path.substr(0, slash));
  }
}

struct OpenedEntry {
  UniqueFd fd;
  struct stat st {};
};

// A regular file opened and checked during the walk, waiting to be hashed.
struct HashJob {
  std::string rel;
  UniqueFd fd;
  uint64_t size = 0;               // from fstat: the file must hash exactly this many bytes
  const FileEntry* expected = nullptr;  // kVerify: the manifest's entry
  FileEntry scanned;               // kScan: the entry being built
  std::optional<StatusOr<FdDigest>> result;
};

// Hashes every job, `threads` at a time (the calling thread is one of them),
// biggest files first so one large file does not start last. Each job's fd is
// read by exactly one thread; results are stored per job.
void HashAll(std::vector<HashJob>& jobs, unsigned threads, TreePolicy::HashMethod method,
             std::atomic<uint64_t>* progress) {
  std::vector<size_t> order(jobs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&jobs](size_t a, size_t b) { return jobs[a].size > jobs[b].size; });
  std::atomic<size_t> next{0};
  auto work = [&jobs, &order, &next, method, progress]() noexcept {
    for (size_t i = next.fetch_add(1); i < order.size(); i = next.fetch_add(1)) {
      HashJob& job = jobs[order[i]];
      try {
        job.result.emplace(method == TreePolicy::HashMethod::kMap
                               ? Sha256MappedFile(job.fd.get(), job.size, job.rel, progress)
                               : Sha256Fd(job.fd.get(), job.size, job.rel, progress));
      } catch (const std::exception& e) {  // allocation failure: an error, never a pass
        job.result.emplace(Status::Error(job.rel + ": hashing failed: " + e.what()));
      }
    }
  };
  const size_t wanted = std::min<size_t>(threads, jobs.size());
  {
    std::vector<std::jthread> helpers;  // joined when the scope ends, whatever happens
    for (size_t t = 1; t < wanted; ++t) {
      try {
        helpers.emplace_back(work);
      } catch (const std::exception&) {
        break;  // cannot start another thread: the ones running (and this one) do the rest
      }
    }
    work();
  }
}

// One walker for both directions, so "what VerifyTree accepts" and "what
// ScanTree lists" cannot drift apart.
class TreeWalker {
 public:
  enum class Mode { kVerify, kScan };

  TreeWalker(Mode mode, const TreePolicy& policy) : mode_(mode), policy_(policy) {
    // Directories allowed whatever the manifest lists: mount points and the
    // directories leading to them, to exempt files and to allowed devices.
    for (const auto& mount_point : policy_.mount_points) {
      allowed_dirs_.insert(mount_point);
      AddAncestors(mount_point, &allowed_dirs_);
    }
    for (const auto& path : policy_.exempt_files) AddAncestors(path, &allowed_dirs_);
    for (const auto& path : policy_.exempt_dirs) AddAncestors(path, &allowed_dirs_);
    threads_ = HashThreads(policy_);
    for (const auto& [path, device] : policy_.allowed_char_devices) AddAncestors(path, &allowed_dirs_);
  }

  // kVerify: what must be present.
  Status SetManifest(const Manifest& m) {
    for (const FileEntry& f : m.files) {
      if (policy_.exempt_files.contains(f.path) || policy_.exempt_dirs.contains(f.path)) {
        return Status::Error(f.path + ": listed in the manifest but exempt from verification by the policy");
      }
      for (const auto& dir : policy_.exempt_dirs) {
        if (f.path.starts_with(dir + "/")) {
          return Status::Error(f.path + ": listed in the manifest but inside " + dir + ", exempt from verification");
        }
      }
      listed_.emplace(f.path, &f);
      AddAncestors(f.path, &allowed_dirs_);
    }
    for (const auto& path : policy_.keep_open) {
      if (!listed_.contains(path)) {
        return Status::Error(EscapeForMessage(path) + ": asked to keep open but not listed in the manifest");
      }
    }
    return Status::Ok();
  }

  // kScan: explicit roles.
  void SetRoles(const std::map<std::string, std::string>* roles) { roles_ = roles; }

  Status Run(int root_fd) {
    struct stat st {};
    if (::fstat(root_fd, &st) != 0) return PosixError("fstat tree root");
    if (!S_ISDIR(st.st_mode)) return Status::Error("tree root: not a directory");
    root_dev_ = st.st_dev;
    // Every entry that can be accepted is counted here; a single directory
    // with more names than that holds something refused anyway. The bound
    // keeps a hostile directory from making us collect millions of names.
    entry_budget_ = (mode_ == Mode::kVerify ? listed_.size() : 2 * kMaxFiles) + allowed_dirs_.size() +
                    policy_.exempt_files.size() + policy_.exempt_dirs.size() + policy_.allowed_char_devices.size() + 1;
    // A fresh open file description: readdir() must not move the offset of
    // the caller's fd.
    UniqueFd self(::openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!self.valid()) return PosixError("open tree root");
    bool has_content = false;
    const Status walked = WalkDirectory(std::move(self), "", &has_content);
    // Files still waiting to be hashed come before the walk's problem (if
    // any) in walk order, so a content problem among them is reported first.
    RETURN_IF_ERROR(Flush());
    return walked;
  }

  Status CheckNothingMissing(const Manifest& m) const {
    for (const FileEntry& f : m.files) {
      if (!seen_.contains(f.path)) return Status::Error(f.path + ": missing");
    }
    return Status::Ok();
  }

  std::map<std::string, UniqueFd> TakeKept() { return std::move(kept_); }

  StatusOr<std::vector<FileEntry>> TakeScanned() {
    for (const auto& [path, role] : *roles_) {
      if (!scanned_paths_.contains(path)) {
        return Status::Error("role given for " + EscapeForMessage(path) + ", which is not a regular file of the tree");
      }
    }
    std::sort(scanned_.begin(), scanned_.end(), [](const FileEntry& a, const FileEntry& b) { return a.path < b.path; });
    return std::move(scanned_);
  }

 private:
  Status WalkDirectory(UniqueFd dir_fd, const std::string& prefix, bool* has_content) {
    const std::string shown = prefix.empty() ? "." : prefix;
    DirPtr dir(::fdopendir(dir_fd.get()));
    if (!dir) return PosixError("opendir " + shown);
    dir_fd.release();  // owned by the DIR* now

    std::vector<std::string> names;
    for (;;) {
      errno = 0;
      const dirent* entry = ::readdir(dir.get());
      if (entry == nullptr) {
        if (errno != 0) return PosixError("readdir " + shown);
        break;
      }
      if (std::strcmp(entry->d_name, ".") == 0 || std::strcmp(entry->d_name, "..") == 0) continue;
      if (names.size() >= entry_budget_) {
        return Status::Error(shown + ": more entries than the image can contain (" + std::to_string(entry_budget_) +
                             ")");
      }
      names.emplace_back(entry->d_name);
    }
    // Sorted: the first problem reported does not depend on readdir order.
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      RETURN_IF_ERROR(VisitEntry(::dirfd(dir.get()), name, Join(prefix, name), has_content));
    }
    return Status::Ok();
  }

  Status VisitEntry(int dir_fd, const std::string& name, const std::string& rel, bool* has_content) {
    // A name that can never be listed is refused before anything else, with
    // the name escaped (it may hold control characters).
    if (std::string problem = PathProblem(rel); !problem.empty()) {
      return Status::Error(EscapeForMessage(rel) + ": name not allowed in an image (" + problem + ")");
    }
    struct stat st {};
    if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return PosixError("stat " + rel);
    if (S_ISLNK(st.st_mode)) return Status::Error(rel + ": symbolic link refused");
    if (st.st_dev != root_dev_) {
      return Status::Error(rel + ": on another filesystem than the root (mounted over?) refused");
    }

    if (policy_.exempt_files.contains(rel)) {
      // Not examined (the manifest cannot list itself), but it must be what
      // its name says: a directory here would be an unverified subtree.
      if (!S_ISREG(st.st_mode)) {
        return Status::Error(rel + ": " + TypeName(st.st_mode) + " refused (expected the regular file exempt from the manifest)");
      }
      RETURN_IF_ERROR(CheckSingleLink(rel, st));
      *has_content = true;
      return Status::Ok();
    }
    if (policy_.exempt_dirs.contains(rel)) {
      RETURN_IF_ERROR(CheckExemptDirectory(dir_fd, name, rel, st));
      *has_content = true;
      return Status::Ok();
    }
    if (mode_ == Mode::kVerify) {
      if (auto it = listed_.find(rel); it != listed_.end()) {
        RETURN_IF_ERROR(CheckListedFile(dir_fd, name, rel, st, *it->second));
        *has_content = true;
        return Status::Ok();
      }
    } else if (S_ISREG(st.st_mode)) {
      RETURN_IF_ERROR(ScanFile(dir_fd, name, rel, st));
      *has_content = true;
      return Status::Ok();
    }
    if (auto it = policy_.allowed_char_devices.find(rel); it != policy_.allowed_char_devices.end()) {
      const auto [want_major, want_minor] = it->second;
      if (!S_ISCHR(st.st_mode)) {
        return Status::Error(rel + ": " + TypeName(st.st_mode) + " refused (expected character device " +
                             DeviceString(want_major, want_minor) + ")");
      }
      if (major(st.st_rdev) != want_major || minor(st.st_rdev) != want_minor) {
        return Status::Error(rel + ": character device " + DeviceString(major(st.st_rdev), minor(st.st_rdev)) +
                             " refused (expected " + DeviceString(want_major, want_minor) + ")");
      }
      *has_content = true;
      return Status::Ok();
    }
    if (S_ISDIR(st.st_mode)) {
      const bool allowed = allowed_dirs_.contains(rel);
      if (mode_ == Mode::kVerify && !allowed) {
        return Status::Error(rel + ": directory not listed in the manifest (no listed file below it, not a mount point)");
      }
      ASSIGN_OR_RETURN(OpenedEntry sub, OpenSameEntry(dir_fd, name, rel, st, O_DIRECTORY));
      bool child_content = false;
      RETURN_IF_ERROR(WalkDirectory(std::move(sub.fd), rel, &child_content));
      if (!allowed && !child_content) {
        return Status::Error(rel + ": empty directory refused (not a mount point, no file below it)");
      }
      *has_content = true;
      return Status::Ok();
    }
    if (S_ISREG(st.st_mode)) return Status::Error(rel + ": not listed in the manifest");
    return Status::Error(rel + ": " + TypeName(st.st_mode) + " refused (not listed in the manifest)");
  }

  // Opens `name` without following symlinks and checks it is the very inode
  // that was just examined with fstatat (no swap in between). O_NONBLOCK so
  // that a fifo swapped in cannot block the open; cleared again afterwards.
  StatusOr<OpenedEntry> OpenSameEntry(int dir_fd, const std::string& name, const std::string& rel,
                                      const struct stat& before, int extra_flags) {
    OpenedEntry opened;
    opened.fd.reset(::openat(dir_fd, name.c_str(),
                             O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | extra_flags));
    if (!opened.fd.valid()) {
      if (errno == ELOOP) return Status::Error(rel + ": symbolic link refused");
      return PosixError("open " + rel);
    }
    if (::fstat(opened.fd.get(), &opened.st) != 0) return PosixError("fstat " + rel);
    if (opened.st.st_ino != before.st_ino || opened.st.st_dev != before.st_dev ||
        (opened.st.st_mode & S_IFMT) != (before.st_mode & S_IFMT)) {
      return Status::Error(rel + ": changed while being verified");
    }
    const int flags = ::fcntl(opened.fd.get(), F_GETFL);
    if (flags < 0 || ::fcntl(opened.fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) return PosixError("fcntl " + rel);
    return opened;
  }

  // The checks shared by both directions for a regular file.
  static Status CheckSingleLink(const std::string& rel, const struct stat& st) {
    if (st.st_nlink != 1) {
      return Status::Error(rel + ": hard link refused (" + std::to_string(st.st_nlink) + " links)");
    }
    return Status::Ok();
  }

  Status CheckListedFile(int dir_fd, const std::string& name, const std::string& rel, const struct stat& st,
                         const FileEntry& entry) {
    if (!S_ISREG(st.st_mode)) {
      return Status::Error(rel + ": " + TypeName(st.st_mode) + " refused (listed as a regular file)");
    }
    ASSIGN_OR_RETURN(OpenedEntry file, OpenSameEntry(dir_fd, name, rel, st, 0));
    RETURN_IF_ERROR(CheckSingleLink(rel, file.st));
    const auto size = static_cast<uint64_t>(file.st.st_size);
    if (size != entry.size) {
      return Status::Error(rel + ": size mismatch (manifest " + std::to_string(entry.size) + ", file " +
                           std::to_string(size) + (size < entry.size ? "): truncated" : "): larger than listed"));
    }
    const uint32_t mode = file.st.st_mode & 07777;
    if (mode != entry.mode) {
      return Status::Error(rel + ": mode mismatch (manifest " + ModeString(entry.mode) + ", file " + ModeString(mode) +
                           ")");
    }
    // The open fd (the one handed back to the caller) is hashed later, by a
    // hashing thread, never past the listed size: a file that grows meanwhile fails.
    seen_.insert(rel);
    HashJob job;
    job.rel = rel;
    job.fd = std::move(file.fd);
    job.size = entry.size;
    job.expected = &entry;
    return AddJob(std::move(job));
  }

  // The signatures' directory: a real directory of the tree holding only
  // regular files with one link (their names and contents are checked by
  // ReadSignatureDir, which init runs first).
  Status CheckExemptDirectory(int dir_fd, const std::string& name, const std::string& rel, const struct stat& st) {
    if (!S_ISDIR(st.st_mode)) {
      return Status::Error(rel + ": " + TypeName(st.st_mode) + " refused (expected the signatures' directory)");
    }
    ASSIGN_OR_RETURN(OpenedEntry dir_entry, OpenSameEntry(dir_fd, name, rel, st, O_DIRECTORY));
    const int sub_fd = dir_entry.fd.get();
    DirPtr dir(::fdopendir(sub_fd));
    if (!dir) return PosixError("opendir " + rel);
    dir_entry.fd.release();  // owned by the DIR* now
    std::vector<std::string> names;
    for (;;) {
      errno = 0;
      const dirent* entry = ::readdir(dir.get());
      if (entry == nullptr) {
        if (errno != 0) return PosixError("readdir " + rel);
        break;
      }
      if (std::strcmp(entry->d_name, ".") == 0 || std::strcmp(entry->d_name, "..") == 0) continue;
      if (names.size() >= kMaxSigners) {
        return Status::Error(rel + ": more than " + std::to_string(kMaxSigners) + " entries (at most " +
                             std::to_string(kMaxSigners) + " signers)");
      }
      names.emplace_back(entry->d_name);
    }
    std::sort(names.begin(), names.end());
    for (const std::string& child : names) {
      const std::string child_rel = Join(rel, child);
      if (std::string problem = PathProblem(child_rel); !problem.empty()) {
        return Status::Error(EscapeForMessage(child_rel) + ": name not allowed in an image (" + problem + ")");
      }
      struct stat cst {};
      if (::fstatat(::dirfd(dir.get()), child.c_str(), &cst, AT_SYMLINK_NOFOLLOW) != 0) {
        return PosixError("stat " + child_rel);
      }
      if (S_ISLNK(cst.st_mode)) return Status::Error(child_rel + ": symbolic link refused");
      if (cst.st_dev != root_dev_) {
        return Status::Error(child_rel + ": on another filesystem than the root (mounted over?) refused");
      }
      if (!S_ISREG(cst.st_mode)) {
        return Status::Error(child_rel + ": " + TypeName(cst.st_mode) + " refused (only signature files belong in " +
                             rel + ")");
      }
      RETURN_IF_ERROR(CheckSingleLink(child_rel, cst));
    }
    return Status::Ok();
  }

  Status AddJob(HashJob job) {
    pending_.push_back(std::move(job));
    if (pending_.size() >= kMaxPendingHashJobs) return Flush();
    return Status::Ok();
  }

  // Hashes the pending files in parallel, then checks the results in walk
  // order: the first problem reported is the first in walk order.
  Status Flush() {
    if (pending_.empty()) return Status::Ok();
    std::vector<HashJob> jobs = std::move(pending_);
    pending_.clear();
    HashAll(jobs, threads_, policy_.hash_method, policy_.progress);
    for (HashJob& job : jobs) {
      if (!job.result.has_value()) return Status::Error(job.rel + ": not hashed");  // cannot happen; fail closed
      if (!job.result->ok()) return job.result->status();
      const FdDigest& digest = job.result->value();
      if (mode_ == Mode::kScan) {
        if (digest.bytes != job.size) return Status::Error(job.rel + ": changed size while being read");
        job.scanned.sha256 = ToHex(digest.digest);
        scanned_.push_back(std::move(job.scanned));
        continue;
      }
      const FileEntry& entry = *job.expected;
      if (digest.bytes != entry.size) {
        return Status::Error(job.rel + ": size mismatch (manifest " + std::to_string(entry.size) + ", read " +
                             std::to_string(digest.bytes) + " bytes)");
      }
      const std::string hex = ToHex(digest.digest);
      if (hex != entry.sha256) {
        return Status::Error(job.rel + ": sha256 mismatch (manifest " + entry.sha256 + ", file " + hex + ")");
      }
      if (policy_.keep_open.contains(job.rel)) {
        if (::lseek(job.fd.get(), 0, SEEK_SET) != 0) return PosixError("lseek " + job.rel);
        kept_.emplace(job.rel, std::move(job.fd));
      }
    }
    return Status::Ok();
  }

  Status ScanFile(int dir_fd, const std::string& name, const std::string& rel, const struct stat& st) {
    if (scanned_count_ >= kMaxFiles) {
      return Status::Error(rel + ": more than " + std::to_string(kMaxFiles) + " files in the tree");
    }
    ASSIGN_OR_RETURN(OpenedEntry file, OpenSameEntry(dir_fd, name, rel, st, 0));
    RETURN_IF_ERROR(CheckSingleLink(rel, file.st));
    FileEntry entry;
    entry.path = rel;
    entry.size = static_cast<uint64_t>(file.st.st_size);
    entry.mode = file.st.st_mode & 07777;
    if (entry.mode > 0777) {
      return Status::Error(rel + ": mode " + ModeString(entry.mode) + " refused (set-id and sticky bits are not allowed)");
    }
    if (auto it = roles_->find(rel); it != roles_->end()) {
      entry.role = it->second;
    } else if (auto role = DefaultRoleForPath(rel)) {
      entry.role = *role;
    } else {
      return Status::Error(rel + ": no default role for this path (give it one explicitly)");
    }
    if (!IsKnownRole(entry.role)) return Status::Error(rel + ": unknown role " + EscapeForMessage(entry.role));
    scanned_paths_.insert(rel);
    ++scanned_count_;
    HashJob job;
    job.rel = rel;
    job.fd = std::move(file.fd);
    job.size = entry.size;
    job.scanned = std::move(entry);
    return AddJob(std::move(job));
  }

  const Mode mode_;
  const TreePolicy& policy_;
  std::set<std::string> allowed_dirs_;
  dev_t root_dev_ = 0;
  size_t entry_budget_ = 0;
  unsigned threads_ = 1;
  std::vector<HashJob> pending_;  // opened and checked, not hashed yet (walk order)

  std::map<std::string, const FileEntry*> listed_;  // kVerify
  std::set<std::string> seen_;                      // kVerify: listed files found and verified
  std::map<std::string, UniqueFd> kept_;            // kVerify

  const std::map<std::string, std::string>* roles_ = nullptr;  // kScan
  std::vector<FileEntry> scanned_;                              // kScan
  std::set<std::string> scanned_paths_;                         // kScan
  size_t scanned_count_ = 0;                                    // kScan: files found (hashed or pending)
};

}  // namespace

unsigned HashThreads(const TreePolicy& policy) {
  unsigned n = policy.hash_threads;
  if (n == 0) {
    // sched_getaffinity, not /sys or /proc: PID 1 verifies before mounting them.
    cpu_set_t set;
    CPU_ZERO(&set);
    n = ::sched_getaffinity(0, sizeof set, &set) == 0 ? static_cast<unsigned>(CPU_COUNT(&set)) : 1;
  }
  return std::clamp(n, 1u, kMaxHashThreads);
}

StatusOr<std::map<std::string, UniqueFd>> VerifyTree(int root_fd, const Manifest& m, const TreePolicy& policy) {
  // The manifest's paths are used to look entries up; only well-formed ones.
  RETURN_IF_ERROR(Validate(m).Context("manifest"));
  TreeWalker walker(TreeWalker::Mode::kVerify, policy);
  RETURN_IF_ERROR(walker.SetManifest(m));
  RETURN_IF_ERROR(walker.Run(root_fd));
  RETURN_IF_ERROR(walker.CheckNothingMissing(m));
  return walker.TakeKept();
}

StatusOr<std::vector<FileEntry>> ScanTree(int root_fd, const TreePolicy& policy,
                                          const std::map<std::string, std::string>& roles) {
  for (const auto& [path, role] : roles) {
    if (std::string problem = PathProblem(path); !problem.empty()) {
      return Status::Error("role given for " + EscapeForMessage(path) + ": invalid path (" + problem + ")");
    }
    if (!IsKnownRole(role)) {
      return Status::Error("role given for " + path + ": unknown role " + EscapeForMessage(role) +
                           " (expected init, runtime, library, module, model or config)");
    }
  }
  TreeWalker walker(TreeWalker::Mode::kScan, policy);
  walker.SetRoles(&roles);
  RETURN_IF_ERROR(walker.Run(root_fd));
  return walker.TakeScanned();
}

}  // namespace appliance::manifest
