// End to end through the built appliance-manifest binary:
// keygen -> create -> sign -> verify (+ --root) -> show -> sha256sums.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "manifests/crypto.h"
#include "manifests/manifest.h"
#include "tests/manifests/test_support.h"

namespace appliance::manifest {
namespace {

using test_support::AsBytes;
using test_support::ReadFile;
using test_support::RunProcess;
using test_support::RunResult;
using test_support::TempDir;
using test_support::WriteFile;

const std::string kCli = APPLIANCE_MANIFEST_CLI;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_ / "root";
    WriteFile(root_ + "/init", "init binary", 0755);
    WriteFile(root_ + "/usr/bin/appliance-runtime", test_support::RandomBytes(4096, 7), 0755);
    WriteFile(root_ + "/lib/x86_64-linux-gnu/libc.so.6", test_support::RandomBytes(1000, 8), 0644);
    WriteFile(root_ + "/models/model.gguf", test_support::RandomBytes(1500000, 9), 0444);
    WriteFile(root_ + "/etc/appliance/runtime.json", "{}\n", 0644);
    WriteFile(root_ + "/opt/extra", "needs an explicit role", 0644);
    for (const char* d : {"dev", "proc", "sys", "run", "tmp"}) std::filesystem::create_directories(root_ + "/" + d);
  }

  RunResult Cli(std::vector<std::string> args, const std::vector<std::string>& env = {},
                const std::vector<std::string>& unset_env = {}) {
    args.insert(args.begin(), kCli);
    return RunProcess(args, env, unset_env, dir_.path());
  }

  RunResult Create(const std::vector<std::string>& env = {"SOURCE_DATE_EPOCH=1700000000"}) {
    return Cli({"create", "--root", "root", "--level", "L1", "--version", "4", "--product", "sealed-appliance",
                "--release", "0.1.0", "--cmdline", "console=ttyS0 panic=-1 quiet", "--role", "opt/extra=config",
                "--out", "manifest.json"},
               env);
  }

