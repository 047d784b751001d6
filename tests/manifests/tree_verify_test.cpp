// VerifyTree / ScanTree on temporary image trees: one good tree, then one
// test per way an image can be wrong.
#include "manifests/tree_verify.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>

#include "manifests/crypto.h"
#include "tests/manifests/test_support.h"

namespace appliance::manifest {
namespace {

using test_support::AsBytes;
using test_support::TempDir;
using test_support::WriteFile;

struct ImageFile {
  std::string path;
  std::string content;
  mode_t mode;
  std::string role;
};

class TreeVerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_ / "root";
    files_ = {
        {"init", "#!init\n", 0755, "init"},
        {"usr/bin/appliance-runtime", test_support::RandomBytes(5000, 3), 0755, "runtime"},
        {"lib/x86_64-linux-gnu/libfoo.so.1", test_support::RandomBytes(300, 4), 0644, "library"},
        {"lib64/ld-linux-x86-64.so.2", test_support::RandomBytes(200, 5), 0644, "library"},
        // Bigger than the hashing buffer.
        {"models/model.gguf", test_support::RandomBytes((2u << 20) + 11, 6), 0444, "model"},
        {"etc/appliance/runtime.json", "{\"argv\": []}\n", 0644, "config"},
        {"etc/empty.conf", "", 0600, "config"},
    };
    for (const ImageFile& f : files_) WriteFile(Path(f.path), f.content, f.mode);
    for (const char* mount_point : {"dev", "proc", "sys", "run", "tmp"}) {
      std::filesystem::create_directories(Path(mount_point));
    }
    // Exempt: present but never examined.
    WriteFile(Path("etc/appliance/manifest.json"), "anything");
    WriteFile(Path("etc/appliance/signatures/" + std::string(64, '1') + ".sig"), std::string(64, 's'));

    // The expected manifest, computed independently of ScanTree.
    manifest_.manifest_version = 1;
    manifest_.integrity_level = "L1";
    manifest_.product = "sealed-appliance";
    manifest_.release = "0.1.0";
    manifest_.kernel_cmdline = "console=ttyS0 panic=-1 quiet";
    manifest_.build = {"unknown", "unknown", "test", {}};
    manifest_.signers = {std::string(64, '1')};
    for (const ImageFile& f : files_) {
      manifest_.files.push_back({f.path, f.content.size(), static_cast<uint32_t>(f.mode),
                                 ToHex(Sha256(AsBytes(f.content))), f.role});
    }
    std::sort(manifest_.files.begin(), manifest_.files.end(),
              [](const FileEntry& a, const FileEntry& b) { return a.path < b.path; });
    ASSERT_TRUE(Validate(manifest_).ok());
  }

  std::string Path(const std::string& rel) const { return root_ + "/" + rel; }

  UniqueFd OpenRoot() const {
    UniqueFd fd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    EXPECT_TRUE(fd.valid()) << root_;
    return fd;
  }

  StatusOr<std::map<std::string, UniqueFd>> Verify(const TreePolicy& policy = {}) {
    UniqueFd root = OpenRoot();
    return VerifyTree(root.get(), manifest_, policy);
  }

  // Verification must fail with exactly `message`.
  void ExpectFailure(const std::string& message, const TreePolicy& policy = {}) {
    StatusOr<std::map<std::string, UniqueFd>> r = Verify(policy);
    ASSERT_FALSE(r.ok()) << "expected: " << message;
    EXPECT_EQ(r.status().message(), message);
  }

  const FileEntry& Entry(const std::string& path) const {
    for (const FileEntry& f : manifest_.files) {
      if (f.path == path) return f;
    }
    throw std::runtime_error("no entry " + path);
  }

  TempDir dir_;
  std::string root_;
  std::vector<ImageFile> files_;
  Manifest manifest_;
};

TEST_F(TreeVerifyTest, GoodTreeVerifies) {
  StatusOr<std::map<std::string, UniqueFd>> r = Verify();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->empty());
}

TEST_F(TreeVerifyTest, ScanTreeProducesTheExpectedEntries) {
  UniqueFd root = OpenRoot();
  StatusOr<std::vector<FileEntry>> scanned = ScanTree(root.get(), TreePolicy{});
  ASSERT_TRUE(scanned.ok()) << scanned.status().message();
  ASSERT_EQ(scanned->size(), manifest_.files.size());
  for (size_t i = 0; i < scanned->size(); ++i) {
    const FileEntry& got = (*scanned)[i];
    const FileEntry& want = manifest_.files[i];
    EXPECT_EQ(got.path, want.path);
    EXPECT_EQ(got.size, want.size);
    EXPECT_EQ(got.mode, want.mode) << got.path;
    EXPECT_EQ(got.sha256, want.sha256) << got.path;
    EXPECT_EQ(got.role, want.role) << got.path;
  }
}

