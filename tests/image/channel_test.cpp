#include "image/channel.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <thread>

#include <gtest/gtest.h>

#include "test_util.h"

namespace appliance::image {
namespace {

using Clock = std::chrono::steady_clock;

struct SocketPair {
  UniqueFd a, b;
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
};

TEST(Channel, ReadsLinesAndReportsEof) {
  SocketPair p;
  ASSERT_TRUE(SendAll(p.b.get(), "{\"event\":\"ready\",\"model\":\"m\",\"n_vocab\":512}\n{\"id\":\"j1\",",
                      Clock::now() + std::chrono::seconds(5))
                  .ok());
  ChannelReader reader(p.a.get());
  StatusOr<std::string> line = reader.ReadLine(Clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(line.ok()) << line.status().message();
  StatusOr<Reply> r = ParseReply(*line);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->event, "ready");
  EXPECT_TRUE(r->id.is_null());
  EXPECT_EQ(r->body["n_vocab"], 512);

  // An incomplete line then a timeout.
  StatusOr<std::string> none = reader.ReadLine(Clock::now() + std::chrono::milliseconds(50));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().message(), "timeout");

  ASSERT_TRUE(SendAll(p.b.get(), "\"event\":\"token\",\"token\":5,\"text\":\" a\"}\n", Clock::now() + std::chrono::seconds(5)).ok());
  line = reader.ReadLine(Clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(line.ok());
  r = ParseReply(*line);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->event, "token");
  EXPECT_EQ(r->id, "j1");

  p.b.reset();
  StatusOr<std::string> eof = reader.ReadLine(Clock::now() + std::chrono::seconds(5));
  ASSERT_FALSE(eof.ok());
  EXPECT_EQ(eof.status().message(), "channel closed by the appliance");
}

TEST(Channel, SendAllToAClosedPeerIsAnErrorNotSigpipe) {
  SocketPair p;
  p.a.reset();
  Status s = SendAll(p.b.get(), "{\"op\":\"shutdown\"}\n", Clock::now() + std::chrono::seconds(5));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("Broken pipe"), std::string::npos) << s.message();
}

TEST(Channel, ParseReplyRefusesNonObjects) {
  EXPECT_FALSE(ParseReply("not json").ok());
  EXPECT_FALSE(ParseReply("[1,2]").ok());
  StatusOr<Reply> r = ParseReply("{\"id\":null,\"event\":\"error\",\"error\":\"bad\"}");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->event, "error");
  EXPECT_TRUE(r->id.is_null());
}

TEST(Channel, RequestIdAndShutdown) {
  EXPECT_EQ(RequestId("{\"id\":\"j7\",\"op\":\"generate\"}"), "j7");
  EXPECT_TRUE(RequestId("{\"op\":\"generate\"}").is_null());
  EXPECT_TRUE(RequestId("garbage").is_null());
  EXPECT_TRUE(IsShutdownRequest("{\"op\":\"shutdown\"}"));
  EXPECT_FALSE(IsShutdownRequest("{\"op\":\"generate\"}"));
  EXPECT_FALSE(IsShutdownRequest("shutdown"));
}

TEST(Channel, ConnectUnix) {
  testing::ScratchDir dir;
  const std::string path = dir / "s.sock";
  StatusOr<UniqueFd> missing = ConnectUnix(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("connect " + path + ": No such file or directory"), std::string::npos);

  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  StatusOr<UniqueFd> fd = ConnectUnix(path);
  ASSERT_TRUE(fd.ok()) << fd.status().message();

  EXPECT_FALSE(ConnectUnix(std::string(kMaxUnixPathBytes + 1, 'a')).ok());
  EXPECT_FALSE(ConnectUnix("").ok());
}

TEST(Channel, LargeRepliesArriveWhole) {
  SocketPair p;
  std::string big = "{\"id\":\"j\",\"event\":\"done\",\"text\":\"" + std::string(1 << 20, 'x') + "\"}";
  std::thread writer([&] { EXPECT_TRUE(SendAll(p.b.get(), big + "\n", Clock::now() + std::chrono::seconds(20)).ok()); });
  ChannelReader reader(p.a.get());
  StatusOr<std::string> line = reader.ReadLine(Clock::now() + std::chrono::seconds(20));
  writer.join();
  ASSERT_TRUE(line.ok()) << line.status().message();
  EXPECT_EQ(*line, big);
}

}  // namespace
}  // namespace appliance::image
