// The tamper matrix: one image per way an image can be wrong, each booted
// under QEMU (TCG). Init must refuse every one of them with its specific
// reason on the console ("appliance-init: FATAL: image verification: ...")
// and power the VM off ("appliance-init: power-off: failure"), never
// starting the runtime; the untouched images boot and answer a job.
//
// Tampered images are made from a good one by editing its initramfs with
// libarchive (tests/tamper/cpio_edit.h) and, where a case needs a validly
// signed but bad manifest, re-signing it with the test signing key
// (APPLIANCE_TEST_SIGNING_KEY, pinned into the default init). The threshold
// and rollback cases boot a second, stricter init built for this test only
// (appliance-init-strict: threshold 2 over the test key and a co-signer key,
// rollback floor APPLIANCE_STRICT_MIN_VERSION), from images the builder makes
// as a release process would (one signature; an older version).
//
// All boots run in SetUpTestSuite, APPLIANCE_TAMPER_PARALLEL (default 2) at a
// time; each TEST then checks one case's console.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "manifests/crypto.h"
#include "manifests/manifest.h"
#include "manifests/signatures.h"
#include "tests/support/command.h"
#include "tests/tamper/cpio_edit.h"

namespace appliance::tamper {
namespace {

namespace fs = std::filesystem;
namespace mf = appliance::manifest;

const fs::path kWork = APPLIANCE_TAMPER_WORK_DIR;
const std::string kImageTool = APPLIANCE_IMAGE_TOOL;
const std::string kStrictInit = APPLIANCE_STRICT_INIT;
const std::string kModel = std::string(APPLIANCE_SHARED_DIR) + "/models/stories260K.gguf";
const std::string kLevel = APPLIANCE_INTEGRITY_LEVEL;
constexpr uint64_t kStrictMinVersion = APPLIANCE_STRICT_MIN_VERSION;
constexpr const char* kManifestPath = "etc/appliance/manifest.json";
constexpr const char* kSignatureDir = "etc/appliance/signatures";

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

using appliance::testing::CommandResult;
using appliance::testing::ReadFile;
using appliance::testing::RunCommand;

// The init lines of a console log ("appliance-init: ..."), in order.
std::vector<std::string> InitLines(const std::string& console) {
  std::vector<std::string> lines;
  std::istringstream in(console);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t at = line.find("appliance-init: ");
    if (at != std::string::npos) lines.push_back(line.substr(at));
  }
  return lines;
}

// One boot of the matrix.
struct Case {
  std::string name;
  std::string reason;  // expected in the FATAL line; empty: the image must boot and answer a job
  fs::path dir;        // the image folder
  CommandResult run;
  std::string console;
  std::string setup_error;  // building the image failed
};

class Keys {
 public:
  static Keys& Get() {
    static Keys keys;
    return keys;
  }
  std::string signing_pem, signing_id;
  std::string cosign_pem, cosign_id;
  mf::KeyPairPem stranger;
  std::string stranger_id;

 private:
  Keys() {
    signing_pem = ReadFile(APPLIANCE_TEST_SIGNING_KEY);
    signing_id = mf::KeyIdFromPublicPem(mf::PublicPemFromPrivatePem(signing_pem).value()).value();
    cosign_pem = ReadFile(APPLIANCE_COSIGN_KEY);
    cosign_id = mf::KeyIdFromPublicPem(mf::PublicPemFromPrivatePem(cosign_pem).value()).value();
    stranger = mf::GenerateKeyPair().value();
    stranger_id = mf::KeyIdFromPublicPem(stranger.public_pem).value();
  }
};

// Replaces the image's manifest with `m` and its signatures with one by each
// of `keys` (private PEM); `m.signers` is set to those keys.
Status Reseal(std::vector<Entry>& entries, mf::Manifest m, const std::vector<std::string>& keys) {
  m.signers.clear();
  for (const std::string& pem : keys) {
    ASSIGN_OR_RETURN(std::string pub, mf::PublicPemFromPrivatePem(pem));
    ASSIGN_OR_RETURN(std::string id, mf::KeyIdFromPublicPem(pub));
    m.signers.push_back(id);
  }
  std::sort(m.signers.begin(), m.signers.end());
  const std::string bytes = mf::Serialize(m);
  Entry* manifest = Find(entries, kManifestPath);
  if (manifest == nullptr) return Status::Error("no manifest in the image");
  manifest->data = bytes;
  std::erase_if(entries, [](const Entry& e) { return e.path.starts_with(std::string(kSignatureDir) + "/"); });
  for (const std::string& pem : keys) {
    ASSIGN_OR_RETURN(std::string pub, mf::PublicPemFromPrivatePem(pem));
    ASSIGN_OR_RETURN(std::string id, mf::KeyIdFromPublicPem(pub));
    ASSIGN_OR_RETURN(std::string sig, mf::Sign(Bytes(bytes), pem));
    Entry e;
    e.path = std::string(kSignatureDir) + "/" + mf::SignatureFileName(id);
    e.perm = 0444;
    e.data = sig;
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.path < b.path; });
  return Status::Ok();
}

