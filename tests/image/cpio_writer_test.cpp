// The archive writer on its own, with small real files standing in for init
// and the runtime (the full image with the real binaries is image_build_test).
#include "image/cpio_writer.h"

#include <stdio.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include <gtest/gtest.h>

#include "base/mapped_file.h"
#include "test_util.h"

namespace appliance::image {
namespace {

using testing::ReadAll;
using testing::ReadCpio;
using testing::ReadEntry;
using testing::ScratchDir;

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

ArchiveEntry File(std::string path, unsigned mode, std::span<const uint8_t> data) {
  ArchiveEntry e;
  e.path = std::move(path);
  e.type = EntryType::kRegular;
  e.mode = mode;
  e.data = data;
  return e;
}

ArchiveEntry Dir(std::string path, unsigned mode = 0755) {
  ArchiveEntry e;
  e.path = std::move(path);
  e.type = EntryType::kDirectory;
  e.mode = mode;
  return e;
}

ArchiveEntry Console() {
  ArchiveEntry e;
  e.path = "dev/console";
  e.type = EntryType::kCharDevice;
  e.mode = 0600;
  e.rdev_major = 5;
  e.rdev_minor = 1;
  return e;
}

class CpioWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Stand-ins: two small real executables of the build machine.
    StatusOr<MappedFile> init = MappedFile::Open("/bin/true");
    ASSERT_TRUE(init.ok()) << init.status().message();
    init_ = std::move(init).value();
    StatusOr<MappedFile> runtime = MappedFile::Open("/bin/false");
    ASSERT_TRUE(runtime.ok()) << runtime.status().message();
    runtime_ = std::move(runtime).value();
  }

  // An image-shaped entry list, deliberately unsorted.
  std::vector<ArchiveEntry> Entries() const {
    std::vector<ArchiveEntry> v;
    v.push_back(File("usr/bin/appliance-runtime", 0755, runtime_.bytes()));
    v.push_back(File("etc/appliance/runtime.json", 0444, Bytes(config_)));
    v.push_back(Console());
    v.push_back(File("init", 0755, init_.bytes()));
    v.push_back(File("models/empty", 0444, {}));
    for (const char* d : {"tmp", "dev", "proc", "sys", "run"}) v.push_back(Dir(d));
    AddMissingParentDirectories(v, 0755);
    return v;
  }

  MappedFile init_;
  MappedFile runtime_;
  std::string config_ = "{\"argv\": []}\n";
  ScratchDir dir_;
};

TEST_F(CpioWriterTest, EntriesAreSortedWithFixedOwnersTimesAndInodes) {
  const std::string out = dir_ / "a.cpio";
  ASSERT_TRUE(WriteNewcArchive(Entries(), 1700000000, out).ok());
  int format = 0;
  std::vector<ReadEntry> entries = ReadCpio(out, &format);
  EXPECT_EQ(format, ARCHIVE_FORMAT_CPIO_SVR4_NOCRC);  // "newc"

  std::vector<std::string> paths;
  for (const ReadEntry& e : entries) paths.push_back(e.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"dev", "dev/console", "etc", "etc/appliance", "etc/appliance/runtime.json",
                                             "init", "models", "models/empty", "proc", "run", "sys", "tmp", "usr",
                                             "usr/bin", "usr/bin/appliance-runtime"}));
  std::map<std::string, ReadEntry> by_path;
  int64_t ino = 0;
  for (const ReadEntry& e : entries) {
    EXPECT_EQ(e.uid, 0) << e.path;
    EXPECT_EQ(e.gid, 0) << e.path;
    EXPECT_EQ(e.mtime, 1700000000) << e.path;
    EXPECT_EQ(e.ino, ++ino) << e.path;  // sequential, in path order
    EXPECT_FALSE(e.has_symlink) << e.path;
    EXPECT_FALSE(e.has_hardlink) << e.path;
    by_path[e.path] = e;
  }
  EXPECT_EQ(by_path["dev/console"].type, AE_IFCHR);
  EXPECT_EQ(by_path["dev/console"].perm, 0600u);
  EXPECT_EQ(by_path["dev/console"].rdev_major, 5u);
  EXPECT_EQ(by_path["dev/console"].rdev_minor, 1u);
  EXPECT_EQ(by_path["init"].type, AE_IFREG);
  EXPECT_EQ(by_path["init"].perm, 0755u);
  EXPECT_EQ(by_path["init"].nlink, 1u);
  EXPECT_EQ(by_path["init"].data, ReadAll("/bin/true"));
  EXPECT_EQ(by_path["usr/bin/appliance-runtime"].data, ReadAll("/bin/false"));
  EXPECT_EQ(by_path["etc/appliance/runtime.json"].perm, 0444u);
  EXPECT_EQ(by_path["etc/appliance/runtime.json"].data, config_);
  EXPECT_EQ(by_path["models/empty"].data, "");
  EXPECT_EQ(by_path["tmp"].type, AE_IFDIR);
  EXPECT_EQ(by_path["tmp"].perm, 0755u);
  // Directory link counts: 2 + subdirectories.
  EXPECT_EQ(by_path["etc"].nlink, 3u);
  EXPECT_EQ(by_path["etc/appliance"].nlink, 2u);
  EXPECT_EQ(by_path["usr"].nlink, 3u);
  EXPECT_EQ(by_path["dev"].nlink, 2u);
}

