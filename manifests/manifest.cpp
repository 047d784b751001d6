#include "manifests/manifest.h"

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <exception>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

namespace appliance::manifest {
namespace {

using nlohmann::json;

// "module": kernel modules init loads (runtime.json "modules") before locking module loading.
constexpr std::array<std::string_view, 6> kRoles = {"init", "runtime", "library", "module", "model", "config"};
constexpr std::array<std::string_view, 4> kLevels = {"L1", "L2", "L3", "L4"};

// Bounds on the free-text fields. Linux's x86 COMMAND_LINE_SIZE is 2048; 4096
// leaves room without letting a manifest carry an unbounded blob.
constexpr size_t kMaxLabelBytes = 128;
constexpr size_t kMaxCmdlineBytes = 4096;
// The deepest values of the schema are a field of a file entry and a
// dependency version: root object (0) -> "files" array (1) -> entry object (2)
// -> field (3), and root (0) -> "build" (1) -> "dependencies" (2) -> version (3).
constexpr int kMaxJsonDepth = 3;
// st_size is an off_t; a listed size above its range can never match a file.
constexpr uint64_t kMaxFileSize = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
// Permission bits only: set-id and sticky bits have no business in a sealed image.
constexpr uint32_t kMaxMode = 0777;

const std::set<std::string, std::less<>> kTopKeys = {
    "build",           "created",         "files",   "format",  "format_version", "integrity_level",
    "kernel_cmdline",  "manifest_version", "previous_manifest_sha256", "product", "release", "signers"};
const std::set<std::string, std::less<>> kFileKeys = {"mode", "path", "role", "sha256", "size"};
const std::set<std::string, std::less<>> kBuildKeys = {"builder", "compiler", "dependencies", "source_commit"};
constexpr size_t kMaxDependencyNameBytes = 64;

std::string Printable(std::string_view s, size_t max_chars = 80) { return EscapeForMessage(s, max_chars); }

std::string Quoted(std::string_view s) { return "'" + Printable(s) + "'"; }

bool IsPrintableAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c >= 0x20 && c < 0x7f;
  });
}

bool IsLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string ModeString(uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04" PRIo32, mode);
  return buf;
}

Status CheckLabel(std::string_view field, const std::string& value, size_t max_bytes, bool allow_empty) {
  if (value.empty() && !allow_empty) return Status::Error(std::string(field) + ": must not be empty");
  if (value.size() > max_bytes) {
    return Status::Error(std::string(field) + ": " + std::to_string(value.size()) + " bytes, more than the limit of " +
                         std::to_string(max_bytes));
  }
  if (!IsPrintableAscii(value)) {
    return Status::Error(std::string(field) + ": " + Quoted(value) + " contains characters other than printable ASCII");
  }
  return Status::Ok();
}

// ---- JSON -> Manifest, with a type check for every field ------------------

// Tracks what nlohmann's DOM parser does not report: duplicate keys (it keeps
// one silently) and nesting beyond the schema's depth (values below it are
// discarded instead of being built, so hostile nesting costs no memory).
struct ParseGuard {
  std::vector<std::set<std::string>> keys_per_object;
  std::string duplicate_key;
  bool too_deep = false;
};

Status ExpectKeys(const json& obj, const std::set<std::string, std::less<>>& allowed, const std::string& where) {
  for (const auto& [key, value] : obj.items()) {
    (void)value;
    if (!allowed.contains(key)) return Status::Error(where + ": unknown field " + Quoted(key));
  }
  for (const auto& key : allowed) {
    if (!obj.contains(key)) return Status::Error(where + ": missing field '" + key + "'");
  }
  return Status::Ok();
}

StatusOr<std::string> GetString(const json& obj, const char* key, const std::string& where) {
  const json& v = obj.at(key);
  if (!v.is_string()) return Status::Error(where + ": field '" + key + "' must be a string");
  return v.get<std::string>();
}

