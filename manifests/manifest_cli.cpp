// appliance-manifest: create, sign, verify, show and compare image manifests.
//
//   keygen --out PREFIX
//   create --root DIR --level L1 --version N --product P --release R --cmdline "..." --signer K.pub...
//          [--previous OLD.json] [--source-commit C] [--compiler C] [--builder B] [--dependency NAME=VERSION]...
//          [--role PATH=ROLE]... --out M
//   sign --key K.key --manifest M [--sig-dir DIR]
//   verify --manifest M [--sig-dir DIR] --pubkey K.pub... [--threshold N] [--level L] [--min-version N] [--root DIR]
//   show --manifest M
//   diff OLD NEW
//   sha256sums --manifest M [--sig-dir DIR --pubkey K.pub... [--threshold N]]
//
// Every command takes --json (one JSON document on stdout). Signatures are one
// file per signer, DIR/<key id>.sig (DIR defaults to "signatures" beside the
// manifest), each checkable with stock openssl (docs/compliance.md).
//
// Errors are printed once, here: "error: <message>" on stderr, exit 1 (2 for
// usage errors); with --json also {"error": "<message>"} on stdout. `verify`
// reports its verdict on stdout as "OK: ..." (exit 0) or "FAILED: <reason>"
// (exit 1). When stderr is a terminal, hashing many bytes draws a progress bar there.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"
#include "base/status.h"
#include "manifests/crypto.h"
#include "manifests/io.h"
#include "manifests/manifest.h"
#include "manifests/signatures.h"
#include "manifests/tree_verify.h"

namespace appliance::manifest {
namespace {

using nlohmann::json;

constexpr size_t kMaxKeyFileBytes = 64 * 1024;
constexpr const char* kDefaultSigDirName = "signatures";
// Below this, hashing is over before a progress bar would be worth drawing.
constexpr uint64_t kProgressMinBytes = 32ULL << 20;

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string Dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; }

StatusOr<std::string> ReadManifestFile(const std::string& path) {
  return ReadFileBounded(AT_FDCWD, path, kMaxManifestBytes);
}

StatusOr<Manifest> ReadManifest(const std::string& path, std::string* bytes_out = nullptr) {
  ASSIGN_OR_RETURN(std::string bytes, ReadManifestFile(path));
  StatusOr<Manifest> m = Parse(Bytes(bytes));
  if (!m.ok()) return m.status().Context(path);
  if (bytes_out != nullptr) *bytes_out = std::move(bytes);
  return m;
}

StatusOr<UniqueFd> OpenRoot(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return PosixError("open " + dir);
  return fd;
}

StatusOr<uint64_t> ParseUnsigned(const std::string& text, const std::string& what) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  // from_chars takes no sign, no spaces, no "0x": digits only, all consumed.
  if (text.empty() || ec != std::errc() || ptr != end) {
    return Status::Error(what + ": '" + EscapeForMessage(text) + "' is not a non-negative integer");
  }
  return value;
}

// Reproducible builds: the creation time is SOURCE_DATE_EPOCH, 0 if unset.
StatusOr<int64_t> CreatedFromEnvironment() {
  const char* env = std::getenv("SOURCE_DATE_EPOCH");
  if (env == nullptr || *env == '\0') return int64_t{0};
  ASSIGN_OR_RETURN(uint64_t value, ParseUnsigned(env, "SOURCE_DATE_EPOCH"));
  if (value > static_cast<uint64_t>(INT64_MAX)) return Status::Error("SOURCE_DATE_EPOCH: out of range");
  return static_cast<int64_t>(value);
}

std::string Utc(int64_t seconds) {
  const auto t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  if (::gmtime_r(&t, &tm) == nullptr) return "?";
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string HumanSize(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " B", bytes);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", value, kUnits[unit]);
  }
  return buf;
}

std::string ModeString(uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", mode);
  return buf;
}

uint64_t TotalBytes(const Manifest& m) {
  uint64_t total = 0;
  for (const FileEntry& f : m.files) total += f.size;
  return total;
}

std::string DefaultSigDir(const std::string& manifest_path) {
  const std::filesystem::path parent = std::filesystem::path(manifest_path).parent_path();
  return parent.empty() ? std::string(kDefaultSigDirName) : (parent / kDefaultSigDirName).string();
}

// Parses "NAME=VALUE" options (--role, --dependency).
StatusOr<std::map<std::string, std::string>> ParsePairs(const std::vector<std::string>& specs, const std::string& flag,
                                                        const std::string& form) {
  std::map<std::string, std::string> out;
  for (const std::string& spec : specs) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      return Status::Error(flag + ": expected " + form + ", got '" + EscapeForMessage(spec) + "'");
    }
    std::string name = spec.substr(0, eq);
    if (!out.emplace(name, spec.substr(eq + 1)).second) {
      return Status::Error(flag + ": " + EscapeForMessage(name) + " given twice");
    }
  }
  return out;
}

