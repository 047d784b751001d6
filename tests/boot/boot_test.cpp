// Boot tests: build a real image around stories260K, boot it under QEMU (TCG),
// talk to it over the serial job channel with `appliance-image run --jobs`.
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/command.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using appliance::testing::CommandResult;
using appliance::testing::ReadFile;
using appliance::testing::RunCommand;

std::vector<json> ParseLines(const std::string& text) { return appliance::testing::ParseJsonLines(text); }

const fs::path kWork = APPLIANCE_BOOT_TEST_WORK_DIR;
const std::string kImageTool = APPLIANCE_IMAGE_TOOL;
const std::string kStoriesModel = std::string(APPLIANCE_SHARED_DIR) + "/models/stories260K.gguf";
const std::string kStoriesReference = std::string(APPLIANCE_SHARED_DIR) + "/reference/stories260K.shared1.json";

class BootTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(kWork);
    fs::create_directories(kWork);
    build_ = RunCommand({kImageTool, "build", "--model", kStoriesModel, "--key", APPLIANCE_TEST_SIGNING_KEY, "--out",
                  (kWork / "good").string()},
                 300);
  }

  void SetUp() override {
    ASSERT_EQ(build_.exit_code, 0) << "appliance-image build failed:\n" << build_.out << build_.err;
  }

  static fs::path WriteJobs(const std::string& name, const std::vector<std::string>& lines) {
    fs::path path = kWork / name;
    std::ofstream out(path);
    for (const auto& l : lines) out << l << "\n";
    return path;
  }

  static CommandResult build_;
};
CommandResult BootTest::build_;

TEST_F(BootTest, AnswersJobsOverSerialAndPowersOffCleanly) {
  const json reference = json::parse(ReadFile(kStoriesReference));
  fs::path jobs = WriteJobs("jobs.jsonl", {
      R"({"id":"j1","op":"generate","prompt":"Once upon a time","max_tokens":48,"temperature":0})",
      R"({"id":"j2","op":"generate","prompt":"Once upon a time","max_tokens":8,"temperature":0.8,"top_p":0.9,"seed":7})",
  });
  fs::path console = kWork / "good-console.log";
  CommandResult run = RunCommand({kImageTool, "run", (kWork / "good").string(), "--jobs", jobs.string(), "--console-log",
                           console.string(), "--timeout", "240"},
                          300);
  ASSERT_EQ(run.exit_code, 0) << "stdout:\n" << run.out << "\nstderr:\n" << run.err << "\nconsole:\n" << ReadFile(console);

  std::vector<json> replies = ParseLines(run.out);
  std::string streamed;
  const json* done_j1 = nullptr;
  bool done_j2 = false;
  for (const json& r : replies) {
    ASSERT_TRUE(r.is_object()) << "non-JSON reply line in:\n" << run.out;
    const std::string event = r.value("event", "");
    const json id = r.value("id", json());
    if (id == "j1" && event == "token") streamed += r.at("text").get<std::string>();
    if (id == "j1" && event == "done") done_j1 = &r;
    if (id == "j2" && event == "done") done_j2 = true;
  }
  ASSERT_NE(done_j1, nullptr) << run.out;
  EXPECT_EQ(done_j1->at("tokens"), reference.at("greedy")) << "greedy ids differ from llama.cpp's";
  EXPECT_EQ(done_j1->at("text").get<std::string>(), streamed);
  EXPECT_TRUE(done_j2) << "the second job must be answered too";

  const std::string log = ReadFile(console);
  EXPECT_NE(log.find("appliance-init: manifest verified"), std::string::npos) << log;
  EXPECT_NE(log.find("appliance-init: power-off: clean"), std::string::npos) << log;
  // For the record: the runner reports the time from QEMU start to the ready line.
  std::cout << "[boot] " << run.err.substr(0, 2000) << std::endl;
}

TEST_F(BootTest, KeepsServingAfterMalformedJobs) {
  fs::path jobs = WriteJobs("bad-jobs.jsonl", {
      R"({"id":"bad","op":"generate","prompt":17})",
      R"({"id":"huge","op":"generate","prompt":")" + std::string(70000, 'a') + R"("})",
      R"({"id":"good","op":"generate","prompt":"Once upon a time","max_tokens":4,"temperature":0})",
  });
  fs::path console = kWork / "bad-console.log";
  CommandResult run = RunCommand({kImageTool, "run", (kWork / "good").string(), "--jobs", jobs.string(),
                                  "--console-log", console.string(), "--timeout", "240"},
                                 300);
  // The runner exits non-zero because two jobs got errors, and says which.
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("\"bad\""), std::string::npos) << run.err;
  bool error_bad = false, error_huge = false, done_good = false;
  for (const json& r : ParseLines(run.out)) {
    ASSERT_TRUE(r.is_object()) << run.out;
    const std::string event = r.value("event", "");
    if (event == "error" && r.contains("error") && r["error"].get<std::string>().find("'prompt'") != std::string::npos) {
      error_bad = true;
    }
    if (event == "error" && r.contains("error") && r["error"].get<std::string>().find("65536") != std::string::npos) {
      error_huge = true;
    }
    if (r.value("id", json()) == "good" && event == "done") done_good = true;
  }
  EXPECT_TRUE(error_bad) << run.out;
  EXPECT_TRUE(error_huge) << "an oversize line must get an error naming the limit:\n" << run.out;
  EXPECT_TRUE(done_good) << "the server must keep serving after errors:\n" << run.out;
  EXPECT_NE(ReadFile(console).find("appliance-init: power-off: clean"), std::string::npos) << ReadFile(console);
}

