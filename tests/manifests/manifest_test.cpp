// Manifest schema, canonical serialisation and the refusals of Parse().
#include "manifests/manifest.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "tests/manifests/test_support.h"

namespace appliance::manifest {
namespace {

using test_support::AsBytes;

const std::string kDigestA(64, 'a');
const std::string kDigestB = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const std::string kKeyId1(64, '1');
const std::string kKeyId2(64, '2');

Manifest Sample() {
  Manifest m;
  m.manifest_version = 7;
  m.integrity_level = "L2";
  m.product = "sealed-appliance";
  m.release = "0.1.0";
  m.created = 1700000000;
  m.kernel_cmdline = "console=ttyS0 panic=-1 quiet";
  m.build.source_commit = "0123456789abcdef0123456789abcdef01234567";
  m.build.compiler = "GNU 12.2.0";
  m.build.builder = "appliance-image 0.1.0";
  m.build.dependencies = {{"openssl", "3.0.19"}, {"kernel", "linux-image-6.1.0-56-cloud-amd64 6.1.192-2"}};
  m.previous_manifest_sha256 = kDigestB;
  m.signers = {kKeyId1, kKeyId2};
  m.files = {
      {"init", 1234, 0755, kDigestA, "init"},
      {"models/model.gguf", 5000000000ULL, 0444, kDigestB, "model"},
      {"usr/bin/appliance-runtime", 42, 0755, kDigestA, "runtime"},
  };
  return m;
}

StatusOr<Manifest> ParseText(const std::string& text) { return Parse(AsBytes(text)); }

// The exact canonical bytes: keys sorted, 2-space indent, mode as an octal
// string, trailing newline. Changing this format breaks every signed image.
TEST(ManifestSerialize, ExactCanonicalBytes) {
  Manifest m = Sample();
  m.files.resize(1);
  const std::string expected = R"({
  "build": {
    "builder": "appliance-image 0.1.0",
    "compiler": "GNU 12.2.0",
    "dependencies": {
      "kernel": "linux-image-6.1.0-56-cloud-amd64 6.1.192-2",
      "openssl": "3.0.19"
    },
    "source_commit": "0123456789abcdef0123456789abcdef01234567"
  },
  "created": 1700000000,
  "files": [
    {
      "mode": "0755",
      "path": "init",
      "role": "init",
      "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "size": 1234
    }
  ],
  "format": "sealed-appliance-manifest",
  "format_version": 2,
  "integrity_level": "L2",
  "kernel_cmdline": "console=ttyS0 panic=-1 quiet",
  "manifest_version": 7,
  "previous_manifest_sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
  "product": "sealed-appliance",
  "release": "0.1.0",
  "signers": [
    "1111111111111111111111111111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222222222222222222222222222"
  ]
}
)";
  EXPECT_EQ(Serialize(m), expected);
}

