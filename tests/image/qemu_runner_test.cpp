#include "image/qemu_runner.h"

#include <algorithm>

#include <gtest/gtest.h>

#include "test_util.h"

namespace appliance::image {
namespace {

using testing::ScratchDir;
using testing::WriteAll;

// The value following `flag` in argv (the first occurrence after `from`).
std::string After(const std::vector<std::string>& argv, const std::string& flag, size_t from = 0) {
  auto it = std::find(argv.begin() + static_cast<std::ptrdiff_t>(from), argv.end(), flag);
  if (it == argv.end() || it + 1 == argv.end()) return "<missing>";
  return *(it + 1);
}

TEST(QemuArgv, HasTheContractFlags) {
  QemuConfig c;
  c.kernel = "/img/vmlinuz";
  c.initrd = "/img/initramfs.cpio";
  c.cmdline = "console=ttyS0 panic=-1 quiet";
  c.channel_socket = "/tmp/x/channel.sock";
  c.memory_mb = 1536;
  std::vector<std::string> a = QemuArgv(c);
  EXPECT_EQ(a[0], "qemu-system-x86_64");
  EXPECT_EQ(After(a, "-accel"), "tcg");
  EXPECT_EQ(After(a, "-cpu"), "max");
  EXPECT_EQ(After(a, "-smp"), "2");
  EXPECT_EQ(After(a, "-m"), "1536");
  EXPECT_EQ(After(a, "-kernel"), "/img/vmlinuz");
  EXPECT_EQ(After(a, "-initrd"), "/img/initramfs.cpio");
  EXPECT_EQ(After(a, "-append"), "console=ttyS0 panic=-1 quiet");  // one argument
  EXPECT_EQ(After(a, "-monitor"), "none");
  for (const char* flag : {"-nographic", "-no-reboot", "-nodefaults"}) {
    EXPECT_NE(std::find(a.begin(), a.end(), flag), a.end()) << flag;
  }
  // The first -serial is ttyS0 (the console, on stdio), the second ttyS1 (the channel socket).
  auto first = std::find(a.begin(), a.end(), "-serial");
  ASSERT_NE(first, a.end());
  EXPECT_EQ(*(first + 1), "chardev:console");
  size_t second_at = static_cast<size_t>(first - a.begin()) + 1;
  EXPECT_EQ(After(a, "-serial", second_at), "chardev:channel");
  EXPECT_NE(std::find(a.begin(), a.end(), "stdio,id=console,signal=off"), a.end());
  EXPECT_NE(std::find(a.begin(), a.end(), "socket,id=channel,path=/tmp/x/channel.sock,server=on,wait=off"), a.end());
}

TEST(RunImage, ClearErrorsBeforeStartingQemu) {
  ScratchDir dir;
  RunOptions o;
  o.image_dir = dir.path();
  o.qemu = "/nonexistent/qemu";
  Status s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("vmlinuz: No such file or directory"), std::string::npos) << s.message();

  WriteAll(dir / "vmlinuz", "k");
  WriteAll(dir / "initramfs.cpio", "i");
  WriteAll(dir / "cmdline", "a\nb\n");
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cmdline: must be one non-empty line"), std::string::npos) << s.message();

  WriteAll(dir / "cmdline", "console=ttyS0\n");
  o.jobs_file = dir / "no-jobs.jsonl";
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("jobs file"), std::string::npos) << s.message();

  WriteAll(dir / "jobs.jsonl", "{\"op\":\"shutdown\"}\n{\"id\":\"late\",\"op\":\"generate\"}\n");
  o.jobs_file = dir / "jobs.jsonl";
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("a job after the shutdown request"), std::string::npos) << s.message();

  o.jobs_file.clear();
  o.memory_mb = 1;
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("memory must be in"), std::string::npos) << s.message();

  o.memory_mb = 1024;
  WriteAll(dir / "not-a-socket", "x");
  o.socket_path = dir / "not-a-socket";
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("exists and is not a socket"), std::string::npos) << s.message();

  o.socket_path.clear();
  s = RunImage(o);  // QEMU binary missing
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("start QEMU: execute /nonexistent/qemu: No such file or directory"), std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace appliance::image
