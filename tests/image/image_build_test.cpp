// The real image: appliance-image build around the real appliance-init and
// appliance-runtime, twice, must give identical bytes; the archive read back
// must hold exactly the documented layout; the manifest inside must verify
// (signature, and every file hash against an unpacked copy of the archive).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "image/subprocess.h"
#include "manifests/crypto.h"
#include "manifests/manifest.h"
#include "manifests/tree_verify.h"
#include "test_util.h"

namespace appliance::image {
namespace {

namespace fs = std::filesystem;
namespace mf = appliance::manifest;
using testing::ReadAll;
using testing::ReadCpio;
using testing::ReadEntry;
using testing::ScratchDir;
using testing::WriteAll;

const std::string kModel = std::string(APPLIANCE_SHARED_DIR) + "/models/stories260K.gguf";

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

struct Result {
  int code = -1;
  std::string out, err;
};

// Runs the appliance-image CLI with SOURCE_DATE_EPOCH set (or unset if empty).
Result RunTool(std::vector<std::string> args, const std::string& epoch) {
  args.insert(args.begin(), APPLIANCE_IMAGE_TOOL);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).starts_with("SOURCE_DATE_EPOCH=")) continue;
    env.emplace_back(*e);
  }
  if (!epoch.empty()) env.push_back("SOURCE_DATE_EPOCH=" + epoch);
  Result r;
  StatusOr<Pipe> out = MakePipe();
  StatusOr<Pipe> err = MakePipe();
  if (!out.ok() || !err.ok()) return r;
  // The tool writes a few lines: read stdout to EOF, then stderr, then reap.
  SpawnOptions opts;
  opts.stdout_fd = out->write.get();
  opts.stderr_fd = err->write.get();
  opts.env = env;
  StatusOr<ChildProcess> child = ChildProcess::Spawn(args, opts);
  if (!child.ok()) {
    r.err = child.status().message();
    return r;
  }
  out->write.reset();
  err->write.reset();
  auto drain = [](int fd, std::string& into) {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) into.append(buf, static_cast<size_t>(n));
  };
  drain(out->read.get(), r.out);
  drain(err->read.get(), r.err);
  StatusOr<ExitInfo> info = child->Wait();
  if (info.ok() && info->exited) r.code = info->code;
  return r;
}

class ImageBuild : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir();
    StatusOr<mf::KeyPairPem> kp = mf::GenerateKeyPair();
    ASSERT_TRUE(kp.ok()) << kp.status().message();
    public_pem_ = new std::string(kp->public_pem);
    key_id_ = new std::string(mf::KeyIdFromPublicPem(kp->public_pem).value());
    WriteAll(*dir_ / "signing.key", kp->private_pem);
    // The real kernel if scripts/fetch-kernel has run, else a stand-in file:
    // the builder only copies it to DIR/vmlinuz.
    kernel_dir_ = new std::string(APPLIANCE_KERNEL_DIR);
    if (!fs::exists(*kernel_dir_ + "/vmlinuz")) {
      *kernel_dir_ = *dir_ / "kernel";
      fs::create_directories(*kernel_dir_);
      WriteAll(*kernel_dir_ + "/vmlinuz", "stand-in kernel image\n");
    }
    for (const char* name : {"a", "b"}) {
      Result r = RunTool(Args(*dir_ / name), "1700000000");
      ASSERT_EQ(r.code, 0) << r.err;
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete public_pem_;
    delete key_id_;
    delete kernel_dir_;
  }

  // "signatures/<key id>.sig" of the signing key, in the output folder.
  static std::string SigFile() { return "signatures/" + *key_id_ + ".sig"; }

  static std::vector<std::string> Args(const std::string& out) {
    return {"build",  "--model", kModel, "--key", *dir_ / "signing.key", "--out", out, "--init", APPLIANCE_INIT_BIN,
            "--runtime", APPLIANCE_RUNTIME_BIN, "--kernel-dir", *kernel_dir_, "--level", "L2",
            "--manifest-version", "7", "--threads", "2"};
  }

  static ScratchDir* dir_;
  static std::string* public_pem_;
  static std::string* key_id_;
  static std::string* kernel_dir_;
};
ScratchDir* ImageBuild::dir_ = nullptr;
std::string* ImageBuild::public_pem_ = nullptr;
std::string* ImageBuild::key_id_ = nullptr;
std::string* ImageBuild::kernel_dir_ = nullptr;