StatusOr<uint64_t> GetUnsigned(const json& obj, const char* key, const std::string& where) {
  const json& v = obj.at(key);
  // nlohmann stores non-negative integer literals as number_unsigned, negative
  // ones as number_integer, anything with a fraction/exponent as a float.
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) return Status::Error(where + ": field '" + key + "' must not be negative");
  return Status::Error(where + ": field '" + key + "' must be a non-negative integer");
}

StatusOr<int64_t> GetSigned(const json& obj, const char* key, const std::string& where) {
  const json& v = obj.at(key);
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Status::Error(where + ": field '" + key + "' out of range");
    }
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return Status::Error(where + ": field '" + key + "' must be an integer");
}

// "0755" -> 0755. Exactly a '0' and three octal digits: the one spelling
// Serialize() writes, so the canonical check cannot be dodged by "755".
StatusOr<uint32_t> ParseMode(const std::string& s, const std::string& where) {
  if (s.size() != 4 || s[0] != '0' ||
      !std::all_of(s.begin() + 1, s.end(), [](char c) { return c >= '0' && c <= '7'; })) {
    return Status::Error(where + ": mode " + Quoted(s) + " is not an octal string like \"0755\"");
  }
  return static_cast<uint32_t>(((s[1] - '0') << 6) | ((s[2] - '0') << 3) | (s[3] - '0'));
}

StatusOr<FileEntry> FileFromJson(const json& j, size_t index) {
  const std::string where = "files[" + std::to_string(index) + "]";
  if (!j.is_object()) return Status::Error(where + ": must be an object");
  RETURN_IF_ERROR(ExpectKeys(j, kFileKeys, where));
  FileEntry e;
  ASSIGN_OR_RETURN(e.path, GetString(j, "path", where));
  const std::string named = where + " (" + Printable(e.path) + ")";
  ASSIGN_OR_RETURN(e.size, GetUnsigned(j, "size", named));
  ASSIGN_OR_RETURN(std::string mode, GetString(j, "mode", named));
  ASSIGN_OR_RETURN(e.mode, ParseMode(mode, named));
  ASSIGN_OR_RETURN(e.sha256, GetString(j, "sha256", named));
  ASSIGN_OR_RETURN(e.role, GetString(j, "role", named));
  return e;
}

StatusOr<BuildProvenance> BuildFromJson(const json& j) {
  const std::string where = "manifest: build";
  if (!j.is_object()) return Status::Error(where + ": must be an object");
  RETURN_IF_ERROR(ExpectKeys(j, kBuildKeys, where));
  BuildProvenance b;
  ASSIGN_OR_RETURN(b.source_commit, GetString(j, "source_commit", where));
  ASSIGN_OR_RETURN(b.compiler, GetString(j, "compiler", where));
  ASSIGN_OR_RETURN(b.builder, GetString(j, "builder", where));
  const json& deps = j.at("dependencies");
  if (!deps.is_object()) return Status::Error(where + ": field 'dependencies' must be an object");
  if (deps.size() > kMaxDependencies) {
    return Status::Error(where + ": " + std::to_string(deps.size()) + " dependencies, more than the limit of " +
                         std::to_string(kMaxDependencies));
  }
  for (const auto& [name, version] : deps.items()) {
    if (!version.is_string()) {
      return Status::Error(where + ": dependency " + Quoted(name) + " must be a string");
    }
    b.dependencies.emplace(name, version.get<std::string>());
  }
  return b;
}

