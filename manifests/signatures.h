// Several signers and a threshold. Every signer's signature is its own file,
// `<key id>.sig`, holding the 64 raw bytes of an Ed25519 signature over the
// exact bytes of manifest.json, in one signature directory (in the image:
// etc/appliance/signatures/). So stock OpenSSL checks each one as is:
//   openssl pkeyutl -verify -rawin -pubin -inkey signer.pub -in manifest.json -sigfile signatures/<key id>.sig
//
// The rules, shared by init and the CLI (docs/compliance.md):
//  - the directory holds only `<key id>.sig` regular files of exactly 64 bytes,
//    at most kMaxSigners of them;
//  - every signature by a trusted (pinned) key must verify: a bad one refuses,
//    it is not skipped;
//  - at least `threshold` distinct trusted keys must have signed;
//  - only then is the manifest parsed, and its `signers` list must name exactly
//    the keys whose signature files are present.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "manifests/manifest.h"

namespace appliance::manifest {

inline constexpr std::string_view kSignatureSuffix = ".sig";

// "<key id>.sig" for a key id.
std::string SignatureFileName(std::string_view key_id);
// The key id of a signature file name, or nullopt if `name` is not "<64 lowercase hex>.sig".
std::optional<std::string> KeyIdFromSignatureFileName(std::string_view name);

// Key id -> the 64 signature bytes.
using SignatureSet = std::map<std::string, std::string>;

// Reads the signature directory `path` (relative to `dir_fd`, or absolute; the
// directory itself and its entries are opened without following symbolic
// links). Refuses a name that is not "<key id>.sig", anything that is not a
// regular file with one link, a size other than 64 bytes, and more than
// kMaxSigners entries. Messages name the file: "<path>/<name>: ...".
StatusOr<SignatureSet> ReadSignatureDir(int dir_fd, const std::string& path);

// A trusted public key and its id.
struct TrustedKey {
  std::string key_id;
  std::string public_pem;
};
// Key ids of PEM public keys; a key given twice counts once.
StatusOr<std::vector<TrustedKey>> TrustKeys(const std::vector<std::string>& public_pems);

struct SignatureCheck {
  std::vector<std::string> valid;    // trusted keys whose signature verified (sorted key ids)
  std::vector<std::string> untrusted;  // signatures by keys not trusted here: present, not checked
};

// Checks the signatures over `manifest_bytes` (before anything in them is
// parsed). `shown_dir` names the signature directory in messages. Errors:
//   "<dir>/<id>.sig: signature does not verify with pinned key <id> (...)"
//   "manifest not signed: <dir> holds no signature"
//   "manifest signed by 1 pinned key(s), 2 required (...)"
StatusOr<SignatureCheck> CheckSignatures(std::span<const uint8_t> manifest_bytes, const SignatureSet& signatures,
                                         const std::vector<TrustedKey>& trusted, size_t threshold,
                                         const std::string& shown_dir);

// After parsing: the manifest's `signers` and the signature files name the same keys.
Status CheckSignersMatch(const Manifest& m, const SignatureSet& signatures, const std::string& shown_dir);

}  // namespace appliance::manifest