StatusOr<std::vector<std::string>> ReadPublicKeys(const std::vector<std::string>& paths) {
  std::vector<std::string> pems;
  for (const std::string& path : paths) {
    ASSIGN_OR_RETURN(std::string pem, ReadFileBounded(AT_FDCWD, path, kMaxKeyFileBytes));
    if (Status s = KeyIdFromPublicPem(pem).status(); !s.ok()) return s.Context(path);
    pems.push_back(std::move(pem));
  }
  return pems;
}

// ---- progress --------------------------------------------------------------

// Draws "hashing [#####.....]  45%  1.2 GiB / 2.6 GiB  1.7 GB/s" on stderr
// while another thread hashes, only when stderr is a terminal and there is
// enough to hash for it to matter. Cleared again when it goes out of scope.
class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total) : label_(std::move(label)), total_(total) {
    if (::isatty(STDERR_FILENO) != 1 || total_ < kProgressMinBytes) return;
    start_ = std::chrono::steady_clock::now();
    thread_ = std::jthread([this](std::stop_token stop) { Loop(stop); });
  }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mutex_);
      thread_.request_stop();
    }
    wake_.notify_all();
    thread_.join();
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
  }
  std::atomic<uint64_t>* counter() { return &done_; }

 private:
  void Loop(const std::stop_token& stop) {
    std::unique_lock lock(mutex_);
    while (!stop.stop_requested()) {
      Draw();
      wake_.wait_for(lock, std::chrono::milliseconds(100), [&stop] { return stop.stop_requested(); });
    }
  }

  void Draw() const {
    constexpr int kWidth = 30;
    const uint64_t done = std::min(done_.load(std::memory_order_relaxed), total_);
    const double fraction = total_ == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total_);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = secs > 0 ? static_cast<double>(done) / secs / 1e9 : 0.0;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(kWidth - filled), '.');
    std::fprintf(stderr, "\r%s [%s] %3d%%  %s / %s  %.2f GB/s\033[K", label_.c_str(), bar.c_str(),
                 static_cast<int>(fraction * 100), HumanSize(done).c_str(), HumanSize(total_).c_str(), rate);
    std::fflush(stderr);
  }

  std::string label_;
  uint64_t total_;
  std::atomic<uint64_t> done_{0};
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::jthread thread_;
};

// Bytes of the regular files under `root` (no symlinks followed), for the
// progress bar of `create`; a best effort, errors are ScanTree's to report.
uint64_t TreeBytes(const std::string& root) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(root, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code size_ec;
    if (it->is_regular_file(size_ec)) {
      const uintmax_t size = it->file_size(size_ec);
      if (!size_ec) total += size;
    }
  }
  return total;
}

// ---- keygen ----------------------------------------------------------------

StatusOr<json> Keygen(const std::string& prefix) {
  ASSIGN_OR_RETURN(KeyPairPem pair, GenerateKeyPair());
  ASSIGN_OR_RETURN(std::string id, KeyIdFromPublicPem(pair.public_pem));
  // Never overwrite a key: losing a signing key is worse than an error. Both
  // names are checked first so a refusal leaves no half pair behind (the
  // exclusive writes below still close the race).
  for (const std::string& path : {prefix + ".key", prefix + ".pub"}) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) return Status::Error(path + ": already exists (not overwriting a key)");
  }
  RETURN_IF_ERROR(WriteFileAtomic(prefix + ".key", pair.private_pem, 0600, /*exclusive=*/true));
  RETURN_IF_ERROR(WriteFileAtomic(prefix + ".pub", pair.public_pem, 0644, /*exclusive=*/true));
  return json{{"private_key", prefix + ".key"}, {"public_key", prefix + ".pub"}, {"key_id", id}};
}

std::string KeygenText(const json& r) {
  return "private key: " + r["private_key"].get<std::string>() + " (mode 0600; keep it off the image)\n" +
         "public key:  " + r["public_key"].get<std::string>() + "\n" + "key id: " + r["key_id"].get<std::string>() +
         "\n";
}

// ---- create ----------------------------------------------------------------

struct CreateOptions {
  std::string root;
  std::string level;
  std::string version;
  std::string product;
  std::string release;
  std::string cmdline;
  std::vector<std::string> signers;  // public key files
  std::string previous;
  std::string source_commit = "unknown";
  std::string compiler = "unknown";
  std::string builder = "appliance-manifest";
  std::vector<std::string> dependencies;
  std::vector<std::string> roles;
  std::string out;
};

