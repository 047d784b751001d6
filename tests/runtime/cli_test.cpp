// appliance-runtime as a program: the CLI contracts, exit codes and error
// lines, and `serve` started the way init starts it (fds 3 and 4).
#include <fcntl.h>
#include <stdlib.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "runtime/server.h"
#include "tests/runtime/model_writer.h"
#include "tests/support/command.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;

struct CliResult {
  int code = -1;
  std::string out, err;
};

// Runs the runtime binary with `args`; fds in `inherit` (child fd -> parent
// fd) are passed as those numbers.
CliResult RunCli(const std::vector<std::string>& args, const std::vector<std::pair<int, int>>& inherit = {}) {
  std::vector<std::string> argv = {APPLIANCE_RUNTIME_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  appliance::testing::CommandResult r = appliance::testing::RunCommand(argv, 120, inherit);
  return {r.exit_code, std::move(r.out), std::move(r.err)};
}

const std::string kStories = testing::ModelPath("stories260K.gguf");

Json Reference() { return Json::parse(testing::ReadText(testing::SharedPath("reference/stories260K.shared1.json"))); }

TEST(Cli, GenerateJsonMatchesTheReference) {
  const Json ref = Reference();
  const CliResult r = RunCli({"generate", "--model", kStories, "--prompt", ref["prompt"], "--max-tokens", "48",
                              "--threads", "2", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j["prompt_tokens"], ref["prompt_tokens"]);
  EXPECT_EQ(j["tokens"], ref["greedy"]);
  EXPECT_EQ(j["text"], ref["greedy_text"]);
  EXPECT_TRUE(j["timings"].contains("tokens_per_s"));
  const CliResult plain = RunCli({"generate", "--model", kStories, "--prompt", ref["prompt"], "--max-tokens", "48"});
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_EQ(plain.out, ref["greedy_text"].get<std::string>() + "\n");
  // Sampling flags are accepted and seeded runs repeat.
  const std::vector<std::string> sampled = {"generate", "--model", kStories, "--prompt", "Once", "--max-tokens", "20",
                                            "--temperature", "0.9", "--top-p", "0.9", "--seed", "5", "--json"};
  const CliResult s1 = RunCli(sampled), s2 = RunCli(sampled);
  ASSERT_EQ(s1.code, 0) << s1.err;
  EXPECT_EQ(Json::parse(s1.out)["tokens"], Json::parse(s2.out)["tokens"]);
}

TEST(Cli, LogitsTeacherForcedShape) {
  const Json ref = Reference();
  std::string ids;
  for (const auto& t : ref["sequence"]) ids += (ids.empty() ? "" : ",") + std::to_string(t.get<int>());
  const CliResult r = RunCli({"logits", "--model", kStories, "--tokens", ids, "--top-k", "8", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j["prompt_tokens"], ref["sequence"]);
  ASSERT_EQ(j["topk"].size(), ref["sequence_topk"].size());
  for (size_t p = 0; p < j["topk"].size(); ++p) {
    ASSERT_EQ(j["topk"][p].size(), 8u);
    EXPECT_EQ(j["topk"][p][0][0], ref["sequence_topk"][p][0][0]) << p;
    EXPECT_NEAR(j["topk"][p][0][1].get<double>(), ref["sequence_topk"][p][0][1].get<double>(), 1e-3);
  }
  const CliResult pr = RunCli({"logits", "--model", kStories, "--prompt", ref["prompt"], "--top-k", "3", "--json"});
  ASSERT_EQ(pr.code, 0) << pr.err;
  const Json pj = Json::parse(pr.out);
  EXPECT_EQ(pj["prompt_tokens"], ref["prompt_tokens"]);
  EXPECT_EQ(pj["topk"][0].size(), 3u);
}

TEST(Cli, Tokenize) {
  const CliResult r = RunCli({"tokenize", "--model", kStories, "--text", "Once upon a time", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Json::parse(r.out)["tokens"], Json::parse("[1,403,407,261,378]"));
  const CliResult nb = RunCli({"tokenize", "--model", kStories, "--text", "Once upon a time", "--no-bos", "--json"});
  EXPECT_EQ(Json::parse(nb.out)["tokens"], Json::parse("[403,407,261,378]"));
  // Vocab-only files work for tokenize.
  const CliResult v = RunCli({"tokenize", "--model", testing::SharedPath("vocab/ggml-vocab-llama-spm.gguf"), "--text",
                              "Hello world", "--no-bos"});
  ASSERT_EQ(v.code, 0) << v.err;
  EXPECT_EQ(v.out, "15043 3186\n");
}

TEST(Cli, ErrorsArePrintedOnceWithNonZeroExit) {
  CliResult r = RunCli({"generate", "--model", "/nonexistent.gguf", "--prompt", "x", "--max-tokens", "4"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: open /nonexistent.gguf: No such file or directory\n");
  EXPECT_EQ(r.out, "");
  r = RunCli({"logits", "--model", kStories, "--tokens", "1,x", "--json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: --tokens: 'x' is not a token id\n");
  r = RunCli({"logits", "--model", kStories, "--tokens", "1,512", "--json"});
  EXPECT_EQ(r.err, "error: --tokens: id 512 is outside [0, 512)\n");
  {
    // A weight type the parser knows but no kernel computes (q2_K): refused by name.
    testing::ModelSpec spec;
    spec.n_embd = 256;
    testing::TestModel m = testing::WriteModel(spec);
    testing::GgufBuilder::Patch<uint32_t>(m.bytes, m.tensor("blk.0.ffn_up.weight").type_at, 10);
    char path[] = "/tmp/cli_test_q2k_XXXXXX";
    UniqueFd fd(::mkstemp(path));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(::write(fd.get(), m.bytes.data(), m.bytes.size()), static_cast<ssize_t>(m.bytes.size()));
    r = RunCli({"generate", "--model", path, "--prompt", "x", "--max-tokens", "4"});
    ::unlink(path);
    EXPECT_EQ(r.code, 1);
    EXPECT_THAT(r.err, StartsWith("error: "));
    EXPECT_THAT(r.err, HasSubstr("tensor 'blk.0.ffn_up.weight' has type q2_K, which this runtime does not support"));
  }
  r = RunCli({"generate", "--model", kStories, "--prompt", "x", "--max-tokens", "2048"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: prompt (3 tokens) + max_tokens (2048) exceeds the context size 2048\n");
  r = RunCli({"generate", "--model", kStories, "--prompt", "x", "--max-tokens", "4", "--top-p", "0"});
  EXPECT_EQ(r.err, "error: --top-p must be in (0, 1]\n");
  // Command-line mistakes: exit 2.
  r = RunCli({"generate", "--prompt", "x", "--max-tokens", "4"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, StartsWith("error: "));
  EXPECT_THAT(r.err, HasSubstr("--model"));
  r = RunCli({"logits", "--model", kStories, "--prompt", "x", "--tokens", "1"});
  EXPECT_EQ(r.code, 2);
  r = RunCli({"serve", "--channel-fd", "3"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "error: serve needs --model or --model-fd\n");
  r = RunCli({"frobnicate"});
  EXPECT_EQ(r.code, 2);
  r = RunCli({"--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_THAT(r.out, HasSubstr("generate"));
}

// As init runs it: the verified model's fd as 4, the channel as 3.
TEST(Cli, ServeOnInheritedFds) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd server(sv[0]), client(sv[1]);
  UniqueFd model(::open(kStories.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(model.valid());
  const std::string requests =
      R"({"id":"a","op":"generate","prompt":"Once upon a time","max_tokens":4})"
      "\n"
      R"({"op":"shutdown"})"
      "\n";
  ASSERT_TRUE(WriteAll(client.get(), requests).ok());
  const CliResult r = RunCli({"serve", "--model-fd", "4", "--channel-fd", "3", "--threads", "2"},
                             {{3, server.get()}, {4, model.get()}});
  server.reset();
  EXPECT_EQ(r.code, 0) << r.err;
  std::string replies;
  char buf[4096];
  for (ssize_t n; (n = ::read(client.get(), buf, sizeof buf)) > 0;) replies.append(buf, static_cast<size_t>(n));
  std::vector<Json> events;
  for (size_t pos = 0, nl; (nl = replies.find('\n', pos)) != std::string::npos; pos = nl + 1) {
    events.push_back(Json::parse(replies.substr(pos, nl - pos)));
  }
  ASSERT_EQ(events.size(), 7u) << replies;  // ready, 4 tokens, done, shutdown
  EXPECT_EQ(events[0]["event"], "ready");
  EXPECT_EQ(events[5]["event"], "done");
  EXPECT_EQ(events[5]["tokens"], Json::parse("[432,383,286,261]"));
  EXPECT_EQ(events[6]["event"], "shutdown");
  // Every stderr line carries the prefix.
  size_t lines = 0;
  for (size_t pos = 0, nl; (nl = r.err.find('\n', pos)) != std::string::npos; pos = nl + 1, ++lines) {
    EXPECT_THAT(r.err.substr(pos, nl - pos), StartsWith("appliance-runtime: "));
  }
  EXPECT_GE(lines, 2u);
}

TEST(Cli, ServeExitsNonZeroOnEof) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd server(sv[0]), client(sv[1]);
  client.reset();  // nobody will ever send a request
  const CliResult r = RunCli({"serve", "--model", kStories, "--channel-fd", "3"}, {{3, server.get()}});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("appliance-runtime: error: "));
  // The ready line could not be written or EOF came first; either way it says so.
  EXPECT_TRUE(r.err.find("channel closed (EOF)") != std::string::npos ||
              r.err.find("write channel") != std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace appliance::runtime