TEST_F(ImageBuild, TwoBuildsFromTheSameInputsAreIdentical) {
  for (const std::string& f : {std::string("initramfs.cpio"), std::string("manifest.json"), SigFile(),
                               std::string("SHA256SUMS"), std::string("cmdline"), std::string("vmlinuz")}) {
    std::string a = ReadAll(*dir_ / ("a/" + f));
    EXPECT_FALSE(a.empty()) << f;
    EXPECT_EQ(a, ReadAll(*dir_ / ("b/" + f))) << f << " differs between two builds";
  }
}

// Build provenance is part of the signed bytes, and deterministic: it comes
// from the configured tree (git commit, compiler, dependencies, kernel
// package) and from flags, never from the clock or the build host's state.
TEST_F(ImageBuild, ManifestRecordsDeterministicProvenance) {
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(ReadAll(*dir_ / "a/manifest.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_FALSE(m->build.source_commit.empty());
  EXPECT_TRUE(m->build.compiler.starts_with("GNU ") || m->build.compiler.starts_with("Clang ")) << m->build.compiler;
  EXPECT_EQ(m->build.builder.rfind("appliance-image ", 0), 0u) << m->build.builder;
  EXPECT_TRUE(m->build.dependencies.contains("openssl"));
  EXPECT_TRUE(m->build.dependencies.contains("libarchive"));
  if (*kernel_dir_ == APPLIANCE_KERNEL_DIR) {
    EXPECT_EQ(m->build.dependencies["kernel"] + "\n", ReadAll(*kernel_dir_ + "/package"));
  }
  EXPECT_TRUE(m->previous_manifest_sha256.empty());
  EXPECT_EQ(m->signers, std::vector<std::string>{*key_id_});

  // --source-commit overrides git; the rest of the image stays the same.
  std::vector<std::string> args = Args(*dir_ / "commit");
  args.insert(args.end(), {"--source-commit", "0123456789abcdef0123456789abcdef01234567"});
  Result r = RunTool(args, "1700000000");
  ASSERT_EQ(r.code, 0) << r.err;
  StatusOr<mf::Manifest> c = mf::Parse(Bytes(ReadAll(*dir_ / "commit/manifest.json")));
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->build.source_commit, "0123456789abcdef0123456789abcdef01234567");
  EXPECT_EQ(ReadAll(*dir_ / "commit/SHA256SUMS"), ReadAll(*dir_ / "a/SHA256SUMS"));
}

TEST_F(ImageBuild, PreviousManifestIsChainedAndTheVersionMustGoUp) {
  std::vector<std::string> args = Args(*dir_ / "next");
  args.insert(args.end(), {"--previous-manifest", *dir_ / "a/manifest.json"});
  Result r = RunTool(args, "1700000000");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("manifest version 7 is not above 7 of the previous manifest"), std::string::npos) << r.err;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--manifest-version") args[i + 1] = "8";
  }
  r = RunTool(args, "1700000000");
  ASSERT_EQ(r.code, 0) << r.err;
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(ReadAll(*dir_ / "next/manifest.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->previous_manifest_sha256, mf::ToHex(mf::Sha256(Bytes(ReadAll(*dir_ / "a/manifest.json")))));
  EXPECT_EQ(m->manifest_version, 8u);
}

TEST_F(ImageBuild, CoSignersEachSignTheSameBytes) {
  StatusOr<mf::KeyPairPem> second = mf::GenerateKeyPair();
  ASSERT_TRUE(second.ok());
  WriteAll(*dir_ / "second.key", second->private_pem);
  const std::string second_id = mf::KeyIdFromPublicPem(second->public_pem).value();
  std::vector<std::string> args = Args(*dir_ / "cosigned");
  args.insert(args.end(), {"--cosign-key", *dir_ / "second.key"});
  Result r = RunTool(args, "1700000000");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string manifest = ReadAll(*dir_ / "cosigned/manifest.json");
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(manifest));
  ASSERT_TRUE(m.ok()) << m.status().message();
  std::vector<std::string> ids = {*key_id_, second_id};
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(m->signers, ids);
  EXPECT_TRUE(mf::Verify(Bytes(manifest), Bytes(ReadAll(*dir_ / ("cosigned/signatures/" + *key_id_ + ".sig"))),
                         *public_pem_).ok());
  EXPECT_TRUE(mf::Verify(Bytes(manifest), Bytes(ReadAll(*dir_ / ("cosigned/signatures/" + second_id + ".sig"))),
                         second->public_pem).ok());
  std::set<std::string> in_image;
  for (const ReadEntry& e : ReadCpio(*dir_ / "cosigned/initramfs.cpio")) {
    if (e.path.starts_with("etc/appliance/signatures/")) in_image.insert(e.path);
  }
  EXPECT_EQ(in_image, (std::set<std::string>{"etc/appliance/signatures/" + ids[0] + ".sig",
                                             "etc/appliance/signatures/" + ids[1] + ".sig"}));
  // Rebuilding into the same folder with one key drops the other's stale signature.
  r = RunTool(Args(*dir_ / "cosigned"), "1700000000");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(*dir_ / ("cosigned/signatures/" + second_id + ".sig")));
}