StatusOr<json> Create(const CreateOptions& o) {
  ASSIGN_OR_RETURN(auto roles, ParsePairs(o.roles, "--role", "PATH=ROLE"));
  Manifest m;
  ASSIGN_OR_RETURN(m.build.dependencies, ParsePairs(o.dependencies, "--dependency", "NAME=VERSION"));
  ASSIGN_OR_RETURN(m.manifest_version, ParseUnsigned(o.version, "--version"));
  m.integrity_level = o.level;
  m.product = o.product;
  m.release = o.release;
  m.kernel_cmdline = o.cmdline;
  m.build.source_commit = o.source_commit;
  m.build.compiler = o.compiler;
  m.build.builder = o.builder;
  ASSIGN_OR_RETURN(m.created, CreatedFromEnvironment());
  ASSIGN_OR_RETURN(std::vector<std::string> signer_pems, ReadPublicKeys(o.signers));
  ASSIGN_OR_RETURN(std::vector<TrustedKey> signers, TrustKeys(signer_pems));
  for (const TrustedKey& k : signers) m.signers.push_back(k.key_id);

  if (!o.previous.empty()) {
    std::string previous_bytes;
    ASSIGN_OR_RETURN(Manifest previous, ReadManifest(o.previous, &previous_bytes));
    if (previous.manifest_version >= m.manifest_version) {
      return Status::Error("--version " + std::to_string(m.manifest_version) + " is not above the previous manifest's " +
                           std::to_string(previous.manifest_version) + " (" + o.previous +
                           "): manifest_version only goes up");
    }
    if (previous.product != m.product) {
      return Status::Error("--product '" + m.product + "' differs from the previous manifest's '" + previous.product +
                           "' (" + o.previous + ")");
    }
    m.previous_manifest_sha256 = ToHex(Sha256(Bytes(previous_bytes)));
  }

  ASSIGN_OR_RETURN(UniqueFd root, OpenRoot(o.root));
  TreePolicy policy;  // the image's policy: exempt manifest and signatures, mount points, dev/console
  ProgressBar bar("hashing", ::isatty(STDERR_FILENO) == 1 ? TreeBytes(o.root) : 0);
  policy.progress = bar.counter();
  StatusOr<std::vector<FileEntry>> files = ScanTree(root.get(), policy, roles);
  if (!files.ok()) return files.status().Context(o.root);
  m.files = std::move(*files);
  RETURN_IF_ERROR(Validate(m));

  const std::string bytes = Serialize(m);
  RETURN_IF_ERROR(WriteFileAtomic(o.out, bytes, 0644));
  return json{{"manifest", o.out},
              {"files", m.files.size()},
              {"bytes", TotalBytes(m)},
              {"manifest_sha256", ToHex(Sha256(Bytes(bytes)))},
              {"signers", m.signers},
              {"previous_manifest_sha256",
               m.previous_manifest_sha256.empty() ? json(nullptr) : json(m.previous_manifest_sha256)}};
}

std::string CreateText(const json& r) {
  const uint64_t bytes = r["bytes"].get<uint64_t>();
  return "wrote " + r["manifest"].get<std::string>() + ": " + std::to_string(r["files"].get<uint64_t>()) + " files, " +
         std::to_string(bytes) + " bytes (" + HumanSize(bytes) + "), manifest sha256 " +
         r["manifest_sha256"].get<std::string>() + "\n";
}

// ---- sign ------------------------------------------------------------------

StatusOr<json> SignCommand(const std::string& key_path, const std::string& manifest_path, std::string sig_dir) {
  ASSIGN_OR_RETURN(std::string key_pem, ReadFileBounded(AT_FDCWD, key_path, kMaxKeyFileBytes));
  std::string bytes;
  // Refuse to sign what init would refuse to parse.
  ASSIGN_OR_RETURN(Manifest m, ReadManifest(manifest_path, &bytes));
  StatusOr<std::string> public_pem = PublicPemFromPrivatePem(key_pem);
  if (!public_pem.ok()) return public_pem.status().Context(key_path);
  ASSIGN_OR_RETURN(std::string id, KeyIdFromPublicPem(*public_pem));
  if (std::find(m.signers.begin(), m.signers.end(), id) == m.signers.end()) {
    return Status::Error(key_path + ": key " + id + " is not among the signers of " + manifest_path +
                         " (create the manifest with --signer for this key)");
  }
  ASSIGN_OR_RETURN(std::string signature, Sign(Bytes(bytes), key_pem));
  if (sig_dir.empty()) sig_dir = DefaultSigDir(manifest_path);
  if (::mkdir(sig_dir.c_str(), 0755) != 0 && errno != EEXIST) return PosixError("create " + sig_dir);
  const std::string out = sig_dir + "/" + SignatureFileName(id);
  RETURN_IF_ERROR(WriteFileAtomic(out, signature, 0644));
  return json{{"signature", out}, {"key_id", id}, {"manifest", manifest_path},
              {"manifest_sha256", ToHex(Sha256(Bytes(bytes)))}};
}

std::string SignText(const json& r) {
  return "wrote " + r["signature"].get<std::string>() + ": Ed25519 signature of " + r["manifest"].get<std::string>() +
         " (sha256 " + r["manifest_sha256"].get<std::string>() + ") by key " + r["key_id"].get<std::string>() + "\n";
}

// ---- verify ----------------------------------------------------------------

struct VerifyOptions {
  std::string manifest;
  std::string sig_dir;
  std::vector<std::string> pubkeys;
  uint64_t threshold = 1;
  std::string level;        // empty: any
  uint64_t min_version = 0;  // 0: any
  std::string root;
};