TEST_F(TreeVerifyTest, ChangedFile) {
  const std::string path = "models/model.gguf";
  std::string content = files_[4].content;
  content[content.size() / 2] = static_cast<char>(content[content.size() / 2] ^ 1);
  WriteFile(Path(path), content, 0444);
  ExpectFailure(path + ": sha256 mismatch (manifest " + Entry(path).sha256 + ", file " +
                ToHex(Sha256(AsBytes(content))) + ")");
}

TEST_F(TreeVerifyTest, TruncatedFile) {
  ASSERT_EQ(::truncate(Path("usr/bin/appliance-runtime").c_str(), 4999), 0);
  ExpectFailure("usr/bin/appliance-runtime: size mismatch (manifest 5000, file 4999): truncated");
}

TEST_F(TreeVerifyTest, BiggerFile) {
  ASSERT_EQ(::truncate(Path("usr/bin/appliance-runtime").c_str(), 5001), 0);
  ExpectFailure("usr/bin/appliance-runtime: size mismatch (manifest 5000, file 5001): larger than listed");
}

TEST_F(TreeVerifyTest, MissingFile) {
  ASSERT_EQ(::unlink(Path("etc/appliance/runtime.json").c_str()), 0);
  ExpectFailure("etc/appliance/runtime.json: missing");
}

TEST_F(TreeVerifyTest, MissingDirectoryOfListedFiles) {
  std::filesystem::remove_all(Path("lib"));
  ExpectFailure("lib/x86_64-linux-gnu/libfoo.so.1: missing");
}

TEST_F(TreeVerifyTest, UnlistedFile) {
  WriteFile(Path("usr/bin/x"), "extra", 0755);
  ExpectFailure("usr/bin/x: not listed in the manifest");
}

TEST_F(TreeVerifyTest, UnlistedFileInMountPoint) {
  WriteFile(Path("tmp/leftover"), "x");
  ExpectFailure("tmp/leftover: not listed in the manifest");
}

TEST_F(TreeVerifyTest, UnlistedSymlink) {
  ASSERT_EQ(::symlink("libfoo.so.1", Path("lib/a.so").c_str()), 0);
  ExpectFailure("lib/a.so: symbolic link refused");
}

TEST_F(TreeVerifyTest, ListedFileReplacedBySymlink) {
  const std::string target = dir_ / "outside";
  WriteFile(target, files_[0].content, 0755);
  ASSERT_EQ(::unlink(Path("init").c_str()), 0);
  ASSERT_EQ(::symlink(target.c_str(), Path("init").c_str()), 0);
  ExpectFailure("init: symbolic link refused");
}

TEST_F(TreeVerifyTest, DirectoryReplacedBySymlink) {
  // models -> a directory outside the tree with the right content.
  const std::string outside = dir_ / "models-outside";
  std::filesystem::rename(Path("models"), outside);
  ASSERT_EQ(::symlink(outside.c_str(), Path("models").c_str()), 0);
  ExpectFailure("models: symbolic link refused");
}

TEST_F(TreeVerifyTest, HardLink) {
  ASSERT_EQ(::link(Path("models/model.gguf").c_str(), (dir_ / "second-name").c_str()), 0);
  ExpectFailure("models/model.gguf: hard link refused (2 links)");
}

TEST_F(TreeVerifyTest, WrongMode) {
  ASSERT_EQ(::chmod(Path("init").c_str(), 0700), 0);
  ExpectFailure("init: mode mismatch (manifest 0755, file 0700)");
  ASSERT_EQ(::chmod(Path("init").c_str(), 04755), 0);
  ExpectFailure("init: mode mismatch (manifest 0755, file 4755)");
}

TEST_F(TreeVerifyTest, UnlistedFifo) {
  ASSERT_EQ(::mkfifo(Path("run/fifo").c_str(), 0600), 0);
  ExpectFailure("run/fifo: fifo refused (not listed in the manifest)");
}

