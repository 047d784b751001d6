#include "image/image_builder.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <utility>

#include "base/fd.h"
#include "base/mapped_file.h"
#include "image/cpio_writer.h"
#include "image/file_util.h"
#include "image/kernel_modules.h"
#include "image/runtime_config.h"
#include "image/shared_libs.h"
#include "manifests/build_provenance.h"
#include "manifests/crypto.h"
#include "manifests/manifest.h"
#include "manifests/signatures.h"

namespace appliance::image {

namespace {

namespace mf = appliance::manifest;

// One file of the image: where it goes, what it is, and its bytes (a mapping
// of the host file, or bytes generated here). The manifest hash is computed
// from exactly the bytes that are archived.
struct ImageFile {
  std::string path;
  std::string role;
  unsigned mode = 0;
  std::string source;  // host path or "(generated)", for messages
  MappedFile mapped;
  std::string generated;
  bool is_generated = false;

  std::span<const uint8_t> bytes() const {
    if (is_generated) return {reinterpret_cast<const uint8_t*>(generated.data()), generated.size()};
    return mapped.bytes();
  }
};

std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

StatusOr<ImageFile> MapHostFile(const std::string& host_path, std::string image_path, std::string role,
                                unsigned mode) {
  StatusOr<MappedFile> mapped = MappedFile::Open(host_path);
  if (!mapped.ok()) return mapped.status();
  ImageFile f;
  f.path = std::move(image_path);
  f.role = std::move(role);
  f.mode = mode;
  f.source = host_path;
  f.mapped = std::move(mapped).value();
  if (f.mapped.size() > kMaxNewcFileBytes) {
    return Status::Error(host_path + ": " + std::to_string(f.mapped.size()) +
                         " bytes, more than a cpio newc entry can hold (4 GiB - 1)");
  }
  return f;
}

Status CheckElf(const ImageFile& f, std::string_view what) {
  auto b = f.bytes();
  static constexpr uint8_t kMagic[4] = {0x7f, 'E', 'L', 'F'};
  if (b.size() < 64 || !std::equal(kMagic, kMagic + 4, b.begin())) {
    return Status::Error(std::string(what) + " " + f.source + ": not an ELF executable");
  }
  return Status::Ok();
}

Status CheckGguf(const ImageFile& f) {
  auto b = f.bytes();
  static constexpr uint8_t kMagic[4] = {'G', 'G', 'U', 'F'};
  if (b.size() < 24 || !std::equal(kMagic, kMagic + 4, b.begin())) {
    return Status::Error("model " + f.source + ": not a GGUF file (no 'GGUF' magic)");
  }
  return Status::Ok();
}

// Cheap up-front check that `path` is a readable regular file, so a typo is
// reported before any heavy work: "model /x.gguf: No such file or directory".
Status CheckReadableFile(const std::string& path, std::string_view what) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return PosixError(std::string(what) + " " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError(std::string(what) + " " + path);
  if (!S_ISREG(st.st_mode)) return Status::Error(std::string(what) + " " + path + ": not a regular file");
  return Status::Ok();
}

Status CheckOptions(const BuildOptions& o) {
  if (o.model.empty()) return Status::Error("no model given (--model)");
  if (o.key.empty()) return Status::Error("no signing key given (--key)");
  if (o.out_dir.empty()) return Status::Error("no output folder given (--out)");
  if (o.init.empty()) return Status::Error("no appliance-init given (--init; this build has no default)");
  if (o.runtime.empty()) return Status::Error("no appliance-runtime given (--runtime; this build has no default)");
  if (o.kernel_dir.empty()) return Status::Error("no kernel folder given (--kernel-dir)");
  if (o.level.size() != 2 || o.level[0] != 'L' || o.level[1] < '1' || o.level[1] > '4') {
    return Status::Error("integrity level must be one of L1 L2 L3 L4, got '" + o.level + "'");
  }
  if (o.manifest_version < 1) return Status::Error("manifest version must be at least 1");
  if (o.created < 0 || o.created > kMaxNewcTime) {
    return Status::Error("SOURCE_DATE_EPOCH " + std::to_string(o.created) + " out of range");
  }
  return Status::Ok();
}

// A signer: its private key and the id of its public half.
struct Signer {
  std::string path;
  std::string private_pem;
  std::string public_pem;
  std::string key_id;
};

StatusOr<Signer> LoadSigner(const std::string& path) {
  StatusOr<std::string> key_pem = ReadFileBounded(path, kMaxKeyBytes);
  if (!key_pem.ok()) return key_pem.status().Context("signing key");
  StatusOr<std::string> public_pem = mf::PublicPemFromPrivatePem(*key_pem);
  if (!public_pem.ok()) return public_pem.status().Context("signing key " + path);
  ASSIGN_OR_RETURN(std::string key_id, mf::KeyIdFromPublicPem(*public_pem));
  return Signer{path, std::move(*key_pem), std::move(*public_pem), std::move(key_id)};
}

// Build provenance: what CMake found at configure time (git commit, compiler,
// dependency versions), the kernel package, and this tool. Never the clock.
mf::BuildProvenance Provenance(const BuildOptions& o) {
  mf::BuildProvenance b;
  b.source_commit = o.source_commit.empty() ? std::string(mf::provenance::kSourceCommit) : o.source_commit;
  b.compiler = std::string(mf::provenance::kCompiler);
  b.builder = "appliance-image " + std::string(mf::provenance::kProjectVersion);
  for (const auto& [name, version] : mf::provenance::kDependencies) b.dependencies.emplace(name, version);
  // scripts/fetch-kernel writes "<package> <version>": the kernel the image
  // boots is not in the initramfs, so its package is recorded here.
  StatusOr<std::string> package = ReadFileBounded(o.kernel_dir + "/package", 4096);
  if (package.ok()) {
    std::string line = package->substr(0, package->find('\n'));
    if (!line.empty()) b.dependencies["kernel"] = line;
  }
  return b;
}

// Removes signature files of an earlier build from the output folder, so the
// folder holds exactly this manifest's signatures.
Status CleanSignatureDir(const std::string& dir, const std::vector<std::string>& keep) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    std::optional<std::string> id = mf::KeyIdFromSignatureFileName(name);
    if (id && std::find(keep.begin(), keep.end(), *id) == keep.end()) {
      std::error_code rm_ec;
      std::filesystem::remove(entry.path(), rm_ec);
      if (rm_ec) return Status::Error("remove stale signature " + entry.path().string() + ": " + rm_ec.message());
    }
  }
  if (ec) return Status::Error("list " + dir + ": " + ec.message());
  return Status::Ok();
}

}  // namespace