TEST_F(ImageBuild, AnotherSourceDateEpochChangesTimesOnly) {
  Result r = RunTool(Args(*dir_ / "c"), "1700000001");
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<ReadEntry> a = ReadCpio(*dir_ / "a/initramfs.cpio");
  std::vector<ReadEntry> c = ReadCpio(*dir_ / "c/initramfs.cpio");
  ASSERT_EQ(a.size(), c.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].path, c[i].path);
    EXPECT_EQ(c[i].mtime, 1700000001);
    if (a[i].path != "etc/appliance/manifest.json" && !a[i].path.starts_with("etc/appliance/signatures/")) {
      EXPECT_EQ(a[i].data, c[i].data) << a[i].path;
    }
  }
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(ReadAll(*dir_ / "c/manifest.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->created, 1700000001);
}

TEST_F(ImageBuild, ArchiveHasTheDocumentedLayout) {
  std::vector<ReadEntry> entries = ReadCpio(*dir_ / "a/initramfs.cpio");
  std::map<std::string, ReadEntry> by_path;
  std::string previous;
  for (const ReadEntry& e : entries) {
    EXPECT_LT(previous, e.path) << "entries sorted by path";
    previous = e.path;
    EXPECT_EQ(e.uid, 0) << e.path;
    EXPECT_EQ(e.gid, 0) << e.path;
    EXPECT_EQ(e.mtime, 1700000000) << e.path;
    EXPECT_FALSE(e.has_symlink) << e.path;
    EXPECT_FALSE(e.has_hardlink) << e.path;
    EXPECT_TRUE(e.type == AE_IFREG || e.type == AE_IFDIR || e.path == "dev/console") << e.path;
    if (e.type == AE_IFREG) {
      EXPECT_EQ(e.nlink, 1u) << e.path;
    }
    by_path[e.path] = e;
  }
  const ReadEntry& console = by_path["dev/console"];
  EXPECT_EQ(console.type, AE_IFCHR);
  EXPECT_EQ(console.perm, 0600u);
  EXPECT_EQ(console.rdev_major, 5u);
  EXPECT_EQ(console.rdev_minor, 1u);
  for (const char* d : {"dev", "proc", "sys", "run", "tmp", "etc", "etc/appliance", "etc/appliance/signatures", "usr",
                        "usr/bin", "lib", "lib/x86_64-linux-gnu", "lib64", "models"}) {
    ASSERT_TRUE(by_path.count(d)) << d;
    EXPECT_EQ(by_path[d].type, AE_IFDIR) << d;
    EXPECT_EQ(by_path[d].perm, 0755u) << d;
  }
  EXPECT_EQ(by_path["init"].perm, 0755u);
  EXPECT_EQ(by_path["init"].data, ReadAll(APPLIANCE_INIT_BIN));
  EXPECT_EQ(by_path["usr/bin/appliance-runtime"].perm, 0755u);
  EXPECT_EQ(by_path["usr/bin/appliance-runtime"].data, ReadAll(APPLIANCE_RUNTIME_BIN));
  EXPECT_EQ(by_path["models/model.gguf"].perm, 0444u);
  EXPECT_EQ(by_path["models/model.gguf"].data, ReadAll(kModel));
  EXPECT_EQ(by_path["lib64/ld-linux-x86-64.so.2"].perm, 0755u);
  EXPECT_EQ(by_path["lib64/ld-linux-x86-64.so.2"].data, ReadAll("/lib64/ld-linux-x86-64.so.2"));
  EXPECT_EQ(by_path["etc/appliance/runtime.json"].perm, 0444u);
  EXPECT_EQ(by_path["etc/appliance/runtime.json"].data,
            "{\n  \"argv\": [\"appliance-runtime\", \"serve\", \"--model-fd\", \"4\", \"--channel-fd\", \"3\", "
            "\"--threads\", \"2\"],\n  \"channel\": \"/dev/ttyS1\",\n  \"executable\": \"usr/bin/appliance-runtime\",\n"
            "  \"model\": \"models/model.gguf\"\n}\n");
  EXPECT_EQ(by_path["etc/appliance/manifest.json"].data, ReadAll(*dir_ / "a/manifest.json"));
  EXPECT_EQ(by_path["etc/appliance/" + SigFile()].data, ReadAll(*dir_ / ("a/" + SigFile())));
  EXPECT_EQ(by_path["etc/appliance/" + SigFile()].perm, 0444u);

  // Every library the runtime needs (per ldd here) is there, as a regular file
  // with the content ldd resolved (symlinks followed).
  size_t libs = 0;
  for (const auto& [path, e] : by_path) {
    if (!path.starts_with("lib/x86_64-linux-gnu/")) continue;
    ++libs;
    EXPECT_EQ(e.type, AE_IFREG) << path;
    EXPECT_EQ(e.perm, 0755u) << path;
    EXPECT_EQ(e.data.substr(0, 4), "\x7f" "ELF") << path;
  }
  EXPECT_GT(libs, 0u) << "the runtime is expected to be dynamically linked";
  StatusOr<CapturedRun> ldd = RunCapture({"ldd", APPLIANCE_RUNTIME_BIN}, 1 << 20, std::chrono::seconds(60));
  ASSERT_TRUE(ldd.ok());
  for (const auto& [path, e] : by_path) {
    if (!path.starts_with("lib/x86_64-linux-gnu/")) continue;
    std::string soname = path.substr(std::string("lib/x86_64-linux-gnu/").size());
    EXPECT_NE(ldd->out.find("\t" + soname + " => "), std::string::npos) << soname << " is not needed by the runtime";
  }

  // GNU cpio, an independent reader, agrees on the names.
  std::string cmd = std::string(APPLIANCE_CPIO_BIN) + " -i --list --quiet < " + *dir_ / "a/initramfs.cpio";
  if (!std::string(APPLIANCE_CPIO_BIN).empty()) {
    FILE* p = ::popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string listing;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) listing.append(buf, n);
    EXPECT_EQ(::pclose(p), 0);
    std::string expected;
    for (const ReadEntry& e : entries) expected += e.path + "\n";
    EXPECT_EQ(listing, expected);
  }
}

