// The isolation proof (image/README.md, "Isolation proof"): boot the real
// appliance with a NIC attached whose every frame the host captures, serve
// >= 20 jobs, and find the capture empty; then boot a deliberately noisy
// test-only init (noisy_init.cpp) under the same capture setup and find its
// packets recorded, so an empty capture means something.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/command.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kWork = APPLIANCE_AIRGAP_TEST_WORK_DIR;
const std::string kImageTool = APPLIANCE_IMAGE_TOOL;
const std::string kNoisyInit = APPLIANCE_NOISY_INIT;
const std::string kStoriesModel = std::string(APPLIANCE_SHARED_DIR) + "/models/stories260K.gguf";
const std::string kStoriesReference = std::string(APPLIANCE_SHARED_DIR) + "/reference/stories260K.shared1.json";
constexpr size_t kMinJobs = 20;

using appliance::testing::CommandResult;
using appliance::testing::ReadFile;
using appliance::testing::RunCommand;

std::vector<json> ParseLines(const std::string& text) { return appliance::testing::ParseJsonLines(text); }

// ---------------------------------------------------------------------------
// The test's own pcap reader, independent of the runner's: the classic
// little-endian microsecond format QEMU's filter-dump writes (Ethernet).
struct Frame {
  std::string bytes;
};
struct Capture {
  std::string error;  // empty if the file parsed
  std::vector<Frame> frames;
};

uint32_t Le32(const std::string& s, size_t at) {
  return static_cast<uint32_t>(static_cast<uint8_t>(s[at])) | static_cast<uint32_t>(static_cast<uint8_t>(s[at + 1])) << 8 |
         static_cast<uint32_t>(static_cast<uint8_t>(s[at + 2])) << 16 |
         static_cast<uint32_t>(static_cast<uint8_t>(s[at + 3])) << 24;
}
unsigned Be16(const std::string& s, size_t at) {
  return static_cast<unsigned>(static_cast<uint8_t>(s[at])) << 8 | static_cast<uint8_t>(s[at + 1]);
}

Capture ReadCapture(const fs::path& path) {
  Capture c;
  const std::string file = ReadFile(path);
  if (file.size() < 24) {
    c.error = "shorter than a pcap header: " + std::to_string(file.size()) + " bytes";
    return c;
  }
  if (Le32(file, 0) != 0xa1b2c3d4) {
    c.error = "not a little-endian microsecond pcap";
    return c;
  }
  if (Le32(file, 20) != 1) {
    c.error = "link type " + std::to_string(Le32(file, 20)) + ", not Ethernet";
    return c;
  }
  const uint32_t snaplen = Le32(file, 16);
  size_t at = 24;
  while (at < file.size()) {
    if (file.size() - at < 16) {
      c.error = "truncated record header at " + std::to_string(at);
      return c;
    }
    const uint32_t caplen = Le32(file, at + 8);
    if (caplen > snaplen || caplen > file.size() - at - 16) {
      c.error = "bad record length " + std::to_string(caplen) + " at " + std::to_string(at);
      return c;
    }
    c.frames.push_back(Frame{file.substr(at + 16, caplen)});
    at += 16 + caplen;
  }
  return c;
}

// "IPv4/UDP :68 -> :67", "IPv6", "ARP", ... for the record.
std::string Describe(const Frame& f) {
  const std::string& b = f.bytes;
  if (b.size() < 14) return "runt";
  const unsigned type = Be16(b, 12);
  if (type == 0x0800 && b.size() >= 34) {
    const size_t ihl = (static_cast<uint8_t>(b[14]) & 0x0f) * 4u;
    if (static_cast<uint8_t>(b[23]) == 17 && b.size() >= 14 + ihl + 4) {
      return "IPv4/UDP :" + std::to_string(Be16(b, 14 + ihl)) + " -> :" + std::to_string(Be16(b, 14 + ihl + 2));
    }
    return "IPv4 proto " + std::to_string(static_cast<uint8_t>(b[23]));
  }
  if (type == 0x86dd && b.size() >= 54) {
    const unsigned next = static_cast<uint8_t>(b[20]);
    if (next == 58) return "IPv6/ICMPv6 type " + std::to_string(static_cast<uint8_t>(b[54]));
    if (next == 0) return "IPv6/hop-by-hop (MLD)";
    return "IPv6 next " + std::to_string(next);
  }
  if (type == 0x0806) return "ARP";
  char buf[32];
  std::snprintf(buf, sizeof buf, "ethertype 0x%04x", type);
  return buf;
}