  // keygen + create + sign, asserting each step.
  void MakeSignedManifest() {
    RunResult r = Cli({"keygen", "--out", "k"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = Create();
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = Cli({"sign", "--key", "k.key", "--manifest", "manifest.json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  TempDir dir_;
  std::string root_;
};

TEST_F(CliTest, Keygen) {
  RunResult r = Cli({"keygen", "--out", "k"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct stat st {};
  ASSERT_EQ(::stat((dir_ / "k.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  const std::string pub = ReadFile(dir_ / "k.pub");
  StatusOr<std::string> id = KeyIdFromPublicPem(pub);
  ASSERT_TRUE(id.ok());
  EXPECT_TRUE(Contains(r.out, "key id: " + *id + "\n")) << r.out;
  StatusOr<std::string> derived = PublicPemFromPrivatePem(ReadFile(dir_ / "k.key"));
  ASSERT_TRUE(derived.ok());
  EXPECT_EQ(*derived, pub);

  // Never overwrites a key.
  const std::string key_before = ReadFile(dir_ / "k.key");
  r = Cli({"keygen", "--out", "k"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.err.starts_with("error: ")) << r.err;
  EXPECT_EQ(ReadFile(dir_ / "k.key"), key_before);
}

TEST_F(CliTest, CreateWritesACanonicalManifest) {
  RunResult r = Create();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string bytes = ReadFile(dir_ / "manifest.json");
  StatusOr<Manifest> m = Parse(AsBytes(bytes));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->created, 1700000000);
  EXPECT_EQ(m->manifest_version, 4u);
  EXPECT_EQ(m->integrity_level, "L1");
  EXPECT_EQ(m->kernel_cmdline, "console=ttyS0 panic=-1 quiet");
  ASSERT_EQ(m->files.size(), 6u);
  const std::pair<const char*, const char*> roles[] = {
      {"etc/appliance/runtime.json", "config"}, {"init", "init"},       {"lib/x86_64-linux-gnu/libc.so.6", "library"},
      {"models/model.gguf", "model"},           {"opt/extra", "config"}, {"usr/bin/appliance-runtime", "runtime"}};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(m->files[i].path, roles[i].first);
    EXPECT_EQ(m->files[i].role, roles[i].second);
  }
  EXPECT_EQ(m->files[3].mode, 0444u);
  EXPECT_EQ(m->files[3].sha256, ToHex(Sha256(AsBytes(ReadFile(root_ + "/models/model.gguf")))));

  // Reproducible: same tree, same SOURCE_DATE_EPOCH, same bytes.
  ASSERT_EQ(Create().exit_code, 0);
  EXPECT_EQ(ReadFile(dir_ / "manifest.json"), bytes);
}

TEST_F(CliTest, CreateWithoutSourceDateEpochUsesZero) {
  RunResult r = Cli({"create", "--root", "root", "--level", "L3", "--version", "1", "--product", "p", "--release",
                     "r", "--cmdline", "", "--role", "opt/extra=config", "--out", "m.json"},
                    {}, {"SOURCE_DATE_EPOCH"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  StatusOr<Manifest> m = Parse(AsBytes(ReadFile(dir_ / "m.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->created, 0);
  EXPECT_EQ(m->integrity_level, "L3");
}

TEST_F(CliTest, CreateRefusals) {
  // No role for opt/extra.
  RunResult r = Cli({"create", "--root", "root", "--level", "L1", "--version", "1", "--product", "p", "--release",
                     "r", "--cmdline", "c", "--out", "m.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: root: opt/extra: no default role for this path (give it one explicitly)\n");
  EXPECT_FALSE(std::filesystem::exists(dir_ / "m.json"));

  ASSERT_EQ(::symlink("libc.so.6", (root_ + "/lib/x86_64-linux-gnu/libc.so").c_str()), 0);
  r = Create();
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: root: lib/x86_64-linux-gnu/libc.so: symbolic link refused\n");
  ASSERT_EQ(::unlink((root_ + "/lib/x86_64-linux-gnu/libc.so").c_str()), 0);

  r = Create({"SOURCE_DATE_EPOCH=yesterday"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: SOURCE_DATE_EPOCH: 'yesterday' is not a non-negative integer\n");

  r = Cli({"create", "--root", "root", "--level", "L9", "--version", "1", "--product", "p", "--release", "r",
           "--cmdline", "c", "--role", "opt/extra=config", "--out", "m.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "error: integrity_level: unknown level 'L9'")) << r.err;

  r = Cli({"create", "--root", "root", "--level", "L1", "--version", "0x10", "--product", "p", "--release", "r",
           "--cmdline", "c", "--role", "opt/extra=config", "--out", "m.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: --version: '0x10' is not a non-negative integer\n");
}

TEST_F(CliTest, SignVerifyShowEndToEnd) {
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  const std::string sig = ReadFile(dir_ / "manifest.sig");
  EXPECT_EQ(sig.size(), 64u);

  RunResult r = Cli({"verify", "--manifest", "manifest.json", "--sig", "manifest.sig", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(r.out.starts_with("OK: manifest.json: signature by key ")) << r.out;

  r = Cli({"verify", "--manifest", "manifest.json", "--sig", "manifest.sig", "--pubkey", "k.pub", "--root", "root"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(r.out.starts_with("OK: ")) << r.out;
  EXPECT_TRUE(Contains(r.out, "tree root matches")) << r.out;

  r = Cli({"show", "--manifest", "manifest.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* needle :
       {"integrity level:  L1", "manifest version: 4", "product:          sealed-appliance 0.1.0",
        "created:          2023-11-14T22:13:20Z (1700000000)", "kernel cmdline:   console=ttyS0 panic=-1 quiet",
        "model: 1 file, 1.4 MiB", "config: 2 files", "  0444      1500000  ", "total: 6 files, "}) {
    EXPECT_TRUE(Contains(r.out, needle)) << needle << "\n" << r.out;
  }

  r = Cli({"show", "--manifest", "manifest.json", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["totals"]["files"], 6);
  EXPECT_EQ(report["totals"]["by_role"]["config"]["files"], 2);
  EXPECT_EQ(report["totals"]["by_role"]["model"]["bytes"], 1500000);
  EXPECT_EQ(report["integrity_level"], "L1");
  EXPECT_EQ(report["manifest_sha256"], ToHex(Sha256(AsBytes(ReadFile(dir_ / "manifest.json")))));
}

TEST_F(CliTest, SignatureFromCliVerifiesWithStockOpenssl) {
  if (std::string(APPLIANCE_OPENSSL_BIN).empty()) GTEST_SKIP() << "openssl binary not found";
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  RunResult r = RunProcess({APPLIANCE_OPENSSL_BIN, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "k.pub", "-in",
                     "manifest.json", "-sigfile", "manifest.sig"},
                    {}, {}, dir_.path());
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, "Signature Verified Successfully")) << r.out;
}

TEST_F(CliTest, VerifyFailures) {
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  const std::vector<std::string> verify_root = {"verify", "--manifest", "manifest.json", "--sig", "manifest.sig",
                                                "--pubkey", "k.pub",    "--root",        "root"};

  // A changed file in the tree.
  const std::string runtime = ReadFile(root_ + "/usr/bin/appliance-runtime");
  std::string changed = runtime;
  changed[100] = static_cast<char>(changed[100] ^ 1);
  WriteFile(root_ + "/usr/bin/appliance-runtime", changed, 0755);
  RunResult r = Cli(verify_root);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.starts_with("FAILED: root: usr/bin/appliance-runtime: sha256 mismatch (manifest ")) << r.out;
  WriteFile(root_ + "/usr/bin/appliance-runtime", runtime, 0755);

  // An extra file.
  WriteFile(root_ + "/usr/bin/x", "x", 0755);
  r = Cli(verify_root);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: root: usr/bin/x: not listed in the manifest\n");
  ASSERT_EQ(::unlink((root_ + "/usr/bin/x").c_str()), 0);
  r = Cli(verify_root);
  EXPECT_EQ(r.exit_code, 0) << r.out;

  // Tampered manifest bytes (still canonical JSON): the signature fails.
  const std::string original = ReadFile(dir_ / "manifest.json");
  std::string tampered = original;
  tampered.replace(tampered.find("\"manifest_version\": 4"), 21, "\"manifest_version\": 5");
  WriteFile(dir_ / "manifest.json", tampered);
  ASSERT_TRUE(Parse(AsBytes(tampered)).ok());
  r = Cli(verify_root);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.starts_with("FAILED: manifest.json: signature does not verify with key ")) << r.out;
  WriteFile(dir_ / "manifest.json", original);

  // Wrong key.
  ASSERT_EQ(Cli({"keygen", "--out", "other"}).exit_code, 0);
  r = Cli({"verify", "--manifest", "manifest.json", "--sig", "manifest.sig", "--pubkey", "other.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.out, "signature does not verify")) << r.out;

  // Truncated signature file.
  WriteFile(dir_ / "short.sig", ReadFile(dir_ / "manifest.sig").substr(0, 10));
  r = Cli({"verify", "--manifest", "manifest.json", "--sig", "short.sig", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: short.sig: 10 bytes, an Ed25519 signature has 64\n");

  // Missing manifest file.
  r = Cli({"verify", "--manifest", "nope.json", "--sig", "manifest.sig", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: open nope.json: No such file or directory\n");
}

TEST_F(CliTest, SignRefusesNonCanonicalManifestAndHonoursOut) {
  ASSERT_EQ(Cli({"keygen", "--out", "k"}).exit_code, 0);
  ASSERT_EQ(Create().exit_code, 0);
  WriteFile(dir_ / "loose.json", ReadFile(dir_ / "manifest.json") + "\n");
  RunResult r = Cli({"sign", "--key", "k.key", "--manifest", "loose.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.err.starts_with("error: loose.json: manifest: not in canonical form")) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "loose.sig"));

  r = Cli({"sign", "--key", "k.key", "--manifest", "manifest.json", "--out", "elsewhere.bin"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadFile(dir_ / "elsewhere.bin").size(), 64u);

  std::filesystem::copy_file(dir_ / "manifest.json", dir_ / "manifest.txt");
  r = Cli({"sign", "--key", "k.key", "--manifest", "manifest.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(dir_ / "manifest.txt.sig"));
}

TEST_F(CliTest, Sha256SumsCheckWithStockTools) {
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  RunResult r = Cli({"sha256sums", "--manifest", "manifest.json", "--sig", "manifest.sig", "--pubkey", "k.pub"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 6);
  WriteFile(dir_ / "SHA256SUMS", r.out);
  if (std::string(APPLIANCE_SHA256SUM_BIN).empty()) GTEST_SKIP() << "sha256sum not found";
  RunResult check = RunProcess({APPLIANCE_SHA256SUM_BIN, "-c", "--strict", "../SHA256SUMS"}, {}, {}, root_);
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  WriteFile(root_ + "/etc/appliance/runtime.json", "{\"x\":1}\n", 0644);
  check = RunProcess({APPLIANCE_SHA256SUM_BIN, "-c", "--strict", "../SHA256SUMS"}, {}, {}, root_);
  EXPECT_NE(check.exit_code, 0) << check.out;

  // With a wrong key the sums are not printed at all.
  ASSERT_EQ(Cli({"keygen", "--out", "other"}).exit_code, 0);
  r = Cli({"sha256sums", "--manifest", "manifest.json", "--sig", "manifest.sig", "--pubkey", "other.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
}

// docs/compliance.md: an auditor can check the canonical form and derive
// SHA256SUMS with jq or python alone. Keep those commands honest.
TEST_F(CliTest, CanonicalFormAndSumsReproducibleWithJqAndPython) {
  ASSERT_EQ(Create().exit_code, 0);
  const std::string canonical = ReadFile(dir_ / "manifest.json");
  RunResult sums = Cli({"sha256sums", "--manifest", "manifest.json"});
  ASSERT_EQ(sums.exit_code, 0) << sums.err;
  bool ran = false;
  if (!std::string(APPLIANCE_JQ_BIN).empty()) {
    ran = true;
    RunResult r = RunProcess({APPLIANCE_JQ_BIN, "-S", "--indent", "2", ".", "manifest.json"}, {}, {}, dir_.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, canonical);
    r = RunProcess({APPLIANCE_JQ_BIN, "-r", R"jq(.files[] | "\(.sha256)  \(.path)")jq", "manifest.json"}, {}, {},
                   dir_.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, sums.out);
  }
  if (!std::string(APPLIANCE_PYTHON3_BIN).empty()) {
    ran = true;
    RunResult r = RunProcess({APPLIANCE_PYTHON3_BIN, "-c",
                              "import json,sys; sys.stdout.write(json.dumps(json.load(open(sys.argv[1])), indent=2, "
                              "sort_keys=True) + '\\n')",
                              "manifest.json"},
                             {}, {}, dir_.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, canonical);
  }
  if (!ran) GTEST_SKIP() << "neither jq nor python3 found";
}

// $OPENSSL_CONF reaches PID 1 from the kernel command line; a config that
// activates only the "null" provider must not disable verification.
TEST_F(CliTest, IgnoresOpensslConfigFromTheEnvironment) {
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  WriteFile(dir_ / "null.cnf",
            "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n"
            "[provider_sect]\nnull = null_sect\n[null_sect]\nactivate = 1\n");
  RunResult r = Cli({"verify", "--manifest", "manifest.json", "--sig", "manifest.sig", "--pubkey", "k.pub", "--root",
                     "root"},
                    {"OPENSSL_CONF=" + (dir_ / "null.cnf")});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(r.out.starts_with("OK: ")) << r.out;
}

TEST_F(CliTest, UsageErrors) {
  RunResult r = Cli({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(r.err.starts_with("error: ")) << r.err;
  r = Cli({"verify", "--manifest", "m.json"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(Contains(r.err, "--sig")) << r.err;
  r = Cli({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  r = Cli({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.out, "keygen")) << r.out;
}

}  // namespace
}  // namespace appliance::manifest
