#include "image/shared_libs.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "image/subprocess.h"

namespace appliance::image {

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Removes a trailing " (0x00007f...)" load address.
std::string_view StripAddress(std::string_view s) {
  s = Trim(s);
  if (!s.empty() && s.back() == ')') {
    size_t open = s.rfind(" (0x");
    if (open != std::string_view::npos) s = Trim(s.substr(0, open));
  }
  return s;
}

bool IsVdso(std::string_view name) { return name.starts_with("linux-vdso.so") || name.starts_with("linux-gate.so"); }

constexpr size_t kMaxLddOutput = 1 << 20;
constexpr std::chrono::seconds kLddTimeout(60);

}  // namespace

StatusOr<LddResult> ParseLddOutput(std::string_view output) {
  LddResult result;
  std::map<std::string, std::string, std::less<>> libs;
  size_t line_no = 0;
  while (!output.empty()) {
    size_t nl = output.find('\n');
    std::string_view raw = output.substr(0, nl);
    output.remove_prefix(nl == std::string_view::npos ? output.size() : nl + 1);
    ++line_no;
    std::string_view line = Trim(raw);
    if (line.empty()) continue;
    auto where = [&] { return "ldd output line " + std::to_string(line_no) + " '" + std::string(line) + "'"; };
    if (line == "statically linked" || line == "not a dynamic executable" || line.ends_with("statically linked")) {
      result.is_static = true;
      continue;
    }
    size_t arrow = line.find(" => ");
    if (arrow == std::string_view::npos) {
      // "/lib64/ld-linux-x86-64.so.2 (0x...)" (the interpreter) or "linux-vdso.so.1 (0x...)".
      std::string_view name = StripAddress(line);
      if (IsVdso(name)) continue;
      if (name.starts_with('/')) {
        if (!result.loader.empty() && result.loader != name) return Status::Error(where() + ": a second interpreter");
        result.loader = std::string(name);
        continue;
      }
      return Status::Error(where() + ": not understood");
    }
    std::string_view soname = Trim(line.substr(0, arrow));
    std::string_view target = StripAddress(line.substr(arrow + 4));
    if (target == "not found" || target.empty()) {
      return Status::Error("shared library " + std::string(soname) + " not found (ldd)");
    }
    if (IsVdso(soname)) continue;
    if (soname.empty() || soname.find('/') != std::string_view::npos || soname == "." || soname == "..") {
      return Status::Error(where() + ": library name is not a plain soname");
    }
    if (!target.starts_with('/')) return Status::Error(where() + ": resolved path is not absolute");
    auto [it, inserted] = libs.emplace(std::string(soname), std::string(target));
    if (!inserted && it->second != target) {
      return Status::Error(where() + ": " + std::string(soname) + " also resolved to " + it->second);
    }
  }
  if (result.is_static) {
    if (!libs.empty() || !result.loader.empty()) return Status::Error("ldd output: both static and dynamic");
    return result;
  }
  if (result.loader.empty()) {
    // glibc's ldd lists the interpreter also as "ld-linux-x86-64.so.2 => /lib64/..." in some setups.
    auto it = libs.find("ld-linux-x86-64.so.2");
    if (it == libs.end()) return Status::Error("ldd output names no program interpreter");
    result.loader = it->second;
  }
  libs.erase("ld-linux-x86-64.so.2");  // the loader goes to lib64/, not the library dir
  for (auto& [soname, path] : libs) result.libraries.push_back({soname, path});
  return result;
}

StatusOr<LddResult> ResolveSharedLibraries(const std::string& executable) {
  ASSIGN_OR_RETURN(CapturedRun run,
                   RunCapture({"ldd", executable}, kMaxLddOutput,
                              std::chrono::duration_cast<std::chrono::milliseconds>(kLddTimeout)));
  // ldd exits 1 for "not a dynamic executable" (a static binary): that is fine.
  if (!run.exit.success()) {
    bool static_binary = run.out.find("not a dynamic executable") != std::string::npos ||
                         run.err.find("not a dynamic executable") != std::string::npos;
    if (!static_binary) {
      std::string err(Trim(run.err));
      return Status::Error("ldd " + executable + ": " + run.exit.Describe() + (err.empty() ? "" : ": " + err));
    }
    LddResult r;
    r.is_static = true;
    return r;
  }
  StatusOr<LddResult> parsed = ParseLddOutput(run.out);
  if (!parsed.ok()) return parsed.status().Context("ldd " + executable);
  return parsed;
}

}  // namespace appliance::image
