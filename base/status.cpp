#include "base/status.h"

#include <cstring>

namespace appliance {

Status PosixError(std::string_view context, int err) {
  std::string msg(context);
  msg += ": ";
  msg += std::strerror(err);
  return Status::Error(std::move(msg));
}

}  // namespace appliance
