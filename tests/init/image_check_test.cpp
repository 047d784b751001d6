// init's boot policy (image_check.cpp, config.cpp) against temp trees on the
// host: the same code PID 1 runs on its root filesystem.
#include "init/image_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "manifests/crypto.h"

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

  // Serialises and signs the manifest with `signer` into the tree.
  void Seal(const manifest::KeyPairPem& signer) {
    std::string bytes = manifest::Serialize(m_);
    auto sig = manifest::Sign(Bytes(bytes), signer.private_pem);
    ASSERT_TRUE(sig.ok()) << sig.status().message();
    WriteFile(kManifestPath, bytes, 0444);
    WriteFile(kSignaturePath, *sig, 0444);
  }

  StatusOr<VerifiedImage> Verify(uint64_t min_version = 1, const std::string& level = "L1") {
    UniqueFd root(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    EXPECT_TRUE(root.valid());
    return VerifyImage(root.get(), BootPolicy{{keys_.public_pem}, level, min_version});
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
  auto key_id = manifest::KeyIdFromPublicPem(keys_.public_pem);
  ASSERT_TRUE(key_id.ok());
  EXPECT_EQ(image->signer_key_id, *key_id);
}

TEST_F(ImageCheckTest, RefusesSignatureByUnpinnedKey) {
  Seal(other_keys_);
  ExpectRefused(Verify(), "does not verify with any of the 1 pinned key(s)");
}

TEST_F(ImageCheckTest, RefusesCorruptSignature) {
  Seal(keys_);
  std::string sig(64, '\0');
  std::ifstream(root_ / kSignaturePath, std::ios::binary).read(sig.data(), 64);
  sig[10] = static_cast<char>(sig[10] ^ 1);
  WriteFile(kSignaturePath, sig, 0444);
  ExpectRefused(Verify(), "does not verify");
}

TEST_F(ImageCheckTest, RefusesTruncatedSignature) {
  Seal(keys_);
  WriteFile(kSignaturePath, "short", 0444);
  ExpectRefused(Verify(), "an Ed25519 signature has 64");
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
