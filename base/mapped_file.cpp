#include "base/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <utility>

#include "base/fd.h"

namespace appliance {

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    this->~MappedFile();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && size_ > 0) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return PosixError("open " + path);
  return FromFd(fd.get(), path);
}

StatusOr<MappedFile> MappedFile::FromFd(int fd, const std::string& name) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return PosixError("fstat " + name);
  if (!S_ISREG(st.st_mode)) return Status::Error(name + ": not a regular file");
  MappedFile m;
  m.size_ = static_cast<size_t>(st.st_size);
  if (m.size_ == 0) return m;  // an empty file maps to an empty span
  void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    m.size_ = 0;
    return PosixError("mmap " + name);
  }
  m.data_ = static_cast<const uint8_t*>(p);
  return m;
}

}  // namespace appliance
