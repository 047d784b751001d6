// appliance-manifest: create, sign, verify and show image manifests.
//
//   keygen --out PREFIX
//   create --root DIR --level L1 --version N --product P --release R --cmdline "..." [--role PATH=ROLE]... --out M
//   sign --key K.key --manifest M [--out M.sig]
//   verify --manifest M --sig S --pubkey K.pub [--root DIR]
//   show --manifest M [--json]
//   sha256sums --manifest M [--sig S --pubkey K.pub]
//
// Errors are printed once, here: "error: <message>" on stderr, exit 1 (2 for
// usage errors). `verify` reports its verdict on stdout as "OK: ..." (exit 0)
// or "FAILED: <reason>" (exit 1).
#include <fcntl.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/status.h"
#include "manifests/crypto.h"
#include "manifests/io.h"
#include "manifests/manifest.h"
#include "manifests/tree_verify.h"

namespace appliance::manifest {
namespace {

constexpr size_t kMaxKeyFileBytes = 64 * 1024;

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

StatusOr<std::string> ReadManifestFile(const std::string& path) {
  return ReadFileBounded(AT_FDCWD, path, kMaxManifestBytes);
}

StatusOr<std::string> ReadSignatureFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string sig, ReadFileBounded(AT_FDCWD, path, kEd25519SignatureBytes));
  if (sig.size() != kEd25519SignatureBytes) {
    return Status::Error(path + ": " + std::to_string(sig.size()) + " bytes, an Ed25519 signature has 64");
  }
  return sig;
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

// ---- keygen ----------------------------------------------------------------

Status Keygen(const std::string& prefix) {
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
  std::cout << "private key: " << prefix << ".key (mode 0600; keep it off the image)\n"
            << "public key:  " << prefix << ".pub\n"
            << "key id: " << id << "\n";
  return Status::Ok();
}

// ---- create ----------------------------------------------------------------

struct CreateOptions {
  std::string root;
  std::string level;
  std::string version;
  std::string product;
  std::string release;
  std::string cmdline;
  std::vector<std::string> roles;
  std::string out;
};

Status Create(const CreateOptions& o) {
  std::map<std::string, std::string> roles;
  for (const std::string& spec : o.roles) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      return Status::Error("--role: expected PATH=ROLE, got '" + EscapeForMessage(spec) + "'");
    }
    std::string path = spec.substr(0, eq);
    if (!roles.emplace(path, spec.substr(eq + 1)).second) return Status::Error("--role: " + path + " given twice");
  }

  Manifest m;
  ASSIGN_OR_RETURN(m.manifest_version, ParseUnsigned(o.version, "--version"));
  m.integrity_level = o.level;
  m.product = o.product;
  m.release = o.release;
  m.kernel_cmdline = o.cmdline;
  ASSIGN_OR_RETURN(m.created, CreatedFromEnvironment());

  ASSIGN_OR_RETURN(UniqueFd root, OpenRoot(o.root));
  const TreePolicy policy;  // the image's policy: exempt manifest/sig, mount points, dev/console
  StatusOr<std::vector<FileEntry>> files = ScanTree(root.get(), policy, roles);
  if (!files.ok()) return files.status().Context(o.root);
  m.files = std::move(*files);
  RETURN_IF_ERROR(Validate(m));

  const std::string bytes = Serialize(m);
  RETURN_IF_ERROR(WriteFileAtomic(o.out, bytes, 0644));
  uint64_t total = 0;
  for (const FileEntry& f : m.files) total += f.size;
  std::cout << "wrote " << o.out << ": " << m.files.size() << " files, " << total << " bytes ("
            << HumanSize(total) << "), manifest sha256 " << ToHex(Sha256(Bytes(bytes))) << "\n";
  return Status::Ok();
}

// ---- sign ------------------------------------------------------------------