TEST_F(ImageBuild, OutputFolder) {
  EXPECT_EQ(ReadAll(*dir_ / "a/cmdline"), "console=ttyS0 panic=-1 quiet\n");
  EXPECT_EQ(ReadAll(*dir_ / "a/vmlinuz"), ReadAll(*kernel_dir_ + "/vmlinuz"));
  EXPECT_EQ(ReadAll(*dir_ / ("a/" + SigFile())).size(), mf::kEd25519SignatureBytes);
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(ReadAll(*dir_ / "a/manifest.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(ReadAll(*dir_ / "a/SHA256SUMS"), mf::ToSha256Sums(*m));
  size_t sigs = 0;
  for (const auto& entry : fs::directory_iterator(*dir_ / "a/signatures")) {
    (void)entry;
    ++sigs;
  }
  EXPECT_EQ(sigs, 1u);
}

TEST_F(ImageBuild, ManifestIsSignedAndListsEveryFileOfTheArchive) {
  const std::string manifest = ReadAll(*dir_ / "a/manifest.json");
  const std::string sig = ReadAll(*dir_ / ("a/" + SigFile()));
  Status v = mf::Verify(Bytes(manifest), Bytes(sig), *public_pem_);
  EXPECT_TRUE(v.ok()) << v.message();
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(manifest));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->integrity_level, "L2");
  EXPECT_EQ(m->manifest_version, 7u);
  EXPECT_EQ(m->created, 1700000000);
  EXPECT_EQ(m->kernel_cmdline, "console=ttyS0 panic=-1 quiet");
  EXPECT_EQ(m->product, "sealed-appliance");

  std::map<std::string, ReadEntry> files;
  for (const ReadEntry& e : ReadCpio(*dir_ / "a/initramfs.cpio")) {
    if (e.type == AE_IFREG && e.path != "etc/appliance/manifest.json" &&
        !e.path.starts_with("etc/appliance/signatures/")) {
      files[e.path] = e;
    }
  }
  ASSERT_EQ(m->files.size(), files.size());
  std::map<std::string, std::string> roles;
  for (const mf::FileEntry& f : m->files) {
    ASSERT_TRUE(files.count(f.path)) << f.path;
    const ReadEntry& e = files[f.path];
    EXPECT_EQ(f.size, e.data.size()) << f.path;
    EXPECT_EQ(f.mode, e.perm) << f.path;
    EXPECT_EQ(f.sha256, mf::ToHex(mf::Sha256(Bytes(e.data)))) << f.path;
    roles[f.path] = f.role;
  }
  EXPECT_EQ(roles["init"], "init");
  EXPECT_EQ(roles["usr/bin/appliance-runtime"], "runtime");
  EXPECT_EQ(roles["models/model.gguf"], "model");
  EXPECT_EQ(roles["etc/appliance/runtime.json"], "config");
  EXPECT_EQ(roles["lib64/ld-linux-x86-64.so.2"], "library");
}

