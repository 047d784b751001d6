#include "image/cpio_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string_view>

#include "image/file_util.h"

namespace appliance::image {

namespace {

struct ArchiveWriteDeleter {
  void operator()(struct archive* a) const { archive_write_free(a); }
};
struct ArchiveEntryDeleter {
  void operator()(struct archive_entry* e) const { archive_entry_free(e); }
};
using ArchiveWritePtr = std::unique_ptr<struct archive, ArchiveWriteDeleter>;
using ArchiveEntryPtr = std::unique_ptr<struct archive_entry, ArchiveEntryDeleter>;

Status ArchiveError(struct archive* a, std::string_view what) {
  const char* msg = archive_error_string(a);
  return Status::Error(std::string(what) + ": " + (msg != nullptr ? msg : "unknown libarchive error"));
}

std::string_view Parent(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
}

const char* TypeName(EntryType t) {
  switch (t) {
    case EntryType::kDirectory:
      return "directory";
    case EntryType::kRegular:
      return "file";
    case EntryType::kCharDevice:
      return "character device";
  }
  return "entry";
}

constexpr size_t kDataChunk = 1 << 20;
constexpr int kBlockBytes = 64 * 1024;

}  // namespace

bool IsValidArchivePath(std::string_view path) {
  if (path.empty() || path.size() > kMaxArchivePathBytes) return false;
  if (path.find('\0') != std::string_view::npos) return false;
  size_t start = 0;
  for (;;) {
    size_t slash = path.find('/', start);
    std::string_view comp = path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (comp.empty() || comp == "." || comp == "..") return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

void AddMissingParentDirectories(std::vector<ArchiveEntry>& entries, unsigned mode) {
  std::set<std::string, std::less<>> present;
  for (const ArchiveEntry& e : entries) present.insert(e.path);
  std::vector<ArchiveEntry> added;
  for (const ArchiveEntry& e : entries) {
    for (std::string_view p = Parent(e.path); !p.empty(); p = Parent(p)) {
      if (!present.insert(std::string(p)).second) break;  // that ancestor (and so its own) exists
      ArchiveEntry dir;
      dir.path = std::string(p);
      dir.type = EntryType::kDirectory;
      dir.mode = mode;
      added.push_back(std::move(dir));
    }
  }
  for (ArchiveEntry& d : added) entries.push_back(std::move(d));
}

Status WriteNewcArchive(std::vector<ArchiveEntry> entries, int64_t mtime, const std::string& out_path) {
  if (mtime < 0 || mtime > kMaxNewcTime) {
    return Status::Error("mtime " + std::to_string(mtime) + " does not fit a cpio newc header");
  }
  std::sort(entries.begin(), entries.end(),
            [](const ArchiveEntry& a, const ArchiveEntry& b) { return a.path < b.path; });

  // Validate and count subdirectories (a directory's link count is 2 + subdirectories).
  std::map<std::string, uint32_t, std::less<>> subdirs;
  for (size_t i = 0; i < entries.size(); ++i) {
    const ArchiveEntry& e = entries[i];
    if (!IsValidArchivePath(e.path)) return Status::Error("archive entry '" + e.path + "': invalid path");
    if (i > 0 && entries[i - 1].path == e.path) return Status::Error("archive entry '" + e.path + "': duplicate path");
    if (e.mode > 07777) return Status::Error("archive entry '" + e.path + "': mode has more than permission bits");
    if (e.type != EntryType::kRegular && !e.data.empty()) {
      return Status::Error(std::string("archive entry '") + e.path + "': a " + TypeName(e.type) + " has no content");
    }
    if (e.type == EntryType::kRegular && e.data.size() > kMaxNewcFileBytes) {
      return Status::Error("archive entry '" + e.path + "': " + std::to_string(e.data.size()) +
                           " bytes, more than cpio newc can store (4 GiB - 1)");
    }
    if (e.type == EntryType::kDirectory) subdirs.emplace(e.path, 0);
  }
  for (const ArchiveEntry& e : entries) {
    std::string_view parent = Parent(e.path);
    if (parent.empty()) continue;
    auto it = subdirs.find(parent);
    if (it == subdirs.end()) {
      return Status::Error("archive entry '" + e.path + "': parent directory '" + std::string(parent) +
                           "' is not in the archive");
    }
    if (e.type == EntryType::kDirectory) ++it->second;
  }

  ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(out_path));
  ArchiveWritePtr a(archive_write_new());
  if (!a) return Status::Error("archive_write_new failed (out of memory)");
  if (archive_write_set_format_cpio_newc(a.get()) != ARCHIVE_OK) return ArchiveError(a.get(), "set cpio newc format");
  if (archive_write_add_filter_none(a.get()) != ARCHIVE_OK) return ArchiveError(a.get(), "set no compression");
  if (archive_write_set_bytes_per_block(a.get(), kBlockBytes) != ARCHIVE_OK ||
      archive_write_set_bytes_in_last_block(a.get(), 1) != ARCHIVE_OK) {
    return ArchiveError(a.get(), "set archive blocking");
  }
  if (archive_write_open_fd(a.get(), out.fd()) != ARCHIVE_OK) return ArchiveError(a.get(), "open " + out_path);

  ArchiveEntryPtr entry(archive_entry_new());
  if (!entry) return Status::Error("archive_entry_new failed (out of memory)");
  int64_t ino = 0;
  for (const ArchiveEntry& e : entries) {
    archive_entry_clear(entry.get());
    archive_entry_set_pathname(entry.get(), e.path.c_str());
    archive_entry_set_ino64(entry.get(), ++ino);
    archive_entry_set_dev(entry.get(), 0);
    archive_entry_set_uid(entry.get(), 0);
    archive_entry_set_gid(entry.get(), 0);
    archive_entry_set_mtime(entry.get(), static_cast<time_t>(mtime), 0);
    switch (e.type) {
      case EntryType::kDirectory:
        archive_entry_set_filetype(entry.get(), AE_IFDIR);
        archive_entry_set_nlink(entry.get(), 2 + subdirs.at(e.path));
        archive_entry_set_size(entry.get(), 0);
        break;
      case EntryType::kRegular:
        archive_entry_set_filetype(entry.get(), AE_IFREG);
        archive_entry_set_nlink(entry.get(), 1);
        archive_entry_set_size(entry.get(), static_cast<la_int64_t>(e.data.size()));
        break;
      case EntryType::kCharDevice:
        archive_entry_set_filetype(entry.get(), AE_IFCHR);
        archive_entry_set_nlink(entry.get(), 1);
        archive_entry_set_size(entry.get(), 0);
        archive_entry_set_rdevmajor(entry.get(), e.rdev_major);
        archive_entry_set_rdevminor(entry.get(), e.rdev_minor);
        break;
    }
    archive_entry_set_perm(entry.get(), static_cast<mode_t>(e.mode));
    if (archive_write_header(a.get(), entry.get()) != ARCHIVE_OK) {
      return ArchiveError(a.get(), "write archive header of '" + e.path + "'");
    }
    size_t done = 0;
    while (done < e.data.size()) {
      size_t chunk = std::min(kDataChunk, e.data.size() - done);
      la_ssize_t n = archive_write_data(a.get(), e.data.data() + done, chunk);
      if (n < 0) return ArchiveError(a.get(), "write archive data of '" + e.path + "'");
      if (n == 0) return Status::Error("write archive data of '" + e.path + "': no progress");
      done += static_cast<size_t>(n);
    }
    if (archive_write_finish_entry(a.get()) != ARCHIVE_OK) {
      return ArchiveError(a.get(), "finish archive entry '" + e.path + "'");
    }
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) return ArchiveError(a.get(), "close archive " + out_path);
  return out.Commit(0644);
}

}  // namespace appliance::image
