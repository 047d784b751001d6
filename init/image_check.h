// The boot-time checks init runs on its own root filesystem before it starts
// anything: manifest signature by a pinned key, integrity level, rollback
// floor, then every file (tree_verify), then the runtime config. Works on any
// directory fd, so the same code is unit-tested on the host against temp trees.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/status.h"
#include "init/config.h"
#include "manifests/manifest.h"

namespace appliance::init {

struct BootPolicy {
  std::vector<std::string> pinned_public_keys;  // PEM; a signature by any one of them is accepted
  std::string integrity_level;                  // the level this init was built for
  uint64_t min_manifest_version = 1;            // rollback floor
};

struct VerifiedImage {
  manifest::Manifest manifest;
  std::string signer_key_id;
  RuntimeConfig config;
  UniqueFd executable;  // the verified runtime binary, to execute by fd
  UniqueFd model;       // the verified model, handed to the runtime as is
  std::vector<std::pair<std::string, UniqueFd>> modules;  // verified kernel modules, in load order
};

inline constexpr const char* kManifestPath = "etc/appliance/manifest.json";
inline constexpr const char* kSignaturePath = "etc/appliance/manifest.sig";
inline constexpr const char* kRuntimeConfigPath = "etc/appliance/runtime.json";

StatusOr<VerifiedImage> VerifyImage(int root_fd, const BootPolicy& policy);

}  // namespace appliance::init