// Unpacks the archive into `root` (as the kernel would), with modes; the
// console node only where mknod is permitted (root).
void Unpack(const std::string& archive, const std::string& root) {
  for (const ReadEntry& e : ReadCpio(archive)) {
    const std::string path = root + "/" + e.path;
    if (e.type == AE_IFDIR) {
      ASSERT_EQ(::mkdir(path.c_str(), e.perm), 0) << path;
      ASSERT_EQ(::chmod(path.c_str(), e.perm), 0) << path;
    } else if (e.type == AE_IFREG) {
      appliance::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      ASSERT_TRUE(fd.valid()) << path;
      ASSERT_EQ(::write(fd.get(), e.data.data(), e.data.size()), static_cast<ssize_t>(e.data.size())) << path;
      ASSERT_EQ(::fchmod(fd.get(), e.perm), 0) << path;
    } else if (e.type == AE_IFCHR) {
      if (::mknod(path.c_str(), S_IFCHR | e.perm, makedev(e.rdev_major, e.rdev_minor)) != 0) {
        ASSERT_EQ(errno, EPERM) << path;  // unprivileged test run: the node is optional for VerifyTree
      }
    } else {
      FAIL() << "unexpected entry type for " << e.path;
    }
  }
}

TEST_F(ImageBuild, UnpackedImageVerifiesAgainstItsManifest) {
  const std::string root = *dir_ / "root";
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  Unpack(*dir_ / "a/initramfs.cpio", root);
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(ReadAll(root + "/etc/appliance/manifest.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_TRUE(mf::Verify(Bytes(ReadAll(root + "/etc/appliance/manifest.json")),
                         Bytes(ReadAll(root + "/etc/appliance/" + SigFile())), *public_pem_)
                  .ok());
  {
    appliance::UniqueFd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(root_fd.valid());
    auto verified = mf::VerifyTree(root_fd.get(), *m, mf::TreePolicy{});
    EXPECT_TRUE(verified.ok()) << verified.status().message();
  }
  // The check has teeth: one changed byte of the model is found.
  const std::string model = root + "/models/model.gguf";
  ASSERT_EQ(::chmod(model.c_str(), 0644), 0);
  {
    appliance::UniqueFd fd(::open(model.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::pwrite(fd.get(), "X", 1, 1000), 1);
  }
  ASSERT_EQ(::chmod(model.c_str(), 0444), 0);
  appliance::UniqueFd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  auto tampered = mf::VerifyTree(root_fd.get(), *m, mf::TreePolicy{});
  ASSERT_FALSE(tampered.ok());
  EXPECT_NE(tampered.status().message().find("models/model.gguf"), std::string::npos) << tampered.status().message();
}

TEST_F(ImageBuild, KernelModulesArePackedListedAndVerified) {
  if (*kernel_dir_ != APPLIANCE_KERNEL_DIR) GTEST_SKIP() << "needs the real kernel (scripts/fetch-kernel)";
  std::vector<std::string> args = Args(*dir_ / "mods");
  args.insert(args.end(), {"--module", "vmw_vsock_virtio_transport"});
  Result r = RunTool(args, "1700000000");
  ASSERT_EQ(r.code, 0) << r.err;
  StatusOr<mf::Manifest> m = mf::Parse(Bytes(ReadAll(*dir_ / "mods/manifest.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  std::set<std::string> module_files;
  for (const mf::FileEntry& f : m->files) {
    if (f.role == "module") module_files.insert(f.path);
  }
  std::string runtime_json;
  for (const ReadEntry& e : ReadCpio(*dir_ / "mods/initramfs.cpio")) {
    if (e.path == "etc/appliance/runtime.json") runtime_json = e.data;
  }
  nlohmann::json config = nlohmann::json::parse(runtime_json);
  ASSERT_TRUE(config.contains("modules"));
  std::set<std::string> listed;
  for (const auto& p : config["modules"]) listed.insert(p.get<std::string>());
  EXPECT_EQ(listed, module_files);
  EXPECT_TRUE(config["modules"].back().get<std::string>().ends_with("/vmw_vsock_virtio_transport.ko"));

  const std::string root = *dir_ / "mods-root";
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  Unpack(*dir_ / "mods/initramfs.cpio", root);
  appliance::UniqueFd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(root_fd.valid());
  auto verified = mf::VerifyTree(root_fd.get(), *m, mf::TreePolicy{});
  EXPECT_TRUE(verified.ok()) << verified.status().message();
}

TEST_F(ImageBuild, CliErrorsAreClear) {
  std::vector<std::string> args = Args(*dir_ / "err");
  auto with = [&](const std::string& flag, const std::string& value) {
    std::vector<std::string> a = args;
    for (size_t i = 0; i + 1 < a.size(); ++i) {
      if (a[i] == flag) a[i + 1] = value;
    }
    return a;
  };
  Result r = RunTool(with("--model", "/nonexistent/model.gguf"), "");
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: build: model /nonexistent/model.gguf: No such file or directory\n");

  r = RunTool(with("--key", "/nonexistent/k.key"), "");
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: build: signing key: open /nonexistent/k.key: No such file or directory\n");

  r = RunTool(with("--kernel-dir", *dir_ / "no-kernel"), "");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no-kernel/vmlinuz: No such file or directory (scripts/fetch-kernel"), std::string::npos) << r.err;

  r = RunTool(with("--runtime", kModel), "");  // not an ELF executable
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not an ELF executable"), std::string::npos) << r.err;

  r = RunTool(with("--init", APPLIANCE_RUNTIME_BIN), "");  // dynamically linked
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("appliance-init must be static"), std::string::npos) << r.err;

  r = RunTool(with("--model", APPLIANCE_RUNTIME_BIN), "");  // not a GGUF file
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("not a GGUF file"), std::string::npos) << r.err;

  r = RunTool(args, "yesterday");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("SOURCE_DATE_EPOCH"), std::string::npos) << r.err;

  r = RunTool({"build", "--model", kModel}, "");
  EXPECT_EQ(r.code, 2);  // usage error
  EXPECT_FALSE(fs::exists(*dir_ / "err"));
}

}  // namespace
}  // namespace appliance::image
