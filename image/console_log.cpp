#include "image/console_log.h"

namespace appliance::image {

std::string ConsoleScanner::Sanitize(std::string_view raw) {
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(raw[i]);
    if (c == 0x1b) {
      // ESC [ params final  (CSI), or ESC + one character (e.g. ESC c).
      if (i + 1 < raw.size() && raw[i + 1] == '[') {
        i += 2;
        while (i < raw.size() && !(raw[i] >= 0x40 && raw[i] <= 0x7e)) ++i;
      } else if (i + 1 < raw.size()) {
        ++i;
      }
      continue;
    }
    if (c < 0x20 && c != '\t') continue;
    if (c == 0x7f) continue;
    out.push_back(static_cast<char>(c));
  }
  return out;
}

void ConsoleScanner::EndLine(std::vector<std::string>& out) {
  std::string line = Sanitize(current_);
  current_.clear();
  if (size_t p = line.find(kInitPrefix); p != std::string::npos) saw_init_ = true;
  if (size_t p = line.rfind(kPowerOffMarker); p != std::string::npos) {
    std::string v = line.substr(p + kPowerOffMarker.size());
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.pop_back();
    power_off_ = v;
  }
  if (size_t p = line.rfind(kFatalMarker); p != std::string::npos) fatal_ = line.substr(p + kFatalMarker.size());
  if (size_t p = line.find(kKernelPanicMarker); p != std::string::npos && !panic_) {
    panic_ = line.substr(p + kKernelPanicMarker.size());
  }
  if (!line.empty()) tail_.push_back(line);
  while (tail_.size() > tail_limit_) tail_.pop_front();
  out.push_back(std::move(line));
}

std::vector<std::string> ConsoleScanner::Feed(std::string_view bytes) {
  std::vector<std::string> lines;
  for (char c : bytes) {
    if (c == '\n') {
      EndLine(lines);
    } else if (c == '\r') {
      continue;  // the serial console ends lines with "\r\n"
    } else {
      current_.push_back(c);
      if (current_.size() >= kMaxConsoleLineBytes) EndLine(lines);
    }
  }
  return lines;
}

std::vector<std::string> ConsoleScanner::Finish() {
  std::vector<std::string> lines;
  if (!current_.empty()) EndLine(lines);
  return lines;
}

std::string ConsoleScanner::TailText() const {
  std::string out;
  for (const std::string& l : tail_) {
    out += "  | ";
    out += l;
    out += '\n';
  }
  return out;
}

}  // namespace appliance::image