StatusOr<mf::Manifest> ManifestOf(std::vector<Entry>& entries) {
  Entry* manifest = Find(entries, kManifestPath);
  if (manifest == nullptr) return Status::Error("no manifest in the image");
  return mf::Parse(Bytes(manifest->data));
}

// Makes `dir` a copy of image folder `good` whose initramfs is `good`'s
// edited by `edit`.
template <typename Edit>
Status MakeTampered(const fs::path& good, const fs::path& dir, Edit&& edit) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  for (const char* f : {"vmlinuz", "cmdline"}) fs::copy_file(good / f, dir / f);
  ASSIGN_OR_RETURN(std::vector<Entry> entries, ReadArchive((good / "initramfs.cpio").string()));
  RETURN_IF_ERROR(edit(entries));
  return WriteArchive((dir / "initramfs.cpio").string(), entries);
}

Entry& Model(std::vector<Entry>& entries) { return *Find(entries, "models/model.gguf"); }

class TamperMatrix : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cases_ = new std::map<std::string, Case>();
    std::error_code ec;
    fs::remove_all(kWork, ec);
    fs::create_directories(kWork);
    const Keys& keys = Keys::Get();
    const auto t0 = std::chrono::steady_clock::now();

    // The good images: the builder, as a release would run it.
    auto build = [](const fs::path& out, std::vector<std::string> extra) {
      std::vector<std::string> args = {kImageTool, "build", "--model", kModel, "--key", APPLIANCE_TEST_SIGNING_KEY,
                                       "--out", out.string()};
      args.insert(args.end(), extra.begin(), extra.end());
      return RunCommand(args, 300);
    };
    const fs::path good = kWork / "good";
    const std::string strict_version = std::to_string(kStrictMinVersion);
    const std::string rollback_version = std::to_string(kStrictMinVersion - 1);
    struct Built {
      std::string name, reason;
      fs::path dir;
      std::vector<std::string> args;
    };
    const std::vector<Built> built = {
        {"good", "", good, {}},
        {"strict_good", "", kWork / "strict_good",
         {"--init", kStrictInit, "--cosign-key", APPLIANCE_COSIGN_KEY, "--manifest-version", strict_version}},
        {"below_threshold", "manifest signed by 1 pinned key(s), 2 required (below the signature threshold)",
         kWork / "below_threshold", {"--init", kStrictInit, "--manifest-version", strict_version}},
        {"rollback",
         "manifest_version " + rollback_version + " is below the minimum " + strict_version + " (rollback refused)",
         kWork / "rollback",
         {"--init", kStrictInit, "--cosign-key", APPLIANCE_COSIGN_KEY, "--manifest-version", rollback_version}},
    };
    for (const Built& b : built) {
      Case c{b.name, b.reason, b.dir, {}, {}, {}};
      const CommandResult r = build(b.dir, b.args);
      if (r.exit_code != 0) c.setup_error = "appliance-image build failed:\n" + r.out + r.err;
      (*cases_)[b.name] = std::move(c);
    }

    // Edited copies of the good image.
    using Edit = std::function<Status(std::vector<Entry>&)>;
    const std::string sig_path = std::string(kSignatureDir) + "/" + mf::SignatureFileName(keys.signing_id);
    const std::string model_size = std::to_string(fs::file_size(kModel));
    const std::string other_level = kLevel == "L1" ? "L2" : "L1";
    const std::vector<std::tuple<std::string, std::string, Edit>> edits = {
        {"bad_signature",
         sig_path + ": signature does not verify with pinned key " + keys.signing_id,
         [&](std::vector<Entry>& e) -> Status {
           Entry* sig = Find(e, sig_path);
           if (sig == nullptr) return Status::Error("no signature " + sig_path);
           sig->data[5] = static_cast<char>(sig->data[5] ^ 0x01);
           return Status::Ok();
         }},
        {"missing_signature", "manifest not signed: etc/appliance/signatures holds no signature",
         [&](std::vector<Entry>& e) -> Status {
           return Remove(e, sig_path) == 1 ? Status::Ok() : Status::Error("no signature " + sig_path);
         }},
        {"unknown_key",
         "manifest signed by 0 pinned key(s), 1 required (below the signature threshold); signed by unknown key(s): " +
             keys.stranger_id,
         [&](std::vector<Entry>& e) -> Status {
           ASSIGN_OR_RETURN(mf::Manifest m, ManifestOf(e));
           return Reseal(e, m, {keys.stranger.private_pem});
         }},
        {"wrong_level", "manifest is for integrity level " + other_level + ", this init enforces " + kLevel,
         [&](std::vector<Entry>& e) -> Status {
           ASSIGN_OR_RETURN(mf::Manifest m, ManifestOf(e));
           m.integrity_level = other_level;
           return Reseal(e, m, {keys.signing_pem});
         }},
        {"file_missing", "lib/x86_64-linux-gnu/libm.so.6: missing",
         [](std::vector<Entry>& e) -> Status {
           return Remove(e, "lib/x86_64-linux-gnu/libm.so.6") == 1 ? Status::Ok() : Status::Error("no libm");
         }},
        {"file_changed", "models/model.gguf: sha256 mismatch (manifest ",
         [](std::vector<Entry>& e) -> Status {
           std::string& data = Model(e).data;
           data[data.size() / 2] = static_cast<char>(data[data.size() / 2] ^ 0x01);
           return Status::Ok();
         }},
        {"file_truncated",
         "models/model.gguf: size mismatch (manifest " + model_size + ", file " +
             std::to_string(fs::file_size(kModel) - 1024) + "): truncated",
         [](std::vector<Entry>& e) -> Status {
           Model(e).data.resize(Model(e).data.size() - 1024);
           return Status::Ok();
         }},
        {"size_over",
         "models/model.gguf: size mismatch (manifest " + model_size + ", file " +
             std::to_string(fs::file_size(kModel) + 1) + "): larger than listed",
         [](std::vector<Entry>& e) -> Status {
           Model(e).data.push_back('\0');
           return Status::Ok();
         }},
        {"unlisted_file", "usr/bin/backdoor: not listed in the manifest",
         [](std::vector<Entry>& e) -> Status {
           Entry x;
           x.path = "usr/bin/backdoor";
           x.perm = 0755;
           x.data = "#!/bin/sh\n";
           e.push_back(std::move(x));
           return Status::Ok();
         }},
        {"symlink", "usr/bin/sh: symbolic link refused",
         [](std::vector<Entry>& e) -> Status {
           Entry x;
           x.path = "usr/bin/sh";
           x.kind = Kind::kSymlink;
           x.perm = 0777;
           x.target = "appliance-runtime";
           e.push_back(std::move(x));
           return Status::Ok();
         }},
        {"hard_link", "models/model.gguf: hard link refused (2 links)",
         [](std::vector<Entry>& e) -> Status {
           // A second name for the model's inode, sorted after it.
           Model(e).link_group = 1;
           Entry x = Model(e);
           x.path = "models/model.gguf.link";
           e.push_back(std::move(x));
           return Status::Ok();
         }},
        {"duplicate_path", "duplicate path",
         [&](std::vector<Entry>& e) -> Status {
           ASSIGN_OR_RETURN(mf::Manifest m, ManifestOf(e));
           m.files.push_back(m.files.back());
           return Reseal(e, m, {keys.signing_pem});
         }},
        {"dotdot_path", "(usr/../init): invalid path: '..' path component",
         [&](std::vector<Entry>& e) -> Status {
           ASSIGN_OR_RETURN(mf::Manifest m, ManifestOf(e));
           mf::FileEntry f = m.files.front();
           f.path = "usr/../init";
           m.files.push_back(f);
           return Reseal(e, m, {keys.signing_pem});
         }},
        {"absolute_path", "(/init): invalid path: absolute path",
         [&](std::vector<Entry>& e) -> Status {
           ASSIGN_OR_RETURN(mf::Manifest m, ManifestOf(e));
           mf::FileEntry f = m.files.front();
           f.path = "/init";
           m.files.push_back(f);
           return Reseal(e, m, {keys.signing_pem});
         }},
    };
    for (const auto& [name, reason, edit] : edits) {
      Case c{name, reason, kWork / name, {}, {}, {}};
      if (!(*cases_)["good"].setup_error.empty()) {
        c.setup_error = "the good image was not built";
      } else if (Status s = MakeTampered(good, c.dir, edit); !s.ok()) {
        c.setup_error = "making the tampered image failed: " + s.message();
      }
      (*cases_)[name] = std::move(c);
    }
    const double build_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    // Boot them all, `parallel` at a time.
    {
      std::ofstream(kWork / "jobs.jsonl")
          << R"({"id":"j1","op":"generate","prompt":"Once upon a time","max_tokens":8,"temperature":0})" << "\n";
    }
    unsigned parallel = 2;
    if (const char* env = std::getenv("APPLIANCE_TAMPER_PARALLEL"); env != nullptr && std::atoi(env) > 0) {
      parallel = static_cast<unsigned>(std::atoi(env));
    }
    std::vector<Case*> queue;
    for (auto& [name, c] : *cases_) {
      if (c.setup_error.empty()) queue.push_back(&c);
    }
    std::atomic<size_t> next{0};
    const auto boot_start = std::chrono::steady_clock::now();
    {
      std::vector<std::jthread> workers;
      for (unsigned w = 0; w < parallel; ++w) {
        workers.emplace_back([&queue, &next] {
          for (size_t i = next.fetch_add(1); i < queue.size(); i = next.fetch_add(1)) {
            Case& c = *queue[i];
            const fs::path console = c.dir / "console.log";
            c.run = RunCommand({kImageTool, "run", c.dir.string(), "--jobs", (kWork / "jobs.jsonl").string(),
                                "--console-log", console.string(), "--timeout", "150", "--ready-timeout", "150"},
                               180);
            c.console = ReadFile(console);
          }
        });
      }
    }
    const double boot_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - boot_start).count();
    std::cout << "[tamper] " << cases_->size() << " images built in " << build_seconds << " s, booted in "
              << boot_seconds << " s (" << parallel << " at a time)" << std::endl;
    for (const auto& [name, c] : *cases_) {
      std::cout << "[tamper] " << name << ": exit " << c.run.exit_code << " after " << c.run.seconds << " s" << std::endl;
    }
  }

  static void TearDownTestSuite() {
    delete cases_;
    cases_ = nullptr;
  }

  // The image must be refused with `reason`, and the VM powered off.
  static void ExpectRefused(const std::string& name) {
    ASSERT_TRUE(cases_->contains(name)) << name;
    const Case& c = cases_->at(name);
    ASSERT_TRUE(c.setup_error.empty()) << c.setup_error;
    const std::vector<std::string> lines = InitLines(c.console);
    const std::string all = "console:\n" + c.console + "\nrunner stderr:\n" + c.run.err;
    EXPECT_NE(c.run.exit_code, 0) << all;
    EXPECT_EQ(c.run.err.find("timed out"), std::string::npos) << "the VM must power itself off\n" << all;
    EXPECT_EQ(c.run.out.find("\"done\""), std::string::npos) << "no job may be answered\n" << all;
    const auto fatal = std::find_if(lines.begin(), lines.end(),
                                    [](const std::string& l) { return l.starts_with("appliance-init: FATAL: "); });
    ASSERT_NE(fatal, lines.end()) << all;
    EXPECT_TRUE(fatal->starts_with("appliance-init: FATAL: image verification: ")) << *fatal;
    EXPECT_NE(fatal->find(c.reason), std::string::npos) << "expected the reason: " << c.reason << "\n" << all;
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines.back(), "appliance-init: power-off: failure") << all;
    for (const std::string& l : lines) {
      EXPECT_EQ(l.find("runtime started"), std::string::npos) << all;
      EXPECT_EQ(l.find("manifest verified"), std::string::npos) << all;
    }
    std::cout << "[tamper] " << name << ": " << *fatal << std::endl;
  }

  static void ExpectBootsAndAnswers(const std::string& name) {
    ASSERT_TRUE(cases_->contains(name)) << name;
    const Case& c = cases_->at(name);
    ASSERT_TRUE(c.setup_error.empty()) << c.setup_error;
    const std::string all = "stdout:\n" + c.run.out + "\nconsole:\n" + c.console + "\nrunner stderr:\n" + c.run.err;
    EXPECT_EQ(c.run.exit_code, 0) << all;
    EXPECT_NE(c.run.out.find("\"done\""), std::string::npos) << all;
    const std::vector<std::string> lines = InitLines(c.console);
    EXPECT_TRUE(std::any_of(lines.begin(), lines.end(),
                            [](const std::string& l) { return l.starts_with("appliance-init: manifest verified"); }))
        << all;
    ASSERT_FALSE(lines.empty()) << all;
    EXPECT_EQ(lines.back(), "appliance-init: power-off: clean") << all;
  }

  static std::map<std::string, Case>* cases_;
};
std::map<std::string, Case>* TamperMatrix::cases_ = nullptr;

