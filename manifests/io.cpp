#include "manifests/io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <vector>

#include "base/fd.h"

namespace appliance::manifest {
namespace {

// Removes the temporary file unless the write completed (rename/link done).
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  ~TempFileGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void Dismiss() { path_.clear(); }

 private:
  std::string path_;
};

}  // namespace

StatusOr<std::string> ReadFileBounded(int dir_fd, const std::string& path, size_t max_bytes, bool follow_symlinks) {
  // O_NONBLOCK: opening a fifo planted under the expected name must not hang
  // (it is refused by the S_ISREG check below instead).
  const int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (follow_symlinks ? 0 : O_NOFOLLOW);
  UniqueFd fd(::openat(dir_fd, path.c_str(), flags));
  if (!fd.valid()) return PosixError("open " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat " + path);
  if (!S_ISREG(st.st_mode)) return Status::Error(path + ": not a regular file");
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > max_bytes) {
    return Status::Error(path + ": " + std::to_string(st.st_size) + " bytes, more than the limit of " +
                         std::to_string(max_bytes));
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t used = 0;
  // Read until EOF, not just st_size bytes: a file that grows meanwhile is
  // still caught by the bound (one byte of slack proves it).
  for (;;) {
    if (used == data.size()) {
      if (data.size() > max_bytes) return Status::Error(path + ": more than " + std::to_string(max_bytes) + " bytes");
      data.resize(data.size() + 1);
    }
    const ssize_t n = ::read(fd.get(), data.data() + used, data.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError("read " + path);
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  data.resize(used);
  return data;
}

Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode, bool exclusive) {
  std::string tmp_path = path + ".tmp.XXXXXX";
  UniqueFd fd(::mkostemp(tmp_path.data(), O_CLOEXEC));  // created 0600: no window where a key is readable
  if (!fd.valid()) return PosixError("create temporary file for " + path);
  TempFileGuard guard(tmp_path);
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError("write " + tmp_path);
    }
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0) return PosixError("chmod " + tmp_path);
  if (::fsync(fd.get()) != 0) return PosixError("fsync " + tmp_path);
  const int fd_num = fd.release();
  if (::close(fd_num) != 0) return PosixError("close " + tmp_path);
  if (exclusive) {
    // link() fails with EEXIST atomically: an existing file is never replaced.
    if (::link(tmp_path.c_str(), path.c_str()) != 0) return PosixError("create " + path);
    return Status::Ok();  // the guard unlinks the temporary name
  }
  if (::rename(tmp_path.c_str(), path.c_str()) != 0) return PosixError("rename " + tmp_path + " to " + path);
  guard.Dismiss();
  return Status::Ok();
}

}  // namespace appliance::manifest
