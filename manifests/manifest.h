// The manifest: what an image contains, for which integrity level, signed.
// Pure data + parsing/serialisation here; no syscalls (see tree_verify.h and
// crypto.h for the parts that touch files and keys).
//
// Canonical form: Serialize() is the only writer. Parse() accepts a byte string
// only if Serialize(Parse(bytes)) == bytes, so the signed bytes are exactly the
// file and there is no second way to spell the same manifest (duplicate keys,
// reordered files, other whitespace are all refused).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace appliance::manifest {

// 2: adds "build" (provenance), "previous_manifest_sha256" and "signers";
// signatures are one file per signer (signatures.h). Version 1 is not read.
inline constexpr int kFormatVersion = 2;
inline constexpr std::string_view kFormatName = "sealed-appliance-manifest";
// Bounds on untrusted manifests, checked before anything is allocated for them.
inline constexpr size_t kMaxManifestBytes = 4 * 1024 * 1024;
inline constexpr size_t kMaxFiles = 10000;
inline constexpr size_t kMaxPathBytes = 255;
inline constexpr size_t kMaxSigners = 16;
inline constexpr size_t kMaxDependencies = 64;

struct FileEntry {
  std::string path;        // relative, '/'-separated, no "", ".", ".." components, no leading '/'
  uint64_t size = 0;       // bytes
  uint32_t mode = 0;       // permission bits only (e.g. 0755), serialised as an octal string "0755"
  std::string sha256;      // 64 lowercase hex digits
  std::string role;        // "init" | "runtime" | "library" | "module" | "model" | "config"
};

// Where the image came from. Deterministic by construction: nothing here may
// depend on the time or the machine's state beyond the inputs named.
struct BuildProvenance {
  std::string source_commit;  // git commit of the source tree, "<40 hex>" or "<40 hex>-dirty", or "unknown"
  std::string compiler;       // e.g. "GNU 12.2.0"
  std::string builder;        // the tool that wrote the manifest, e.g. "appliance-image 0.1.0"
  std::map<std::string, std::string> dependencies;  // name -> version, e.g. "openssl" -> "3.0.19"
};

struct Manifest {
  uint64_t manifest_version = 1;  // monotonic release counter (rollback protection)
  std::string integrity_level;    // "L1".."L4"
  std::string product;            // e.g. "sealed-appliance"
  std::string release;            // e.g. "0.1.0"
  int64_t created = 0;            // SOURCE_DATE_EPOCH of the build, seconds
  std::string kernel_cmdline;     // the command line the image is booted with
  BuildProvenance build;
  // SHA-256 (lowercase hex) of the previous release's manifest.json bytes;
  // empty for the first release (serialised as null).
  std::string previous_manifest_sha256;
  std::vector<std::string> signers;  // key ids expected to sign (sorted, unique, 1..kMaxSigners)
  std::vector<FileEntry> files;      // sorted by path, unique
};

// Canonical bytes (JSON, keys sorted, 2-space indent, trailing newline).
// Sorts `files` by path first; does not validate (Validate does).
std::string Serialize(const Manifest& m);

// Checks every field: paths well-formed, unique and sorted, digests hex, level
// known, roles known, sizes/modes in range. Error names the offending entry.
Status Validate(const Manifest& m);

// Parses untrusted bytes: size bound, JSON, schema, Validate(), canonical form.
StatusOr<Manifest> Parse(std::span<const uint8_t> bytes);

// True if `path` is a well-formed manifest path (see FileEntry::path).
// Additionally to the rules there, only printable ASCII without space and
// backslash is allowed and at most kMaxPathBytes bytes: an image never needs
// more, and it keeps error messages, console output and SHA256SUMS lines
// unambiguous.
bool IsValidPath(std::string_view path);
// Why `path` is not a valid manifest path, or an empty string if it is.
std::string PathProblem(std::string_view path);

// `s` with everything but printable ASCII (and backslash) escaped as \xNN,
// cut after `max_chars`: for putting untrusted names into error messages.
std::string EscapeForMessage(std::string_view s, size_t max_chars = 80);

// True for a key id: 64 lowercase hex digits (SHA-256 of the raw public key).
bool IsKeyId(std::string_view s);

bool IsKnownRole(std::string_view role);                 // init runtime library module model config
bool IsKnownIntegrityLevel(std::string_view level);      // L1 L2 L3 L4

// The role an image path gets by default (docs/architecture.md): "init" ->
// init, "usr/bin/..." -> runtime, "lib/modules/..." -> module, other
// "lib.../..." -> library, "models/..." -> model, "etc/..." -> config;
// nullopt if no default applies.
std::optional<std::string> DefaultRoleForPath(std::string_view path);

// The listed files in `sha256sum` format ("<hex>  <path>\n" per file, sorted),
// so `sha256sum -c --strict` run in the image root checks them with stock tools.
std::string ToSha256Sums(const Manifest& m);

}  // namespace appliance::manifest
