// The shared libraries a dynamically linked executable needs, as `ldd` resolves
// them on the build machine (docs/architecture.md: copied into the image as
// regular files lib/x86_64-linux-gnu/<soname> and lib64/ld-linux-x86-64.so.2).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace appliance::image {

inline constexpr const char* kLibraryDir = "lib/x86_64-linux-gnu";
inline constexpr const char* kLoaderImagePath = "lib64/ld-linux-x86-64.so.2";

struct SharedLibrary {
  std::string soname;     // the name the executable asks for, e.g. "libc.so.6"
  std::string host_path;  // where ldd found it, e.g. "/lib/x86_64-linux-gnu/libc.so.6"
};

struct LddResult {
  bool is_static = false;             // "statically linked" / "not a dynamic executable"
  std::string loader;                 // host path of the program interpreter
  std::vector<SharedLibrary> libraries;  // sorted by soname, unique
};

// Parses `ldd` output. Pure. Refuses "not found" libraries, sonames with '/',
// the same soname resolved to two paths, and lines it does not understand.
StatusOr<LddResult> ParseLddOutput(std::string_view output);

// Runs `ldd executable` and parses it.
StatusOr<LddResult> ResolveSharedLibraries(const std::string& executable);

}  // namespace appliance::image