std::string DefaultSignaturePath(const std::string& manifest_path) {
  constexpr std::string_view kJson = ".json";
  if (manifest_path.size() > kJson.size() && manifest_path.ends_with(kJson)) {
    return manifest_path.substr(0, manifest_path.size() - kJson.size()) + ".sig";
  }
  return manifest_path + ".sig";
}

Status SignCommand(const std::string& key_path, const std::string& manifest_path, std::string out) {
  ASSIGN_OR_RETURN(std::string key_pem, ReadFileBounded(AT_FDCWD, key_path, kMaxKeyFileBytes));
  ASSIGN_OR_RETURN(std::string bytes, ReadManifestFile(manifest_path));
  // Refuse to sign what init would refuse to parse.
  StatusOr<Manifest> parsed = Parse(Bytes(bytes));
  if (!parsed.ok()) return parsed.status().Context(manifest_path);
  ASSIGN_OR_RETURN(std::string signature, Sign(Bytes(bytes), key_pem));
  ASSIGN_OR_RETURN(std::string public_pem, PublicPemFromPrivatePem(key_pem));
  ASSIGN_OR_RETURN(std::string id, KeyIdFromPublicPem(public_pem));
  if (out.empty()) out = DefaultSignaturePath(manifest_path);
  RETURN_IF_ERROR(WriteFileAtomic(out, signature, 0644));
  std::cout << "wrote " << out << ": Ed25519 signature of " << manifest_path << " (sha256 "
            << ToHex(Sha256(Bytes(bytes))) << ") by key " << id << "\n";
  return Status::Ok();
}

// ---- verify ----------------------------------------------------------------

// Signature first, over the raw bytes; only signed bytes are parsed.
StatusOr<Manifest> ReadVerifiedManifest(const std::string& manifest_path, const std::string& sig_path,
                                        const std::string& pubkey_path, std::string* key_id) {
  ASSIGN_OR_RETURN(std::string public_pem, ReadFileBounded(AT_FDCWD, pubkey_path, kMaxKeyFileBytes));
  ASSIGN_OR_RETURN(*key_id, KeyIdFromPublicPem(public_pem));
  ASSIGN_OR_RETURN(std::string bytes, ReadManifestFile(manifest_path));
  ASSIGN_OR_RETURN(std::string signature, ReadSignatureFile(sig_path));
  RETURN_IF_ERROR(Verify(Bytes(bytes), Bytes(signature), public_pem).Context(manifest_path));
  StatusOr<Manifest> m = Parse(Bytes(bytes));
  if (!m.ok()) return m.status().Context(manifest_path);
  return m;
}

StatusOr<std::string> VerifyCommand(const std::string& manifest_path, const std::string& sig_path,
                                    const std::string& pubkey_path, const std::string& root_dir) {
  std::string key_id;
  ASSIGN_OR_RETURN(Manifest m, ReadVerifiedManifest(manifest_path, sig_path, pubkey_path, &key_id));
  uint64_t total = 0;
  for (const FileEntry& f : m.files) total += f.size;
  std::string summary = manifest_path + ": signature by key " + key_id + "; " + m.product + " " + m.release +
                        ", manifest_version " + std::to_string(m.manifest_version) + ", level " +
                        m.integrity_level + ", " + std::to_string(m.files.size()) + " files (" +
                        std::to_string(total) + " bytes)";
  if (!root_dir.empty()) {
    ASSIGN_OR_RETURN(UniqueFd root, OpenRoot(root_dir));
    StatusOr<std::map<std::string, UniqueFd>> kept = VerifyTree(root.get(), m, TreePolicy{});
    if (!kept.ok()) return kept.status().Context(root_dir);
    summary += "; tree " + root_dir + " matches";
  }
  return summary;
}

// ---- show / sha256sums -----------------------------------------------------