StatusOr<Manifest> ManifestFromJson(const json& j) {
  const std::string where = "manifest";
  if (!j.is_object()) return Status::Error("manifest: top level must be a JSON object");

  // Identify the format before anything else, so a manifest of another format
  // or version is reported as such rather than as a confusing field error.
  if (j.contains("format")) {
    ASSIGN_OR_RETURN(std::string format, GetString(j, "format", where));
    if (format != kFormatName) {
      return Status::Error("manifest: format " + Quoted(format) + ", expected '" + std::string(kFormatName) + "'");
    }
  }
  if (j.contains("format_version")) {
    ASSIGN_OR_RETURN(uint64_t format_version, GetUnsigned(j, "format_version", where));
    if (format_version != static_cast<uint64_t>(kFormatVersion)) {
      return Status::Error("manifest: unsupported format_version " + std::to_string(format_version) +
                           " (this build reads " + std::to_string(kFormatVersion) + ")");
    }
  }
  RETURN_IF_ERROR(ExpectKeys(j, kTopKeys, where));

  Manifest m;
  ASSIGN_OR_RETURN(m.manifest_version, GetUnsigned(j, "manifest_version", where));
  ASSIGN_OR_RETURN(m.integrity_level, GetString(j, "integrity_level", where));
  ASSIGN_OR_RETURN(m.product, GetString(j, "product", where));
  ASSIGN_OR_RETURN(m.release, GetString(j, "release", where));
  ASSIGN_OR_RETURN(m.created, GetSigned(j, "created", where));
  ASSIGN_OR_RETURN(m.kernel_cmdline, GetString(j, "kernel_cmdline", where));
  ASSIGN_OR_RETURN(m.build, BuildFromJson(j.at("build")));

  const json& previous = j.at("previous_manifest_sha256");
  if (!previous.is_null()) {
    if (!previous.is_string()) {
      return Status::Error("manifest: field 'previous_manifest_sha256' must be a string or null");
    }
    m.previous_manifest_sha256 = previous.get<std::string>();
    // The empty string would serialise as null: one spelling only.
    if (m.previous_manifest_sha256.empty()) {
      return Status::Error("manifest: previous_manifest_sha256: empty string (write null for the first release)");
    }
  }

  const json& signers = j.at("signers");
  if (!signers.is_array()) return Status::Error("manifest: field 'signers' must be an array");
  if (signers.size() > kMaxSigners) {
    return Status::Error("manifest: " + std::to_string(signers.size()) + " signers, more than the limit of " +
                         std::to_string(kMaxSigners));
  }
  for (size_t i = 0; i < signers.size(); ++i) {
    if (!signers[i].is_string()) {
      return Status::Error("manifest: signers[" + std::to_string(i) + "] must be a string");
    }
    m.signers.push_back(signers[i].get<std::string>());
  }

  const json& files = j.at("files");
  if (!files.is_array()) return Status::Error("manifest: field 'files' must be an array");
  if (files.size() > kMaxFiles) {
    return Status::Error("manifest: " + std::to_string(files.size()) + " files, more than the limit of " +
                         std::to_string(kMaxFiles));
  }
  m.files.reserve(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    ASSIGN_OR_RETURN(FileEntry e, FileFromJson(files[i], i));
    m.files.push_back(std::move(e));
  }
  return m;
}

}  // namespace

// Untrusted text goes into error messages that end up on a console: escape
// anything that is not printable ASCII, and cut it short.
std::string EscapeForMessage(std::string_view s, size_t max_chars) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::string PathProblem(std::string_view path) {
  if (path.empty()) return "empty path";
  if (path.size() > kMaxPathBytes) {
    return std::to_string(path.size()) + " bytes, more than the limit of " + std::to_string(kMaxPathBytes);
  }
  if (path.front() == '/') return "absolute path (manifest paths are relative to the image root)";
  for (char ch : path) {
    const auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f || c == '\\') {
      return "character " + Printable(std::string_view(&ch, 1)) +
             " not allowed (printable ASCII without space and backslash only)";
    }
  }
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    const std::string_view component = path.substr(start, end - start);
    if (component.empty()) return "empty path component";
    if (component == ".") return "'.' path component";
    if (component == "..") return "'..' path component";
    start = end + 1;
  }
  return "";
}

bool IsValidPath(std::string_view path) { return PathProblem(path).empty(); }