// Flips one byte inside the model's data in the built cpio archive.
void FlipByteOfEntry(const fs::path& cpio_path, const std::string& entry_name, size_t offset_in_file) {
  std::string archive = ReadFile(cpio_path);
  size_t pos = 0;
  auto hex = [&](size_t at) { return std::stoul(archive.substr(at, 8), nullptr, 16); };
  while (pos + 110 <= archive.size()) {
    ASSERT_EQ(archive.compare(pos, 6, "070701"), 0) << "not a newc header at " << pos;
    const size_t file_size = hex(pos + 54), name_size = hex(pos + 94);
    const std::string name = archive.substr(pos + 110, name_size - 1);
    const size_t data = (pos + 110 + name_size + 3) & ~size_t{3};
    if (name == entry_name) {
      ASSERT_LT(offset_in_file, file_size);
      archive[data + offset_in_file] = static_cast<char>(archive[data + offset_in_file] ^ 0x01);
      std::ofstream(cpio_path, std::ios::binary | std::ios::trunc) << archive;
      return;
    }
    if (name == "TRAILER!!!") break;
    pos = (data + file_size + 3) & ~size_t{3};
  }
  FAIL() << entry_name << " not found in " << cpio_path;
}

TEST_F(BootTest, RefusesImageWithOneModelByteFlipped) {
  const fs::path tampered = kWork / "tampered";
  fs::remove_all(tampered);
  fs::copy(kWork / "good", tampered, fs::copy_options::recursive);
  FlipByteOfEntry(tampered / "initramfs.cpio", "models/model.gguf", 600000);
  fs::path jobs = WriteJobs("tamper-jobs.jsonl",
                            {R"({"id":"j1","op":"generate","prompt":"Once upon a time","max_tokens":8,"temperature":0})"});
  fs::path console = kWork / "tampered-console.log";
  CommandResult run = RunCommand({kImageTool, "run", tampered.string(), "--jobs", jobs.string(), "--console-log",
                           console.string(), "--timeout", "120"},
                          180);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_EQ(run.out.find("\"done\""), std::string::npos) << "no job may be answered:\n" << run.out;
  const std::string log = ReadFile(console);
  EXPECT_NE(log.find("appliance-init: FATAL: image verification: models/model.gguf: sha256 mismatch"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("appliance-init: power-off: failure"), std::string::npos) << log;
  EXPECT_EQ(log.find("runtime started"), std::string::npos) << log;
  EXPECT_NE(run.err.find("models/model.gguf"), std::string::npos) << "the runner must name the reason:\n" << run.err;
}

// The probe stands in for the runtime under exactly the runtime's sandbox and
// tries every way out (tests/probe/probe.cpp).
TEST_F(BootTest, ProbeFindsEveryWayOutOfTheSandboxClosed) {
  const fs::path image = kWork / "probe";
  CommandResult build = RunCommand({kImageTool, "build", "--model", kStoriesModel, "--key", APPLIANCE_TEST_SIGNING_KEY,
                             "--runtime", APPLIANCE_PROBE, "--out", image.string()},
                            300);
  ASSERT_EQ(build.exit_code, 0) << build.out << build.err;
  fs::path jobs = WriteJobs("probe-jobs.jsonl", {});
  fs::path console = kWork / "probe-console.log";
  CommandResult run = RunCommand({kImageTool, "run", image.string(), "--jobs", jobs.string(), "--console-log",
                           console.string(), "--timeout", "180"},
                          240);
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err << ReadFile(console);

  size_t attempts = 0;
  const json* status = nullptr;
  std::vector<json> replies = ParseLines(run.out);
  for (const json& r : replies) {
    if (r.value("event", "") == "probe") {
      ++attempts;
      EXPECT_TRUE(r.at("refused").get<bool>()) << r.dump();
      std::cout << "[probe] " << r.at("attempt").get<std::string>() << ": " << r.at("result").get<std::string>()
                << std::endl;
    }
    if (r.value("event", "") == "probe-status") status = &r;
  }
  EXPECT_GE(attempts, 30u);
  ASSERT_NE(status, nullptr) << run.out;
  std::cout << "[probe] " << status->dump() << std::endl;
  const json& st = status->at("status");
  EXPECT_EQ(st.at("Seccomp"), "2");
  EXPECT_EQ(st.at("NoNewPrivs"), "1");
  for (const char* caps : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) {
    EXPECT_EQ(st.at(caps), "0000000000000000") << caps;
  }
  EXPECT_EQ(st.at("Uid").get<std::string>().substr(0, 4), "1000");
  EXPECT_EQ(status->at("interfaces"), json::array({"lo"}));
  EXPECT_TRUE(status->at("all_refused").get<bool>());
}

}  // namespace
