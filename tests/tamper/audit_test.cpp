// The auditor's path (docs/compliance.md, "Checking an image with stock tools
// only"): a built image's manifest checked with openssl, sha256sum, cpio,
// find, comm and jq alone — and each check failing when it should (a changed
// file, a forged signature, an unlisted file, a symlink). The commands here
// are the documentation's, verbatim; DocumentationShowsTheseCommands keeps
// the two in step. Then `appliance-manifest diff` between two releases built
// with different models names exactly the model.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "manifests/crypto.h"
#include "manifests/manifest.h"
#include "tests/manifests/test_support.h"

namespace appliance::manifest {
namespace {

namespace fs = std::filesystem;
using test_support::ReadFile;
using test_support::RunProcess;
using test_support::RunResult;
using test_support::TempDir;
using test_support::WriteFile;

const std::string kBash = APPLIANCE_BASH_BIN;
const std::string kSharedModels = std::string(APPLIANCE_SHARED_DIR) + "/models/";

// ---- the documented commands (docs/compliance.md), run with bash ----------
// In the image output folder; SIGNER is the public key file, ID its key id.
const std::string kKeyIdCommand = "openssl pkey -pubin -in signer.pub -outform DER | tail -c 32 | sha256sum";
const std::string kSignatureCommand =
    "openssl pkeyutl -verify -rawin -pubin -inkey signer.pub -in manifest.json -sigfile signatures/$ID.sig";
const std::string kSignersCommand = "jq -r '.signers[]' manifest.json";
const std::string kUnpackCommand = "cpio -idm --no-absolute-filenames < ../initramfs.cpio";
const std::string kSameManifestCommand =
    "cmp etc/appliance/manifest.json ../manifest.json && diff -r etc/appliance/signatures ../signatures";
const std::string kSumsCommand = "jq -r '.files[] | \"\\(.sha256)  \\(.path)\"' ../manifest.json > ../SHA256SUMS.mine";
const std::string kSumsCompareCommand = "cmp ../SHA256SUMS.mine ../SHA256SUMS";
const std::string kSumsCheckCommand = "sha256sum -c --strict --quiet ../SHA256SUMS.mine";
const std::string kUnlistedCommand =
    "comm -23 <(find . -mindepth 1 ! -type d -printf '%P\\n' | LC_ALL=C sort) <(jq -r '.files[].path, "
    "\"etc/appliance/manifest.json\", \"dev/console\", (.signers[] | \"etc/appliance/signatures/\\(.).sig\")' "
    "../manifest.json | LC_ALL=C sort)";
const std::string kSymlinkCommand = "find . -type l";
const std::string kHardLinkCommand = "find . -type f -links +1";

class AuditTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const std::string key_pem = ReadFile(APPLIANCE_TEST_SIGNING_KEY);
    StatusOr<std::string> pub = PublicPemFromPrivatePem(key_pem);
    ASSERT_TRUE(pub.ok()) << pub.status().message();
    key_id_ = new std::string(KeyIdFromPublicPem(*pub).value());
    // Two releases: the same software with two different models; the second
    // follows the first.
    for (const auto& [name, model, extra] :
         {std::tuple<std::string, std::string, std::vector<std::string>>{
              "r1", "stories260K.gguf", {"--manifest-version", "1"}},
          std::tuple<std::string, std::string, std::vector<std::string>>{
              "r2", "synth-d256-q8_0.gguf",
              {"--manifest-version", "2", "--previous-manifest", *dir_ / "r1/manifest.json"}}}) {
      std::vector<std::string> args = {APPLIANCE_IMAGE_TOOL, "build", "--model", kSharedModels + model, "--key",
                                       APPLIANCE_TEST_SIGNING_KEY, "--out", *dir_ / name};
      args.insert(args.end(), extra.begin(), extra.end());
      RunResult r = RunProcess(args, {"SOURCE_DATE_EPOCH=1700000000"});
      ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
      // The auditor gets the release public key independently of the image.
      WriteFile(*dir_ / (name + "/signer.pub"), *pub);
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete key_id_;
  }

  void SetUp() override {
    if (kBash.empty()) GTEST_SKIP() << "bash not found";
    for (const char* tool : {"openssl", "jq", "cpio", "sha256sum", "comm", "find"}) {
      if (RunProcess({kBash, "-c", std::string("command -v ") + tool}).exit_code != 0) {
        GTEST_SKIP() << tool << " not found";
      }
    }
  }

  // Runs `command` with bash in `cwd`, ID set to the signer's key id.
  static RunResult Sh(const std::string& command, const std::string& cwd) {
    return RunProcess({kBash, "-c", "set -o pipefail; " + command}, {"ID=" + *key_id_, "LC_ALL=C"}, {}, cwd);
  }

  // A fresh unpacked copy of release r1 in `root` (returns its path).
  static std::string Unpack(const std::string& name) {
    const std::string root = *dir_ / ("r1/" + name);
    std::filesystem::remove_all(root);
    std::filesystem::create_directories(root);
    // As non-root, cpio cannot create dev/console and says so; that is all.
    Sh(kUnpackCommand, root);
    return root;
  }