bool IsKeyId(std::string_view s) { return s.size() == 64 && IsLowerHex(s); }

bool IsKnownRole(std::string_view role) { return std::find(kRoles.begin(), kRoles.end(), role) != kRoles.end(); }

bool IsKnownIntegrityLevel(std::string_view level) {
  return std::find(kLevels.begin(), kLevels.end(), level) != kLevels.end();
}

std::optional<std::string> DefaultRoleForPath(std::string_view path) {
  const std::string_view first = path.substr(0, path.find('/'));
  const bool has_parent = first.size() < path.size();
  if (path == "init") return "init";
  if (path.starts_with("usr/bin/")) return "runtime";
  if (path.starts_with("lib/modules/")) return "module";
  // lib/, lib64/, lib32/, libx32/ (but not a top-level file named "lib...").
  if (has_parent && first.starts_with("lib")) return "library";
  if (path.starts_with("models/")) return "model";
  if (path.starts_with("etc/")) return "config";
  return std::nullopt;
}

std::string Serialize(const Manifest& m) {
  std::vector<const FileEntry*> sorted;
  sorted.reserve(m.files.size());
  for (const FileEntry& f : m.files) sorted.push_back(&f);
  std::stable_sort(sorted.begin(), sorted.end(), [](const FileEntry* a, const FileEntry* b) { return a->path < b->path; });

  // nlohmann::json's default object type is a std::map: keys come out sorted.
  json files = json::array();
  for (const FileEntry* f : sorted) {
    files.push_back(json{{"path", f->path},
                         {"size", f->size},
                         {"mode", ModeString(f->mode)},
                         {"sha256", f->sha256},
                         {"role", f->role}});
  }
  json dependencies = json::object();
  for (const auto& [name, version] : m.build.dependencies) dependencies[name] = version;
  std::vector<std::string> signers = m.signers;
  std::sort(signers.begin(), signers.end());
  json j = {{"format", kFormatName},
            {"format_version", kFormatVersion},
            {"manifest_version", m.manifest_version},
            {"integrity_level", m.integrity_level},
            {"product", m.product},
            {"release", m.release},
            {"created", m.created},
            {"kernel_cmdline", m.kernel_cmdline},
            {"build", {{"source_commit", m.build.source_commit},
                       {"compiler", m.build.compiler},
                       {"builder", m.build.builder},
                       {"dependencies", std::move(dependencies)}}},
            {"previous_manifest_sha256",
             m.previous_manifest_sha256.empty() ? json(nullptr) : json(m.previous_manifest_sha256)},
            {"signers", signers},
            {"files", std::move(files)}};
  // error_handler_t::replace: Serialize must not throw on data that was never
  // validated; Validate() refuses non-ASCII text anyway, so valid manifests
  // never contain anything to replace.
  return j.dump(2, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace) + "\n";
}

