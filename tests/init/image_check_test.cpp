// init's boot policy (image_check.cpp, config.cpp) against temp trees on the
// host: the same code PID 1 runs on its root filesystem.
#include "init/image_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "manifests/crypto.h"
#include "manifests/signatures.h"

namespace appliance::init {
namespace {

namespace fs = std::filesystem;

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

const char* kConfig = R"({"argv":["appliance-runtime","serve","--model-fd","4","--channel-fd","3"],)"
                      R"("channel":"/dev/ttyS1","executable":"usr/bin/appliance-runtime","model":"models/model.gguf"})";

class ImageCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("image-check-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    auto keys = manifest::GenerateKeyPair();
    ASSERT_TRUE(keys.ok()) << keys.status().message();
    keys_ = *keys;
    auto other = manifest::GenerateKeyPair();
    ASSERT_TRUE(other.ok());
    other_keys_ = *other;

    AddFile("init", "#!init-binary", 0755, "init");
    AddFile("usr/bin/appliance-runtime", "runtime-binary-bytes", 0755, "runtime");
    AddFile("models/model.gguf", std::string(100000, 'm'), 0444, "model");
    AddFile("etc/appliance/runtime.json", kConfig, 0444, "config");
    m_.integrity_level = "L1";
    m_.manifest_version = 3;
    m_.product = "sealed-appliance";
    m_.release = "test";
    m_.kernel_cmdline = "console=ttyS0";
    m_.build = {"unknown", "GNU 12.2.0", "test", {}};
  }
  void TearDown() override { fs::remove_all(root_); }

  void WriteFile(const std::string& path, const std::string& content, mode_t mode) {
    fs::create_directories((root_ / path).parent_path());
    fs::remove(root_ / path);
    std::ofstream(root_ / path, std::ios::binary) << content;
    ASSERT_EQ(::chmod((root_ / path).c_str(), mode), 0);
  }

  void AddFile(const std::string& path, const std::string& content, mode_t mode, const std::string& role) {
    WriteFile(path, content, mode);
    manifest::FileEntry e;
    e.path = path;
    e.size = content.size();
    e.mode = mode;
    e.sha256 = manifest::ToHex(manifest::Sha256(Bytes(content)));
    e.role = role;
    m_.files.push_back(e);
  }

  static std::string Id(const manifest::KeyPairPem& k) {
    auto id = manifest::KeyIdFromPublicPem(k.public_pem);
    EXPECT_TRUE(id.ok());
    return id.ok() ? *id : std::string();
  }

  std::string SigPath(const manifest::KeyPairPem& k) {
    return std::string(kSignatureDir) + "/" + manifest::SignatureFileName(Id(k));
  }

  // Serialises the manifest (listing `signers`, default the one signing) and
  // signs it with each of `signing` into the tree.
  void Seal(const std::vector<const manifest::KeyPairPem*>& signing,
            std::vector<const manifest::KeyPairPem*> signers = {}) {
    if (signers.empty()) signers = signing;
    m_.signers.clear();
    for (const auto* k : signers) m_.signers.push_back(Id(*k));
    std::sort(m_.signers.begin(), m_.signers.end());
    std::string bytes = manifest::Serialize(m_);
    fs::remove_all(root_ / kSignatureDir);
    fs::create_directories(root_ / kSignatureDir);
    WriteFile(kManifestPath, bytes, 0444);
    for (const auto* k : signing) {
      auto sig = manifest::Sign(Bytes(bytes), k->private_pem);
      ASSERT_TRUE(sig.ok()) << sig.status().message();
      WriteFile(SigPath(*k), *sig, 0444);
    }
  }
  void Seal(const manifest::KeyPairPem& signer) { Seal({&signer}); }

