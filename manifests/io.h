// Small file helpers shared by init and the CLI for the manifest, signature
// and key files: reads are bounded before anything is allocated.
#pragma once

#include <fcntl.h>
#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "base/status.h"

namespace appliance::manifest {

// Reads the whole regular file `path` (relative to `dir_fd`; AT_FDCWD for the
// working directory). Refuses anything but a regular file and files larger
// than `max_bytes`. With follow_symlinks=false a symlink as the last path
// component is refused (O_NOFOLLOW), which is what init wants.
StatusOr<std::string> ReadFileBounded(int dir_fd, const std::string& path, size_t max_bytes,
                                      bool follow_symlinks = true);

// Writes `data` to `path` through a temporary file in the same directory and
// rename(), so readers never see a half-written file. `mode` is applied with
// fchmod (not subject to the umask). With exclusive=true an existing `path`
// is refused instead of replaced (key files are never overwritten).
Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode, bool exclusive = false);

}  // namespace appliance::manifest