// The N of the runner's "nic capture: N packets (PATH)" line, if present.
std::optional<uint64_t> RunnerPacketCount(const std::string& err, const fs::path& pcap) {
  std::smatch m;
  const std::regex re("nic capture: ([0-9]+) packets \\(" + std::regex_replace(pcap.string(), std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)") + "\\)");
  if (!std::regex_search(err, m, re)) return std::nullopt;
  return std::stoull(m[1].str());
}

// "ready after 12.34 s" from the runner, or -1.
double ReadySeconds(const std::string& err) {
  std::smatch m;
  if (!std::regex_search(err, m, std::regex("ready after ([0-9.]+) s"))) return -1;
  return std::stod(m[1].str());
}

CommandResult BuildImage(const fs::path& out, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {kImageTool, "build", "--model", kStoriesModel, "--key", APPLIANCE_TEST_SIGNING_KEY,
                                   "--out", out.string(), "--module", "virtio_pci", "--module", "virtio_net"};
  args.insert(args.end(), extra.begin(), extra.end());
  return RunCommand(args, 300);
}

class AirgapTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(kWork);
    fs::create_directories(kWork);
  }
};

TEST_F(AirgapTest, ApplianceWithANicServesTwentyJobsAndSendsNoPacket) {
  const fs::path image = kWork / "appliance";
  CommandResult build = BuildImage(image, {});
  ASSERT_EQ(build.exit_code, 0) << build.out << build.err;

  // A mix of greedy and seeded sampling, small max_tokens so TCG stays fast.
  // Greedy on the reference prompt must give the reference ids' prefix; a
  // seeded job repeated must give the same tokens.
  const json reference = json::parse(ReadFile(kStoriesReference));
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog", "Lily and Tom went to the park",
                                            "One day, a bird"};
  std::vector<json> jobs;
  for (int i = 0; i < 24; ++i) {
    json job = {{"id", "j" + std::to_string(i)}, {"op", "generate"}, {"prompt", prompts[static_cast<size_t>(i) % prompts.size()]},
                {"max_tokens", 8 + 4 * (i % 3)}};
    if (i % 2 == 0) {
      job["temperature"] = 0;
    } else {
      job["temperature"] = 0.8;
      job["top_p"] = 0.9;
      job["seed"] = 1000 + i / 4;  // pairs (i, i+2) with the same prompt... see below
    }
    jobs.push_back(job);
  }
  // j21 repeats j1 exactly (same prompt, max_tokens, seed).
  jobs[21] = jobs[1];
  jobs[21]["id"] = "j21";
  ASSERT_GE(jobs.size(), kMinJobs);
  const fs::path jobs_file = kWork / "appliance-jobs.jsonl";
  {
    std::ofstream out(jobs_file);
    for (const json& j : jobs) out << j.dump() << "\n";
  }

  const fs::path pcap = kWork / "appliance.pcap";
  const fs::path console = kWork / "appliance-console.log";
  CommandResult run = RunCommand({kImageTool, "run", image.string(), "--jobs", jobs_file.string(), "--capture-nic",
                                  pcap.string(), "--expect-no-packets", "--console-log", console.string(), "--timeout",
                                  "600"},
                                 700);
  const std::string log = ReadFile(console);
  ASSERT_EQ(run.exit_code, 0) << "stderr:\n" << run.err << "\nconsole:\n" << log;

  std::map<std::string, json> done;
  for (const json& r : ParseLines(run.out)) {
    ASSERT_TRUE(r.is_object()) << run.out;
    if (r.value("event", "") == "done") done[r.at("id").get<std::string>()] = r;
  }
  EXPECT_EQ(done.size(), jobs.size()) << run.out;
  for (const json& j : jobs) {
    const std::string id = j.at("id").get<std::string>();
    ASSERT_TRUE(done.count(id)) << id << " got no done event:\n" << run.out;
    if (j.at("temperature") == 0 && j.at("prompt") == "Once upon a time") {
      const size_t n = done[id].at("tokens").size();
      ASSERT_LE(n, reference.at("greedy").size());
      EXPECT_EQ(done[id].at("tokens"), json(std::vector<json>(reference.at("greedy").begin(),
                                                                reference.at("greedy").begin() + static_cast<long>(n))))
          << id << ": greedy ids differ from the reference";
    }
  }
  EXPECT_EQ(done["j21"].at("tokens"), done["j1"].at("tokens")) << "a seeded job must be reproducible";

  // The guest really had the NIC: init loaded the driver, and QEMU says the
  // guest's virtio-net driver set the device up (DRIVER_OK).
  EXPECT_NE(log.find("appliance-init: loaded module lib/modules/"), std::string::npos) << log;
  EXPECT_TRUE(std::regex_search(log, std::regex(R"(appliance-init: loaded module lib/modules/[^ ]+/virtio_pci\.ko)"))) << log;
  EXPECT_TRUE(std::regex_search(log, std::regex(R"(appliance-init: loaded module lib/modules/[^ ]+/virtio_net\.ko)"))) << log;
  EXPECT_NE(run.err.find("nic: the guest's virtio-net driver is up (DRIVER_OK)"), std::string::npos) << run.err;
  EXPECT_NE(log.find("appliance-init: power-off: clean"), std::string::npos) << log;

  // Zero packets: by the runner's count and by the test's own reading.
  std::optional<uint64_t> reported = RunnerPacketCount(run.err, pcap);
  ASSERT_TRUE(reported.has_value()) << run.err;
  EXPECT_EQ(*reported, 0u) << run.err;
  const Capture capture = ReadCapture(pcap);
  ASSERT_EQ(capture.error, "") << pcap;
  EXPECT_EQ(capture.frames.size(), 0u);
  for (const Frame& f : capture.frames) std::cout << "[airgap] unexpected frame: " << Describe(f) << std::endl;
  EXPECT_EQ(fs::file_size(pcap), 24u) << "only the pcap header";

  std::cout << "[airgap] appliance: " << done.size() << " jobs done, ready after " << ReadySeconds(run.err)
            << " s, capture " << capture.frames.size() << " packets\n[airgap] runner stderr:\n"
            << run.err << std::endl;
}

