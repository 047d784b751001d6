#include "image/line_framer.h"

#include <string>

namespace appliance::image {

Status LineFramer::Feed(std::string_view bytes) {
  if (failed_) return Status::Error("line framing already failed (a line was too long)");
  // Check every line the new bytes complete or extend before buffering them.
  std::string_view rest = bytes;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    size_t seg = nl == std::string_view::npos ? rest.size() : nl;
    if (seg > max_line_bytes_ - current_len_) {
      failed_ = true;
      // Keep the complete lines that came before the overlong one.
      Append(bytes.substr(0, bytes.size() - rest.size()));
      return Status::Error("line longer than " + std::to_string(max_line_bytes_) + " bytes");
    }
    if (nl == std::string_view::npos) {
      current_len_ += seg;
      break;
    }
    current_len_ = 0;
    ++complete_lines_;
    rest.remove_prefix(nl + 1);
  }
  Append(bytes);
  return Status::Ok();
}

void LineFramer::Append(std::string_view bytes) {
  if (consumed_ > 0 && consumed_ >= buffer_.size() / 2) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  buffer_.append(bytes);
}

std::optional<std::string> LineFramer::Next() {
  if (complete_lines_ == 0) return std::nullopt;  // no rescan of a long partial line
  size_t nl = buffer_.find('\n', consumed_);
  if (nl == std::string::npos) return std::nullopt;  // unreachable: complete_lines_ > 0
  --complete_lines_;
  std::string line(buffer_, consumed_, nl - consumed_);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  consumed_ = nl + 1;
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  }
  return line;
}

}  // namespace appliance::image
