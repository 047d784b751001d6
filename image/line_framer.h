// Newline framing for the job channel (docs/architecture.md: newline-delimited
// JSON) and the console log. Bytes go in as they arrive; complete lines come
// out. Pure: no I/O.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"

namespace appliance::image {

// Requests are at most this long (protocol limit, without the newline).
inline constexpr size_t kMaxRequestLineBytes = 65536;
// Replies carry whole generated texts and token lists; bounded generously.
inline constexpr size_t kMaxReplyLineBytes = 16 * 1024 * 1024;

class LineFramer {
 public:
  explicit LineFramer(size_t max_line_bytes) : max_line_bytes_(max_line_bytes) {}

  // Appends received bytes. Fails, and stays failed, as soon as any line
  // (terminated or not) is longer than the bound; nothing past it is buffered.
  Status Feed(std::string_view bytes);

  // The next complete line without its '\n' (a trailing '\r' is removed too), if any.
  std::optional<std::string> Next();

  // Bytes not yet returned by Next(); after Next() returned nullopt, the
  // unterminated last line (what is left at EOF).
  std::string_view pending() const { return std::string_view(buffer_).substr(consumed_); }
  bool failed() const { return failed_; }

 private:
  void Append(std::string_view bytes);

  size_t max_line_bytes_;
  std::string buffer_;    // bytes received, of which consumed_ were returned
  size_t consumed_ = 0;
  size_t current_len_ = 0;     // length of the (unterminated) line at the end of buffer_
  size_t complete_lines_ = 0;  // newlines in buffer_ after consumed_
  bool failed_ = false;
};

}  // namespace appliance::image