TEST_F(TreeVerifyTest, ListedFileReplacedByFifoDoesNotBlock) {
  ASSERT_EQ(::unlink(Path("etc/appliance/runtime.json").c_str()), 0);
  ASSERT_EQ(::mkfifo(Path("etc/appliance/runtime.json").c_str(), 0644), 0);
  ExpectFailure("etc/appliance/runtime.json: fifo refused (listed as a regular file)");
}

TEST_F(TreeVerifyTest, UnlistedSocket) {
  const std::string path = Path("run/sock");
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(sock.valid());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof addr.sun_path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(::bind(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  ExpectFailure("run/sock: socket refused (not listed in the manifest)");
}

TEST_F(TreeVerifyTest, UnlistedDirectoryWithContent) {
  WriteFile(Path("opt/tool/bin"), "x", 0755);
  ExpectFailure("opt: directory not listed in the manifest (no listed file below it, not a mount point)");
}

TEST_F(TreeVerifyTest, UnlistedEmptyDirectory) {
  std::filesystem::create_directories(Path("usr/share"));
  ExpectFailure("usr/share: directory not listed in the manifest (no listed file below it, not a mount point)");
}

TEST_F(TreeVerifyTest, ListedFileReplacedByDirectory) {
  ASSERT_EQ(::unlink(Path("etc/empty.conf").c_str()), 0);
  std::filesystem::create_directories(Path("etc/empty.conf"));
  ExpectFailure("etc/empty.conf: directory refused (listed as a regular file)");
}

TEST_F(TreeVerifyTest, ExemptPathMustBeARegularFile) {
  ASSERT_EQ(::unlink(Path("etc/appliance/manifest.json").c_str()), 0);
  WriteFile(Path("etc/appliance/manifest.json/payload"), "hidden");
  ExpectFailure("etc/appliance/manifest.json: directory refused (expected the regular file exempt from the manifest)");
}

TEST_F(TreeVerifyTest, ExemptFileMustHaveOneLink) {
  ASSERT_EQ(::link(Path("etc/appliance/manifest.json").c_str(), (dir_ / "outside").c_str()), 0);
  ExpectFailure("etc/appliance/manifest.json: hard link refused (2 links)");
}

TEST_F(TreeVerifyTest, ExemptFilesMayBeAbsent) {
  ASSERT_EQ(::unlink(Path("etc/appliance/manifest.json").c_str()), 0);
  std::filesystem::remove_all(Path("etc/appliance/signatures"));
  EXPECT_TRUE(Verify().ok());
}

TEST_F(TreeVerifyTest, SignatureDirectoryHoldsOnlySingleLinkRegularFiles) {
  const std::string sig = "etc/appliance/signatures/" + std::string(64, '1') + ".sig";
  // Names are ReadSignatureDir's business; the walk only wants plain files.
  WriteFile(Path("etc/appliance/signatures/other-name"), "x");
  EXPECT_TRUE(Verify().ok());
  ASSERT_EQ(::unlink(Path("etc/appliance/signatures/other-name").c_str()), 0);

  std::filesystem::create_directories(Path("etc/appliance/signatures/sub"));
  ExpectFailure("etc/appliance/signatures/sub: directory refused (only signature files belong in etc/appliance/signatures)");
  std::filesystem::remove_all(Path("etc/appliance/signatures/sub"));

  ASSERT_EQ(::symlink("../../../init", Path("etc/appliance/signatures/link.sig").c_str()), 0);
  ExpectFailure("etc/appliance/signatures/link.sig: symbolic link refused");
  ASSERT_EQ(::unlink(Path("etc/appliance/signatures/link.sig").c_str()), 0);

  ASSERT_EQ(::link(Path(sig).c_str(), (dir_ / "second-name").c_str()), 0);
  ExpectFailure(sig + ": hard link refused (2 links)");
  ASSERT_EQ(::unlink((dir_ / "second-name").c_str()), 0);

  ASSERT_EQ(::mkfifo(Path("etc/appliance/signatures/fifo").c_str(), 0600), 0);
  ExpectFailure("etc/appliance/signatures/fifo: fifo refused (only signature files belong in etc/appliance/signatures)");
  ASSERT_EQ(::unlink(Path("etc/appliance/signatures/fifo").c_str()), 0);

  std::filesystem::remove_all(Path("etc/appliance/signatures"));
  WriteFile(Path("etc/appliance/signatures"), "not a directory");
  ExpectFailure("etc/appliance/signatures: regular file refused (expected the signatures' directory)");
}

TEST_F(TreeVerifyTest, ManifestListingAFileInTheSignatureDirectoryIsRefused) {
  manifest_.files.push_back({"etc/appliance/signatures/x.sig", 64, 0644, std::string(64, 'a'), "config"});
  std::sort(manifest_.files.begin(), manifest_.files.end(),
            [](const FileEntry& a, const FileEntry& b) { return a.path < b.path; });
  ExpectFailure("etc/appliance/signatures/x.sig: listed in the manifest but inside etc/appliance/signatures, exempt "
                "from verification");
}

// ---- parallel hashing ------------------------------------------------------

TEST_F(TreeVerifyTest, HashThreadsResolve) {
  TreePolicy policy;
  policy.hash_threads = 1;
  EXPECT_EQ(HashThreads(policy), 1u);
  policy.hash_threads = 1000;
  EXPECT_EQ(HashThreads(policy), kMaxHashThreads);
  policy.hash_threads = 0;
  EXPECT_GE(HashThreads(policy), 1u);
  EXPECT_LE(HashThreads(policy), kMaxHashThreads);
}

TEST_F(TreeVerifyTest, ParallelHashingReportsTheFirstProblemInWalkOrder) {
  // Two changed files: whichever thread finishes first, the error names the
  // one first in walk order (lib/... before models/...), every time.
  const std::string lib = "lib/x86_64-linux-gnu/libfoo.so.1";
  std::string lib_content = files_[2].content;
  lib_content[10] = static_cast<char>(lib_content[10] ^ 1);
  WriteFile(Path(lib), lib_content, 0644);
  std::string model = files_[4].content;
  model[1] = static_cast<char>(model[1] ^ 1);
  WriteFile(Path("models/model.gguf"), model, 0444);
  for (unsigned threads : {1u, 2u, 3u, 8u}) {
    SCOPED_TRACE(threads);
    TreePolicy policy;
    policy.hash_threads = threads;
    for (int round = 0; round < 5; ++round) {
      ExpectFailure(lib + ": sha256 mismatch (manifest " + Entry(lib).sha256 + ", file " +
                        ToHex(Sha256(AsBytes(lib_content))) + ")",
                    policy);
    }
  }
}

TEST_F(TreeVerifyTest, ContentProblemBeforeAStructuralOneIsReportedFirst) {
  // init's content changed (hashed later, by a thread) and an unlisted file
  // further along the walk: the walk-order-first problem wins.
  WriteFile(Path("init"), "#!INIT\n", 0755);
  WriteFile(Path("usr/bin/x"), "extra", 0755);
  for (unsigned threads : {1u, 4u}) {
    TreePolicy policy;
    policy.hash_threads = threads;
    ExpectFailure("init: sha256 mismatch (manifest " + Entry("init").sha256 + ", file " +
                      ToHex(Sha256(AsBytes("#!INIT\n"))) + ")",
                  policy);
  }
}

TEST_F(TreeVerifyTest, ManyMoreFilesThanOneHashingBatch) {
  // Several batches of kMaxPendingHashJobs open files each.
  const size_t n = 3 * kMaxPendingHashJobs + 5;
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "lib/x86_64-linux-gnu/libmany%03zu.so", i);
    const std::string content = test_support::RandomBytes(1000 + i, static_cast<uint32_t>(100 + i));
    WriteFile(Path(name), content, 0644);
    manifest_.files.push_back({name, content.size(), 0644, ToHex(Sha256(AsBytes(content))), "library"});
  }
  std::sort(manifest_.files.begin(), manifest_.files.end(),
            [](const FileEntry& a, const FileEntry& b) { return a.path < b.path; });
  std::atomic<uint64_t> progress{0};
  TreePolicy policy;
  policy.hash_threads = 3;
  policy.progress = &progress;
  policy.keep_open = {"lib/x86_64-linux-gnu/libmany000.so", "lib/x86_64-linux-gnu/libmany150.so"};
  StatusOr<std::map<std::string, UniqueFd>> r = Verify(policy);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->size(), 2u);
  uint64_t total = 0;
  for (const FileEntry& f : manifest_.files) total += f.size;
  EXPECT_EQ(progress.load(), total) << "every byte is hashed exactly once";

  UniqueFd root = OpenRoot();
  StatusOr<std::vector<FileEntry>> scanned = ScanTree(root.get(), policy);
  ASSERT_TRUE(scanned.ok()) << scanned.status().message();
  ASSERT_EQ(scanned->size(), manifest_.files.size());
  for (size_t i = 0; i < scanned->size(); ++i) EXPECT_EQ((*scanned)[i].sha256, manifest_.files[i].sha256);

  WriteFile(Path("lib/x86_64-linux-gnu/libmany150.so"), "changed", 0644);
  ExpectFailure("lib/x86_64-linux-gnu/libmany150.so: size mismatch (manifest 1150, file 7): truncated", policy);
}