  StatusOr<VerifiedImage> Verify(uint64_t min_version = 1, const std::string& level = "L1") {
    UniqueFd root(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    EXPECT_TRUE(root.valid());
    return VerifyImage(root.get(), BootPolicy{{keys_.public_pem}, level, min_version, 1});
  }

  StatusOr<VerifiedImage> VerifyWith(const BootPolicy& policy) {
    UniqueFd root(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    EXPECT_TRUE(root.valid());
    return VerifyImage(root.get(), policy);
  }

  void ExpectRefused(const StatusOr<VerifiedImage>& result, const std::string& reason) {
    ASSERT_FALSE(result.ok()) << "expected refusal containing: " << reason;
    EXPECT_NE(result.status().message().find(reason), std::string::npos) << result.status().message();
  }

  fs::path root_;
  manifest::KeyPairPem keys_, other_keys_;
  manifest::Manifest m_;
};

TEST_F(ImageCheckTest, AcceptsIntactImageAndHandsOverVerifiedFds) {
  Seal(keys_);
  auto image = Verify();
  ASSERT_TRUE(image.ok()) << image.status().message();
  EXPECT_EQ(image->config.channel, "/dev/ttyS1");
  EXPECT_EQ(image->config.argv.size(), 6u);
  ASSERT_TRUE(image->executable.valid());
  ASSERT_TRUE(image->model.valid());
  char buf[8] = {};
  ASSERT_EQ(::read(image->executable.get(), buf, 7), 7);
  EXPECT_EQ(std::string(buf), "runtime");
  EXPECT_EQ(image->signer_key_ids, std::vector<std::string>{Id(keys_)});
  EXPECT_TRUE(image->unknown_signers.empty());
}

TEST_F(ImageCheckTest, DefaultThresholdIsTheBuildsAndAtLeastOne) {
  EXPECT_GE(kBuildSignatureThreshold, 1u);
  EXPECT_EQ(BootPolicy{}.signature_threshold, kBuildSignatureThreshold);
}

TEST_F(ImageCheckTest, RefusesSignatureByUnpinnedKey) {
  Seal(other_keys_);
  ExpectRefused(Verify(), "manifest signed by 0 pinned key(s), 1 required (below the signature threshold); signed by "
                          "unknown key(s): " + Id(other_keys_));
}

TEST_F(ImageCheckTest, RefusesCorruptSignature) {
  Seal(keys_);
  std::string sig(64, '\0');
  std::ifstream(root_ / SigPath(keys_), std::ios::binary).read(sig.data(), 64);
  sig[10] = static_cast<char>(sig[10] ^ 1);
  WriteFile(SigPath(keys_), sig, 0444);
  ExpectRefused(Verify(), SigPath(keys_) + ": signature does not verify with pinned key " + Id(keys_) +
                              " (the manifest or the signature was changed)");
}

TEST_F(ImageCheckTest, RefusesTruncatedSignature) {
  Seal(keys_);
  WriteFile(SigPath(keys_), "short", 0444);
  ExpectRefused(Verify(), SigPath(keys_) + ": 5 bytes, an Ed25519 signature has 64");
}

TEST_F(ImageCheckTest, RefusesMissingSignature) {
  Seal(keys_);
  fs::remove(root_ / SigPath(keys_));
  ExpectRefused(Verify(), "manifest not signed: etc/appliance/signatures holds no signature");
  fs::remove_all(root_ / kSignatureDir);
  ExpectRefused(Verify(), "open etc/appliance/signatures: No such file or directory");
}

TEST_F(ImageCheckTest, RefusesStrayFileInTheSignatureDirectory) {
  Seal(keys_);
  WriteFile(std::string(kSignatureDir) + "/README", "x", 0444);
  ExpectRefused(Verify(), "etc/appliance/signatures/README: not a signature file name");
}

TEST_F(ImageCheckTest, RefusesSymlinkedSignatureDirectory) {
  Seal(keys_);
  fs::rename(root_ / kSignatureDir, root_ / "etc/sigs");
  fs::create_directory_symlink("../sigs", root_ / kSignatureDir);
  ExpectRefused(Verify(), "etc/appliance/signatures: symbolic link refused");
}

TEST_F(ImageCheckTest, ThresholdOfTwoDistinctPinnedKeys) {
  BootPolicy policy{{keys_.public_pem, other_keys_.public_pem}, "L1", 1, 2};
  // One signature of the two the manifest lists: below the threshold.
  Seal({&keys_}, {&keys_, &other_keys_});
  ExpectRefused(VerifyWith(policy), "manifest signed by 1 pinned key(s), 2 required (below the signature threshold); "
                                    "valid: " + Id(keys_));
  // Both: accepted, both reported.
  Seal({&keys_, &other_keys_});
  auto image = VerifyWith(policy);
  ASSERT_TRUE(image.ok()) << image.status().message();
  std::vector<std::string> both = {Id(keys_), Id(other_keys_)};
  std::sort(both.begin(), both.end());
  EXPECT_EQ(image->signer_key_ids, both);
  // The same key pinned twice is one key: a threshold of 2 cannot be met by it.
  BootPolicy doubled{{keys_.public_pem, keys_.public_pem}, "L1", 1, 2};
  ExpectRefused(VerifyWith(doubled), "signature threshold 2 is more than the 1 pinned key(s)");
  // One good and one bad signature by pinned keys: refused, not counted around.
  std::string sig(64, '\0');
  std::ifstream(root_ / SigPath(other_keys_), std::ios::binary).read(sig.data(), 64);
  sig[0] = static_cast<char>(sig[0] ^ 1);
  WriteFile(SigPath(other_keys_), sig, 0444);
  BootPolicy one{{keys_.public_pem, other_keys_.public_pem}, "L1", 1, 1};
  ExpectRefused(VerifyWith(one), SigPath(other_keys_) + ": signature does not verify with pinned key");
}

TEST_F(ImageCheckTest, UnknownCoSignerIsNotCountedButMustBeListed) {
  // Signed by the pinned key and by a key this init does not pin, both listed.
  Seal({&keys_, &other_keys_});
  auto image = Verify();
  ASSERT_TRUE(image.ok()) << image.status().message();
  EXPECT_EQ(image->unknown_signers, std::vector<std::string>{Id(other_keys_)});
  // A signature file the manifest's signers do not name.
  Seal({&keys_, &other_keys_}, {&keys_});
  ExpectRefused(Verify(), SigPath(other_keys_) + ": key " + Id(other_keys_) + " is not among the manifest's signers");
  // A listed signer without its signature file.
  Seal({&keys_}, {&keys_, &other_keys_});
  ExpectRefused(Verify(), SigPath(other_keys_) + ": missing (the manifest lists signer " + Id(other_keys_) + ")");
}

TEST_F(ImageCheckTest, ThresholdZeroIsRefused) {
  Seal(keys_);
  ExpectRefused(VerifyWith(BootPolicy{{keys_.public_pem}, "L1", 1, 0}), "signature threshold 0: at least 1 required");
}

TEST_F(ImageCheckTest, SignedManifestWithBadPathsIsRefused) {
  // Validly signed, but listing a path init must never accept.
  struct Case {
    std::string path;
    std::string reason;
  };
  for (const Case& c : {Case{"../etc/passwd", "invalid path: '..' path component"},
                        Case{"/init", "invalid path: absolute path"}}) {
    SCOPED_TRACE(c.path);
    manifest::Manifest saved = m_;
    m_.files.push_back({c.path, 1, 0644, std::string(64, 'a'), "config"});
    std::sort(m_.files.begin(), m_.files.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
    Seal(keys_);
    ExpectRefused(Verify(), c.reason);
    m_ = saved;
  }
  manifest::Manifest saved = m_;
  m_.files.push_back(m_.files.front());
  std::sort(m_.files.begin(), m_.files.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  Seal(keys_);
  ExpectRefused(Verify(), "duplicate path");
  m_ = saved;
}

TEST_F(ImageCheckTest, RefusesMissingManifest) {
  ExpectRefused(Verify(), "open etc/appliance/manifest.json");
}

TEST_F(ImageCheckTest, RefusesManifestEditedAfterSigning) {
  Seal(keys_);
  m_.manifest_version = 4;
  WriteFile(kManifestPath, manifest::Serialize(m_), 0444);
  ExpectRefused(Verify(), "does not verify");
}

TEST_F(ImageCheckTest, VerifiesWithOneOrManyHashThreads) {
  Seal(keys_);
  for (unsigned threads : {1u, 2u, 8u}) {
    BootPolicy policy{{keys_.public_pem}, "L1", 1, 1, threads};
    auto image = VerifyWith(policy);
    ASSERT_TRUE(image.ok()) << threads << ": " << image.status().message();
    EXPECT_TRUE(image->model.valid());
  }
}

TEST_F(ImageCheckTest, RefusesOtherIntegrityLevel) {
  Seal(keys_);
  ExpectRefused(Verify(1, "L2"), "manifest is for integrity level L1, this init enforces L2");
}

TEST_F(ImageCheckTest, RefusesRollback) {
  Seal(keys_);
  ExpectRefused(Verify(4), "manifest_version 3 is below the minimum 4 (rollback refused)");
}

TEST_F(ImageCheckTest, RefusesChangedModelByName) {
  Seal(keys_);
  std::string model(100000, 'm');
  model[5000] = 'x';
  WriteFile("models/model.gguf", model, 0444);
  ExpectRefused(Verify(), "models/model.gguf");
}

TEST_F(ImageCheckTest, RefusesUnlistedFile) {
  Seal(keys_);
  WriteFile("usr/bin/backdoor", "x", 0755);
  ExpectRefused(Verify(), "usr/bin/backdoor");
}

TEST_F(ImageCheckTest, RefusesConfigNamingFileWithWrongRole) {
  m_.files.clear();
  AddFile("init", "#!init-binary", 0755, "init");
  AddFile("usr/bin/appliance-runtime", "runtime-binary-bytes", 0755, "runtime");
  // The model path in the config is listed, but as a library: not what init may hand over as the model.
  AddFile("models/model.gguf", "m", 0444, "library");
  AddFile("etc/appliance/runtime.json", kConfig, 0444, "config");
  Seal(keys_);
  ExpectRefused(Verify(), "models/model.gguf is not listed in the manifest with role model");
}

TEST(RuntimeConfigTest, ParsesAndRefuses) {
  auto ok = ParseRuntimeConfig(Bytes(kConfig));
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->executable, "usr/bin/appliance-runtime");
  EXPECT_EQ(ok->model, "models/model.gguf");

  struct Case {
    std::string json;
    std::string reason;
  };
  const Case cases[] = {
      {"not json", "not a JSON object"},
      {R"({"argv":[],"channel":"/dev/ttyS1","executable":"a","model":"b"})", "'argv' must be an array"},
      {R"({"argv":[1],"channel":"/dev/ttyS1","executable":"a","model":"b"})", "entries must be strings"},
      {R"({"argv":["x"],"channel":"/etc/passwd","executable":"a","model":"b"})", "must be a device under /dev/"},
      {R"({"argv":["x"],"channel":"/dev/ttyS1","executable":"../a","model":"b"})", "not a valid image path"},
      {R"({"argv":["x"],"channel":"/dev/ttyS1","executable":"/a","model":"b"})", "not a valid image path"},
      {R"({"argv":["x"],"channel":"/dev/ttyS1","model":"b"})", "missing key 'executable'"},
      {R"({"argv":["x"],"channel":"/dev/ttyS1","executable":"a","model":"b","env":"LD_PRELOAD=x"})",
       "unknown key 'env'"},
      {std::string(kMaxRuntimeConfigBytes + 1, ' '), "limit"},
  };
  for (const Case& c : cases) {
    auto result = ParseRuntimeConfig(Bytes(c.json));
    ASSERT_FALSE(result.ok()) << c.json;
    EXPECT_NE(result.status().message().find(c.reason), std::string::npos)
        << c.json << " -> " << result.status().message();
  }
}

}  // namespace
}  // namespace appliance::init