// The positive control: same NIC, same capture, a guest that sends on purpose.
TEST_F(AirgapTest, NoisyGuestUnderTheSameCaptureIsRecorded) {
  const fs::path image = kWork / "noisy";
  CommandResult build = BuildImage(image, {"--init", kNoisyInit});
  ASSERT_EQ(build.exit_code, 0) << build.out << build.err;

  const fs::path pcap = kWork / "noisy.pcap";
  const fs::path console = kWork / "noisy-console.log";
  CommandResult run = RunCommand({kImageTool, "run", image.string(), "--capture-nic", pcap.string(),
                                  "--expect-no-packets", "--console-log", console.string(), "--timeout", "120"},
                                 180);
  const std::string log = ReadFile(console);
  const std::string context = "stdout:\n" + run.out + "\nstderr:\n" + run.err + "\nconsole:\n" + log;

  // The noisy init did its part, and the VM powered off by itself (no timeout):
  EXPECT_NE(log.find("noisy-init: eth0 is up"), std::string::npos) << context;
  EXPECT_NE(log.find("driver virtio_net"), std::string::npos) << context;
  EXPECT_NE(log.find("noisy-init: power-off"), std::string::npos) << context;
  EXPECT_EQ(run.err.find("timeout after"), std::string::npos) << context;
  EXPECT_EQ(run.err.find("QEMU ended with"), std::string::npos) << context;
  EXPECT_NE(run.err.find("nic: the guest's virtio-net driver is up (DRIVER_OK)"), std::string::npos) << context;
  // `run` fails: the noisy init is not appliance-init (no power-off line), and
  // --expect-no-packets found packets.
  EXPECT_EQ(run.exit_code, 1) << context;
  EXPECT_NE(run.err.find("no 'appliance-init: power-off:' line"), std::string::npos) << context;
  EXPECT_NE(run.err.find("--expect-no-packets: the NIC capture"), std::string::npos) << context;

  std::optional<uint64_t> reported = RunnerPacketCount(run.err, pcap);
  ASSERT_TRUE(reported.has_value()) << context;
  const Capture capture = ReadCapture(pcap);
  ASSERT_EQ(capture.error, "") << pcap;
  EXPECT_GT(capture.frames.size(), 0u) << "the capture setup records nothing: an empty capture proves nothing\n" << context;
  EXPECT_EQ(*reported, capture.frames.size());

  // The DHCP-shaped broadcasts the guest sent are among them, and the capture
  // holds at least every frame the guest's kernel says it transmitted.
  std::map<std::string, size_t> kinds;
  for (const Frame& f : capture.frames) ++kinds[Describe(f)];
  EXPECT_GE(kinds["IPv4/UDP :68 -> :67"], 1u) << context;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex("noisy-init: eth0: tx_packets ([0-9]+)"))) << context;
  const uint64_t tx = std::stoull(m[1].str());
  EXPECT_GT(tx, 0u);
  EXPECT_GE(capture.frames.size(), tx) << "the guest sent frames the capture missed";

  std::cout << "[airgap] noisy control: capture " << capture.frames.size() << " packets, guest tx_packets " << tx
            << std::endl;
  for (const auto& [kind, count] : kinds) std::cout << "[airgap]   " << count << " x " << kind << std::endl;
}

}  // namespace