TEST_F(TreeVerifyTest, NameThatCannotBeListed) {
  WriteFile(Path("etc/bad\nname"), "x");
  ExpectFailure("etc/bad\\x0aname: name not allowed in an image (character \\x0a not allowed (printable ASCII without "
                "space and backslash only))");
}

TEST_F(TreeVerifyTest, KeepOpenReturnsTheVerifiedFdsAtOffsetZero) {
  TreePolicy policy;
  policy.keep_open = {"models/model.gguf", "usr/bin/appliance-runtime"};
  StatusOr<std::map<std::string, UniqueFd>> r = Verify(policy);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->size(), 2u);
  for (const auto& [path, fd] : *r) {
    SCOPED_TRACE(path);
    ASSERT_TRUE(fd.valid());
    EXPECT_EQ(::lseek(fd.get(), 0, SEEK_CUR), 0);
    struct stat by_fd {}, by_path {};
    ASSERT_EQ(::fstat(fd.get(), &by_fd), 0);
    ASSERT_EQ(::stat(Path(path).c_str(), &by_path), 0);
    EXPECT_EQ(by_fd.st_ino, by_path.st_ino);
    EXPECT_EQ(::fcntl(fd.get(), F_GETFL) & O_NONBLOCK, 0);
    EXPECT_NE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
    StatusOr<FdDigest> d = Sha256Fd(fd.get(), Entry(path).size, path);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(ToHex(d->digest), Entry(path).sha256);
  }
}

