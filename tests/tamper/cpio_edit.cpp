#include "tests/tamper/cpio_edit.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <map>
#include <memory>

namespace appliance::tamper {
namespace {

struct ReadDeleter {
  void operator()(struct archive* a) const { archive_read_free(a); }
};
struct WriteDeleter {
  void operator()(struct archive* a) const { archive_write_free(a); }
};
struct EntryDeleter {
  void operator()(struct archive_entry* e) const { archive_entry_free(e); }
};

Status ArchiveError(struct archive* a, const std::string& what) {
  const char* message = archive_error_string(a);
  return Status::Error(what + ": " + (message != nullptr ? message : "libarchive error"));
}

}  // namespace

StatusOr<std::vector<Entry>> ReadArchive(const std::string& path) {
  std::unique_ptr<struct archive, ReadDeleter> a(archive_read_new());
  if (!a) return Status::Error("archive_read_new failed");
  archive_read_support_format_cpio(a.get());
  archive_read_support_filter_none(a.get());
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) {
    return ArchiveError(a.get(), "open " + path);
  }
  std::vector<Entry> entries;
  // Inode number -> link group, for entries that came in as hard links.
  std::map<int64_t, unsigned> groups;
  struct archive_entry* e = nullptr;
  int r = ARCHIVE_OK;
  while ((r = archive_read_next_header(a.get(), &e)) == ARCHIVE_OK) {
    Entry entry;
    entry.path = archive_entry_pathname(e);
    entry.perm = archive_entry_perm(e);
    switch (archive_entry_filetype(e)) {
      case AE_IFREG: entry.kind = Kind::kFile; break;
      case AE_IFDIR: entry.kind = Kind::kDirectory; break;
      case AE_IFLNK:
        entry.kind = Kind::kSymlink;
        entry.target = archive_entry_symlink(e) != nullptr ? archive_entry_symlink(e) : "";
        break;
      case AE_IFCHR:
        entry.kind = Kind::kCharDevice;
        entry.rdev_major = static_cast<unsigned>(archive_entry_rdevmajor(e));
        entry.rdev_minor = static_cast<unsigned>(archive_entry_rdevminor(e));
        break;
      default:
        return Status::Error(path + ": " + entry.path + ": entry type not supported by the test helper");
    }
    if (entry.kind == Kind::kFile && archive_entry_nlink(e) > 1) {
      const auto [it, added] = groups.emplace(archive_entry_ino64(e), static_cast<unsigned>(groups.size() + 1));
      (void)added;
      entry.link_group = it->second;
    }
    char buf[1 << 16];
    la_ssize_t n = 0;
    while ((n = archive_read_data(a.get(), buf, sizeof buf)) > 0) entry.data.append(buf, static_cast<size_t>(n));
    if (n < 0) return ArchiveError(a.get(), "read " + entry.path);
    entries.push_back(std::move(entry));
  }
  if (r != ARCHIVE_EOF) return ArchiveError(a.get(), "read " + path);
  return entries;
}

Status WriteArchive(const std::string& path, const std::vector<Entry>& entries, int64_t mtime) {
  std::unique_ptr<struct archive, WriteDeleter> a(archive_write_new());
  if (!a) return Status::Error("archive_write_new failed");
  if (archive_write_set_format_cpio_newc(a.get()) != ARCHIVE_OK ||
      archive_write_add_filter_none(a.get()) != ARCHIVE_OK ||
      archive_write_set_bytes_in_last_block(a.get(), 1) != ARCHIVE_OK) {
    return ArchiveError(a.get(), "set up writer");
  }
  if (archive_write_open_filename(a.get(), path.c_str()) != ARCHIVE_OK) return ArchiveError(a.get(), "open " + path);

  std::map<unsigned, unsigned> group_sizes;
  for (const Entry& entry : entries) {
    if (entry.link_group != 0) ++group_sizes[entry.link_group];
  }
  std::map<unsigned, int64_t> group_inodes;
  int64_t next_inode = 1;
  for (const Entry& entry : entries) {
    std::unique_ptr<struct archive_entry, EntryDeleter> e(archive_entry_new());
    if (!e) return Status::Error("archive_entry_new failed");
    archive_entry_set_pathname(e.get(), entry.path.c_str());
    archive_entry_set_perm(e.get(), entry.perm);
    archive_entry_set_uid(e.get(), 0);
    archive_entry_set_gid(e.get(), 0);
    archive_entry_set_mtime(e.get(), mtime, 0);
    int64_t inode = next_inode++;
    unsigned nlink = entry.kind == Kind::kDirectory ? 2 : 1;
    if (entry.link_group != 0) {
      const auto [it, added] = group_inodes.emplace(entry.link_group, inode);
      (void)added;
      inode = it->second;
      nlink = group_sizes[entry.link_group];
    }
    archive_entry_set_ino64(e.get(), inode);
    archive_entry_set_nlink(e.get(), nlink);
    switch (entry.kind) {
      case Kind::kFile:
        archive_entry_set_filetype(e.get(), AE_IFREG);
        archive_entry_set_size(e.get(), static_cast<la_int64_t>(entry.data.size()));
        break;
      case Kind::kDirectory:
        archive_entry_set_filetype(e.get(), AE_IFDIR);
        archive_entry_set_size(e.get(), 0);
        break;
      case Kind::kSymlink:
        archive_entry_set_filetype(e.get(), AE_IFLNK);
        archive_entry_set_symlink(e.get(), entry.target.c_str());
        archive_entry_set_size(e.get(), 0);
        break;
      case Kind::kCharDevice:
        archive_entry_set_filetype(e.get(), AE_IFCHR);
        archive_entry_set_rdevmajor(e.get(), entry.rdev_major);
        archive_entry_set_rdevminor(e.get(), entry.rdev_minor);
        archive_entry_set_size(e.get(), 0);
        break;
    }
    if (archive_write_header(a.get(), e.get()) != ARCHIVE_OK) return ArchiveError(a.get(), "write " + entry.path);
    if (entry.kind == Kind::kFile && !entry.data.empty()) {
      const la_ssize_t n = archive_write_data(a.get(), entry.data.data(), entry.data.size());
      if (n < 0 || static_cast<size_t>(n) != entry.data.size()) return ArchiveError(a.get(), "write " + entry.path);
    }
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) return ArchiveError(a.get(), "close " + path);
  return Status::Ok();
}

Entry* Find(std::vector<Entry>& entries, const std::string& path) {
  const auto it = std::find_if(entries.begin(), entries.end(), [&path](const Entry& e) { return e.path == path; });
  return it == entries.end() ? nullptr : &*it;
}

size_t Remove(std::vector<Entry>& entries, const std::string& path) {
  const auto before = entries.size();
  std::erase_if(entries, [&path](const Entry& e) { return e.path == path; });
  return before - entries.size();
}

}  // namespace appliance::tamper
