#include "manifests/signatures.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <set>

#include "base/fd.h"
#include "manifests/crypto.h"

namespace appliance::manifest {
namespace {

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

StatusOr<std::string> ReadOneSignature(int dir_fd, const std::string& name, const std::string& shown) {
  // O_NONBLOCK: a fifo planted under a signature name must not hang the open.
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) {
    if (errno == ELOOP) return Status::Error(shown + ": symbolic link refused");
    return PosixError("open " + shown);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat " + shown);
  if (!S_ISREG(st.st_mode)) return Status::Error(shown + ": not a regular file");
  if (st.st_nlink != 1) return Status::Error(shown + ": hard link refused (" + std::to_string(st.st_nlink) + " links)");
  if (st.st_size != static_cast<off_t>(kEd25519SignatureBytes)) {
    return Status::Error(shown + ": " + std::to_string(st.st_size) + " bytes, an Ed25519 signature has 64");
  }
  std::string sig(kEd25519SignatureBytes, '\0');
  size_t done = 0;
  while (done < sig.size()) {
    const ssize_t n = ::read(fd.get(), sig.data() + done, sig.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return PosixError("read " + shown);
    if (n == 0) return Status::Error(shown + ": shorter than its size");
    done += static_cast<size_t>(n);
  }
  return sig;
}

}  // namespace

std::string SignatureFileName(std::string_view key_id) { return std::string(key_id) + std::string(kSignatureSuffix); }

std::optional<std::string> KeyIdFromSignatureFileName(std::string_view name) {
  if (!name.ends_with(kSignatureSuffix)) return std::nullopt;
  const std::string_view id = name.substr(0, name.size() - kSignatureSuffix.size());
  if (!IsKeyId(id)) return std::nullopt;
  return std::string(id);
}

StatusOr<SignatureSet> ReadSignatureDir(int dir_fd, const std::string& path) {
  UniqueFd dfd(::openat(dir_fd, path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dfd.valid()) {
    const int err = errno;
    struct stat st {};
    if ((err == ELOOP || err == ENOTDIR) && ::fstatat(dir_fd, path.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (S_ISLNK(st.st_mode)) return Status::Error(path + ": symbolic link refused");
      if (!S_ISDIR(st.st_mode)) return Status::Error(path + ": not a directory");
    }
    return PosixError("open " + path, err);
  }
  // A second descriptor for the DIR stream, so `dfd` stays usable for openat.
  UniqueFd listing(::openat(dfd.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!listing.valid()) return PosixError("open " + path);
  DirPtr dir(::fdopendir(listing.get()));
  if (!dir) return PosixError("opendir " + path);
  listing.release();  // owned by the DIR* now

  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* entry = ::readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) return PosixError("readdir " + path);
      break;
    }
    if (std::strcmp(entry->d_name, ".") == 0 || std::strcmp(entry->d_name, "..") == 0) continue;
    if (names.size() >= kMaxSigners) {
      return Status::Error(path + ": more than " + std::to_string(kMaxSigners) + " entries (at most " +
                           std::to_string(kMaxSigners) + " signers)");
    }
    names.emplace_back(entry->d_name);
  }
  std::sort(names.begin(), names.end());  // the first problem reported does not depend on readdir order

  SignatureSet signatures;
  for (const std::string& name : names) {
    const std::string shown = path + "/" + EscapeForMessage(name);
    std::optional<std::string> id = KeyIdFromSignatureFileName(name);
    if (!id) return Status::Error(shown + ": not a signature file name (expected <key id>.sig, 64 lowercase hex digits)");
    ASSIGN_OR_RETURN(std::string sig, ReadOneSignature(dfd.get(), name, shown));
    signatures.emplace(std::move(*id), std::move(sig));
  }
  return signatures;
}

StatusOr<std::vector<TrustedKey>> TrustKeys(const std::vector<std::string>& public_pems) {
  std::map<std::string, std::string> by_id;
  for (size_t i = 0; i < public_pems.size(); ++i) {
    StatusOr<std::string> id = KeyIdFromPublicPem(public_pems[i]);
    if (!id.ok()) return id.status().Context("trusted key " + std::to_string(i + 1));
    by_id.emplace(*id, public_pems[i]);
  }
  std::vector<TrustedKey> keys;
  for (auto& [id, pem] : by_id) keys.push_back({id, pem});
  return keys;
}

StatusOr<SignatureCheck> CheckSignatures(std::span<const uint8_t> manifest_bytes, const SignatureSet& signatures,
                                         const std::vector<TrustedKey>& trusted, size_t threshold,
                                         const std::string& shown_dir) {
  if (threshold < 1) return Status::Error("signature threshold " + std::to_string(threshold) + ": at least 1 required");
  if (trusted.empty()) return Status::Error("no signing key is pinned");
  if (threshold > trusted.size()) {
    return Status::Error("signature threshold " + std::to_string(threshold) + " is more than the " +
                         std::to_string(trusted.size()) + " pinned key(s): no manifest could ever pass");
  }
  if (signatures.empty()) return Status::Error("manifest not signed: " + shown_dir + " holds no signature");

  SignatureCheck check;
  for (const auto& [id, sig] : signatures) {
    const auto key = std::find_if(trusted.begin(), trusted.end(), [&](const TrustedKey& k) { return k.key_id == id; });
    if (key == trusted.end()) {
      check.untrusted.push_back(id);
      continue;
    }
    // A bad signature by a pinned key means the manifest or the signature was
    // changed: refuse, even if other signatures would reach the threshold.
    if (!Verify(manifest_bytes, AsBytes(sig), key->public_pem).ok()) {
      return Status::Error(shown_dir + "/" + SignatureFileName(id) + ": signature does not verify with pinned key " +
                           id + " (the manifest or the signature was changed)");
    }
    check.valid.push_back(id);
  }
  if (check.valid.size() < threshold) {
    std::string message = "manifest signed by " + std::to_string(check.valid.size()) + " pinned key(s), " +
                          std::to_string(threshold) + " required (below the signature threshold)";
    if (!check.valid.empty()) message += "; valid: " + Join(check.valid);
    if (!check.untrusted.empty()) message += "; signed by unknown key(s): " + Join(check.untrusted);
    return Status::Error(message);
  }
  return check;
}

Status CheckSignersMatch(const Manifest& m, const SignatureSet& signatures, const std::string& shown_dir) {
  const std::set<std::string> listed(m.signers.begin(), m.signers.end());
  for (const auto& [id, sig] : signatures) {
    if (!listed.contains(id)) {
      return Status::Error(shown_dir + "/" + SignatureFileName(id) + ": key " + id +
                           " is not among the manifest's signers");
    }
  }
  for (const std::string& id : m.signers) {
    if (!signatures.contains(id)) {
      return Status::Error(shown_dir + "/" + SignatureFileName(id) + ": missing (the manifest lists signer " + id + ")");
    }
  }
  return Status::Ok();
}

}  // namespace appliance::manifest
