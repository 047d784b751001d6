#include "init/image_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "init/build_config.h"
#include "manifests/crypto.h"
#include "manifests/signatures.h"
#include "manifests/tree_verify.h"

namespace appliance::init {

const size_t kBuildSignatureThreshold = kSignatureThreshold;

namespace {

// Reads a small regular file relative to root_fd, refusing symlinks and files
// over `limit` bytes before allocating for them.
StatusOr<std::string> ReadSmallFile(int root_fd, const char* path, size_t limit) {
  UniqueFd fd(::openat(root_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY));
  if (!fd.valid()) return PosixError(std::string("open ") + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError(std::string("fstat ") + path);
  if (!S_ISREG(st.st_mode)) return Status::Error(std::string(path) + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > limit) {
    return Status::Error(std::string(path) + ": " + std::to_string(st.st_size) + " bytes, limit " +
                         std::to_string(limit));
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return PosixError(std::string("read ") + path);
    if (n == 0) return Status::Error(std::string(path) + ": shorter than its size");
    done += static_cast<size_t>(n);
  }
  return data;
}

StatusOr<std::string> ReadAllFromFd(int fd, size_t limit, const std::string& name) {
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return PosixError("read " + name);
    if (n == 0) break;
    if (data.size() + static_cast<size_t>(n) > limit) return Status::Error(name + ": over " + std::to_string(limit) + " bytes");
    data.append(buf, static_cast<size_t>(n));
  }
  if (::lseek(fd, 0, SEEK_SET) != 0) return PosixError("lseek " + name);
  return data;
}

std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

StatusOr<VerifiedImage> VerifyImage(int root_fd, const BootPolicy& policy) {
  ASSIGN_OR_RETURN(std::vector<manifest::TrustedKey> pinned, manifest::TrustKeys(policy.pinned_public_keys));
  ASSIGN_OR_RETURN(std::string manifest_bytes, ReadSmallFile(root_fd, kManifestPath, manifest::kMaxManifestBytes));
  ASSIGN_OR_RETURN(manifest::SignatureSet signatures, manifest::ReadSignatureDir(root_fd, kSignatureDir));

  VerifiedImage image;
  // Signatures first: nothing in the manifest is believed before enough of
  // them verify over its exact bytes.
  ASSIGN_OR_RETURN(manifest::SignatureCheck check,
                   manifest::CheckSignatures(AsBytes(manifest_bytes), signatures, pinned, policy.signature_threshold,
                                             kSignatureDir));
  image.signer_key_ids = std::move(check.valid);
  image.unknown_signers = std::move(check.untrusted);
  auto parsed = manifest::Parse(AsBytes(manifest_bytes));
  if (!parsed.ok()) return parsed.status().Context(kManifestPath);
  image.manifest = std::move(parsed).value();
  // Who signed is part of what was signed: the files present and the
  // manifest's list must agree.
  RETURN_IF_ERROR(manifest::CheckSignersMatch(image.manifest, signatures, kSignatureDir));

  if (image.manifest.integrity_level != policy.integrity_level) {
    return Status::Error("manifest is for integrity level " + image.manifest.integrity_level +
                         ", this init enforces " + policy.integrity_level);
  }
  if (image.manifest.manifest_version < policy.min_manifest_version) {
    return Status::Error("manifest_version " + std::to_string(image.manifest.manifest_version) +
                         " is below the minimum " + std::to_string(policy.min_manifest_version) + " (rollback refused)");
  }

  // Keep the fds of everything init itself reads or hands on, so what runs is
  // exactly what was hashed.
  manifest::TreePolicy tree_policy;
  tree_policy.exempt_files = {kManifestPath};
  tree_policy.exempt_dirs = {kSignatureDir};
  tree_policy.hash_threads = policy.hash_threads;
  // The kernel unpacks its built-in default initramfs (dev, dev/console, an
  // empty root/) before ours; that empty directory is the kernel's, not the image's.
  tree_policy.mount_points.insert("root");
  for (const auto& file : image.manifest.files) {
    if (file.role == "config" || file.role == "runtime" || file.role == "model" || file.role == "module") {
      tree_policy.keep_open.insert(file.path);
    }
  }
  ASSIGN_OR_RETURN(auto fds, manifest::VerifyTree(root_fd, image.manifest, tree_policy));

  auto config_fd = fds.find(kRuntimeConfigPath);
  if (config_fd == fds.end()) return Status::Error(std::string(kRuntimeConfigPath) + ": not listed with role config");
  ASSIGN_OR_RETURN(std::string config_bytes,
                   ReadAllFromFd(config_fd->second.get(), kMaxRuntimeConfigBytes, kRuntimeConfigPath));
  auto config = ParseRuntimeConfig(AsBytes(config_bytes));
  if (!config.ok()) return config.status().Context(kRuntimeConfigPath);
  image.config = std::move(config).value();

  auto take = [&](const std::string& path, const char* role, UniqueFd& out) -> Status {
    auto it = fds.find(path);
    bool has_role = false;
    for (const auto& file : image.manifest.files) has_role |= (file.path == path && file.role == role);
    if (it == fds.end() || !has_role) {
      return Status::Error(std::string(kRuntimeConfigPath) + ": " + path + " is not listed in the manifest with role " + role);
    }
    out = std::move(it->second);
    return Status::Ok();
  };
  RETURN_IF_ERROR(take(image.config.executable, "runtime", image.executable));
  RETURN_IF_ERROR(take(image.config.model, "model", image.model));
  for (const std::string& path : image.config.modules) {
    UniqueFd fd;
    RETURN_IF_ERROR(take(path, "module", fd));
    image.modules.emplace_back(path, std::move(fd));
  }
  return image;
}

}  // namespace appliance::init
