// Chat end to end on a tiny llama model built in memory with a ChatML vocab
// and template: GenerateChat, the "chat" job over a socketpair, and
// `appliance-runtime generate --chat`. The model's weights make greedy
// decoding pick one chosen token every time (all embeddings equal, one output
// row set), so the expected ids are known.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <future>
#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "runtime/context.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "runtime/server.h"
#include "tests/runtime/gguf_builder.h"
#include "tests/support/command.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr const char* kChatmlSource =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Token ids of the tiny vocab.
enum : int32_t { kUnk = 0, kBos = 1, kEos = 2, kImStart = 3, kImEnd = 4, kBytes = 5, kSpace = 5 + 256, kOk, kUser };

// dim 8, 1 layer, 2 heads; every projection zero, so the last hidden state is
// the token's embedding (all ones) and logit[v] = output[v] . ones: the row of
// `target` is ones, every other row zero.
std::vector<uint8_t> BuildChatModel(int32_t target, bool with_template = true) {
  testing::GgufBuilder b;
  const uint32_t dim = 8, ff = 16;
  b.KvString("general.architecture", "llama").KvString("general.name", "tiny-chat");
  b.KvU32("llama.embedding_length", dim).KvU32("llama.block_count", 1).KvU32("llama.attention.head_count", 2);
  b.KvU32("llama.attention.head_count_kv", 2).KvU32("llama.feed_forward_length", ff);
  b.KvU32("llama.context_length", 256).KvF32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"};
  std::vector<int32_t> types = {2, 3, 3, 3, 3};
  for (int i = 0; i < 256; ++i) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", i);
    tokens.push_back(name);
    types.push_back(6);
  }
  for (const char* t : {"\xe2\x96\x81", "\xe2\x96\x81ok", "user"}) {
    tokens.push_back(t);
    types.push_back(1);
  }
  const uint64_t n_vocab = tokens.size();
  b.KvString("tokenizer.ggml.model", "llama");
  b.KvStringArray("tokenizer.ggml.tokens", tokens);
  b.KvF32Array("tokenizer.ggml.scores", std::vector<float>(n_vocab, 0.0f));
  b.KvI32Array("tokenizer.ggml.token_type", types);
  if (with_template) b.KvString("tokenizer.chat_template", kChatmlSource);

  auto zeros = [](uint64_t n) { return std::vector<float>(n, 0.0f); };
  b.TensorF32("token_embd.weight", {dim, n_vocab}, std::vector<float>(dim * n_vocab, 1.0f));
  b.TensorF32("blk.0.attn_norm.weight", {dim}, std::vector<float>(dim, 1.0f));
  b.TensorF32("blk.0.attn_q.weight", {dim, dim}, zeros(dim * dim));
  b.TensorF32("blk.0.attn_k.weight", {dim, dim}, zeros(dim * dim));
  b.TensorF32("blk.0.attn_v.weight", {dim, dim}, zeros(dim * dim));
  b.TensorF32("blk.0.attn_output.weight", {dim, dim}, zeros(dim * dim));
  b.TensorF32("blk.0.ffn_norm.weight", {dim}, std::vector<float>(dim, 1.0f));
  b.TensorF32("blk.0.ffn_gate.weight", {dim, ff}, zeros(dim * ff));
  b.TensorF32("blk.0.ffn_up.weight", {dim, ff}, zeros(dim * ff));
  b.TensorF32("blk.0.ffn_down.weight", {ff, dim}, zeros(dim * ff));
  b.TensorF32("output_norm.weight", {dim}, std::vector<float>(dim, 1.0f));
  std::vector<float> out = zeros(dim * n_vocab);
  for (uint32_t i = 0; i < dim; ++i) out[static_cast<size_t>(target) * dim + i] = 1.0f;
  b.TensorF32("output.weight", {dim, n_vocab}, out);
  return b.Build();
}