struct VerifiedManifest {
  Manifest manifest;
  std::string bytes;
  std::string sig_dir;
  SignatureCheck signatures;
};

// The same order as init: signatures over the raw bytes first (threshold),
// only then parse, then the signers list against the signature files.
StatusOr<VerifiedManifest> ReadVerifiedManifest(const std::string& manifest_path, std::string sig_dir,
                                                const std::vector<std::string>& pubkeys, uint64_t threshold) {
  ASSIGN_OR_RETURN(std::vector<std::string> pems, ReadPublicKeys(pubkeys));
  ASSIGN_OR_RETURN(std::vector<TrustedKey> trusted, TrustKeys(pems));
  VerifiedManifest v;
  ASSIGN_OR_RETURN(v.bytes, ReadManifestFile(manifest_path));
  v.sig_dir = sig_dir.empty() ? DefaultSigDir(manifest_path) : std::move(sig_dir);
  ASSIGN_OR_RETURN(SignatureSet signatures, ReadSignatureDir(AT_FDCWD, v.sig_dir));
  StatusOr<SignatureCheck> check =
      CheckSignatures(Bytes(v.bytes), signatures, trusted, static_cast<size_t>(threshold), v.sig_dir);
  if (!check.ok()) return check.status().Context(manifest_path);
  v.signatures = std::move(*check);
  StatusOr<Manifest> m = Parse(Bytes(v.bytes));
  if (!m.ok()) return m.status().Context(manifest_path);
  v.manifest = std::move(*m);
  RETURN_IF_ERROR(CheckSignersMatch(v.manifest, signatures, v.sig_dir).Context(manifest_path));
  return v;
}

StatusOr<json> VerifyCommand(const VerifyOptions& o) {
  ASSIGN_OR_RETURN(VerifiedManifest v, ReadVerifiedManifest(o.manifest, o.sig_dir, o.pubkeys, o.threshold));
  const Manifest& m = v.manifest;
  if (!o.level.empty() && m.integrity_level != o.level) {
    return Status::Error(o.manifest + ": manifest is for integrity level " + m.integrity_level + ", expected " +
                         o.level);
  }
  if (m.manifest_version < o.min_version) {
    return Status::Error(o.manifest + ": manifest_version " + std::to_string(m.manifest_version) +
                         " is below the minimum " + std::to_string(o.min_version) + " (rollback refused)");
  }
  if (!o.root.empty()) {
    ASSIGN_OR_RETURN(UniqueFd root, OpenRoot(o.root));
    TreePolicy policy;
    ProgressBar bar("verifying", TotalBytes(m));
    policy.progress = bar.counter();
    StatusOr<std::map<std::string, UniqueFd>> kept = VerifyTree(root.get(), m, policy);
    if (!kept.ok()) return kept.status().Context(o.root);
  }
  return json{{"ok", true},
              {"manifest", o.manifest},
              {"manifest_sha256", ToHex(Sha256(Bytes(v.bytes)))},
              {"signature_dir", v.sig_dir},
              {"threshold", o.threshold},
              {"valid_signers", v.signatures.valid},
              {"unknown_signers", v.signatures.untrusted},
              {"product", m.product},
              {"release", m.release},
              {"manifest_version", m.manifest_version},
              {"integrity_level", m.integrity_level},
              {"files", m.files.size()},
              {"bytes", TotalBytes(m)},
              {"root", o.root.empty() ? json(nullptr) : json(o.root)}};
}

std::string VerifyText(const json& r) {
  std::string ids;
  for (const auto& id : r["valid_signers"]) ids += (ids.empty() ? "" : ", ") + id.get<std::string>();
  std::string text = "OK: " + r["manifest"].get<std::string>() + ": signed by " +
                     std::to_string(r["valid_signers"].size()) + " pinned key(s) (threshold " +
                     std::to_string(r["threshold"].get<uint64_t>()) + "): " + ids + "; " +
                     r["product"].get<std::string>() + " " + r["release"].get<std::string>() + ", manifest_version " +
                     std::to_string(r["manifest_version"].get<uint64_t>()) + ", level " +
                     r["integrity_level"].get<std::string>() + ", " + std::to_string(r["files"].get<uint64_t>()) +
                     " files (" + std::to_string(r["bytes"].get<uint64_t>()) + " bytes)";
  if (!r["root"].is_null()) text += "; tree " + r["root"].get<std::string>() + " matches";
  return text + "\n";
}

// ---- show ------------------------------------------------------------------

constexpr const char* kRoleOrder[] = {"init", "runtime", "library", "module", "model", "config"};

json BuildJson(const BuildProvenance& b) {
  json deps = json::object();
  for (const auto& [name, version] : b.dependencies) deps[name] = version;
  return {{"source_commit", b.source_commit}, {"compiler", b.compiler}, {"builder", b.builder},
          {"dependencies", std::move(deps)}};
}

json FileJson(const FileEntry& f) {
  return {{"path", f.path}, {"size", f.size}, {"mode", ModeString(f.mode)}, {"sha256", f.sha256}, {"role", f.role}};
}

