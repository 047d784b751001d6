// Golden tests of the human-facing reports: `show` and `diff` (text and
// --json) over two fixed releases built from deterministic trees and fixed
// keys, compared byte for byte with tests/manifests/golden/. To accept a
// deliberate change of the output: APPLIANCE_UPDATE_GOLDEN=1 ctest -R Golden,
// then review the diff of the golden files.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "manifests/crypto.h"
#include "tests/manifests/test_support.h"

namespace appliance::manifest {
namespace {

using test_support::ReadFile;
using test_support::RunProcess;
using test_support::RunResult;
using test_support::TempDir;
using test_support::WriteFile;

const std::string kCli = APPLIANCE_MANIFEST_CLI;
const std::string kGoldenDir = APPLIANCE_GOLDEN_DIR;

// RFC 8032 section 7.1 test seeds: fixed keys, fixed key ids.
constexpr const char* kSeedA = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
constexpr const char* kSeedB = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";

class GoldenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const auto& [name, seed] : {std::pair{"a", kSeedA}, std::pair{"b", kSeedB}}) {
      const std::string key = test_support::PrivatePemFromSeed(seed);
      StatusOr<std::string> pub = PublicPemFromPrivatePem(key);
      ASSERT_TRUE(pub.ok()) << pub.status().message();
      WriteFile(dir_ / (std::string(name) + ".key"), key, 0600);
      WriteFile(dir_ / (std::string(name) + ".pub"), *pub);
    }
    // Release 1.
    WriteFile(dir_ / "r1/init", "appliance-init v1\n", 0755);
    WriteFile(dir_ / "r1/usr/bin/appliance-runtime", test_support::RandomBytes(4096, 7), 0755);
    WriteFile(dir_ / "r1/lib/x86_64-linux-gnu/libc.so.6", test_support::RandomBytes(1000, 8), 0755);
    WriteFile(dir_ / "r1/models/model.gguf", test_support::RandomBytes(150000, 9), 0444);
    WriteFile(dir_ / "r1/etc/appliance/runtime.json", "{}\n", 0644);
    WriteFile(dir_ / "r1/etc/appliance/extra.conf", "only in release 1\n", 0444);
    // Release 2: another model, a library added, a file removed, a mode changed.
    WriteFile(dir_ / "r2/init", "appliance-init v1\n", 0755);
    WriteFile(dir_ / "r2/usr/bin/appliance-runtime", test_support::RandomBytes(4096, 7), 0755);
    WriteFile(dir_ / "r2/lib/x86_64-linux-gnu/libc.so.6", test_support::RandomBytes(1000, 8), 0755);
    WriteFile(dir_ / "r2/lib/x86_64-linux-gnu/libm.so.6", test_support::RandomBytes(900, 11), 0755);
    WriteFile(dir_ / "r2/models/model.gguf", test_support::RandomBytes(160000, 10), 0444);
    WriteFile(dir_ / "r2/etc/appliance/runtime.json", "{}\n", 0444);

    RunResult r = Cli({"create", "--root", "r1", "--level", "L2", "--version", "3", "--product", "sealed-appliance",
                       "--release", "0.1.0", "--cmdline", "console=ttyS0 panic=-1 quiet", "--signer", "a.pub",
                       "--source-commit", "1111111111111111111111111111111111111111", "--compiler", "GNU 12.2.0",
                       "--builder", "appliance-image 0.1.0", "--dependency", "openssl=3.0.19", "--dependency",
                       "glibc=2.36", "--out", "old.json"},
                      {"SOURCE_DATE_EPOCH=1700000000"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = Cli({"create", "--root", "r2", "--level", "L3", "--version", "4", "--product", "sealed-appliance",
             "--release", "0.2.0", "--cmdline", "console=ttyS0 panic=-1 quiet", "--signer", "a.pub", "--signer",
             "b.pub", "--previous", "old.json", "--source-commit", "2222222222222222222222222222222222222222",
             "--compiler", "GNU 12.2.0", "--builder", "appliance-image 0.2.0", "--dependency", "openssl=3.0.20",
             "--dependency", "glibc=2.36", "--dependency", "libarchive=3.6.2", "--out", "new.json"},
            {"SOURCE_DATE_EPOCH=1700086400"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  RunResult Cli(std::vector<std::string> args, const std::vector<std::string>& env = {}) {
    args.insert(args.begin(), kCli);
    return RunProcess(args, env, {"SOURCE_DATE_EPOCH"}, dir_.path());
  }

  // The output must equal golden/<name> byte for byte.
  void ExpectGolden(const RunResult& r, const std::string& name) {
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string path = kGoldenDir + "/" + name;
    const char* update = std::getenv("APPLIANCE_UPDATE_GOLDEN");
    if (update != nullptr && std::string(update) == "1") {
      WriteFile(path, r.out);
      return;
    }
    ASSERT_TRUE(std::filesystem::exists(path)) << path << " missing; run with APPLIANCE_UPDATE_GOLDEN=1 to create it";
    EXPECT_EQ(r.out, ReadFile(path)) << "output differs from " << path
                                     << " (if the change is intended: APPLIANCE_UPDATE_GOLDEN=1, then review)";
  }

  TempDir dir_;
};

TEST_F(GoldenTest, ShowText) { ExpectGolden(Cli({"show", "--manifest", "new.json"}), "show.txt"); }

TEST_F(GoldenTest, ShowJson) { ExpectGolden(Cli({"show", "--manifest", "new.json", "--json"}), "show.json"); }

TEST_F(GoldenTest, ShowFirstRelease) { ExpectGolden(Cli({"show", "--manifest", "old.json"}), "show-first-release.txt"); }

TEST_F(GoldenTest, DiffText) { ExpectGolden(Cli({"diff", "old.json", "new.json"}), "diff.txt"); }

TEST_F(GoldenTest, DiffJson) { ExpectGolden(Cli({"diff", "old.json", "new.json", "--json"}), "diff.json"); }

// Backwards: the version goes down and the chain does not link.
TEST_F(GoldenTest, DiffReversed) { ExpectGolden(Cli({"diff", "new.json", "old.json"}), "diff-reversed.txt"); }

TEST_F(GoldenTest, DiffOfAManifestWithItselfChangesNothing) {
  RunResult r = Cli({"diff", "new.json", "new.json", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"unchanged\": 6"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"added\": []"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"fields\": {}"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace appliance::manifest
