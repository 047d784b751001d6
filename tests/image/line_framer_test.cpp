#include "image/line_framer.h"

#include <gtest/gtest.h>

namespace appliance::image {
namespace {

TEST(LineFramer, SplitsLinesAcrossChunks) {
  LineFramer f(100);
  ASSERT_TRUE(f.Feed("{\"a\":1}\n{\"b\"").ok());
  auto l1 = f.Next();
  ASSERT_TRUE(l1.has_value());
  EXPECT_EQ(*l1, "{\"a\":1}");
  EXPECT_FALSE(f.Next().has_value());
  EXPECT_EQ(f.pending(), "{\"b\"");
  ASSERT_TRUE(f.Feed(":2}\r\n\n").ok());
  EXPECT_EQ(f.Next().value(), "{\"b\":2}");  // '\r' removed
  EXPECT_EQ(f.Next().value(), "");           // empty line is a line
  EXPECT_FALSE(f.Next().has_value());
  EXPECT_TRUE(f.pending().empty());
}

TEST(LineFramer, ByteByByte) {
  LineFramer f(16);
  std::string input = "one\ntwo\nthree\n";
  std::vector<std::string> lines;
  for (char c : input) {
    ASSERT_TRUE(f.Feed(std::string(1, c)).ok());
    while (auto l = f.Next()) lines.push_back(*l);
  }
  EXPECT_EQ(lines, (std::vector<std::string>{"one", "two", "three"}));
}

TEST(LineFramer, LineAtTheBoundIsAccepted) {
  LineFramer f(8);
  ASSERT_TRUE(f.Feed("12345678\n").ok());
  EXPECT_EQ(f.Next().value(), "12345678");
}

TEST(LineFramer, RefusesOverlongUnterminatedLine) {
  LineFramer f(8);
  ASSERT_TRUE(f.Feed("1234").ok());
  ASSERT_TRUE(f.Feed("5678").ok());
  Status s = f.Feed("9");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("longer than 8 bytes"), std::string::npos) << s.message();
  EXPECT_TRUE(f.failed());
  EXPECT_FALSE(f.Feed("\n").ok());  // stays failed
}

TEST(LineFramer, KeepsCompleteLinesBeforeAnOverlongOne) {
  LineFramer f(4);
  EXPECT_FALSE(f.Feed("ok\nthis is too long\n").ok());
  EXPECT_EQ(f.Next().value(), "ok");
  EXPECT_FALSE(f.Next().has_value());
}

TEST(LineFramer, ManyLinesInOneChunkAndCompaction) {
  LineFramer f(kMaxRequestLineBytes);
  std::string chunk;
  for (int i = 0; i < 1000; ++i) chunk += "line" + std::to_string(i) + "\n";
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(f.Feed(chunk).ok());
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(f.Next().value(), "line" + std::to_string(i));
    EXPECT_FALSE(f.Next().has_value());
  }
}

}  // namespace
}  // namespace appliance::image