Status Show(const std::string& manifest_path, bool as_json) {
  ASSIGN_OR_RETURN(std::string bytes, ReadManifestFile(manifest_path));
  StatusOr<Manifest> parsed = Parse(Bytes(bytes));
  if (!parsed.ok()) return parsed.status().Context(manifest_path);
  const Manifest& m = *parsed;

  struct RoleTotal {
    uint64_t files = 0;
    uint64_t bytes = 0;
  };
  static constexpr const char* kRoleOrder[] = {"init", "runtime", "library", "module", "model", "config"};
  std::map<std::string, RoleTotal> by_role;
  uint64_t total = 0;
  for (const FileEntry& f : m.files) {
    by_role[f.role].files += 1;
    by_role[f.role].bytes += f.size;
    total += f.size;
  }
  const std::string manifest_sha = ToHex(Sha256(Bytes(bytes)));

  if (as_json) {
    nlohmann::json roles = nlohmann::json::object();
    for (const auto& [role, t] : by_role) roles[role] = {{"files", t.files}, {"bytes", t.bytes}};
    nlohmann::json files = nlohmann::json::array();
    for (const FileEntry& f : m.files) {
      files.push_back({{"path", f.path}, {"size", f.size}, {"mode", ModeString(f.mode)}, {"sha256", f.sha256},
                       {"role", f.role}});
    }
    const nlohmann::json report = {
        {"manifest", manifest_path},
        {"manifest_sha256", manifest_sha},
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
        {"files", std::move(files)},
        {"totals", {{"files", m.files.size()}, {"bytes", total}, {"by_role", std::move(roles)}}},
    };
    std::cout << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return Status::Ok();
  }

  std::cout << "manifest:         " << manifest_path << " (sha256 " << manifest_sha << ")\n"
            << "signature:        not checked here (use: appliance-manifest verify)\n"
            << "format:           " << kFormatName << " v" << kFormatVersion << "\n"
            << "integrity level:  " << m.integrity_level << "\n"
            << "manifest version: " << m.manifest_version << "\n"
            << "product:          " << m.product << " " << m.release << "\n"
            << "created:          " << Utc(m.created) << " (" << m.created << ")\n"
            << "kernel cmdline:   " << m.kernel_cmdline << "\n";
  for (const char* role : kRoleOrder) {
    const auto it = by_role.find(role);
    if (it == by_role.end()) continue;
    std::cout << "\n" << role << ": " << it->second.files << (it->second.files == 1 ? " file, " : " files, ")
              << HumanSize(it->second.bytes) << "\n";
    for (const FileEntry& f : m.files) {
      if (f.role != role) continue;
      char line[64];
      std::snprintf(line, sizeof line, "  %s %12" PRIu64 "  ", ModeString(f.mode).c_str(), f.size);
      std::cout << line << f.sha256 << "  " << f.path << "\n";
    }
  }
  std::cout << "\ntotal: " << m.files.size() << (m.files.size() == 1 ? " file, " : " files, ") << total
            << " bytes (" << HumanSize(total) << ")\n";
  return Status::Ok();
}

Status Sha256Sums(const std::string& manifest_path, const std::string& sig_path, const std::string& pubkey_path) {
  Manifest m;
  if (!sig_path.empty()) {
    std::string key_id;
    ASSIGN_OR_RETURN(m, ReadVerifiedManifest(manifest_path, sig_path, pubkey_path, &key_id));
  } else {
    ASSIGN_OR_RETURN(std::string bytes, ReadManifestFile(manifest_path));
    StatusOr<Manifest> parsed = Parse(Bytes(bytes));
    if (!parsed.ok()) return parsed.status().Context(manifest_path);
    m = std::move(*parsed);
  }
  std::cout << ToSha256Sums(m);
  return Status::Ok();
}

int Fail(const Status& s) {
  std::cerr << "error: " << s.message() << "\n";
  return 1;
}

