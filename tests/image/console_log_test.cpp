#include "image/console_log.h"

#include <gtest/gtest.h>

namespace appliance::image {
namespace {

TEST(ConsoleScanner, SanitizesTerminalSequences) {
  EXPECT_EQ(ConsoleScanner::Sanitize("\x1b" "c\x1b[?7l\x1b[2J\x1b[0mSeaBIOS"), "SeaBIOS");
  EXPECT_EQ(ConsoleScanner::Sanitize("a\tb\x07" "c\x7f"), "a\tbc");
}

TEST(ConsoleScanner, FindsPowerOffAndFatalAcrossChunks) {
  ConsoleScanner s;
  std::vector<std::string> lines = s.Feed("\x1b" "c\x1b[2JBooting from ROM..\x1b" "c\x1b[2Jappliance-init: star");
  EXPECT_TRUE(lines.empty());
  lines = s.Feed("ting\r\nappliance-init: FATAL: models/model.gguf: sha256 mismatch\r\n");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "Booting from ROM..appliance-init: starting");
  EXPECT_TRUE(s.saw_init());
  ASSERT_TRUE(s.fatal().has_value());
  EXPECT_EQ(*s.fatal(), "models/model.gguf: sha256 mismatch");
  EXPECT_FALSE(s.power_off().has_value());
  s.Feed("appliance-init: power-off: failure\r\n[    1.2] reboot: Power down");
  ASSERT_TRUE(s.power_off().has_value());
  EXPECT_EQ(*s.power_off(), "failure");
  std::vector<std::string> rest = s.Finish();
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0], "[    1.2] reboot: Power down");
  EXPECT_EQ(s.tail().back(), "[    1.2] reboot: Power down");
}

TEST(ConsoleScanner, TheLastPowerOffLineCounts) {
  ConsoleScanner s;
  s.Feed("appliance-init: power-off: failure\nappliance-init: power-off: clean  \n");
  EXPECT_EQ(s.power_off().value(), "clean");
}

TEST(ConsoleScanner, NoInitLines) {
  ConsoleScanner s;
  s.Feed("SeaBIOS\n[ 0.1] Linux version 6.1\n");
  EXPECT_FALSE(s.saw_init());
  EXPECT_FALSE(s.power_off().has_value());
  EXPECT_FALSE(s.fatal().has_value());
}

TEST(ConsoleScanner, KernelPanic) {
  ConsoleScanner s;
  s.Feed("[    2.4] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n");
  ASSERT_TRUE(s.kernel_panic().has_value());
  EXPECT_EQ(*s.kernel_panic(), "Attempted to kill init! exitcode=0x00000100");
}

TEST(ConsoleScanner, TailIsBoundedAndLongLinesAreCut) {
  ConsoleScanner s(3);
  for (int i = 0; i < 10; ++i) s.Feed("line " + std::to_string(i) + "\n");
  ASSERT_EQ(s.tail().size(), 3u);
  EXPECT_EQ(s.tail().front(), "line 7");
  EXPECT_EQ(s.TailText(), "  | line 7\n  | line 8\n  | line 9\n");
  std::vector<std::string> lines = s.Feed(std::string(kMaxConsoleLineBytes + 10, 'x') + "\n");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].size(), kMaxConsoleLineBytes);
  EXPECT_EQ(lines[1].size(), 10u);
}

}  // namespace
}  // namespace appliance::image