Status Validate(const Manifest& m) {
  if (m.manifest_version < 1) return Status::Error("manifest_version: must be at least 1");
  if (!IsKnownIntegrityLevel(m.integrity_level)) {
    return Status::Error("integrity_level: unknown level " + Quoted(m.integrity_level) + " (expected L1, L2, L3 or L4)");
  }
  RETURN_IF_ERROR(CheckLabel("product", m.product, kMaxLabelBytes, false));
  RETURN_IF_ERROR(CheckLabel("release", m.release, kMaxLabelBytes, false));
  RETURN_IF_ERROR(CheckLabel("kernel_cmdline", m.kernel_cmdline, kMaxCmdlineBytes, true));
  if (m.created < 0) return Status::Error("created: must not be negative");
  RETURN_IF_ERROR(CheckLabel("build.source_commit", m.build.source_commit, kMaxLabelBytes, false));
  RETURN_IF_ERROR(CheckLabel("build.compiler", m.build.compiler, kMaxLabelBytes, false));
  RETURN_IF_ERROR(CheckLabel("build.builder", m.build.builder, kMaxLabelBytes, false));
  if (m.build.dependencies.size() > kMaxDependencies) {
    return Status::Error("build.dependencies: " + std::to_string(m.build.dependencies.size()) +
                         " entries, more than the limit of " + std::to_string(kMaxDependencies));
  }
  for (const auto& [name, version] : m.build.dependencies) {
    const bool name_ok = !name.empty() && name.size() <= kMaxDependencyNameBytes &&
                         std::all_of(name.begin(), name.end(), [](char c) {
                           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                                  c == '.' || c == '_' || c == '+' || c == '-';
                         });
    if (!name_ok) {
      return Status::Error("build.dependencies: name " + Quoted(name) + " not allowed (1-64 of A-Z a-z 0-9 . _ + -)");
    }
    RETURN_IF_ERROR(CheckLabel("build.dependencies." + name, version, kMaxLabelBytes, false));
  }
  if (!m.previous_manifest_sha256.empty() && !IsKeyId(m.previous_manifest_sha256)) {
    return Status::Error("previous_manifest_sha256: " + Quoted(m.previous_manifest_sha256) +
                         " is not 64 lowercase hex digits");
  }
  if (m.signers.empty()) return Status::Error("signers: at least one signer is required");
  if (m.signers.size() > kMaxSigners) {
    return Status::Error("signers: " + std::to_string(m.signers.size()) + " entries, more than the limit of " +
                         std::to_string(kMaxSigners));
  }
  for (size_t i = 0; i < m.signers.size(); ++i) {
    const std::string where = "signers[" + std::to_string(i) + "]";
    if (!IsKeyId(m.signers[i])) {
      return Status::Error(where + ": " + Quoted(m.signers[i]) + " is not a key id (64 lowercase hex digits)");
    }
    if (i > 0 && m.signers[i] == m.signers[i - 1]) return Status::Error(where + ": duplicate signer " + m.signers[i]);
    if (i > 0 && m.signers[i] < m.signers[i - 1]) return Status::Error(where + ": not sorted");
  }
  if (m.files.size() > kMaxFiles) {
    return Status::Error("files: " + std::to_string(m.files.size()) + " entries, more than the limit of " +
                         std::to_string(kMaxFiles));
  }

  std::set<std::string_view> directories;  // every ancestor directory of a listed path
  for (size_t i = 0; i < m.files.size(); ++i) {
    const FileEntry& f = m.files[i];
    const std::string where = "files[" + std::to_string(i) + "] (" + Printable(f.path) + ")";
    if (std::string problem = PathProblem(f.path); !problem.empty()) {
      return Status::Error(where + ": invalid path: " + problem);
    }
    if (i > 0) {
      const std::string& prev = m.files[i - 1].path;
      if (f.path == prev) return Status::Error(where + ": duplicate path");
      if (f.path < prev) return Status::Error(where + ": not sorted (listed after '" + prev + "')");
    }
    if (f.size > kMaxFileSize) return Status::Error(where + ": size " + std::to_string(f.size) + " out of range");
    if (f.mode > kMaxMode) {
      return Status::Error(where + ": mode " + ModeString(f.mode) +
                           " not allowed (permission bits 0000-0777 only; no set-id or sticky bits)");
    }
    if (f.sha256.size() != 64 || !IsLowerHex(f.sha256)) {
      return Status::Error(where + ": sha256 " + Quoted(f.sha256) + " is not 64 lowercase hex digits");
    }
    if (!IsKnownRole(f.role)) {
      return Status::Error(where + ": unknown role " + Quoted(f.role) +
                           " (expected init, runtime, library, module, model or config)");
    }
    for (size_t slash = f.path.find('/'); slash != std::string::npos; slash = f.path.find('/', slash + 1)) {
      directories.insert(std::string_view(f.path).substr(0, slash));
    }
  }
  // A path cannot be both a file and the directory of another file. Sorting
  // does not put "a" next to "a/b" ("a-x" sorts between), hence the set.
  for (const FileEntry& f : m.files) {
    if (directories.contains(f.path)) {
      return Status::Error("files: '" + f.path + "' is listed as a file but is also the directory of another listed file");
    }
  }
  return Status::Ok();
}