int Main(int argc, char** argv) {
  CLI::App app{"Create, sign, verify and show sealed-appliance image manifests"};
  app.require_subcommand(1, 1);

  std::string keygen_out;
  CLI::App* keygen = app.add_subcommand("keygen", "Generate an Ed25519 key pair: PREFIX.key (0600) and PREFIX.pub");
  keygen->add_option("--out", keygen_out, "Output prefix")->required();

  CreateOptions create_opts;
  CLI::App* create = app.add_subcommand("create", "Hash a staged image tree into a canonical manifest");
  create->add_option("--root", create_opts.root, "Image root directory")->required();
  create->add_option("--level", create_opts.level, "Integrity level (L1..L4)")->required();
  create->add_option("--version", create_opts.version, "manifest_version (monotonic, >= 1)")->required();
  create->add_option("--product", create_opts.product, "Product name")->required();
  create->add_option("--release", create_opts.release, "Release string")->required();
  create->add_option("--cmdline", create_opts.cmdline, "Kernel command line the image boots with")->required();
  create->add_option("--role", create_opts.roles, "PATH=ROLE for a file without a default role (repeatable)")
      ->allow_extra_args(false);
  create->add_option("--out", create_opts.out, "Output manifest file")->required();

  std::string sign_key, sign_manifest, sign_out;
  CLI::App* sign = app.add_subcommand("sign", "Sign a manifest's exact bytes (64-byte raw Ed25519 signature)");
  sign->add_option("--key", sign_key, "Private key (PEM)")->required();
  sign->add_option("--manifest", sign_manifest, "Manifest file")->required();
  sign->add_option("--out", sign_out, "Signature file (default: manifest with .json replaced by .sig)");

  std::string verify_manifest, verify_sig, verify_pub, verify_root;
  CLI::App* verify = app.add_subcommand("verify", "Check a manifest's signature and, with --root, a tree against it");
  verify->add_option("--manifest", verify_manifest, "Manifest file")->required();
  verify->add_option("--sig", verify_sig, "Signature file")->required();
  verify->add_option("--pubkey", verify_pub, "Public key (PEM)")->required();
  verify->add_option("--root", verify_root, "Image root directory to verify against the manifest");

  std::string show_manifest;
  bool show_json = false;
  CLI::App* show = app.add_subcommand("show", "Print a manifest as a report (does not check the signature)");
  show->add_option("--manifest", show_manifest, "Manifest file")->required();
  show->add_flag("--json", show_json, "Machine-readable report");

  std::string sums_manifest, sums_sig, sums_pub;
  CLI::App* sums = app.add_subcommand("sha256sums", "Print the listed files in sha256sum -c format");
  sums->add_option("--manifest", sums_manifest, "Manifest file")->required();
  CLI::Option* sums_sig_opt = sums->add_option("--sig", sums_sig, "Check this signature first");
  CLI::Option* sums_pub_opt = sums->add_option("--pubkey", sums_pub, "Public key for --sig");
  sums_sig_opt->needs(sums_pub_opt);
  sums_pub_opt->needs(sums_sig_opt);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::cerr << "error: " << e.what() << " (run with --help for usage)\n";
    return 2;
  }

  Status status;
  if (*keygen) {
    status = Keygen(keygen_out);
  } else if (*create) {
    status = Create(create_opts);
  } else if (*sign) {
    status = SignCommand(sign_key, sign_manifest, sign_out);
  } else if (*verify) {
    StatusOr<std::string> result = VerifyCommand(verify_manifest, verify_sig, verify_pub, verify_root);
    if (!result.ok()) {
      std::cout << "FAILED: " << result.status().message() << std::endl;
      return 1;
    }
    std::cout << "OK: " << *result << std::endl;
    return 0;
  } else if (*show) {
    status = Show(show_manifest, show_json);
  } else if (*sums) {
    status = Sha256Sums(sums_manifest, sums_sig, sums_pub);
  }
  if (!status.ok()) return Fail(status);
  std::cout.flush();
  if (!std::cout) return Fail(Status::Error("writing to stdout failed"));
  return 0;
}

}  // namespace
}  // namespace appliance::manifest

int main(int argc, char** argv) {
  // No exception crosses main: CLI11 and the standard library may throw
  // (bad_alloc); report it like any other error.
  try {
    return appliance::manifest::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