TEST(ManifestSerialize, RoundTrip) {
  const Manifest m = Sample();
  const std::string text = Serialize(m);
  StatusOr<Manifest> parsed = ParseText(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_EQ(parsed->manifest_version, m.manifest_version);
  EXPECT_EQ(parsed->integrity_level, m.integrity_level);
  EXPECT_EQ(parsed->product, m.product);
  EXPECT_EQ(parsed->release, m.release);
  EXPECT_EQ(parsed->created, m.created);
  EXPECT_EQ(parsed->kernel_cmdline, m.kernel_cmdline);
  EXPECT_EQ(parsed->build.source_commit, m.build.source_commit);
  EXPECT_EQ(parsed->build.compiler, m.build.compiler);
  EXPECT_EQ(parsed->build.builder, m.build.builder);
  EXPECT_EQ(parsed->build.dependencies, m.build.dependencies);
  EXPECT_EQ(parsed->previous_manifest_sha256, m.previous_manifest_sha256);
  EXPECT_EQ(parsed->signers, m.signers);
  ASSERT_EQ(parsed->files.size(), m.files.size());
  for (size_t i = 0; i < m.files.size(); ++i) {
    EXPECT_EQ(parsed->files[i].path, m.files[i].path);
    EXPECT_EQ(parsed->files[i].size, m.files[i].size);
    EXPECT_EQ(parsed->files[i].mode, m.files[i].mode);
    EXPECT_EQ(parsed->files[i].sha256, m.files[i].sha256);
    EXPECT_EQ(parsed->files[i].role, m.files[i].role);
  }
  EXPECT_EQ(Serialize(*parsed), text);
}

TEST(ManifestSerialize, FirstReleaseHasNullPreviousManifest) {
  Manifest m = Sample();
  m.previous_manifest_sha256.clear();
  const std::string text = Serialize(m);
  EXPECT_NE(text.find("\"previous_manifest_sha256\": null,"), std::string::npos) << text;
  StatusOr<Manifest> parsed = ParseText(text);
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_TRUE(parsed->previous_manifest_sha256.empty());
  // The empty string is not a second spelling of "none".
  nlohmann::json j = nlohmann::json::parse(text);
  j["previous_manifest_sha256"] = "";
  EXPECT_FALSE(ParseText(j.dump(2) + "\n").ok());
}

TEST(ManifestSerialize, SortsSignersAndValidateRefusesUnsorted) {
  Manifest m = Sample();
  std::swap(m.signers[0], m.signers[1]);
  EXPECT_FALSE(Validate(m).ok());
  StatusOr<Manifest> parsed = ParseText(Serialize(m));
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_EQ(parsed->signers, (std::vector<std::string>{kKeyId1, kKeyId2}));
}

TEST(ManifestSerialize, SortsFilesByPath) {
  Manifest m = Sample();
  std::swap(m.files[0], m.files[2]);
  EXPECT_FALSE(Validate(m).ok());
  StatusOr<Manifest> parsed = ParseText(Serialize(m));
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_EQ(parsed->files[0].path, "init");
  EXPECT_EQ(parsed->files[2].path, "usr/bin/appliance-runtime");
}

TEST(ManifestSerialize, EscapesAndLargeNumbersRoundTrip) {
  Manifest m = Sample();
  m.kernel_cmdline = R"(console=ttyS0 foo="a b" back\slash)";
  m.manifest_version = UINT64_MAX;
  m.created = INT64_MAX;
  StatusOr<Manifest> parsed = ParseText(Serialize(m));
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_EQ(parsed->kernel_cmdline, m.kernel_cmdline);
  EXPECT_EQ(parsed->manifest_version, UINT64_MAX);
  EXPECT_EQ(parsed->created, INT64_MAX);
}

// ---- canonical form -------------------------------------------------------

void ExpectRefused(const std::string& text, const std::string& needle) {
  StatusOr<Manifest> parsed = ParseText(text);
  ASSERT_FALSE(parsed.ok()) << "accepted:\n" << text;
  EXPECT_NE(parsed.status().message().find(needle), std::string::npos) << parsed.status().message();
}

std::string Replace(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(ManifestCanonical, RefusesReorderedKeys) {
  // Same content, keys in insertion order instead of sorted.
  const Manifest m = Sample();
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(Serialize(m));
  nlohmann::ordered_json reordered;
  reordered["format"] = j["format"];
  for (auto& [key, value] : j.items()) {
    if (key != "format") reordered[key] = value;
  }
  const std::string text = reordered.dump(2) + "\n";
  ASSERT_NE(text, Serialize(m));
  ExpectRefused(text, "not in canonical form");
}

TEST(ManifestCanonical, RefusesReorderedFileKeys) {
  const std::string canonical = Serialize(Sample());
  // Swap "mode" and "path" lines of the first entry.
  std::string text = Replace(canonical, "      \"mode\": \"0755\",\n      \"path\": \"init\",",
                             "      \"path\": \"init\",\n      \"mode\": \"0755\",");
  ExpectRefused(text, "not in canonical form");
}

TEST(ManifestCanonical, RefusesOtherWhitespace) {
  const std::string canonical = Serialize(Sample());
  ExpectRefused(Replace(canonical, "{\n  \"build\"", "{\n   \"build\""), "not in canonical form");
  ExpectRefused(Replace(canonical, "\"format_version\": 2", "\"format_version\" : 2"), "not in canonical form");
  ExpectRefused(canonical.substr(0, canonical.size() - 1), "not in canonical form");  // no trailing newline
  ExpectRefused(canonical + "\n", "not in canonical form");
  ExpectRefused(" " + canonical, "not in canonical form");
  ExpectRefused("\xef\xbb\xbf" + canonical, "not in canonical form");  // nlohmann skips a BOM; we must not
  ExpectRefused(Replace(canonical, "  \"created\"", "\t\"created\""), "not in canonical form");
  std::string crlf;
  for (char c : canonical) crlf += (c == '\n') ? std::string("\r\n") : std::string(1, c);
  ExpectRefused(crlf, "not in canonical form");
  ExpectRefused(nlohmann::json::parse(canonical).dump() + "\n", "not in canonical form");  // compact
}

TEST(ManifestCanonical, RefusesOtherNumberAndStringSpellings) {
  const std::string canonical = Serialize(Sample());
  ExpectRefused(Replace(canonical, "\"size\": 1234", "\"size\": 1234.0"), "non-negative integer");
  ExpectRefused(Replace(canonical, "\"size\": 1234", "\"size\": 1.234e3"), "non-negative integer");
  ExpectRefused(Replace(canonical, "\"product\": \"sealed-appliance\"", "\"product\": \"sealed\\u002dappliance\""),
                "not in canonical form");
}

TEST(ManifestCanonical, RefusesDuplicateKeys) {
  const std::string canonical = Serialize(Sample());
  ExpectRefused(Replace(canonical, "  \"product\": \"sealed-appliance\",",
                        "  \"product\": \"sealed-appliance\",\n  \"product\": \"sealed-appliance\","),
                "duplicate key 'product'");
  ExpectRefused(Replace(canonical, "      \"size\": 1234\n", "      \"size\": 1234,\n      \"size\": 1234\n"),
                "duplicate key 'size'");
}

TEST(ManifestCanonical, RefusesUnsortedAndDuplicateFiles) {
  Manifest m = Sample();
  nlohmann::json j = nlohmann::json::parse(Serialize(m));
  std::swap(j["files"][0], j["files"][1]);
  ExpectRefused(j.dump(2) + "\n", "not sorted");

  j = nlohmann::json::parse(Serialize(m));
  j["files"][1] = j["files"][0];
  ExpectRefused(j.dump(2) + "\n", "duplicate path");
}

// ---- schema ---------------------------------------------------------------

TEST(ManifestSchema, RefusesUnknownAndMissingFields) {
  nlohmann::json j = nlohmann::json::parse(Serialize(Sample()));
  nlohmann::json extra = j;
  extra["signature"] = "x";
  ExpectRefused(extra.dump(2) + "\n", "unknown field 'signature'");
  nlohmann::json extra_file = j;
  extra_file["files"][0]["uid"] = 0;
  ExpectRefused(extra_file.dump(2) + "\n", "files[0]: unknown field 'uid'");
  for (const char* key : {"build", "created", "files", "format", "format_version", "integrity_level",
                          "kernel_cmdline", "manifest_version", "previous_manifest_sha256", "product", "release",
                          "signers"}) {
    nlohmann::json missing = j;
    missing.erase(key);
    ExpectRefused(missing.dump(2) + "\n", std::string("missing field '") + key + "'");
  }
  nlohmann::json missing_file_key = j;
  missing_file_key["files"][0].erase("sha256");
  ExpectRefused(missing_file_key.dump(2) + "\n", "missing field 'sha256'");
  nlohmann::json missing_build_key = j;
  missing_build_key["build"].erase("compiler");
  ExpectRefused(missing_build_key.dump(2) + "\n", "build: missing field 'compiler'");
  nlohmann::json extra_build_key = j;
  extra_build_key["build"]["host"] = "x";
  ExpectRefused(extra_build_key.dump(2) + "\n", "build: unknown field 'host'");
}

TEST(ManifestSchema, FormatVersionOneIsReportedAsSuch) {
  nlohmann::json j = nlohmann::json::parse(Serialize(Sample()));
  j["format_version"] = 1;
  for (const char* key : {"build", "previous_manifest_sha256", "signers"}) j.erase(key);
  ExpectRefused(j.dump(2) + "\n", "unsupported format_version 1 (this build reads 2)");
}

TEST(ManifestSchema, RefusesWrongTypesAndValues) {
  const nlohmann::json good = nlohmann::json::parse(Serialize(Sample()));
  struct Case {
    const char* pointer;
    nlohmann::json value;
    const char* needle;
  };
  const Case cases[] = {
      {"/format", "other-format", "format 'other-format'"},
      {"/format_version", 3, "unsupported format_version 3"},
      {"/build", "x", "build: must be an object"},
      {"/build/source_commit", "", "build.source_commit: must not be empty"},
      {"/build/compiler", 12, "must be a string"},
      {"/build/builder", "b\x01", "printable ASCII"},
      {"/build/dependencies", nlohmann::json::array(), "'dependencies' must be an object"},
      {"/build/dependencies/openssl", 3, "dependency 'openssl' must be a string"},
      {"/build/dependencies/bad name", "1", "name 'bad name' not allowed"},
      {"/build/dependencies/zlib", "", "build.dependencies.zlib: must not be empty"},
      {"/previous_manifest_sha256", 5, "must be a string or null"},
      {"/previous_manifest_sha256", std::string(64, 'A'), "not 64 lowercase hex"},
      {"/signers", "x", "'signers' must be an array"},
      {"/signers", nlohmann::json::array(), "signers: at least one signer is required"},
      {"/signers/0", 7, "signers[0] must be a string"},
      {"/signers/0", "abc", "is not a key id"},
      {"/signers/1", std::string(64, '1'), "duplicate signer"},
      {"/format_version", "1", "non-negative integer"},
      {"/manifest_version", 0, "manifest_version: must be at least 1"},
      {"/manifest_version", -1, "must not be negative"},
      {"/manifest_version", "7", "non-negative integer"},
      {"/integrity_level", "L5", "unknown level 'L5'"},
      {"/integrity_level", 1, "must be a string"},
      {"/product", "", "product: must not be empty"},
      {"/product", "caf\xc3\xa9", "printable ASCII"},
      {"/release", nullptr, "must be a string"},
      {"/created", -5, "created: must not be negative"},
      {"/created", 1.5, "must be an integer"},
      {"/kernel_cmdline", "a\nb", "printable ASCII"},
      {"/kernel_cmdline", std::string(5000, 'x'), "more than the limit"},
      {"/files", nlohmann::json::object(), "'files' must be an array"},
      {"/files/0", "init", "files[0]: must be an object"},
      {"/files/0/size", -1, "must not be negative"},
      {"/files/0/size", "1234", "non-negative integer"},
      {"/files/0/size", 9223372036854775808ULL, "out of range"},
      {"/files/0/mode", "755", "not an octal string"},
      {"/files/0/mode", "0855", "not an octal string"},
      {"/files/0/mode", 493, "must be a string"},
      {"/files/0/mode", "4755", "not an octal string"},
      {"/files/0/sha256", std::string(64, 'A'), "not 64 lowercase hex"},
      {"/files/0/sha256", std::string(63, 'a'), "not 64 lowercase hex"},
      {"/files/0/sha256", std::string(64, 'g'), "not 64 lowercase hex"},
      {"/files/0/role", "kernel", "unknown role 'kernel'"},
      {"/files/0/path", "/init", "absolute path"},
      {"/files/0/path", 5, "must be a string"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.pointer);
    nlohmann::json j = good;
    j[nlohmann::json::json_pointer(c.pointer)] = c.value;
    ExpectRefused(j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n", c.needle);
  }
}

TEST(ManifestSchema, RefusesNonJsonAndHostileInput) {
  ExpectRefused("", "invalid JSON");
  ExpectRefused("not json", "invalid JSON");
  ExpectRefused("[]\n", "top level must be a JSON object");
  ExpectRefused("\"x\"\n", "top level must be a JSON object");
  ExpectRefused(std::string("{\"a\":\"\xff\xfe\"}"), "invalid JSON");
  ExpectRefused(std::string("{\"files\": [\x01]}"), "invalid JSON");
  // Deep nesting inside an allowed slot: refused without building it.
  std::string deep = "{\"files\": [{\"path\": ";
  deep += std::string(200000, '[') + std::string(200000, ']') + "}]}";
  ExpectRefused(deep, "nested deeper");
  // Unbalanced deep nesting: a JSON error, no crash.
  ExpectRefused(std::string(1000000, '['), "invalid JSON");
  ExpectRefused(std::string(300000, '{'), "invalid JSON");
}

TEST(ManifestSchema, ErrorMessagesEscapeControlCharacters) {
  nlohmann::json j = nlohmann::json::parse(Serialize(Sample()));
  j["files"][0]["path"] = "in\x1b[2Jit";
  StatusOr<Manifest> parsed = ParseText(j.dump(2) + "\n");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().message().find('\x1b'), std::string::npos) << parsed.status().message();
  EXPECT_NE(parsed.status().message().find("\\x1b"), std::string::npos) << parsed.status().message();
}

TEST(ManifestLimits, RefusesOversizeManifestBeforeParsing) {
  // Valid-looking start, but one byte over the bound: refused on size alone.
  std::string big = Serialize(Sample());
  big.resize(kMaxManifestBytes + 1, ' ');
  ExpectRefused(big, "more than the limit of " + std::to_string(kMaxManifestBytes));
  std::string at_limit(kMaxManifestBytes, ' ');
  ExpectRefused(at_limit, "invalid JSON");  // not refused for its size
}

TEST(ManifestLimits, RefusesTooManyFiles) {
  Manifest m = Sample();
  m.files.clear();
  for (size_t i = 0; i <= kMaxFiles; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "etc/f%05zu", i);
    m.files.push_back({name, 1, 0644, kDigestA, "config"});
  }
  const std::string text = Serialize(m);
  ASSERT_LE(text.size(), kMaxManifestBytes);
  ExpectRefused(text, "more than the limit of " + std::to_string(kMaxFiles));
  m.files.pop_back();
  EXPECT_TRUE(ParseText(Serialize(m)).ok());
}

// ---- paths ----------------------------------------------------------------

TEST(ManifestPaths, Valid) {
  for (const char* p : {"init", "a/b/c", "lib/x86_64-linux-gnu/libstdc++.so.6", "lib64/ld-linux-x86-64.so.2",
                        ".hidden", "a..b", "...", "a/.b", "x_y-z=1,2@3"}) {
    EXPECT_TRUE(IsValidPath(p)) << p << ": " << PathProblem(p);
  }
  EXPECT_TRUE(IsValidPath(std::string(kMaxPathBytes, 'a')));
}

TEST(ManifestPaths, Invalid) {
  const std::pair<std::string, std::string> cases[] = {
      {"", "empty path"},
      {"/init", "absolute"},
      {"a//b", "empty path component"},
      {"a/", "empty path component"},
      {".", "'.' path component"},
      {"./a", "'.' path component"},
      {"a/./b", "'.' path component"},
      {"..", "'..' path component"},
      {"../etc/passwd", "'..' path component"},
      {"a/../b", "'..' path component"},
      {"a/..", "'..' path component"},
      {"a b", "not allowed"},
      {"a\\b", "not allowed"},
      {"a\nb", "not allowed"},
      {std::string("a\0b", 3), "not allowed"},
      {"caf\xc3\xa9", "not allowed"},
      {std::string(kMaxPathBytes + 1, 'a'), "more than the limit"},
  };
  for (const auto& [path, needle] : cases) {
    EXPECT_FALSE(IsValidPath(path)) << path;
    EXPECT_NE(PathProblem(path).find(needle), std::string::npos) << path << ": " << PathProblem(path);
  }
}

TEST(ManifestPaths, InvalidPathsRefusedByParse) {
  for (const std::string path : {"../x", "a//b", "./a", "/etc/x", "a/.", "a b"}) {
    SCOPED_TRACE(path);
    nlohmann::json j = nlohmann::json::parse(Serialize(Sample()));
    j["files"][0]["path"] = path;
    ExpectRefused(j.dump(2) + "\n", "invalid path");
  }
}

TEST(ManifestValidate, RefusesFileThatIsAlsoADirectory) {
  Manifest m = Sample();
  m.files = {{"lib", 1, 0644, kDigestA, "library"},
             {"lib-x", 1, 0644, kDigestA, "library"},
             {"lib/a.so", 1, 0644, kDigestA, "library"}};
  const Status s = Validate(m);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'lib' is listed as a file but is also the directory"), std::string::npos) << s.message();
}

TEST(ManifestValidate, RefusesSpecialModeBitsAndAcceptsEmptyFileList) {
  Manifest m = Sample();
  m.files[0].mode = 04755;
  const Status s = Validate(m);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("mode 4755 not allowed"), std::string::npos) << s.message();
  m.files.clear();
  EXPECT_TRUE(Validate(m).ok());
}