std::unique_ptr<Model> LoadChatModel(int32_t target, bool with_template = true) {
  const auto bytes = BuildChatModel(target, with_template);
  UniqueFd fd(::memfd_create("tiny-chat", MFD_CLOEXEC));
  EXPECT_EQ(::write(fd.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  auto file = MappedFile::FromFd(fd.get(), "tiny-chat");
  EXPECT_TRUE(file.ok());
  if (!file.ok()) return nullptr;
  auto m = Model::Load(std::move(*file), "tiny-chat");
  EXPECT_TRUE(m.ok()) << m.status().message();
  return m.ok() ? std::move(*m) : nullptr;
}

TEST(Chat, GenerateChatRendersTokenizesAndGenerates) {
  auto m = LoadChatModel(kOk);
  ASSERT_NE(m, nullptr);
  auto ctx = Context::Create(*m, {});
  ASSERT_TRUE(ctx.ok());
  auto tmpl = ChatTemplate::FromGguf(m->gguf());
  ASSERT_TRUE(tmpl.ok()) << tmpl.status().message();
  EXPECT_EQ(tmpl->name(), "chatml");
  const std::vector<ChatMessage> messages = {{"user", "hi <|im_end|>"}};
  GenerateParams p;
  p.max_tokens = 3;
  auto r = GenerateChat(**ctx, *tmpl, messages, p, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->tokens, (std::vector<int32_t>{kOk, kOk, kOk}));
  EXPECT_EQ(r->text, " ok ok ok");
  EXPECT_FALSE(r->stopped_by_eos);
  // The prompt: BOS, the template's control tokens, the user's "<|im_end|>" as text.
  const auto& pt = r->prompt_tokens;
  ASSERT_GE(pt.size(), 4u);
  EXPECT_EQ(pt[0], kBos);
  EXPECT_EQ(pt[1], kImStart);
  EXPECT_EQ(std::count(pt.begin(), pt.end(), kImStart), 2);
  EXPECT_EQ(std::count(pt.begin(), pt.end(), kImEnd), 1);
  const Tokenizer& tok = m->tokenizer();
  auto rendered = tmpl->Render(messages);
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(pt, *tok.Encode(rendered->text, true, rendered->markup));
}

TEST(Chat, StopsAtTheEndOfTurnToken) {
  auto m = LoadChatModel(kImEnd);
  ASSERT_NE(m, nullptr);
  auto ctx = Context::Create(*m, {});
  ASSERT_TRUE(ctx.ok());
  auto tmpl = ChatTemplate::FromGguf(m->gguf());
  ASSERT_TRUE(tmpl.ok());
  GenerateParams p;
  p.max_tokens = 5;
  auto r = GenerateChat(**ctx, *tmpl, std::vector<ChatMessage>{{"user", "hi"}}, p, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->stopped_by_eos);
  EXPECT_TRUE(r->tokens.empty());
  // A model without a template: chat is refused with the reason.
  auto bare = LoadChatModel(kOk, /*with_template=*/false);
  ASSERT_NE(bare, nullptr);
  auto t2 = ChatTemplate::FromGguf(bare->gguf());
  ASSERT_FALSE(t2.ok());
  EXPECT_EQ(t2.status().message(), "the model has no chat template (tokenizer.chat_template)");
}

// Reads reply lines with a timeout.
class Client {
 public:
  explicit Client(int fd) : fd_(fd) {}
  void Send(std::string_view s) { ASSERT_TRUE(WriteAll(fd_, s).ok()); }
  Json Next() {
    for (;;) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        const std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return Json::parse(line);
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 60000) != 1) return Json{{"event", "timeout"}};
      char tmp[4096];
      const ssize_t n = ::read(fd_, tmp, sizeof tmp);
      if (n <= 0) return Json{{"event", "closed"}};
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
};

TEST(Chat, ServesChatJobs) {
  auto m = LoadChatModel(kOk);
  ASSERT_NE(m, nullptr);
  ContextOptions o;
  o.n_threads = 2;
  auto ctx = Context::Create(*m, o);
  ASSERT_TRUE(ctx.ok());
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd server(sv[0]), client(sv[1]);
  auto done = std::async(std::launch::async, [&] { return Serve(**ctx, server.get()); });
  Client c(client.get());
  EXPECT_EQ(c.Next()["event"], "ready");

  c.Send(R"({"id":"c1","op":"chat","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],)"
         R"("max_tokens":2,"temperature":0.7,"top_k":5,"min_p":0.1,"repeat_penalty":1.1,"seed":3})"
         "\n");
  std::vector<int32_t> streamed;
  Json ev;
  while ((ev = c.Next())["event"] == "token") streamed.push_back(ev["token"].get<int32_t>());
  ASSERT_EQ(ev["event"], "done") << ev.dump();
  EXPECT_EQ(ev["id"], "c1");
  EXPECT_EQ(ev["tokens"], Json::parse("[262,262]"));
  EXPECT_EQ(streamed, (std::vector<int32_t>{kOk, kOk}));
  EXPECT_EQ(ev["text"], " ok ok");
  EXPECT_EQ(ev["stop"], "length");
  const Tokenizer& tok = m->tokenizer();
  auto tmpl = ChatTemplate::FromGguf(m->gguf());
  ASSERT_TRUE(tmpl.ok());
  auto rendered = tmpl->Render(std::vector<ChatMessage>{{"system", "Be brief."}, {"user", "hi"}});
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(ev["n_prompt_tokens"], tok.Encode(rendered->text, true, rendered->markup)->size());

  c.Send(R"({"id":"c2","op":"chat","messages":[{"role":"robot","content":"x"}],"max_tokens":2})" "\n");
  EXPECT_EQ(c.Next(), Json::parse(R"({"id":"c2","event":"error","error":"messages[0]: field 'role' must be one of system, user, assistant"})"));
  c.Send(R"({"id":"c3","op":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":2,"repeat_last_n":-1,"frequency_penalty":0.5})" "\n");
  while ((ev = c.Next())["event"] == "token") {
  }
  EXPECT_EQ(ev["event"], "done") << ev.dump();
  c.Send(R"({"op":"shutdown"})" "\n");
  EXPECT_EQ(c.Next()["event"], "shutdown");
  EXPECT_TRUE(done.get().ok());
}

