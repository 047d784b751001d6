#include "runtime/log.h"

#include <unistd.h>

#include <cerrno>
#include <string>

namespace appliance::runtime {

void Log(std::string_view message) {
  std::string line = "appliance-runtime: ";
  // Messages can quote client input (job ids, field names): control bytes
  // become '?' so nothing can forge console lines or terminal sequences.
  for (char c : message) {
    const unsigned char u = static_cast<unsigned char>(c);
    line += (u < 0x20 || u == 0x7f) ? '?' : c;
  }
  line += '\n';
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // nowhere left to report a failing stderr
    off += static_cast<size_t>(n);
  }
}

}  // namespace appliance::runtime