TEST(ManifestRoles, Defaults) {
  EXPECT_EQ(DefaultRoleForPath("init"), "init");
  EXPECT_EQ(DefaultRoleForPath("usr/bin/appliance-runtime"), "runtime");
  EXPECT_EQ(DefaultRoleForPath("lib/x86_64-linux-gnu/libc.so.6"), "library");
  EXPECT_EQ(DefaultRoleForPath("lib64/ld-linux-x86-64.so.2"), "library");
  EXPECT_EQ(DefaultRoleForPath("lib/modules/6.1.0-28-cloud-amd64/virtio_console.ko"), "module");
  EXPECT_EQ(DefaultRoleForPath("models/model.gguf"), "model");
  EXPECT_EQ(DefaultRoleForPath("etc/appliance/runtime.json"), "config");
  EXPECT_EQ(DefaultRoleForPath("libfoo"), std::nullopt);
  EXPECT_EQ(DefaultRoleForPath("initrd"), std::nullopt);
  EXPECT_EQ(DefaultRoleForPath("usr/lib/x"), std::nullopt);
  EXPECT_EQ(DefaultRoleForPath("opt/tool"), std::nullopt);
}

TEST(ManifestRoles, EveryKnownRoleParses) {
  Manifest m = Sample();
  m.files = {{"a", 1, 0644, kDigestA, "config"},  {"b", 1, 0755, kDigestA, "init"},
             {"c", 1, 0644, kDigestA, "library"}, {"d", 1, 0644, kDigestA, "model"},
             {"e", 1, 0644, kDigestA, "module"},  {"f", 1, 0755, kDigestA, "runtime"}};
  StatusOr<Manifest> parsed = ParseText(Serialize(m));
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  for (const FileEntry& f : parsed->files) EXPECT_TRUE(IsKnownRole(f.role)) << f.role;
  EXPECT_FALSE(IsKnownRole("Init"));
  EXPECT_FALSE(IsKnownRole(""));
}

TEST(ManifestSha256Sums, Format) {
  EXPECT_EQ(ToSha256Sums(Sample()), kDigestA + "  init\n" + kDigestB + "  models/model.gguf\n" + kDigestA +
                                        "  usr/bin/appliance-runtime\n");
}

}  // namespace
}  // namespace appliance::manifest