TEST_F(TreeVerifyTest, KeepOpenOfUnlistedPathIsAnError) {
  TreePolicy policy;
  policy.keep_open = {"models/other.gguf"};
  ExpectFailure("models/other.gguf: asked to keep open but not listed in the manifest", policy);
}

TEST_F(TreeVerifyTest, ManifestListingAnExemptPathIsRefused) {
  manifest_.files.push_back({"etc/appliance/manifest.json", 8, 0644, std::string(64, 'a'), "config"});
  std::sort(manifest_.files.begin(), manifest_.files.end(),
            [](const FileEntry& a, const FileEntry& b) { return a.path < b.path; });
  ExpectFailure("etc/appliance/manifest.json: listed in the manifest but exempt from verification by the policy");
}

TEST_F(TreeVerifyTest, InvalidManifestIsRefused) {
  manifest_.files[0].path = "../escape";
  StatusOr<std::map<std::string, UniqueFd>> r = Verify();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("invalid path"), std::string::npos) << r.status().message();
}

TEST_F(TreeVerifyTest, RootMustBeADirectory) {
  UniqueFd file(::open(Path("init").c_str(), O_RDONLY | O_CLOEXEC));
  StatusOr<std::map<std::string, UniqueFd>> r = VerifyTree(file.get(), manifest_, TreePolicy{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "tree root: not a directory");
}

// ---- device nodes and other filesystems (need CAP_MKNOD / CAP_SYS_ADMIN) ----

bool MakeCharDevice(const std::string& path, unsigned major_number, unsigned minor_number) {
  return ::mknod(path.c_str(), S_IFCHR | 0600, makedev(major_number, minor_number)) == 0;
}

TEST_F(TreeVerifyTest, ConsoleDeviceAllowedOthersRefused) {
  if (!MakeCharDevice(Path("dev/console"), 5, 1)) GTEST_SKIP() << "mknod not permitted: " << std::strerror(errno);
  ASSERT_TRUE(Verify().ok());
  ASSERT_TRUE(MakeCharDevice(Path("dev/null"), 1, 3));
  ExpectFailure("dev/null: character device refused (not listed in the manifest)");
}

TEST_F(TreeVerifyTest, ConsoleWithWrongNumbersRefused) {
  if (!MakeCharDevice(Path("dev/console"), 4, 1)) GTEST_SKIP() << "mknod not permitted: " << std::strerror(errno);
  ExpectFailure("dev/console: character device 4:1 refused (expected 5:1)");
}

TEST_F(TreeVerifyTest, ConsoleAsRegularFileRefused) {
  WriteFile(Path("dev/console"), "");
  ExpectFailure("dev/console: regular file refused (expected character device 5:1)");
}

TEST_F(TreeVerifyTest, OtherFilesystemRefused) {
  if (::mount("none", Path("tmp").c_str(), "tmpfs", 0, "size=64k") != 0) {
    GTEST_SKIP() << "mount not permitted: " << std::strerror(errno);
  }
  ExpectFailure("tmp: on another filesystem than the root (mounted over?) refused");
  ASSERT_EQ(::umount2(Path("tmp").c_str(), MNT_DETACH), 0);
  EXPECT_TRUE(Verify().ok());
}

// ---- ScanTree refusals ---------------------------------------------------

StatusOr<std::vector<FileEntry>> Scan(const std::string& root, const std::map<std::string, std::string>& roles = {}) {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  return ScanTree(fd.get(), TreePolicy{}, roles);
}

void ExpectScanFailure(const std::string& root, const std::string& message,
                       const std::map<std::string, std::string>& roles = {}) {
  StatusOr<std::vector<FileEntry>> r = Scan(root, roles);
  ASSERT_FALSE(r.ok()) << "expected: " << message;
  EXPECT_EQ(r.status().message(), message);
}

TEST_F(TreeVerifyTest, ScanRefusesWhatVerifyRefuses) {
  ASSERT_EQ(::symlink("libfoo.so.1", Path("lib/a.so").c_str()), 0);
  ExpectScanFailure(root_, "lib/a.so: symbolic link refused");
  ASSERT_EQ(::unlink(Path("lib/a.so").c_str()), 0);

  ASSERT_EQ(::link(Path("init").c_str(), (dir_ / "init2").c_str()), 0);
  ExpectScanFailure(root_, "init: hard link refused (2 links)");
  ASSERT_EQ(::unlink((dir_ / "init2").c_str()), 0);

  std::filesystem::create_directories(Path("usr/share/empty"));
  ExpectScanFailure(root_, "usr/share/empty: empty directory refused (not a mount point, no file below it)");
  std::filesystem::remove_all(Path("usr/share"));

  ASSERT_EQ(::mkfifo(Path("run/fifo").c_str(), 0600), 0);
  ExpectScanFailure(root_, "run/fifo: fifo refused (not listed in the manifest)");
  ASSERT_EQ(::unlink(Path("run/fifo").c_str()), 0);

  ASSERT_EQ(::chmod(Path("init").c_str(), 04755), 0);
  ExpectScanFailure(root_, "init: mode 4755 refused (set-id and sticky bits are not allowed)");
  ASSERT_EQ(::chmod(Path("init").c_str(), 0755), 0);

  EXPECT_TRUE(Scan(root_).ok());
}

TEST_F(TreeVerifyTest, ScanRoles) {
  WriteFile(Path("opt/tool"), "x", 0755);
  ExpectScanFailure(root_, "opt/tool: no default role for this path (give it one explicitly)");
  StatusOr<std::vector<FileEntry>> r = Scan(root_, {{"opt/tool", "runtime"}, {"models/model.gguf", "config"}});
  ASSERT_TRUE(r.ok()) << r.status().message();
  for (const FileEntry& f : *r) {
    if (f.path == "opt/tool") {
      EXPECT_EQ(f.role, "runtime");
    }
    if (f.path == "models/model.gguf") {
      EXPECT_EQ(f.role, "config");
    }
  }
  ExpectScanFailure(root_, "role given for opt/nothing, which is not a regular file of the tree",
                    {{"opt/tool", "runtime"}, {"opt/nothing", "config"}});
  ExpectScanFailure(root_,
                    "role given for opt/tool: unknown role kernel (expected init, runtime, library, module, model or config)",
                    {{"opt/tool", "kernel"}});
}

TEST_F(TreeVerifyTest, ScanSkipsExemptFilesAndScannedManifestVerifies) {
  UniqueFd root = OpenRoot();
  StatusOr<std::vector<FileEntry>> scanned = ScanTree(root.get(), TreePolicy{});
  ASSERT_TRUE(scanned.ok()) << scanned.status().message();
  for (const FileEntry& f : *scanned) {
    EXPECT_FALSE(f.path.starts_with("etc/appliance/manifest.")) << f.path;
    EXPECT_FALSE(f.path.starts_with("etc/appliance/signatures")) << f.path;
  }
  Manifest m = manifest_;
  m.files = *scanned;
  EXPECT_TRUE(VerifyTree(root.get(), m, TreePolicy{}).ok());
}

}  // namespace
}  // namespace appliance::manifest