StatusOr<int64_t> ParseSourceDateEpoch(const char* value) {
  if (value == nullptr || *value == '\0') return int64_t{0};
  std::string_view s(value);
  if (s.size() > 10 || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return Status::Error("SOURCE_DATE_EPOCH='" + std::string(s) + "': not a decimal number of seconds");
  }
  int64_t v = 0;
  for (char c : s) v = v * 10 + (c - '0');
  if (v > kMaxNewcTime) return Status::Error("SOURCE_DATE_EPOCH=" + std::string(s) + ": after 2106, newc cannot store it");
  return v;
}

StatusOr<BuildReport> BuildImage(const BuildOptions& o) {
  RETURN_IF_ERROR(CheckOptions(o));
  RETURN_IF_ERROR(CheckReadableFile(o.model, "model"));

  // The signing keys before any heavy work; one signature per distinct key.
  std::map<std::string, Signer> signers;
  for (const std::string& path : [&o] {
         std::vector<std::string> all = {o.key};
         all.insert(all.end(), o.extra_keys.begin(), o.extra_keys.end());
         return all;
       }()) {
    ASSIGN_OR_RETURN(Signer signer, LoadSigner(path));
    if (signers.contains(signer.key_id)) {
      return Status::Error("signing key " + path + ": key " + signer.key_id + " given twice");
    }
    signers.emplace(signer.key_id, std::move(signer));
  }
  if (signers.size() > mf::kMaxSigners) {
    return Status::Error(std::to_string(signers.size()) + " signing keys, more than the limit of " +
                         std::to_string(mf::kMaxSigners));
  }

  // The previous release's manifest: recorded by its sha256; the version must go up.
  std::string previous_sha256;
  if (!o.previous_manifest.empty()) {
    StatusOr<std::string> bytes = ReadFileBounded(o.previous_manifest, mf::kMaxManifestBytes);
    if (!bytes.ok()) return bytes.status().Context("previous manifest");
    StatusOr<mf::Manifest> previous = mf::Parse(AsBytes(*bytes));
    if (!previous.ok()) return previous.status().Context("previous manifest " + o.previous_manifest);
    if (previous->manifest_version >= o.manifest_version) {
      return Status::Error("manifest version " + std::to_string(o.manifest_version) + " is not above " +
                           std::to_string(previous->manifest_version) + " of the previous manifest " +
                           o.previous_manifest + " (manifest_version only goes up)");
    }
    if (previous->product != kProductName) {
      return Status::Error("previous manifest " + o.previous_manifest + " is for product '" + previous->product +
                           "', not '" + kProductName + "'");
    }
    previous_sha256 = mf::ToHex(mf::Sha256(AsBytes(*bytes)));
  }

  RETURN_IF_ERROR(CheckReadableFile(o.init, "init"));
  RETURN_IF_ERROR(CheckReadableFile(o.runtime, "runtime"));
  const std::string kernel = o.kernel_dir + "/vmlinuz";
  if (Status s = CheckReadableFile(kernel, "kernel"); !s.ok()) {
    return Status::Error(s.message() + " (scripts/fetch-kernel " + o.kernel_dir + " fetches it)");
  }

  std::vector<ImageFile> files;

  // init: static, PID 1.
  {
    StatusOr<ImageFile> f = MapHostFile(o.init, "init", "init", 0755);
    if (!f.ok()) return f.status().Context("init");
    RETURN_IF_ERROR(CheckElf(*f, "init"));
    ASSIGN_OR_RETURN(LddResult deps, ResolveSharedLibraries(o.init));
    if (!deps.is_static) return Status::Error("init " + o.init + ": dynamically linked; appliance-init must be static");
    files.push_back(std::move(f).value());
  }

  // The runtime and every shared library it needs.
  size_t libraries = 0;
  {
    StatusOr<ImageFile> f = MapHostFile(o.runtime, kRuntimePath, "runtime", 0755);
    if (!f.ok()) return f.status().Context("runtime");
    RETURN_IF_ERROR(CheckElf(*f, "runtime"));
    files.push_back(std::move(f).value());
    ASSIGN_OR_RETURN(LddResult deps, ResolveSharedLibraries(o.runtime));
    if (!deps.is_static) {
      if (deps.loader != std::string("/") + kLoaderImagePath) {
        return Status::Error("runtime " + o.runtime + ": program interpreter " + deps.loader + ", expected /" +
                             kLoaderImagePath);
      }
      StatusOr<ImageFile> loader = MapHostFile(deps.loader, kLoaderImagePath, "library", 0755);
      if (!loader.ok()) return loader.status().Context("program interpreter");
      files.push_back(std::move(loader).value());
      ++libraries;
      for (const SharedLibrary& lib : deps.libraries) {
        StatusOr<ImageFile> l = MapHostFile(lib.host_path, std::string(kLibraryDir) + "/" + lib.soname, "library", 0755);
        if (!l.ok()) return l.status().Context("shared library " + lib.soname);
        RETURN_IF_ERROR(CheckElf(*l, "shared library"));
        files.push_back(std::move(l).value());
        ++libraries;
      }
    }
  }

  // The model.
  {
    StatusOr<ImageFile> f = MapHostFile(o.model, kModelPath, "model", 0444);
    if (!f.ok()) return f.status().Context("model");
    RETURN_IF_ERROR(CheckGguf(*f));
    files.push_back(std::move(f).value());
  }

  // Kernel modules (and what they depend on), in load order.
  std::vector<std::string> module_paths;
  {
    ASSIGN_OR_RETURN(std::vector<ModuleFile> modules, ResolveModules(o.kernel_dir, o.modules));
    for (const ModuleFile& m : modules) {
      StatusOr<ImageFile> f = MapHostFile(m.host_path, m.image_path, "module", 0444);
      if (!f.ok()) return f.status().Context("kernel module " + m.name);
      files.push_back(std::move(f).value());
      module_paths.push_back(m.image_path);
    }
  }

  // The runtime configuration.
  {
    ASSIGN_OR_RETURN(RuntimeConfig config, StandardRuntimeConfig(o.threads, module_paths));
    ImageFile f;
    f.path = kRuntimeConfigPath;
    f.role = "config";
    f.mode = 0444;
    f.source = "(generated)";
    f.generated = RenderRuntimeConfig(config);
    f.is_generated = true;
    files.push_back(std::move(f));
  }

  std::sort(files.begin(), files.end(), [](const ImageFile& a, const ImageFile& b) { return a.path < b.path; });

  // The manifest, from the bytes that are archived.
  mf::Manifest m;
  m.manifest_version = o.manifest_version;
  m.integrity_level = o.level;
  m.product = kProductName;
  m.release = o.release;
  m.created = o.created;
  m.kernel_cmdline = kKernelCmdline;
  m.build = Provenance(o);
  m.previous_manifest_sha256 = previous_sha256;
  for (const auto& [id, signer] : signers) m.signers.push_back(id);
  for (const ImageFile& f : files) {
    mf::FileEntry e;
    e.path = f.path;
    e.size = f.bytes().size();
    e.mode = f.mode;
    e.sha256 = mf::ToHex(mf::Sha256(f.bytes()));
    e.role = f.role;
    m.files.push_back(std::move(e));
  }
  if (Status s = mf::Validate(m); !s.ok()) return s.Context("manifest");
  const std::string manifest_bytes = mf::Serialize(m);
  // Key id -> signature, each checked back before it is written anywhere.
  std::map<std::string, std::string> signatures;
  for (const auto& [id, signer] : signers) {
    StatusOr<std::string> signature = mf::Sign(AsBytes(manifest_bytes), signer.private_pem);
    if (!signature.ok()) return signature.status().Context("sign manifest with " + signer.path);
    if (signature->size() != mf::kEd25519SignatureBytes) {
      return Status::Error("sign manifest: signature of " + std::to_string(signature->size()) + " bytes, expected 64");
    }
    if (Status s = mf::Verify(AsBytes(manifest_bytes), AsBytes(*signature), signer.public_pem); !s.ok()) {
      return s.Context("verify the new manifest signature");
    }
    signatures.emplace(id, std::move(*signature));
  }
  std::vector<std::string> signature_paths;  // image paths, kept alive for the archive entries
  for (const auto& [id, sig] : signatures) signature_paths.push_back(std::string(kSignatureDir) + "/" + mf::SignatureFileName(id));

  // The archive.
  std::vector<ArchiveEntry> entries;
  for (const ImageFile& f : files) {
    ArchiveEntry e;
    e.path = f.path;
    e.type = EntryType::kRegular;
    e.mode = f.mode;
    e.data = f.bytes();
    entries.push_back(std::move(e));
  }
  std::vector<std::pair<std::string, const std::string*>> sealed = {{kManifestPath, &manifest_bytes}};
  {
    size_t i = 0;
    for (const auto& [id, sig] : signatures) sealed.emplace_back(signature_paths[i++], &sig);
  }
  for (const auto& [path, bytes] : sealed) {
    ArchiveEntry e;
    e.path = path;
    e.type = EntryType::kRegular;
    e.mode = 0444;
    e.data = AsBytes(*bytes);
    entries.push_back(std::move(e));
  }
  for (const char* dir : {"dev", "proc", "sys", "run", "tmp"}) {
    ArchiveEntry e;
    e.path = dir;
    e.type = EntryType::kDirectory;
    e.mode = 0755;
    entries.push_back(std::move(e));
  }
  {
    ArchiveEntry e;
    e.path = "dev/console";
    e.type = EntryType::kCharDevice;
    e.mode = 0600;
    e.rdev_major = 5;
    e.rdev_minor = 1;
    entries.push_back(std::move(e));
  }
  AddMissingParentDirectories(entries, 0755);

  RETURN_IF_ERROR(MakeDirs(o.out_dir));
  const std::string initramfs = o.out_dir + "/initramfs.cpio";
  if (Status s = WriteNewcArchive(std::move(entries), o.created, initramfs); !s.ok()) return s.Context("write image");
  RETURN_IF_ERROR(CopyFileAtomic(kernel, o.out_dir + "/vmlinuz", 0644));
  RETURN_IF_ERROR(WriteFileAtomic(o.out_dir + "/cmdline", std::string(kKernelCmdline) + "\n", 0644));
  RETURN_IF_ERROR(WriteFileAtomic(o.out_dir + "/manifest.json", manifest_bytes, 0644));
  // For auditors: the signatures (one file per signer, as in the image) and
  // the listed files in `sha256sum -c` form (docs/compliance.md).
  const std::string sig_dir = o.out_dir + "/signatures";
  RETURN_IF_ERROR(MakeDirs(sig_dir));
  std::vector<std::string> key_ids;
  for (const auto& [id, sig] : signatures) {
    RETURN_IF_ERROR(WriteFileAtomic(sig_dir + "/" + mf::SignatureFileName(id), sig, 0644));
    key_ids.push_back(id);
  }
  RETURN_IF_ERROR(CleanSignatureDir(sig_dir, key_ids));
  RETURN_IF_ERROR(WriteFileAtomic(o.out_dir + "/SHA256SUMS", mf::ToSha256Sums(m), 0644));

  struct stat ist {};
  if (::stat(initramfs.c_str(), &ist) != 0) return PosixError("stat " + initramfs);
  BuildReport report;
  report.initramfs = initramfs;
  report.initramfs_bytes = static_cast<uint64_t>(ist.st_size);
  report.files = files.size();
  report.libraries = libraries;
  report.modules = module_paths.size();
  for (const std::string& id : key_ids) report.key_id += (report.key_id.empty() ? "" : ", ") + id;
  report.key_ids = key_ids;
  report.manifest_sha256 = mf::ToHex(mf::Sha256(AsBytes(manifest_bytes)));
  report.previous_manifest_sha256 = previous_sha256;
  return report;
}

}  // namespace appliance::image