TEST_F(CpioWriterTest, SameEntriesGiveIdenticalBytesWhateverTheOrder) {
  std::vector<ArchiveEntry> a = Entries();
  std::vector<ArchiveEntry> b = Entries();
  std::reverse(b.begin(), b.end());
  ASSERT_TRUE(WriteNewcArchive(a, 0, dir_ / "a.cpio").ok());
  ASSERT_TRUE(WriteNewcArchive(b, 0, dir_ / "b.cpio").ok());
  const std::string bytes = ReadAll(dir_ / "a.cpio");
  EXPECT_EQ(bytes, ReadAll(dir_ / "b.cpio"));
  // A different mtime changes the bytes (the time is really stored).
  ASSERT_TRUE(WriteNewcArchive(a, 1, dir_ / "c.cpio").ok());
  EXPECT_NE(bytes, ReadAll(dir_ / "c.cpio"));
}

TEST_F(CpioWriterTest, RawLayoutIsPlainNewcWithoutBlockPadding) {
  ASSERT_TRUE(WriteNewcArchive(Entries(), 0, dir_ / "a.cpio").ok());
  const std::string bytes = ReadAll(dir_ / "a.cpio");
  ASSERT_GT(bytes.size(), 110u);
  EXPECT_EQ(bytes.substr(0, 6), "070701");
  EXPECT_EQ(bytes.size() % 4, 0u);
  // The archive ends with the trailer entry (name "TRAILER!!!" plus its NUL and
  // padding to 4 bytes), not with libarchive's 10 KiB block padding.
  size_t trailer = bytes.rfind("TRAILER!!!");
  ASSERT_NE(trailer, std::string::npos);
  EXPECT_LT(bytes.size() - trailer, 16u);
  // The first header's uid, gid and mtime fields are zero.
  // Header: magic(6) ino mode uid gid nlink mtime ... (8 hex digits each).
  EXPECT_EQ(bytes.substr(6, 8), "00000001");          // ino
  EXPECT_EQ(bytes.substr(6 + 2 * 8, 8), "00000000");  // uid
  EXPECT_EQ(bytes.substr(6 + 3 * 8, 8), "00000000");  // gid
  EXPECT_EQ(bytes.substr(6 + 5 * 8, 8), "00000000");  // mtime
}

