#include "image/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>
#include <utility>
#include <vector>

#include "base/fd.h"

namespace appliance::image {

StatusOr<std::string> ReadFileBounded(const std::string& path, uint64_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return PosixError("open " + path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return PosixError("fstat " + path);
  if (!S_ISREG(st.st_mode)) return Status::Error(path + ": not a regular file");
  if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > max_bytes) {
    return Status::Error(path + ": " + std::to_string(st.st_size) + " bytes, more than the limit of " +
                         std::to_string(max_bytes));
  }
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + done, out.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError("read " + path);
    }
    if (n == 0) return Status::Error(path + ": file shrank while reading");
    done += static_cast<size_t>(n);
  }
  // The file may have grown since fstat: one more byte means it is not what we sized.
  char extra = 0;
  ssize_t n = ::read(fd.get(), &extra, 1);
  if (n > 0) return Status::Error(path + ": file grew while reading");
  return out;
}

namespace {

Status WriteAll(int fd, const uint8_t* data, size_t size, const std::string& name) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError("write " + name);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp.XXXXXX") {}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)),
      tmp_(std::exchange(other.tmp_, {})),
      fd_(std::move(other.fd_)),
      committed_(std::exchange(other.committed_, true)) {}

AtomicFile::~AtomicFile() {
  if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

StatusOr<AtomicFile> AtomicFile::Create(const std::string& path) {
  AtomicFile f(path);
  std::vector<char> tmpl(f.tmp_.begin(), f.tmp_.end());
  tmpl.push_back('\0');
  int fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd < 0) {
    f.tmp_.clear();
    return PosixError("create a temporary file for " + path);
  }
  f.tmp_.assign(tmpl.data());
  f.fd_.reset(fd);
  return f;
}

Status AtomicFile::Commit(unsigned mode) {
  if (committed_ || !fd_.valid()) return Status::Error(path_ + ": already committed");
  if (::fchmod(fd_.get(), static_cast<mode_t>(mode)) != 0) return PosixError("chmod " + tmp_);
  if (::fsync(fd_.get()) != 0) return PosixError("fsync " + tmp_);
  if (::close(fd_.release()) != 0) return PosixError("close " + tmp_);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) return PosixError("rename " + tmp_ + " to " + path_);
  committed_ = true;
  return Status::Ok();
}


Status WriteFileAtomic(const std::string& path, std::span<const uint8_t> bytes, unsigned mode) {
  ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Create(path));
  RETURN_IF_ERROR(WriteAll(file.fd(), bytes.data(), bytes.size(), path));
  return file.Commit(mode);
}

Status WriteFileAtomic(const std::string& path, std::string_view bytes, unsigned mode) {
  return WriteFileAtomic(path, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, mode);
}

Status CopyFileAtomic(const std::string& source, const std::string& dest, unsigned mode) {
  UniqueFd in(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return PosixError("open " + source);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return PosixError("fstat " + source);
  if (!S_ISREG(st.st_mode)) return Status::Error(source + ": not a regular file");
  ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Create(dest));
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return PosixError("read " + source);
    }
    if (n == 0) break;
    RETURN_IF_ERROR(WriteAll(file.fd(), buf.data(), static_cast<size_t>(n), dest));
  }
  return file.Commit(mode);
}

Status MakeDirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) return Status::Error("create directory " + path + ": " + ec.message());
  if (!std::filesystem::is_directory(path, ec)) return Status::Error(path + ": not a directory");
  return Status::Ok();
}

TempDir::TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}

TempDir& TempDir::operator=(TempDir&& other) noexcept {
  if (this != &other) {
    this->~TempDir();
    path_ = std::exchange(other.path_, {});
  }
  return *this;
}

TempDir::~TempDir() {
  if (!path_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);  // best effort
    path_.clear();
  }
}

StatusOr<TempDir> TempDir::Create(const std::string& prefix) {
  std::string tmpl = prefix + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) return PosixError("mkdtemp " + tmpl);
  TempDir dir;
  dir.path_.assign(buf.data());
  return dir;
}

}  // namespace appliance::image