StatusOr<Manifest> Parse(std::span<const uint8_t> bytes) {
  // Bound first: nothing is allocated for an oversize manifest.
  if (bytes.size() > kMaxManifestBytes) {
    return Status::Error("manifest: " + std::to_string(bytes.size()) + " bytes, more than the limit of " +
                         std::to_string(kMaxManifestBytes));
  }
  const auto* first = reinterpret_cast<const char*>(bytes.data());
  const std::string_view text(first, bytes.size());

  ParseGuard guard;
  json::parser_callback_t callback = [&guard](int depth, json::parse_event_t event, json& parsed) {
    // nlohmann calls object_start (and key) even inside discarded values but
    // object_end only for kept ones; tracking keys within the schema's depth
    // only keeps the stack balanced and bounded.
    switch (event) {
      case json::parse_event_t::object_start:
        if (depth <= kMaxJsonDepth) guard.keys_per_object.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (depth <= kMaxJsonDepth && !guard.keys_per_object.empty()) guard.keys_per_object.pop_back();
        break;
      case json::parse_event_t::key:
        if (depth <= kMaxJsonDepth + 1 && !guard.keys_per_object.empty() && parsed.is_string() &&
            !guard.keys_per_object.back().insert(parsed.get<std::string>()).second && guard.duplicate_key.empty()) {
          guard.duplicate_key = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    if (depth > kMaxJsonDepth) {
      guard.too_deep = true;
      return false;  // discard: do not build values the schema never has
    }
    return true;
  };

  json j;
  try {
    j = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    // nlohmann quotes the input around the error ("last read: ..."): escape it.
    return Status::Error("manifest: invalid JSON: " + Printable(e.what(), 200));
  } catch (const std::exception& e) {  // std::bad_alloc and friends: still no exception across the boundary
    return Status::Error(std::string("manifest: cannot parse JSON: ") + e.what());
  }
  if (!guard.duplicate_key.empty()) return Status::Error("manifest: duplicate key " + Quoted(guard.duplicate_key));
  if (guard.too_deep) return Status::Error("manifest: JSON nested deeper than the schema allows");

  StatusOr<Manifest> parsed = [&j]() -> StatusOr<Manifest> {
    try {
      return ManifestFromJson(j);
    } catch (const std::exception& e) {  // get<>/at() on a type already checked; belt and braces
      return Status::Error(std::string("manifest: ") + e.what());
    }
  }();
  if (!parsed.ok()) return parsed.status();
  RETURN_IF_ERROR(Validate(*parsed).Context("manifest"));

  // Canonical form: the signed bytes must be the one spelling Serialize()
  // produces, so two different files can never carry the same manifest.
  const std::string canonical = Serialize(*parsed);
  if (canonical != text) {
    const auto mismatch = std::mismatch(canonical.begin(), canonical.end(), text.begin(), text.end());
    const auto offset = static_cast<size_t>(mismatch.second - text.begin());
    return Status::Error("manifest: not in canonical form (first difference at byte " + std::to_string(offset) +
                         "; write it with appliance-manifest create)");
  }
  return parsed;
}

std::string ToSha256Sums(const Manifest& m) {
  std::vector<const FileEntry*> sorted;
  sorted.reserve(m.files.size());
  for (const FileEntry& f : m.files) sorted.push_back(&f);
  std::stable_sort(sorted.begin(), sorted.end(), [](const FileEntry* a, const FileEntry* b) { return a->path < b->path; });
  std::string out;
  for (const FileEntry* f : sorted) {
    out += f->sha256;
    out += "  ";
    out += f->path;
    out += '\n';
  }
  return out;
}

}  // namespace appliance::manifest