TEST_F(TamperMatrix, UntouchedImageBootsAndAnswersAJob) { ExpectBootsAndAnswers("good"); }
TEST_F(TamperMatrix, StrictInitBootsAnImageSignedByTwoKeys) { ExpectBootsAndAnswers("strict_good"); }
TEST_F(TamperMatrix, BadSignature) { ExpectRefused("bad_signature"); }
TEST_F(TamperMatrix, MissingSignature) { ExpectRefused("missing_signature"); }
TEST_F(TamperMatrix, UnknownKey) { ExpectRefused("unknown_key"); }
TEST_F(TamperMatrix, BelowThreshold) { ExpectRefused("below_threshold"); }
TEST_F(TamperMatrix, Rollback) { ExpectRefused("rollback"); }
TEST_F(TamperMatrix, WrongLevel) { ExpectRefused("wrong_level"); }
TEST_F(TamperMatrix, FileMissing) { ExpectRefused("file_missing"); }
TEST_F(TamperMatrix, FileChanged) { ExpectRefused("file_changed"); }
TEST_F(TamperMatrix, FileTruncated) { ExpectRefused("file_truncated"); }
TEST_F(TamperMatrix, SizeOver) { ExpectRefused("size_over"); }
TEST_F(TamperMatrix, UnlistedFile) { ExpectRefused("unlisted_file"); }
TEST_F(TamperMatrix, Symlink) { ExpectRefused("symlink"); }
TEST_F(TamperMatrix, HardLink) { ExpectRefused("hard_link"); }
TEST_F(TamperMatrix, DuplicatePath) { ExpectRefused("duplicate_path"); }
TEST_F(TamperMatrix, DotDotPath) { ExpectRefused("dotdot_path"); }
TEST_F(TamperMatrix, AbsolutePath) { ExpectRefused("absolute_path"); }

}  // namespace
}  // namespace appliance::tamper