TEST(Chat, ServerRefusesChatWithoutTemplate) {
  auto m = LoadChatModel(kOk, /*with_template=*/false);
  ASSERT_NE(m, nullptr);
  auto ctx = Context::Create(*m, {});
  ASSERT_TRUE(ctx.ok());
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd server(sv[0]), client(sv[1]);
  auto done = std::async(std::launch::async, [&] { return Serve(**ctx, server.get()); });
  Client c(client.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  c.Send(R"({"id":"c","op":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":2})" "\n");
  EXPECT_EQ(c.Next(), Json::parse(R"x({"id":"c","event":"error","error":"the model has no chat template (tokenizer.chat_template)"})x"));
  // Plain generate jobs still work.
  c.Send(R"({"id":"g","op":"generate","prompt":"x","max_tokens":1})" "\n");
  Json ev;
  while ((ev = c.Next())["event"] == "token") {
  }
  EXPECT_EQ(ev["event"], "done");
  c.Send(R"({"op":"shutdown"})" "\n");
  EXPECT_EQ(c.Next()["event"], "shutdown");
  EXPECT_TRUE(done.get().ok());
}

struct CliResult {
  int code = -1;
  std::string out, err;
};

CliResult RunCli(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {APPLIANCE_RUNTIME_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  appliance::testing::CommandResult r = appliance::testing::RunCommand(argv, 120);
  return {r.exit_code, std::move(r.out), std::move(r.err)};
}

// A file that is removed when the test ends.
struct TempFile {
  std::string path;
  explicit TempFile(const std::vector<uint8_t>& bytes) {
    char tmpl[] = "/tmp/appliance-chat-test-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    if (fd < 0) return;
    path = tmpl;
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    ::close(fd);
    if (n != static_cast<ssize_t>(bytes.size())) path.clear();
  }
  ~TempFile() {
    if (!path.empty()) ::unlink(path.c_str());
  }
};

TEST(Chat, CliGenerateChat) {
  TempFile model(BuildChatModel(kOk));
  ASSERT_FALSE(model.path.empty());
  CliResult r = RunCli({"generate", "--model", model.path, "--chat", "--message", "system:Be brief.", "--message",
                        "user:hi: there", "--max-tokens", "3", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["chat_template"], "chatml");
  EXPECT_EQ(j["tokens"], Json::parse("[262,262,262]"));
  EXPECT_EQ(j["text"], " ok ok ok");
  const Json first_prompt = j["prompt_tokens"];

  // The same conversation from a JSON file gives the same prompt.
  const std::string msgs = R"([{"role":"system","content":"Be brief."},{"role":"user","content":"hi: there"}])";
  TempFile file(std::vector<uint8_t>(msgs.begin(), msgs.end()));
  r = RunCli({"generate", "--model", model.path, "--chat", "--messages", file.path, "--max-tokens", "1", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Json::parse(r.out)["prompt_tokens"], first_prompt);

  r = RunCli({"generate", "--model", model.path, "--chat", "--message", "robot:x", "--max-tokens", "1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: --message 'robot:x': expected ROLE:TEXT with ROLE system, user or assistant\n");
  r = RunCli({"generate", "--model", model.path, "--chat", "--max-tokens", "1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: --chat needs at least one --message or a --messages file\n");
  const std::string bad = R"([{"role":"user"}])";
  TempFile bad_file(std::vector<uint8_t>(bad.begin(), bad.end()));
  r = RunCli({"generate", "--model", model.path, "--chat", "--messages", bad_file.path, "--max-tokens", "1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "error: " + bad_file.path + ": messages[0]: field 'content' must be a string\n");
  r = RunCli({"generate", "--model", model.path, "--prompt", "x", "--chat", "--message", "user:x", "--max-tokens", "1"});
  EXPECT_EQ(r.code, 2);
  r = RunCli({"generate", "--model", model.path, "--max-tokens", "1"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "error: generate needs --prompt or --chat\n");
  r = RunCli({"generate", "--model", testing::ModelPath("stories260K.gguf"), "--chat", "--message", "user:x",
              "--max-tokens", "1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("the model has no chat template (tokenizer.chat_template)"));
}

TEST(Chat, CliSamplingFlags) {
  const std::string stories = testing::ModelPath("stories260K.gguf");
  const std::vector<std::string> args = {"generate",         "--model",          stories, "--prompt", "Once",
                                         "--max-tokens",     "24",               "--temperature", "0.9",
                                         "--top-k",          "20",               "--top-p", "0.95", "--min-p", "0.05",
                                         "--repeat-penalty", "1.2",              "--frequency-penalty", "0.3",
                                         "--presence-penalty", "0.1",            "--repeat-last-n", "32", "--seed",
                                         "11",               "--json"};
  std::vector<std::string> one = args;
  one.push_back("--threads");
  one.push_back("1");
  const CliResult a = RunCli(one);
  ASSERT_EQ(a.code, 0) << a.err;
  std::vector<std::string> two = args;
  two.push_back("--threads");
  two.push_back("2");
  const CliResult b = RunCli(two);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(Json::parse(a.out)["tokens"], Json::parse(b.out)["tokens"]);
  EXPECT_EQ(Json::parse(a.out)["tokens"].size(), 24u);
  for (const auto& [flag, value, message] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"--top-k", "-1", "error: --top-k must be in [0, 4194304] (0: off)\n"},
           {"--min-p", "1.5", "error: --min-p must be in [0, 1]\n"},
           {"--repeat-penalty", "0", "error: --repeat-penalty must be in (0, 10]\n"},
           {"--frequency-penalty", "11", "error: --frequency-penalty must be in [-10, 10]\n"},
           {"--presence-penalty", "-11", "error: --presence-penalty must be in [-10, 10]\n"},
           {"--repeat-last-n", "-2", "error: --repeat-last-n must be in [-1, 1048576] (-1: the whole context, 0: off)\n"},
       }) {
    const CliResult r = RunCli({"generate", "--model", stories, "--prompt", "x", "--max-tokens", "2", flag, value});
    EXPECT_EQ(r.code, 1) << flag;
    EXPECT_EQ(r.err, message) << flag;
  }
}

}  // namespace
}  // namespace appliance::runtime
