#include "image/qemu_runner.h"

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace appliance::image {
namespace {

using testing::ReadAll;
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
  EXPECT_EQ(After(a, "-cpu"), kDefaultCpu);
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
  // No NIC unless a capture is asked for.
  for (const char* flag : {"-netdev", "-device", "-object", "-qmp", "-nic", "-net"}) {
    EXPECT_EQ(std::find(a.begin(), a.end(), flag), a.end()) << flag;
  }
}

TEST(QemuArgv, CaptureAttachesARestrictedNicWithADumpFilter) {
  QemuConfig c;
  c.kernel = "/img/vmlinuz";
  c.initrd = "/img/initramfs.cpio";
  c.cmdline = "console=ttyS0";
  c.channel_socket = "/tmp/x/channel.sock";
  c.cpu = "Haswell-v4";
  c.capture_pcap = "/tmp/x/nic.pcap";
  c.qmp_socket = "/tmp/y/qmp.sock";
  std::vector<std::string> a = QemuArgv(c);
  EXPECT_EQ(After(a, "-cpu"), "Haswell-v4");
  EXPECT_EQ(After(a, "-netdev"), "user,id=n0,restrict=on,ipv6=off");
  EXPECT_EQ(After(a, "-device"), "virtio-net-pci,netdev=n0,id=nic0,romfile=");
  EXPECT_EQ(After(a, "-object"), "filter-dump,id=f0,netdev=n0,file=/tmp/x/nic.pcap");
  EXPECT_EQ(After(a, "-qmp"), "unix:/tmp/y/qmp.sock,server=on,wait=off");
  EXPECT_EQ(After(a, "-monitor"), "none");
}

TEST(CheckCpuModel, AcceptsModelsAndFeatureListsOnly) {
  for (const char* ok : {"qemu64", "max", "Haswell-v4", "max,-avx2,+sse4.2", "EPYC-Rome-v2"}) {
    EXPECT_TRUE(CheckCpuModel(ok).ok()) << ok;
  }
  for (const char* bad : {"", ",max", "-max", "max x", "max;ls", "a/b", "max\n"}) {
    EXPECT_FALSE(CheckCpuModel(bad).ok()) << bad;
  }
}

// A little-endian microsecond pcap: the global header and `lengths.size()` records.
std::string Pcap(const std::vector<uint32_t>& lengths, uint32_t snaplen = 65536) {
  std::string out;
  auto u32 = [&out](uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  auto u16 = [&out](uint16_t v) {
    out.push_back(static_cast<char>(v & 0xff));
    out.push_back(static_cast<char>(v >> 8));
  };
  u32(0xa1b2c3d4);
  u16(2);
  u16(4);
  u32(0);
  u32(0);
  u32(snaplen);
  u32(1);
  for (uint32_t len : lengths) {
    u32(1);
    u32(2);
    u32(len);
    u32(len);
    out.append(len, '\x5a');
  }
  return out;
}

StatusOr<PcapSummary> ParseString(const std::string& s) {
  return ParsePcap(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

TEST(Pcap, CountsRecords) {
  StatusOr<PcapSummary> empty = ParseString(Pcap({}));
  ASSERT_TRUE(empty.ok()) << empty.status().message();
  EXPECT_EQ(empty->packets, 0u);
  EXPECT_EQ(empty->linktype, 1u);
  EXPECT_EQ(empty->snaplen, 65536u);

  StatusOr<PcapSummary> three = ParseString(Pcap({60, 0, 342}));
  ASSERT_TRUE(three.ok()) << three.status().message();
  EXPECT_EQ(three->packets, 3u);
  EXPECT_EQ(three->captured_bytes, 402u);
}

TEST(Pcap, AcceptsBigEndianAndNanosecondFiles) {
  std::string be = "\xa1\xb2\xc3\xd4";
  be += std::string("\x00\x02\x00\x04", 4) + std::string(8, '\0') + std::string("\x00\x01\x00\x00", 4) +
        std::string("\x00\x00\x00\x01", 4);
  be += std::string(8, '\0') + std::string("\x00\x00\x00\x02\x00\x00\x00\x02", 8) + "ab";
  StatusOr<PcapSummary> s = ParseString(be);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->packets, 1u);

  std::string ns = Pcap({10});
  ns[0] = '\x4d';
  ns[1] = '\x3c';
  s = ParseString(ns);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->packets, 1u);
}

TEST(Pcap, RefusesMalformedFiles) {
  auto error_of = [](const std::string& bytes) {
    StatusOr<PcapSummary> s = ParseString(bytes);
    return s.ok() ? std::string("(parsed)") : s.status().message();
  };
  EXPECT_NE(error_of("").find("shorter than the 24-byte pcap header"), std::string::npos);
  EXPECT_NE(error_of(Pcap({}).substr(0, 23)).find("shorter than"), std::string::npos);
  std::string bad_magic = Pcap({});
  bad_magic[0] = 'X';
  EXPECT_NE(error_of(bad_magic).find("not a pcap file"), std::string::npos);
  std::string bad_version = Pcap({});
  bad_version[4] = 9;
  EXPECT_NE(error_of(bad_version).find("pcap version 9"), std::string::npos);
  // A record header cut short, packet data cut short.
  EXPECT_NE(error_of(Pcap({10}).substr(0, 24 + 15)).find("record 1 at offset 24: truncated record header"),
            std::string::npos);
  EXPECT_NE(error_of(Pcap({10, 20}).substr(0, 24 + 26 + 16 + 19)).find("record 2 at offset 50: truncated packet data"),
            std::string::npos);
  // Lengths beyond the snaplen, the packet length, or the absolute bound.
  EXPECT_NE(error_of(Pcap({100}, 64)).find("exceeds the snaplen 64"), std::string::npos);
  std::string captured_gt_original = Pcap({10});
  captured_gt_original[24 + 12] = 5;
  EXPECT_NE(error_of(captured_gt_original).find("exceeds the packet length 5"), std::string::npos);
  std::string huge = Pcap({}, 0);
  huge += std::string(8, '\0') + std::string("\x00\x00\x00\x10\x00\x00\x00\x10", 8);  // 0x10000000 each
  EXPECT_NE(error_of(huge).find("exceeds the bound"), std::string::npos);
}

TEST(Pcap, ReadsFilesWithoutLoadingThem) {
  ScratchDir dir;
  WriteAll(dir / "c.pcap", Pcap({60, 60, 1500}));
  StatusOr<PcapSummary> s = ReadPcapFile(dir / "c.pcap");
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->packets, 3u);
  WriteAll(dir / "cut.pcap", Pcap({60, 60}).substr(0, 24 + 76 + 10));
  s = ReadPcapFile(dir / "cut.pcap");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find(dir / "cut.pcap"), std::string::npos) << s.status().message();
  EXPECT_NE(s.status().message().find("record 2"), std::string::npos) << s.status().message();
  s = ReadPcapFile(dir / "missing.pcap");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("No such file"), std::string::npos) << s.status().message();
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
  o.cpu = "max;reboot";
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--cpu"), std::string::npos) << s.message();

  o.cpu = kDefaultCpu;
  o.expect_no_packets = true;
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--expect-no-packets needs --capture-nic"), std::string::npos) << s.message();

  o.capture_nic = dir / "a,b.pcap";
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("contains ','"), std::string::npos) << s.message();

  o.capture_nic = dir.path();  // a directory
  s = RunImage(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("exists and is not a regular file"), std::string::npos) << s.message();

  // A stale capture is emptied before QEMU starts, so it can never be read as this run's.
  WriteAll(dir / "stale.pcap", "stale bytes");
  o.capture_nic = dir / "stale.pcap";
  s = RunImage(o);  // QEMU binary missing
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(ReadAll(dir / "stale.pcap"), "");
  o.capture_nic.clear();
  o.expect_no_packets = false;

  s = RunImage(o);  // QEMU binary missing
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("start QEMU: execute /nonexistent/qemu: No such file or directory"), std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace appliance::image
