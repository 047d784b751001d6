// Reads the appliance's console (ttyS0) as it streams: splits it into lines,
// removes terminal control sequences, and remembers what init reported
// (docs/architecture.md, "Boot and the console"). Pure: no I/O.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace appliance::image {

inline constexpr std::string_view kInitPrefix = "appliance-init: ";
inline constexpr std::string_view kFatalMarker = "appliance-init: FATAL: ";
inline constexpr std::string_view kPowerOffMarker = "appliance-init: power-off: ";
inline constexpr std::string_view kKernelPanicMarker = "Kernel panic - not syncing: ";

class ConsoleScanner {
 public:
  explicit ConsoleScanner(size_t tail_lines = 30) : tail_limit_(tail_lines) {}

  // Feeds raw console bytes; returns the lines completed by them (sanitised).
  std::vector<std::string> Feed(std::string_view bytes);
  // Ends the stream: an unterminated last line counts as a line.
  std::vector<std::string> Finish();

  // The text after the last "appliance-init: power-off: " ("clean" / "failure").
  const std::optional<std::string>& power_off() const { return power_off_; }
  // The reason of the last "appliance-init: FATAL: " line.
  const std::optional<std::string>& fatal() const { return fatal_; }
  // The reason of the first kernel panic ("Attempted to kill init! ...").
  const std::optional<std::string>& kernel_panic() const { return panic_; }
  bool saw_init() const { return saw_init_; }
  // The last lines seen (at most tail_lines), oldest first.
  const std::deque<std::string>& tail() const { return tail_; }
  std::string TailText() const;

  // Removes ANSI escape sequences and control characters other than '\t'.
  static std::string Sanitize(std::string_view raw);

 private:
  void EndLine(std::vector<std::string>& out);

  size_t tail_limit_;
  std::string current_;
  std::deque<std::string> tail_;
  std::optional<std::string> power_off_;
  std::optional<std::string> fatal_;
  std::optional<std::string> panic_;
  bool saw_init_ = false;
};

// Lines longer than this are cut (the console is not a protocol).
inline constexpr size_t kMaxConsoleLineBytes = 8192;

}  // namespace appliance::image