StatusOr<json> Show(const std::string& manifest_path) {
  std::string bytes;
  ASSIGN_OR_RETURN(Manifest m, ReadManifest(manifest_path, &bytes));
  json roles = json::object();
  for (const FileEntry& f : m.files) {
    json& r = roles[f.role];
    if (r.is_null()) r = {{"files", 0}, {"bytes", 0}};
    r["files"] = r["files"].get<uint64_t>() + 1;
    r["bytes"] = r["bytes"].get<uint64_t>() + f.size;
  }
  json files = json::array();
  for (const FileEntry& f : m.files) files.push_back(FileJson(f));
  return json{
      {"manifest", manifest_path},
      {"manifest_sha256", ToHex(Sha256(Bytes(bytes)))},
      {"signature_checked", false},
      {"format", kFormatName},
      {"format_version", kFormatVersion},
      {"manifest_version", m.manifest_version},
      {"integrity_level", m.integrity_level},
      {"product", m.product},
      {"release", m.release},
      {"created", m.created},
      {"created_utc", Utc(m.created)},
      {"kernel_cmdline", m.kernel_cmdline},
      {"previous_manifest_sha256",
       m.previous_manifest_sha256.empty() ? json(nullptr) : json(m.previous_manifest_sha256)},
      {"signers", m.signers},
      {"build", BuildJson(m.build)},
      {"files", std::move(files)},
      {"totals", {{"files", m.files.size()}, {"bytes", TotalBytes(m)}, {"by_role", std::move(roles)}}},
  };
}

std::string FileLine(const json& f) {
  char line[64];
  std::snprintf(line, sizeof line, "  %s %12" PRIu64 "  ", f["mode"].get<std::string>().c_str(),
                f["size"].get<uint64_t>());
  return line + f["sha256"].get<std::string>() + "  " + f["path"].get<std::string>() + "\n";
}

std::string ShowText(const json& r) {
  std::string out;
  auto field = [&out](const std::string& name, const std::string& value) {
    std::string padded = name + ":";
    padded.resize(std::max<size_t>(padded.size() + 1, 19), ' ');
    out += padded + value + "\n";
  };
  field("manifest", r["manifest"].get<std::string>() + " (sha256 " + r["manifest_sha256"].get<std::string>() + ")");
  field("signature", "not checked here (appliance-manifest verify checks it)");
  field("format", r["format"].get<std::string>() + " v" + std::to_string(r["format_version"].get<int>()));
  field("product", r["product"].get<std::string>() + " " + r["release"].get<std::string>());
  field("integrity level", r["integrity_level"].get<std::string>());
  field("manifest version", std::to_string(r["manifest_version"].get<uint64_t>()));
  field("created", r["created_utc"].get<std::string>() + " (" + std::to_string(r["created"].get<int64_t>()) + ")");
  field("kernel cmdline", r["kernel_cmdline"].get<std::string>());
  field("previous manifest", r["previous_manifest_sha256"].is_null()
                                 ? std::string("none (first release)")
                                 : "sha256 " + r["previous_manifest_sha256"].get<std::string>());
  const json& signers = r["signers"];
  field("signers", std::to_string(signers.size()) + " (key ids; each signs signatures/<key id>.sig)");
  for (const auto& id : signers) out += "  " + id.get<std::string>() + "\n";
  const json& build = r["build"];
  out += "build:\n";
  field("  source commit", build["source_commit"].get<std::string>());
  field("  compiler", build["compiler"].get<std::string>());
  field("  builder", build["builder"].get<std::string>());
  if (build["dependencies"].empty()) {
    field("  dependencies", "none recorded");
  } else {
    field("  dependencies", std::to_string(build["dependencies"].size()));
    for (const auto& [name, version] : build["dependencies"].items()) {
      std::string padded = "    " + name;
      padded.resize(std::max<size_t>(padded.size() + 1, 19), ' ');
      out += padded + version.get<std::string>() + "\n";
    }
  }
  const json& by_role = r["totals"]["by_role"];
  for (const char* role : kRoleOrder) {
    if (!by_role.contains(role)) continue;
    const uint64_t n = by_role[role]["files"].get<uint64_t>();
    out += std::string("\n") + role + ": " + std::to_string(n) + (n == 1 ? " file, " : " files, ") +
           HumanSize(by_role[role]["bytes"].get<uint64_t>()) + "\n";
    for (const auto& f : r["files"]) {
      if (f["role"] == role) out += FileLine(f);
    }
  }
  const uint64_t files = r["totals"]["files"].get<uint64_t>();
  const uint64_t bytes = r["totals"]["bytes"].get<uint64_t>();
  out += "\ntotal: " + std::to_string(files) + (files == 1 ? " file, " : " files, ") + std::to_string(bytes) +
         " bytes (" + HumanSize(bytes) + ")\n";
  return out;
}

// ---- diff ------------------------------------------------------------------

json Change(const json& from, const json& to) { return {{"old", from}, {"new", to}}; }

