// Helpers shared by the image tests: temp dirs, file I/O, reading a cpio back
// with libarchive.
#pragma once

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace appliance::image::testing {

// A fresh directory under the test's temp dir, removed at the end.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "appliance-image-test.XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = buf.data();
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteAll(const std::string& path, const std::string& bytes, std::filesystem::perms perms =
                                                                            std::filesystem::perms::owner_read |
                                                                            std::filesystem::perms::owner_write) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  out.close();
  std::filesystem::permissions(path, perms);
}

// One entry of a cpio archive as libarchive reads it back.
struct ReadEntry {
  std::string path;
  mode_t type = 0;  // AE_IFREG, AE_IFDIR, AE_IFCHR, ...
  unsigned perm = 0;
  int64_t uid = -1;
  int64_t gid = -1;
  int64_t mtime = -1;
  int64_t ino = -1;
  unsigned nlink = 0;
  unsigned rdev_major = 0;
  unsigned rdev_minor = 0;
  bool has_symlink = false;
  bool has_hardlink = false;
  std::string data;
};

inline std::vector<ReadEntry> ReadCpio(const std::string& path, int* format = nullptr) {
  std::vector<ReadEntry> out;
  std::unique_ptr<struct archive, int (*)(struct archive*)> a(archive_read_new(), archive_read_free);
  EXPECT_EQ(archive_read_support_format_cpio(a.get()), ARCHIVE_OK);
  EXPECT_EQ(archive_read_support_filter_none(a.get()), ARCHIVE_OK);
  if (archive_read_open_filename(a.get(), path.c_str(), 65536) != ARCHIVE_OK) {
    ADD_FAILURE() << "open " << path << ": " << archive_error_string(a.get());
    return out;
  }
  struct archive_entry* e = nullptr;
  int r;
  while ((r = archive_read_next_header(a.get(), &e)) == ARCHIVE_OK) {
    ReadEntry re;
    re.path = archive_entry_pathname(e);
    re.type = archive_entry_filetype(e);
    re.perm = archive_entry_perm(e);
    re.uid = archive_entry_uid(e);
    re.gid = archive_entry_gid(e);
    re.mtime = archive_entry_mtime(e);
    re.ino = archive_entry_ino64(e);
    re.nlink = archive_entry_nlink(e);
    re.rdev_major = static_cast<unsigned>(archive_entry_rdevmajor(e));
    re.rdev_minor = static_cast<unsigned>(archive_entry_rdevminor(e));
    re.has_symlink = archive_entry_symlink(e) != nullptr;
    re.has_hardlink = archive_entry_hardlink(e) != nullptr;
    char buf[65536];
    la_ssize_t n;
    while ((n = archive_read_data(a.get(), buf, sizeof(buf))) > 0) re.data.append(buf, static_cast<size_t>(n));
    EXPECT_GE(n, 0) << archive_error_string(a.get());
    out.push_back(std::move(re));
    if (format != nullptr) *format = archive_format(a.get());
  }
  EXPECT_EQ(r, ARCHIVE_EOF) << archive_error_string(a.get());
  return out;
}

}  // namespace appliance::image::testing
