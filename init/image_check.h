// The boot-time checks init runs on its own root filesystem before it starts
// anything: manifest signatures by pinned keys (a threshold of distinct keys),
// integrity level, rollback floor, then every file (tree_verify, hashed in
// parallel), then the runtime config. Works on any directory fd, so the same
// code is unit-tested on the host against temp trees.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/status.h"
#include "init/config.h"
#include "manifests/manifest.h"

namespace appliance::init {

// APPLIANCE_SIGNATURE_THRESHOLD of this build (init/build_config.h), the
// default of BootPolicy::signature_threshold.
extern const size_t kBuildSignatureThreshold;

struct BootPolicy {
  std::vector<std::string> pinned_public_keys;  // PEM
  std::string integrity_level;                  // the level this init was built for
  uint64_t min_manifest_version = 1;            // rollback floor
  // Valid signatures by distinct pinned keys the manifest needs (>= 1).
  size_t signature_threshold = kBuildSignatureThreshold;
  // Threads hashing the image's files (0: one per CPU).
  unsigned hash_threads = 0;
};

struct VerifiedImage {
  manifest::Manifest manifest;
  std::vector<std::string> signer_key_ids;   // pinned keys whose signature verified, sorted
  std::vector<std::string> unknown_signers;  // signatures by keys this init does not pin (not checked)
  RuntimeConfig config;
  UniqueFd executable;  // the verified runtime binary, to execute by fd
  UniqueFd model;       // the verified model, handed to the runtime as is
  std::vector<std::pair<std::string, UniqueFd>> modules;  // verified kernel modules, in load order
};

inline constexpr const char* kManifestPath = "etc/appliance/manifest.json";
// One file per signer: <key id>.sig, the 64 raw bytes of an Ed25519 signature.
inline constexpr const char* kSignatureDir = "etc/appliance/signatures";
inline constexpr const char* kRuntimeConfigPath = "etc/appliance/runtime.json";

// Refusals, in the order checked (docs/compliance.md, "What init refuses"):
// manifest or signatures unreadable; a signature by a pinned key that does not
// verify; fewer valid pinned signatures than the threshold; the manifest does
// not parse; signature files and the manifest's signers differ; another
// integrity level; manifest_version below the floor; the tree differs.
StatusOr<VerifiedImage> VerifyImage(int root_fd, const BootPolicy& policy);

}  // namespace appliance::init
