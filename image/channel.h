// The host side of the job channel: a Unix stream socket (QEMU's ttyS1 backend)
// carrying newline-delimited JSON (docs/architecture.md, "The job channel protocol").
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "base/status.h"
#include "image/line_framer.h"

namespace appliance::image {

// sockaddr_un's sun_path holds 108 bytes including the NUL.
inline constexpr size_t kMaxUnixPathBytes = 107;

// Connects to the Unix stream socket at `path` (close-on-exec, blocking).
StatusOr<UniqueFd> ConnectUnix(const std::string& path);

// Writes all of `bytes` (MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE).
// The fd may be non-blocking: waits for POLLOUT until `deadline`.
Status SendAll(int fd, std::string_view bytes, std::chrono::steady_clock::time_point deadline);

// One reply line, decoded.
struct Reply {
  std::string event;   // "ready", "token", "done", "error", "shutdown", or "" if absent
  nlohmann::json id;   // the "id" member, null if absent
  nlohmann::json body; // the whole object
};
// Parses one reply line; fails if it is not a JSON object.
StatusOr<Reply> ParseReply(std::string_view line);

// Reads lines from a channel fd with a deadline.
class ChannelReader {
 public:
  explicit ChannelReader(int fd) : fd_(fd), framer_(kMaxReplyLineBytes) {}
  // The next line; an error on EOF ("channel closed"), a read error, an
  // overlong line, or when `deadline` passes ("timeout").
  StatusOr<std::string> ReadLine(std::chrono::steady_clock::time_point deadline);

 private:
  int fd_;
  LineFramer framer_;
};

// The "id" of a request line, null if the line is not an object with an id.
nlohmann::json RequestId(std::string_view line);
// True if `line` is a request object with "op":"shutdown".
bool IsShutdownRequest(std::string_view line);

}  // namespace appliance::image
