#include "image/subprocess.h"

#include <signal.h>

#include <cerrno>

#include <gtest/gtest.h>

namespace appliance::image {
namespace {

TEST(Subprocess, CapturesOutputAndExitStatus) {
  StatusOr<CapturedRun> r = RunCapture({"sh", "-c", "echo out; echo err >&2; exit 3"}, 1024, std::chrono::seconds(10));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  EXPECT_TRUE(r->exit.exited);
  EXPECT_EQ(r->exit.code, 3);
  EXPECT_EQ(r->exit.Describe(), "exit status 3");
}

TEST(Subprocess, MissingProgramIsAnErrorAtSpawn) {
  StatusOr<ChildProcess> c = ChildProcess::Spawn({"/nonexistent/program"}, SpawnOptions{});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "execute /nonexistent/program: No such file or directory");
}

TEST(Subprocess, OutputBoundAndTimeoutKill) {
  StatusOr<CapturedRun> big = RunCapture({"sh", "-c", "yes | head -c 100000"}, 1000, std::chrono::seconds(10));
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("more than 1000 bytes"), std::string::npos);
  auto start = std::chrono::steady_clock::now();
  StatusOr<CapturedRun> slow = RunCapture({"sleep", "30"}, 1000, std::chrono::milliseconds(200));
  ASSERT_FALSE(slow.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST(Subprocess, GuardKillsARunningChild) {
  pid_t pid = -1;
  {
    StatusOr<ChildProcess> c = ChildProcess::Spawn({"sleep", "30"}, SpawnOptions{});
    ASSERT_TRUE(c.ok()) << c.status().message();
    pid = c->pid();
    StatusOr<std::optional<ExitInfo>> still = c->WaitFor(std::chrono::milliseconds(50));
    ASSERT_TRUE(still.ok());
    EXPECT_FALSE(still->has_value());
  }  // destructor: SIGKILL + reap
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST(Subprocess, WaitReportsSignals) {
  StatusOr<ChildProcess> c = ChildProcess::Spawn({"sh", "-c", "kill -TERM $$"}, SpawnOptions{});
  ASSERT_TRUE(c.ok());
  StatusOr<ExitInfo> info = c->Wait();
  ASSERT_TRUE(info.ok());
  EXPECT_FALSE(info->exited);
  EXPECT_EQ(info->signal, SIGTERM);
  EXPECT_FALSE(info->success());
  EXPECT_FALSE(c->running());
}

}  // namespace
}  // namespace appliance::image
