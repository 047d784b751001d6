// End to end through the built appliance-manifest binary:
// keygen -> create -> sign -> verify (+ --root) -> show -> diff -> sha256sums.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

  RunResult Create(const std::vector<std::string>& env = {"SOURCE_DATE_EPOCH=1700000000"},
                   const std::vector<std::string>& signers = {"k.pub"}) {
    std::vector<std::string> args = {"create",  "--root",    "root",  "--level",   "L1",
                                     "--version", "4",       "--product", "sealed-appliance",
                                     "--release", "0.1.0",   "--cmdline", "console=ttyS0 panic=-1 quiet",
                                     "--role",  "opt/extra=config", "--out", "manifest.json"};
    for (const std::string& signer : signers) args.insert(args.end(), {"--signer", signer});
    return Cli(args, env);
  }

  // keygen (once) + create + sign, asserting each step.
  void MakeSignedManifest() {
    if (!std::filesystem::exists(dir_ / "k.key")) {
      RunResult r = Cli({"keygen", "--out", "k"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    RunResult r = Create();
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = Cli({"sign", "--key", "k.key", "--manifest", "manifest.json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  std::string KeyId(const std::string& pub) {
    StatusOr<std::string> id = KeyIdFromPublicPem(ReadFile(dir_ / pub));
    EXPECT_TRUE(id.ok());
    return id.ok() ? *id : std::string();
  }

  std::string SigPath(const std::string& pub) { return "signatures/" + KeyId(pub) + ".sig"; }

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
  ASSERT_EQ(Cli({"keygen", "--out", "k"}).exit_code, 0);
  RunResult r = Create();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string bytes = ReadFile(dir_ / "manifest.json");
  StatusOr<Manifest> m = Parse(AsBytes(bytes));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->created, 1700000000);
  EXPECT_EQ(m->manifest_version, 4u);
  EXPECT_EQ(m->integrity_level, "L1");
  EXPECT_EQ(m->kernel_cmdline, "console=ttyS0 panic=-1 quiet");
  EXPECT_EQ(m->signers, std::vector<std::string>{KeyId("k.pub")});
  EXPECT_EQ(m->build.source_commit, "unknown");
  EXPECT_EQ(m->build.builder, "appliance-manifest");
  EXPECT_TRUE(m->previous_manifest_sha256.empty());
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
  ASSERT_EQ(Cli({"keygen", "--out", "k"}).exit_code, 0);
  RunResult r = Cli({"create", "--root", "root", "--level", "L3", "--version", "1", "--product", "p", "--release",
                     "r", "--cmdline", "", "--role", "opt/extra=config", "--signer", "k.pub", "--out", "m.json"},
                    {}, {"SOURCE_DATE_EPOCH"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  StatusOr<Manifest> m = Parse(AsBytes(ReadFile(dir_ / "m.json")));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->created, 0);
  EXPECT_EQ(m->integrity_level, "L3");
}

TEST_F(CliTest, CreateRefusals) {
  ASSERT_EQ(Cli({"keygen", "--out", "k"}).exit_code, 0);
  // No role for opt/extra.
  RunResult r = Cli({"create", "--root", "root", "--level", "L1", "--version", "1", "--product", "p", "--release",
                     "r", "--cmdline", "c", "--signer", "k.pub", "--out", "m.json"});
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
           "--cmdline", "c", "--role", "opt/extra=config", "--signer", "k.pub", "--out", "m.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "error: integrity_level: unknown level 'L9'")) << r.err;

  r = Cli({"create", "--root", "root", "--level", "L1", "--version", "0x10", "--product", "p", "--release", "r",
           "--cmdline", "c", "--role", "opt/extra=config", "--signer", "k.pub", "--out", "m.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: --version: '0x10' is not a non-negative integer\n");

  // A signer is required, and must be a public key.
  r = Cli({"create", "--root", "root", "--level", "L1", "--version", "1", "--product", "p", "--release", "r",
           "--cmdline", "c", "--role", "opt/extra=config", "--out", "m.json"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(Contains(r.err, "--signer")) << r.err;
  r = Create({"SOURCE_DATE_EPOCH=1"}, {"k.key"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.err.starts_with("error: k.key: public key: cannot read PEM")) << r.err;

  // The previous manifest: its version must be lower.
  ASSERT_EQ(Create().exit_code, 0);
  r = Cli({"create", "--root", "root", "--level", "L1", "--version", "4", "--product", "sealed-appliance", "--release",
           "0.2.0", "--cmdline", "c", "--role", "opt/extra=config", "--signer", "k.pub", "--previous", "manifest.json",
           "--out", "m2.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: --version 4 is not above the previous manifest's 4 (manifest.json): manifest_version only "
                   "goes up\n");
  r = Cli({"create", "--root", "root", "--level", "L1", "--version", "5", "--product", "sealed-appliance", "--release",
           "0.2.0", "--cmdline", "c", "--role", "opt/extra=config", "--signer", "k.pub", "--previous", "manifest.json",
           "--out", "m2.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  StatusOr<Manifest> m2 = Parse(AsBytes(ReadFile(dir_ / "m2.json")));
  ASSERT_TRUE(m2.ok()) << m2.status().message();
  EXPECT_EQ(m2->previous_manifest_sha256, ToHex(Sha256(AsBytes(ReadFile(dir_ / "manifest.json")))));
}

TEST_F(CliTest, SignVerifyShowEndToEnd) {
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  const std::string sig = ReadFile(dir_ / SigPath("k.pub"));
  EXPECT_EQ(sig.size(), 64u);

  RunResult r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(r.out.rfind("OK: manifest.json: signed by 1 pinned key(s) (threshold 1): " + KeyId("k.pub") + "; ", 0), 0u)
      << r.out;

  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--root", "root", "--level", "L1",
           "--min-version", "4"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(r.out.starts_with("OK: ")) << r.out;
  EXPECT_TRUE(Contains(r.out, "tree root matches")) << r.out;
  EXPECT_EQ(r.err, "") << "no progress output when stderr is not a terminal";

  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json v = nlohmann::json::parse(r.out);
  EXPECT_EQ(v["ok"], true);
  EXPECT_EQ(v["valid_signers"], nlohmann::json::array({KeyId("k.pub")}));
  EXPECT_EQ(v["manifest_sha256"], ToHex(Sha256(AsBytes(ReadFile(dir_ / "manifest.json")))));

  r = Cli({"show", "--manifest", "manifest.json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const std::string& needle :
       {std::string("integrity level:   L1"), std::string("manifest version:  4"),
        std::string("product:           sealed-appliance 0.1.0"),
        std::string("created:           2023-11-14T22:13:20Z (1700000000)"),
        std::string("kernel cmdline:    console=ttyS0 panic=-1 quiet"), "  " + KeyId("k.pub") + "\n",
        std::string("model: 1 file, 1.4 MiB"), std::string("config: 2 files"),
        std::string("  0444      1500000  "), std::string("total: 6 files, ")}) {
    EXPECT_TRUE(Contains(r.out, needle)) << needle << "\n" << r.out;
  }

  r = Cli({"show", "--manifest", "manifest.json", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["totals"]["files"], 6);
  EXPECT_EQ(report["totals"]["by_role"]["config"]["files"], 2);
  EXPECT_EQ(report["totals"]["by_role"]["model"]["bytes"], 1500000);
  EXPECT_EQ(report["integrity_level"], "L1");
  EXPECT_EQ(report["signers"], nlohmann::json::array({KeyId("k.pub")}));
  EXPECT_EQ(report["manifest_sha256"], ToHex(Sha256(AsBytes(ReadFile(dir_ / "manifest.json")))));
}

TEST_F(CliTest, EveryCommandTakesJson) {
  RunResult r = Cli({"keygen", "--out", "k", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["key_id"], KeyId("k.pub"));
  r = Cli({"create", "--root", "root", "--level", "L1", "--version", "4", "--product", "p", "--release", "r",
           "--cmdline", "c", "--role", "opt/extra=config", "--signer", "k.pub", "--out", "manifest.json", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["files"], 6);
  r = Cli({"sign", "--key", "k.key", "--manifest", "manifest.json", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["signature"], SigPath("k.pub"));
  r = Cli({"sha256sums", "--manifest", "manifest.json", "--pubkey", "k.pub", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["files"].size(), 6u);
  r = Cli({"diff", "manifest.json", "manifest.json", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["files"]["unchanged"], 6);
  // Errors too: a JSON document on stdout, the message on stderr.
  r = Cli({"show", "--manifest", "nope.json", "--json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(nlohmann::json::parse(r.out)["error"], "open nope.json: No such file or directory");
  EXPECT_EQ(r.err, "error: open nope.json: No such file or directory\n");
  WriteFile(dir_ / "manifest.json", ReadFile(dir_ / "manifest.json") + "\n");
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--json"});
  EXPECT_EQ(r.exit_code, 1);
  nlohmann::json v = nlohmann::json::parse(r.out);
  EXPECT_EQ(v["ok"], false);
  EXPECT_TRUE(Contains(v["reason"].get<std::string>(), "signature does not verify")) << r.out;
}

TEST_F(CliTest, SignatureFromCliVerifiesWithStockOpenssl) {
  if (std::string(APPLIANCE_OPENSSL_BIN).empty()) GTEST_SKIP() << "openssl binary not found";
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  RunResult r = RunProcess({APPLIANCE_OPENSSL_BIN, "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "k.pub", "-in",
                            "manifest.json", "-sigfile", SigPath("k.pub")},
                           {}, {}, dir_.path());
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, "Signature Verified Successfully")) << r.out;
}

TEST_F(CliTest, VerifyFailures) {
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  const std::vector<std::string> verify_root = {"verify", "--manifest", "manifest.json", "--pubkey", "k.pub",
                                                "--root", "root"};

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

  // Level and rollback floor.
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--level", "L2"});
  EXPECT_EQ(r.out, "FAILED: manifest.json: manifest is for integrity level L1, expected L2\n");
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--min-version", "5"});
  EXPECT_EQ(r.out, "FAILED: manifest.json: manifest_version 4 is below the minimum 5 (rollback refused)\n");

  // Tampered manifest bytes (still canonical JSON): the signature fails.
  const std::string id = KeyId("k.pub");
  const std::string original = ReadFile(dir_ / "manifest.json");
  std::string tampered = original;
  tampered.replace(tampered.find("\"manifest_version\": 4"), 21, "\"manifest_version\": 5");
  WriteFile(dir_ / "manifest.json", tampered);
  ASSERT_TRUE(Parse(AsBytes(tampered)).ok());
  r = Cli(verify_root);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: manifest.json: signatures/" + id + ".sig: signature does not verify with pinned key " + id +
                       " (the manifest or the signature was changed)\n");
  WriteFile(dir_ / "manifest.json", original);

  // Unknown key: the signature is by a key the verifier does not trust.
  ASSERT_EQ(Cli({"keygen", "--out", "other"}).exit_code, 0);
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "other.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: manifest.json: manifest signed by 0 pinned key(s), 1 required (below the signature "
                   "threshold); signed by unknown key(s): " + id + "\n");

  // Below the threshold.
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--pubkey", "other.pub", "--threshold", "2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: manifest.json: manifest signed by 1 pinned key(s), 2 required (below the signature "
                   "threshold); valid: " + id + "\n");

  // A truncated signature file.
  const std::string sig = ReadFile(dir_ / SigPath("k.pub"));
  WriteFile(dir_ / SigPath("k.pub"), sig.substr(0, 10));
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: signatures/" + id + ".sig: 10 bytes, an Ed25519 signature has 64\n");
  WriteFile(dir_ / SigPath("k.pub"), sig);

  // A signature file by a key the manifest does not list as a signer.
  ASSERT_EQ(Cli({"sign", "--key", "other.key", "--manifest", "manifest.json"}).exit_code, 1);
  StatusOr<std::string> other_sig = Sign(AsBytes(original), ReadFile(dir_ / "other.key"));
  ASSERT_TRUE(other_sig.ok());
  WriteFile(dir_ / SigPath("other.pub"), *other_sig);
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: manifest.json: " + SigPath("other.pub") + ": key " + KeyId("other.pub") +
                       " is not among the manifest's signers\n");
  ASSERT_EQ(::unlink((dir_ / SigPath("other.pub")).c_str()), 0);

  // No signature at all; no signature directory.
  ASSERT_EQ(::unlink((dir_ / SigPath("k.pub")).c_str()), 0);
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub"});
  EXPECT_EQ(r.out, "FAILED: manifest.json: manifest not signed: signatures holds no signature\n");
  ASSERT_EQ(::rmdir((dir_ / "signatures").c_str()), 0);
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub"});
  EXPECT_EQ(r.out, "FAILED: open signatures: No such file or directory\n");

  // Missing manifest file.
  r = Cli({"verify", "--manifest", "nope.json", "--sig-dir", "x", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "FAILED: open nope.json: No such file or directory\n");
}

TEST_F(CliTest, TwoSignersAndAThreshold) {
  ASSERT_EQ(Cli({"keygen", "--out", "k"}).exit_code, 0);
  ASSERT_EQ(Cli({"keygen", "--out", "k2"}).exit_code, 0);
  ASSERT_EQ(Create({"SOURCE_DATE_EPOCH=1"}, {"k.pub", "k2.pub"}).exit_code, 0);
  ASSERT_EQ(Cli({"sign", "--key", "k.key", "--manifest", "manifest.json"}).exit_code, 0);
  const std::vector<std::string> both = {"verify", "--manifest", "manifest.json", "--pubkey", "k.pub",
                                         "--pubkey", "k2.pub", "--threshold", "2"};
  // The manifest names two signers: the second signature is missing.
  RunResult r = Cli(both);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.out, "below the signature threshold")) << r.out;
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub"});
  EXPECT_EQ(r.out, "FAILED: manifest.json: " + SigPath("k2.pub") + ": missing (the manifest lists signer " +
                       KeyId("k2.pub") + ")\n");
  ASSERT_EQ(Cli({"sign", "--key", "k2.key", "--manifest", "manifest.json"}).exit_code, 0);
  r = Cli(both);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(r.out.starts_with("OK: manifest.json: signed by 2 pinned key(s) (threshold 2): ")) << r.out;
  // Trusting only one of the two is enough at threshold 1; the other is reported, unchecked.
  r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k2.pub", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.out;
  nlohmann::json v = nlohmann::json::parse(r.out);
  EXPECT_EQ(v["valid_signers"], nlohmann::json::array({KeyId("k2.pub")}));
  EXPECT_EQ(v["unknown_signers"], nlohmann::json::array({KeyId("k.pub")}));
}

TEST_F(CliTest, SignRefusesNonCanonicalManifestAndHonoursSigDir) {
  ASSERT_EQ(Cli({"keygen", "--out", "k"}).exit_code, 0);
  ASSERT_EQ(Create().exit_code, 0);
  WriteFile(dir_ / "loose.json", ReadFile(dir_ / "manifest.json") + "\n");
  RunResult r = Cli({"sign", "--key", "k.key", "--manifest", "loose.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.err.starts_with("error: loose.json: manifest: not in canonical form")) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir_ / "signatures"));

  r = Cli({"sign", "--key", "k.key", "--manifest", "manifest.json", "--sig-dir", "elsewhere"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadFile(dir_ / ("elsewhere/" + KeyId("k.pub") + ".sig")).size(), 64u);
  r = Cli({"verify", "--manifest", "manifest.json", "--sig-dir", "elsewhere", "--pubkey", "k.pub"});
  EXPECT_EQ(r.exit_code, 0) << r.out;

  // A key that is not among the manifest's signers does not sign it.
  ASSERT_EQ(Cli({"keygen", "--out", "other"}).exit_code, 0);
  r = Cli({"sign", "--key", "other.key", "--manifest", "manifest.json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "error: other.key: key " + KeyId("other.pub") +
                       " is not among the signers of manifest.json (create the manifest with --signer for this key)\n");
}

TEST_F(CliTest, Sha256SumsCheckWithStockTools) {
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  RunResult r = Cli({"sha256sums", "--manifest", "manifest.json", "--pubkey", "k.pub"});
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
  r = Cli({"sha256sums", "--manifest", "manifest.json", "--pubkey", "other.pub"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
}

// docs/compliance.md: an auditor can check the canonical form and derive
// SHA256SUMS with jq or python alone. Keep those commands honest.
TEST_F(CliTest, CanonicalFormAndSumsReproducibleWithJqAndPython) {
  ASSERT_EQ(Cli({"keygen", "--out", "k"}).exit_code, 0);
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
  RunResult r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--root", "root"},
                    {"OPENSSL_CONF=" + (dir_ / "null.cnf")});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(r.out.starts_with("OK: ")) << r.out;
}

// The progress bar is drawn only when stderr is a terminal: run `verify
// --root` with stderr on a pseudo-terminal.
TEST_F(CliTest, ProgressBarOnlyOnATerminal) {
  WriteFile(root_ + "/models/model.gguf", test_support::RandomBytes(40u << 20, 21), 0444);
  ASSERT_NO_FATAL_FAILURE(MakeSignedManifest());
  const int master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  ASSERT_GE(master, 0);
  ASSERT_EQ(::grantpt(master), 0);
  ASSERT_EQ(::unlockpt(master), 0);
  const std::string slave_name = ::ptsname(master);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, slave_name.c_str(), O_RDWR | O_NOCTTY, 0);
  const std::string manifest = dir_ / "manifest.json";
  const std::string pub = dir_ / "k.pub";
  std::vector<std::string> args = {kCli, "verify", "--manifest", manifest, "--pubkey", pub, "--root", root_};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  ASSERT_EQ(::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  std::string seen;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(master, buf, sizeof buf);
    if (n <= 0) break;  // EIO once the child (the only one holding the terminal) is gone
    seen.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::close(master);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_TRUE(Contains(seen, "\rverifying [")) << seen;
  EXPECT_TRUE(Contains(seen, "GB/s")) << seen;
  EXPECT_TRUE(seen.ends_with("\r\033[K")) << "the bar is cleared at the end";
  // Not a terminal: nothing on stderr (SignVerifyShowEndToEnd checks the same for a small tree).
  RunResult r = Cli({"verify", "--manifest", "manifest.json", "--pubkey", "k.pub", "--root", "root"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.err, "");
}

TEST_F(CliTest, UsageErrors) {
  RunResult r = Cli({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(r.err.starts_with("error: ")) << r.err;
  r = Cli({"verify", "--manifest", "m.json"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(Contains(r.err, "--pubkey")) << r.err;
  r = Cli({"verify", "--manifest", "m.json", "--pubkey", "k.pub", "--threshold", "0"});
  EXPECT_EQ(r.exit_code, 2);
  r = Cli({"diff", "only-one.json"});
  EXPECT_EQ(r.exit_code, 2);
  r = Cli({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  r = Cli({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.out, "keygen")) << r.out;
}

}  // namespace
}  // namespace appliance::manifest