#ifdef APPLIANCE_CPIO_BIN
TEST_F(CpioWriterTest, GnuCpioListsTheSameEntries) {
  if (std::string(APPLIANCE_CPIO_BIN).empty()) GTEST_SKIP() << "cpio not installed";
  ASSERT_TRUE(WriteNewcArchive(Entries(), 0, dir_ / "a.cpio").ok());
  std::string cmd = std::string(APPLIANCE_CPIO_BIN) + " -i --list --quiet < " + dir_ / "a.cpio";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string listing;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) listing.append(buf, n);
  EXPECT_EQ(::pclose(p), 0);
  std::string expected;
  for (const ReadEntry& e : ReadCpio(dir_ / "a.cpio")) expected += e.path + "\n";
  EXPECT_EQ(listing, expected);
}
#endif

TEST_F(CpioWriterTest, RefusesBadEntries) {
  auto refused = [&](std::vector<ArchiveEntry> v, const std::string& fragment) {
    Status s = WriteNewcArchive(std::move(v), 0, dir_ / "bad.cpio");
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(fragment), std::string::npos) << s.message();
  };
  std::string data = "x";
  refused({Dir("a"), File("a/b", 0644, Bytes(data)), File("a/b", 0644, Bytes(data))}, "duplicate path");
  refused({File("a/b", 0644, Bytes(data))}, "parent directory 'a' is not in the archive");
  refused({File("/abs", 0644, Bytes(data))}, "invalid path");
  refused({Dir("a"), File("a/../b", 0644, Bytes(data))}, "invalid path");
  refused({Dir("a"), File("a//b", 0644, Bytes(data))}, "invalid path");
  refused({File("a/", 0644, Bytes(data))}, "invalid path");
  refused({File("./a", 0644, Bytes(data))}, "invalid path");
  refused({File("a", 0100644, Bytes(data))}, "permission bits");
  ArchiveEntry d = Dir("d");
  d.data = Bytes(data);
  refused({d}, "has no content");
  refused({File("a/b", 0644, Bytes(data)), File("a", 0644, Bytes(data))}, "parent directory 'a'");
  EXPECT_FALSE(WriteNewcArchive({Dir("a")}, -1, dir_ / "bad.cpio").ok());
  EXPECT_FALSE(WriteNewcArchive({Dir("a")}, kMaxNewcTime + 1, dir_ / "bad.cpio").ok());
  // Nothing is left behind by a refused write.
  EXPECT_FALSE(std::filesystem::exists(dir_ / "bad.cpio"));
}

TEST_F(CpioWriterTest, ReportsAnUnwritableDestination) {
  Status s = WriteNewcArchive(Entries(), 0, dir_ / "no-such-dir/a.cpio");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("No such file or directory"), std::string::npos) << s.message();
}

TEST(CpioPaths, Validity) {
  EXPECT_TRUE(IsValidArchivePath("init"));
  EXPECT_TRUE(IsValidArchivePath("lib/x86_64-linux-gnu/libc.so.6"));
  EXPECT_FALSE(IsValidArchivePath(""));
  EXPECT_FALSE(IsValidArchivePath("/init"));
  EXPECT_FALSE(IsValidArchivePath("a/"));
  EXPECT_FALSE(IsValidArchivePath("a/./b"));
  EXPECT_FALSE(IsValidArchivePath(".."));
  EXPECT_FALSE(IsValidArchivePath(std::string_view("a\0b", 3)));
  EXPECT_FALSE(IsValidArchivePath(std::string(kMaxArchivePathBytes + 1, 'a')));
}

TEST(CpioPaths, AddMissingParentDirectories) {
  std::vector<ArchiveEntry> v;
  v.push_back(File("a/b/c", 0644, {}));
  v.push_back(Dir("a", 0700));
  v.push_back(File("d/e", 0644, {}));
  AddMissingParentDirectories(v, 0755);
  std::map<std::string, unsigned> dirs;
  for (const ArchiveEntry& e : v) {
    if (e.type == EntryType::kDirectory) dirs[e.path] = e.mode;
  }
  EXPECT_EQ(dirs, (std::map<std::string, unsigned>{{"a", 0700}, {"a/b", 0755}, {"d", 0755}}));
}

}  // namespace
}  // namespace appliance::image