StatusOr<json> Diff(const std::string& old_path, const std::string& new_path) {
  std::string old_bytes, new_bytes;
  ASSIGN_OR_RETURN(Manifest a, ReadManifest(old_path, &old_bytes));
  ASSIGN_OR_RETURN(Manifest b, ReadManifest(new_path, &new_bytes));
  const std::string old_sha = ToHex(Sha256(Bytes(old_bytes)));
  const std::string new_sha = ToHex(Sha256(Bytes(new_bytes)));

  json fields = json::object();
  auto compare = [&fields](const char* name, const json& x, const json& y) {
    if (x != y) fields[name] = Change(x, y);
  };
  compare("product", a.product, b.product);
  compare("release", a.release, b.release);
  compare("manifest_version", a.manifest_version, b.manifest_version);
  compare("integrity_level", a.integrity_level, b.integrity_level);
  compare("created", a.created, b.created);
  compare("kernel_cmdline", a.kernel_cmdline, b.kernel_cmdline);
  compare("build.source_commit", a.build.source_commit, b.build.source_commit);
  compare("build.compiler", a.build.compiler, b.build.compiler);
  compare("build.builder", a.build.builder, b.build.builder);

  json deps = json::object();
  std::set<std::string> dep_names;
  for (const auto& [name, v] : a.build.dependencies) dep_names.insert(name);
  for (const auto& [name, v] : b.build.dependencies) dep_names.insert(name);
  for (const std::string& name : dep_names) {
    const auto x = a.build.dependencies.find(name);
    const auto y = b.build.dependencies.find(name);
    const json from = x == a.build.dependencies.end() ? json(nullptr) : json(x->second);
    const json to = y == b.build.dependencies.end() ? json(nullptr) : json(y->second);
    if (from != to) deps[name] = Change(from, to);
  }

  json signers = {{"added", json::array()}, {"removed", json::array()}};
  for (const std::string& id : b.signers) {
    if (std::find(a.signers.begin(), a.signers.end(), id) == a.signers.end()) signers["added"].push_back(id);
  }
  for (const std::string& id : a.signers) {
    if (std::find(b.signers.begin(), b.signers.end(), id) == b.signers.end()) signers["removed"].push_back(id);
  }

  std::map<std::string, const FileEntry*> old_files, new_files;
  for (const FileEntry& f : a.files) old_files.emplace(f.path, &f);
  for (const FileEntry& f : b.files) new_files.emplace(f.path, &f);
  json added = json::array(), removed = json::array(), changed = json::array();
  size_t unchanged = 0;
  for (const auto& [path, f] : new_files) {
    if (!old_files.contains(path)) added.push_back(FileJson(*f));
  }
  for (const auto& [path, f] : old_files) {
    const auto it = new_files.find(path);
    if (it == new_files.end()) {
      removed.push_back(FileJson(*f));
      continue;
    }
    const FileEntry& g = *it->second;
    json what = json::object();
    if (f->sha256 != g.sha256) what["sha256"] = Change(f->sha256, g.sha256);
    if (f->size != g.size) what["size"] = Change(f->size, g.size);
    if (f->mode != g.mode) what["mode"] = Change(ModeString(f->mode), ModeString(g.mode));
    if (f->role != g.role) what["role"] = Change(f->role, g.role);
    if (what.empty()) {
      ++unchanged;
    } else {
      changed.push_back({{"path", path}, {"changes", std::move(what)}});
    }
  }

  std::string chain;
  if (b.previous_manifest_sha256.empty()) {
    chain = "none";  // NEW names no previous manifest
  } else if (b.previous_manifest_sha256 == old_sha) {
    chain = "linked";  // NEW.previous_manifest_sha256 is OLD's sha256
  } else {
    chain = "other";  // NEW names a previous manifest other than OLD
  }
  return json{{"old", {{"manifest", old_path}, {"manifest_sha256", old_sha}}},
              {"new", {{"manifest", new_path}, {"manifest_sha256", new_sha}}},
              {"chain", chain},
              {"version_goes_up", b.manifest_version > a.manifest_version},
              {"fields", std::move(fields)},
              {"dependencies", std::move(deps)},
              {"signers", std::move(signers)},
              {"files", {{"added", std::move(added)}, {"removed", std::move(removed)},
                         {"changed", std::move(changed)}, {"unchanged", unchanged}}}};
}