  static TempDir* dir_;
  static std::string* key_id_;
};
TempDir* AuditTest::dir_ = nullptr;
std::string* AuditTest::key_id_ = nullptr;

TEST_F(AuditTest, DocumentationShowsTheseCommands) {
  const std::string doc = ReadFile(APPLIANCE_COMPLIANCE_DOC);
  for (const std::string& command :
       {kKeyIdCommand, kSignatureCommand, kSignersCommand, kUnpackCommand, kSameManifestCommand, kSumsCommand,
        kSumsCompareCommand, kSumsCheckCommand, kUnlistedCommand, kSymlinkCommand, kHardLinkCommand}) {
    EXPECT_NE(doc.find(command), std::string::npos) << "docs/compliance.md no longer shows:\n" << command;
  }
}

TEST_F(AuditTest, SignatureChecksWithStockOpenssl) {
  const std::string release = *dir_ / "r1";
  RunResult r = Sh(kKeyIdCommand, release);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, *key_id_ + "  -\n");
  r = Sh(kSignersCommand, release);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, *key_id_ + "\n");
  r = Sh(kSignatureCommand, release);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, "Signature Verified Successfully\n");
}

TEST_F(AuditTest, ForgedSignatureFailsWithStockOpenssl) {
  // A forger changes the model and rewrites its digest in the manifest: the
  // manifest still parses, but the signature no longer verifies.
  TempDir forged;
  std::filesystem::copy(*dir_ / "r1", forged.path(), std::filesystem::copy_options::recursive);
  std::string manifest = ReadFile(forged / "manifest.json");
  StatusOr<Manifest> m = Parse(test_support::AsBytes(manifest));
  ASSERT_TRUE(m.ok()) << m.status().message();
  for (FileEntry& f : m->files) {
    if (f.path == "models/model.gguf") f.sha256 = std::string(64, 'f');
  }
  WriteFile(forged / "manifest.json", Serialize(*m));
  RunResult r = Sh(kSignatureCommand, forged.path());
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("Signature Verification Failure"), std::string::npos) << r.out << r.err;

  // A made-up signature over the original manifest fails too.
  WriteFile(forged / "manifest.json", manifest);
  WriteFile(forged / ("signatures/" + *key_id_ + ".sig"), test_support::RandomBytes(64, 99));
  r = Sh(kSignatureCommand, forged.path());
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("Signature Verification Failure"), std::string::npos) << r.out << r.err;
}

TEST_F(AuditTest, ContentChecksWithSha256sumAndNothingElseIsThere) {
  const std::string root = Unpack("root-good");
  RunResult r = Sh(kSameManifestCommand, root);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  r = Sh(kSumsCommand + " && " + kSumsCompareCommand, root);
  EXPECT_EQ(r.exit_code, 0) << "the exported SHA256SUMS is the signed manifest's list\n" << r.out << r.err;
  r = Sh(kSumsCheckCommand, root);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, "");
  for (const std::string& command : {kUnlistedCommand, kSymlinkCommand, kHardLinkCommand}) {
    r = Sh(command, root);
    EXPECT_EQ(r.exit_code, 0) << command << "\n" << r.err;
    EXPECT_EQ(r.out, "") << command;
  }
}

TEST_F(AuditTest, Sha256sumFailsOnAChangedFile) {
  const std::string root = Unpack("root-changed");
  const std::string model = root + "/models/model.gguf";
  ASSERT_EQ(::chmod(model.c_str(), 0644), 0);
  {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('X');
  }
  RunResult r = Sh(kSumsCommand + " && " + kSumsCheckCommand, root);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("models/model.gguf: FAILED"), std::string::npos) << r.out << r.err;
}

TEST_F(AuditTest, FindAndCommShowAnUnlistedFileASymlinkAndAHardLink) {
  const std::string root = Unpack("root-extra");
  WriteFile(root + "/usr/bin/backdoor", "#!/bin/sh\n", 0755);
  ASSERT_EQ(::symlink("appliance-runtime", (root + "/usr/bin/sh").c_str()), 0);
  ASSERT_EQ(::link((root + "/init").c_str(), (root + "/tmp/init2").c_str()), 0);
  RunResult r = Sh(kUnlistedCommand, root);
  EXPECT_EQ(r.out, "tmp/init2\nusr/bin/backdoor\nusr/bin/sh\n") << r.err;
  r = Sh(kSymlinkCommand, root);
  EXPECT_EQ(r.out, "./usr/bin/sh\n");
  r = Sh(kHardLinkCommand + " | LC_ALL=C sort", root);
  EXPECT_EQ(r.out, "./init\n./tmp/init2\n");
}

TEST_F(AuditTest, DiffBetweenReleasesWithDifferentModelsNamesExactlyTheModel) {
  RunResult r = RunProcess({APPLIANCE_MANIFEST_CLI, "diff", *dir_ / "r1/manifest.json", *dir_ / "r2/manifest.json",
                            "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json d = nlohmann::json::parse(r.out);
  EXPECT_EQ(d["chain"], "linked");
  EXPECT_EQ(d["files"]["added"], nlohmann::json::array());
  EXPECT_EQ(d["files"]["removed"], nlohmann::json::array());
  ASSERT_EQ(d["files"]["changed"].size(), 1u) << r.out;
  EXPECT_EQ(d["files"]["changed"][0]["path"], "models/model.gguf");
  EXPECT_TRUE(d["files"]["changed"][0]["changes"].contains("sha256"));
  EXPECT_EQ(d["fields"]["manifest_version"]["old"], 1);
  EXPECT_EQ(d["fields"]["manifest_version"]["new"], 2);
  EXPECT_FALSE(d["fields"].contains("integrity_level"));
  EXPECT_EQ(d["signers"]["added"], nlohmann::json::array());

  r = RunProcess({APPLIANCE_MANIFEST_CLI, "diff", *dir_ / "r1/manifest.json", *dir_ / "r2/manifest.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.out);
  std::vector<std::string> changed;
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("  ~ ") || line.starts_with("  + ") || line.starts_with("  - ")) changed.push_back(line);
  }
  EXPECT_EQ(changed, std::vector<std::string>{"  ~ models/model.gguf"}) << r.out;
  std::cout << r.out;
}

}  // namespace
}  // namespace appliance::manifest
