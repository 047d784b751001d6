#include "image/kernel_modules.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <system_error>

#include "base/mapped_file.h"
#include "image/file_util.h"

namespace appliance::image {

namespace {

template <typename T>
T ReadLe(std::span<const uint8_t> b, uint64_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));  // callers check the range; x86-64 is little-endian
  return v;
}

// [off, off + len) inside a buffer of `size` bytes, without overflow.
bool InRange(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

constexpr size_t kElfHeaderBytes = 64;
constexpr size_t kSectionHeaderBytes = 64;
constexpr uint16_t kMaxSections = 65000;

}  // namespace

std::string NormalizeModuleName(std::string_view name) {
  std::string out(name);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

StatusOr<ModuleInfo> ParseModuleInfo(std::span<const uint8_t> elf, const std::string& what) {
  auto bad = [&](const std::string& why) { return Status::Error(what + ": " + why); };
  if (elf.size() < kElfHeaderBytes) return bad("too small for an ELF header");
  static constexpr uint8_t kMagic[4] = {0x7f, 'E', 'L', 'F'};
  if (!std::equal(kMagic, kMagic + 4, elf.begin())) return bad("not an ELF file");
  if (elf[4] != 2 || elf[5] != 1) return bad("not a 64-bit little-endian ELF file");
  const uint64_t shoff = ReadLe<uint64_t>(elf, 0x28);
  const uint16_t shentsize = ReadLe<uint16_t>(elf, 0x3a);
  const uint16_t shnum = ReadLe<uint16_t>(elf, 0x3c);
  const uint16_t shstrndx = ReadLe<uint16_t>(elf, 0x3e);
  if (shentsize != kSectionHeaderBytes) return bad("unexpected section header size " + std::to_string(shentsize));
  if (shnum == 0 || shnum > kMaxSections) return bad("section count " + std::to_string(shnum) + " out of range");
  if (!InRange(shoff, uint64_t{shnum} * kSectionHeaderBytes, elf.size())) return bad("section headers past the end");
  if (shstrndx >= shnum) return bad("section name table index out of range");

  struct Section {
    uint32_t name;
    uint64_t offset;
    uint64_t size;
  };
  auto section = [&](uint16_t i) -> StatusOr<Section> {
    uint64_t h = shoff + uint64_t{i} * kSectionHeaderBytes;
    Section s{ReadLe<uint32_t>(elf, h), ReadLe<uint64_t>(elf, h + 0x18), ReadLe<uint64_t>(elf, h + 0x20)};
    uint32_t type = ReadLe<uint32_t>(elf, h + 4);
    if (type != 8 /* SHT_NOBITS */ && !InRange(s.offset, s.size, elf.size())) {
      return Status::Error(what + ": section " + std::to_string(i) + " lies past the end of the file");
    }
    return s;
  };
  ASSIGN_OR_RETURN(Section names, section(shstrndx));
  std::string_view strtab(reinterpret_cast<const char*>(elf.data() + names.offset), names.size);

  for (uint16_t i = 0; i < shnum; ++i) {
    ASSIGN_OR_RETURN(Section s, section(i));
    if (s.name >= strtab.size()) continue;
    std::string_view rest = strtab.substr(s.name);
    std::string_view sname = rest.substr(0, rest.find('\0'));
    if (sname != ".modinfo") continue;
    std::string_view info(reinterpret_cast<const char*>(elf.data() + s.offset), s.size);
    ModuleInfo out;
    while (!info.empty()) {
      size_t nul = info.find('\0');
      std::string_view entry = info.substr(0, nul);
      info.remove_prefix(nul == std::string_view::npos ? info.size() : nul + 1);
      if (entry.starts_with("name=")) {
        out.name = NormalizeModuleName(entry.substr(5));
      } else if (entry.starts_with("depends=")) {
        std::string_view deps = entry.substr(8);
        while (!deps.empty()) {
          size_t comma = deps.find(',');
          std::string_view d = deps.substr(0, comma);
          deps.remove_prefix(comma == std::string_view::npos ? deps.size() : comma + 1);
          if (!d.empty()) out.depends.push_back(NormalizeModuleName(d));
          if (out.depends.size() > kMaxModules) return bad("too many dependencies");
        }
      }
    }
    return out;
  }
  return bad("no .modinfo section (not a kernel module?)");
}

StatusOr<std::vector<ModuleFile>> ResolveModules(const std::string& kernel_dir, const std::vector<std::string>& names) {
  if (names.empty()) return std::vector<ModuleFile>{};
  StatusOr<std::string> version = ReadFileBounded(kernel_dir + "/version", 256);
  if (!version.ok()) return version.status().Context("kernel modules (run scripts/fetch-kernel " + kernel_dir + ")");
  std::string release = *version;
  while (!release.empty() && (release.back() == '\n' || release.back() == '\r')) release.pop_back();
  if (release.empty() || release.find_first_of("/\n\\ ") != std::string::npos || release == "." || release == "..") {
    return Status::Error(kernel_dir + "/version: not a kernel release");
  }
  const std::string root = kernel_dir + "/modules/" + release;

  // Every module file of the tree, by normalized name.
  std::map<std::string, std::string> by_name;     // name -> path relative to root
  std::map<std::string, std::string> compressed;  // name -> path of a .ko.xz/.ko.zst/.ko.gz
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(root + "/kernel", ec), end;
  if (ec) return Status::Error("kernel modules: " + root + "/kernel: " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) return Status::Error("kernel modules: walking " + root + ": " + ec.message());
    if (!it->is_regular_file(ec)) continue;
    const std::string file = it->path().filename().string();
    std::string rel = std::filesystem::relative(it->path(), root, ec).string();
    if (ec) return Status::Error("kernel modules: " + it->path().string() + ": " + ec.message());
    if (file.ends_with(".ko.xz") || file.ends_with(".ko.zst") || file.ends_with(".ko.gz")) {
      compressed.emplace(NormalizeModuleName(file.substr(0, file.find(".ko"))), rel);
      continue;
    }
    if (!file.ends_with(".ko")) continue;
    const std::string stem = file.substr(0, file.size() - 3);
    auto [pos, inserted] = by_name.emplace(NormalizeModuleName(stem), rel);
    if (!inserted) return Status::Error("kernel modules: two modules named " + stem + ": " + pos->second + ", " + rel);
  }
  std::set<std::string> builtin;
  if (StatusOr<std::string> b = ReadFileBounded(root + "/modules.builtin", 4 << 20); b.ok()) {
    std::string_view rest = *b;
    while (!rest.empty()) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
      size_t slash = line.rfind('/');
      std::string_view file = slash == std::string_view::npos ? line : line.substr(slash + 1);
      if (file.ends_with(".ko")) builtin.insert(NormalizeModuleName(file.substr(0, file.size() - 3)));
    }
  }

  std::vector<ModuleFile> order;
  std::set<std::string> done;
  std::set<std::string> visiting;
  std::function<Status(const std::string&, const std::string&)> visit = [&](const std::string& name,
                                                                          const std::string& needed_by) -> Status {
    if (done.count(name)) return Status::Ok();
    if (visiting.count(name)) return Status::Error("kernel modules: dependency cycle through " + name);
    auto found = by_name.find(name);
    if (found == by_name.end()) {
      if (auto c = compressed.find(name); c != compressed.end()) {
        return Status::Error("kernel module " + name + ": " + c->second +
                             " is compressed; only plain .ko files are supported");
      }
      if (builtin.count(name)) {
        done.insert(name);
        return Status::Ok();
      }
      return Status::Error("kernel module " + name + (needed_by.empty() ? "" : " (needed by " + needed_by + ")") +
                           ": not found under " + root);
    }
    if (order.size() >= kMaxModules) return Status::Error("kernel modules: more than " + std::to_string(kMaxModules));
    visiting.insert(name);
    const std::string host = root + "/" + found->second;
    StatusOr<MappedFile> mapped = MappedFile::Open(host);
    if (!mapped.ok()) return mapped.status().Context("kernel module " + name);
    if (mapped->size() > kMaxModuleBytes) return Status::Error("kernel module " + host + ": larger than 64 MiB");
    ASSIGN_OR_RETURN(ModuleInfo info, ParseModuleInfo(mapped->bytes(), host));
    if (!info.name.empty() && info.name != name) {
      return Status::Error("kernel module " + host + ": its .modinfo says name=" + info.name);
    }
    for (const std::string& dep : info.depends) RETURN_IF_ERROR(visit(dep, name));
    visiting.erase(name);
    done.insert(name);
    order.push_back(ModuleFile{name, host, "lib/modules/" + release + "/" + found->second});
    return Status::Ok();
  };
  for (const std::string& n : names) RETURN_IF_ERROR(visit(NormalizeModuleName(n), ""));
  return order;
}

}  // namespace appliance::image