std::string ValueText(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

std::string DiffText(const json& r) {
  std::string out;
  out += "old: " + r["old"]["manifest"].get<std::string>() + " (sha256 " + r["old"]["manifest_sha256"].get<std::string>() +
         ")\n";
  out += "new: " + r["new"]["manifest"].get<std::string>() + " (sha256 " + r["new"]["manifest_sha256"].get<std::string>() +
         ")\n";
  const std::string chain = r["chain"].get<std::string>();
  if (chain == "linked") {
    out += "chain: new.previous_manifest_sha256 is old's sha256 (new follows old)\n";
  } else if (chain == "none") {
    out += "chain: new names no previous manifest\n";
  } else {
    out += "chain: BROKEN: new.previous_manifest_sha256 is not old's sha256\n";
  }
  if (!r["version_goes_up"].get<bool>()) out += "WARNING: manifest_version does not go up (rollback?)\n";

  const json& fields = r["fields"];
  const json& deps = r["dependencies"];
  const json& signers = r["signers"];
  if (fields.empty() && deps.empty() && signers["added"].empty() && signers["removed"].empty()) {
    out += "\nmanifest fields: unchanged\n";
  } else {
    out += "\nmanifest fields:\n";
    // The fields an auditor looks at first come first.
    for (const char* name : {"integrity_level", "manifest_version", "product", "release", "created", "kernel_cmdline",
                             "build.source_commit", "build.compiler", "build.builder"}) {
      if (!fields.contains(name)) continue;
      const json& c = fields[name];
      out += std::string("  ") + name + ": " + ValueText(c["old"]) + " -> " + ValueText(c["new"]) + "\n";
    }
    for (const auto& [name, c] : deps.items()) {
      out += "  build.dependencies." + name + ": " + (c["old"].is_null() ? "(none)" : ValueText(c["old"])) + " -> " +
             (c["new"].is_null() ? "(none)" : ValueText(c["new"])) + "\n";
    }
    for (const auto& id : signers["added"]) out += "  signer added: " + id.get<std::string>() + "\n";
    for (const auto& id : signers["removed"]) out += "  signer removed: " + id.get<std::string>() + "\n";
  }

  const json& files = r["files"];
  out += "\nfiles: " + std::to_string(files["added"].size()) + " added, " + std::to_string(files["removed"].size()) +
         " removed, " + std::to_string(files["changed"].size()) + " changed, " +
         std::to_string(files["unchanged"].get<uint64_t>()) + " unchanged\n";
  for (const auto& f : files["added"]) {
    out += "  + " + f["path"].get<std::string>() + " (" + f["role"].get<std::string>() + ", " +
           std::to_string(f["size"].get<uint64_t>()) + " bytes, mode " + f["mode"].get<std::string>() + ", sha256 " +
           f["sha256"].get<std::string>() + ")\n";
  }
  for (const auto& f : files["removed"]) {
    out += "  - " + f["path"].get<std::string>() + " (" + f["role"].get<std::string>() + ", " +
           std::to_string(f["size"].get<uint64_t>()) + " bytes, sha256 " + f["sha256"].get<std::string>() + ")\n";
  }
  for (const auto& f : files["changed"]) {
    out += "  ~ " + f["path"].get<std::string>() + "\n";
    for (const auto& [what, c] : f["changes"].items()) {
      out += "      " + what + ": " + ValueText(c["old"]) + " -> " + ValueText(c["new"]) + "\n";
    }
  }
  return out;
}

// ---- sha256sums ------------------------------------------------------------

StatusOr<json> Sha256Sums(const std::string& manifest_path, const std::string& sig_dir,
                          const std::vector<std::string>& pubkeys, uint64_t threshold) {
  Manifest m;
  if (!pubkeys.empty()) {
    ASSIGN_OR_RETURN(VerifiedManifest v, ReadVerifiedManifest(manifest_path, sig_dir, pubkeys, threshold));
    m = std::move(v.manifest);
  } else {
    ASSIGN_OR_RETURN(m, ReadManifest(manifest_path));
  }
  json files = json::array();
  for (const FileEntry& f : m.files) files.push_back({{"path", f.path}, {"sha256", f.sha256}});
  return json{{"manifest", manifest_path}, {"signature_checked", !pubkeys.empty()}, {"files", std::move(files)},
              {"sha256sums", ToSha256Sums(m)}};
}

// ---- main ------------------------------------------------------------------

int Fail(const Status& s, bool as_json) {
  if (as_json) std::cout << Dump(json{{"error", s.message()}}) << std::flush;
  std::cerr << "error: " << s.message() << "\n";
  return 1;
}

// Prints a command's result as text or JSON.
int Emit(const StatusOr<json>& result, bool as_json, std::string (*text)(const json&)) {
  if (!result.ok()) return Fail(result.status(), as_json);
  std::cout << (as_json ? Dump(*result) : text(*result));
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "error: writing to stdout failed\n";
    return 1;
  }
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"Create, sign, verify, show and compare sealed-appliance image manifests"};
  app.require_subcommand(1, 1);
  bool as_json = false;

  std::string keygen_out;
  CLI::App* keygen = app.add_subcommand("keygen", "Generate an Ed25519 key pair: PREFIX.key (0600) and PREFIX.pub");
  keygen->add_option("--out", keygen_out, "Output prefix")->required();

  CreateOptions c;
  CLI::App* create = app.add_subcommand("create", "Hash a staged image tree into a canonical manifest");
  create->add_option("--root", c.root, "Image root directory")->required();
  create->add_option("--level", c.level, "Integrity level (L1..L4)")->required();
  create->add_option("--version", c.version, "manifest_version (monotonic, >= 1)")->required();
  create->add_option("--product", c.product, "Product name")->required();
  create->add_option("--release", c.release, "Release string")->required();
  create->add_option("--cmdline", c.cmdline, "Kernel command line the image boots with")->required();
  create->add_option("--signer", c.signers, "Public key (PEM) of a signer (repeatable; at least one)")->required();
  create->add_option("--previous", c.previous, "The previous release's manifest.json (its sha256 is recorded)");
  create->add_option("--source-commit", c.source_commit, "Source commit recorded in build provenance")
      ->capture_default_str();
  create->add_option("--compiler", c.compiler, "Compiler recorded in build provenance")->capture_default_str();
  create->add_option("--builder", c.builder, "Builder recorded in build provenance")->capture_default_str();
  create->add_option("--dependency", c.dependencies, "NAME=VERSION recorded in build provenance (repeatable)");
  create->add_option("--role", c.roles, "PATH=ROLE for a file without a default role (repeatable)");
  create->add_option("--out", c.out, "Output manifest file")->required();

  std::string sign_key, sign_manifest, sign_dir;
  CLI::App* sign = app.add_subcommand("sign", "Sign a manifest's exact bytes: SIGDIR/<key id>.sig (64 raw bytes)");
  sign->add_option("--key", sign_key, "Private key (PEM); its key id must be among the manifest's signers")
      ->required();
  sign->add_option("--manifest", sign_manifest, "Manifest file")->required();
  sign->add_option("--sig-dir", sign_dir, "Signature directory (default: 'signatures' beside the manifest)");

  VerifyOptions v;
  CLI::App* verify =
      app.add_subcommand("verify", "Check a manifest's signatures (threshold) and, with --root, a tree against it");
  verify->add_option("--manifest", v.manifest, "Manifest file")->required();
  verify->add_option("--sig-dir", v.sig_dir, "Signature directory (default: 'signatures' beside the manifest)");
  verify->add_option("--pubkey", v.pubkeys, "Trusted (pinned) public key, PEM (repeatable)")->required();
  verify->add_option("--threshold", v.threshold, "Valid signatures by distinct trusted keys required")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{kMaxSigners}));
  verify->add_option("--level", v.level, "Refuse a manifest of another integrity level");
  verify->add_option("--min-version", v.min_version, "Refuse a manifest_version below this (rollback)");
  verify->add_option("--root", v.root, "Image root directory to verify against the manifest");

  std::string show_manifest;
  CLI::App* show = app.add_subcommand("show", "Print a manifest as a report (does not check signatures)");
  show->add_option("--manifest", show_manifest, "Manifest file")->required();

  std::string diff_old, diff_new;
  CLI::App* diff = app.add_subcommand("diff", "Compare two manifests: files added/removed/changed, fields, signers");
  diff->add_option("old", diff_old, "The older manifest")->required();
  diff->add_option("new", diff_new, "The newer manifest")->required();

  std::string sums_manifest, sums_dir;
  std::vector<std::string> sums_pub;
  uint64_t sums_threshold = 1;
  CLI::App* sums = app.add_subcommand("sha256sums", "Print the listed files in `sha256sum -c` format");
  sums->add_option("--manifest", sums_manifest, "Manifest file")->required();
  sums->add_option("--sig-dir", sums_dir, "Signature directory (default: 'signatures' beside the manifest)");
  sums->add_option("--pubkey", sums_pub, "Check the signatures with these trusted keys first (repeatable)");
  sums->add_option("--threshold", sums_threshold, "With --pubkey: valid signatures required")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{kMaxSigners}));

  for (CLI::App* sub : {keygen, create, sign, verify, show, diff, sums}) {
    sub->add_flag("--json", as_json, "One JSON document on stdout");
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "error: " << e.what() << " (run with --help for usage)\n";
    return 2;
  }

  if (*keygen) return Emit(Keygen(keygen_out), as_json, KeygenText);
  if (*create) return Emit(Create(c), as_json, CreateText);
  if (*sign) return Emit(SignCommand(sign_key, sign_manifest, sign_dir), as_json, SignText);
  if (*show) return Emit(Show(show_manifest), as_json, ShowText);
  if (*diff) return Emit(Diff(diff_old, diff_new), as_json, DiffText);
  if (*sums) {
    return Emit(Sha256Sums(sums_manifest, sums_dir, sums_pub, sums_threshold), as_json,
                [](const json& r) { return r["sha256sums"].get<std::string>(); });
  }
  if (*verify) {
    StatusOr<json> result = VerifyCommand(v);
    if (!result.ok()) {
      if (as_json) {
        std::cout << Dump(json{{"ok", false}, {"manifest", v.manifest}, {"reason", result.status().message()}});
      } else {
        std::cout << "FAILED: " << result.status().message() << "\n";
      }
      std::cout.flush();
      return 1;
    }
    return Emit(result, as_json, VerifyText);
  }
  return 2;
}

}  // namespace
}  // namespace appliance::manifest

int main(int argc, char** argv) {
  // No exception crosses main: CLI11, nlohmann and the standard library may
  // throw (bad_alloc); report it like any other error.
  try {
    return appliance::manifest::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
