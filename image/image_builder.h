// appliance-image build: gathers init, runtime, its shared libraries, the model
// and the runtime configuration, writes and signs the manifest, and writes the
// reproducible initramfs plus the output folder (docs/architecture.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace appliance::image {

inline constexpr const char* kKernelCmdline = "console=ttyS0 panic=-1 quiet";
inline constexpr const char* kManifestPath = "etc/appliance/manifest.json";
// One signature file per signer, "<key id>.sig" (manifests/signatures.h).
inline constexpr const char* kSignatureDir = "etc/appliance/signatures";
inline constexpr const char* kProductName = "sealed-appliance";
// Bounds on the builder's inputs.
inline constexpr uint64_t kMaxKeyBytes = 64 * 1024;
inline constexpr uint64_t kMaxExecutableBytes = 1ULL << 30;

struct BuildOptions {
  std::string model;       // host path of the GGUF model
  std::string key;         // host path of the Ed25519 private key (PEM): the first signer
  std::vector<std::string> extra_keys;  // further signers (co-signatures for a threshold above 1)
  std::string previous_manifest;  // host path of the previous release's manifest.json, or empty (first release)
  std::string source_commit;      // build provenance; empty: the commit CMake found at configure time
  std::string out_dir;     // output folder (created if missing)
  std::string init;        // host path of appliance-init (static)
  std::string runtime;     // host path of appliance-runtime
  std::string kernel_dir;  // folder with vmlinuz (scripts/fetch-kernel)
  std::string level;       // "L1".."L4"
  std::string release;     // product release, e.g. "0.1.0"
  uint64_t manifest_version = 1;
  unsigned threads = 2;    // runtime --threads
  std::vector<std::string> modules;  // kernel module names to pack (plus their dependencies)
  int64_t created = 0;     // SOURCE_DATE_EPOCH: manifest "created" and every mtime
};

struct BuildReport {
  std::string initramfs;  // DIR/initramfs.cpio
  uint64_t initramfs_bytes = 0;
  size_t files = 0;       // files listed in the manifest
  size_t libraries = 0;   // of which shared libraries (loader included)
  size_t modules = 0;     // of which kernel modules
  std::string key_id;     // ids of the signing keys, ", "-separated
  std::vector<std::string> key_ids;  // sorted
  std::string manifest_sha256;
  std::string previous_manifest_sha256;  // empty for a first release
};

// Parses SOURCE_DATE_EPOCH (unset or empty: 0). Decimal seconds, newc range.
StatusOr<int64_t> ParseSourceDateEpoch(const char* value);

StatusOr<BuildReport> BuildImage(const BuildOptions& options);

}  // namespace appliance::image
