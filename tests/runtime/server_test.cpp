// The job server over a socketpair: a real generate job on stories260K, bad
// requests answered with errors while serving continues, shutdown, EOF, and
// concurrent jobs: interleaved, queued beyond the job limit, each with the
// tokens it gets alone.
#include "runtime/server.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <unistd.h>

#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "base/fd.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "tests/runtime/test_util.h"
#include "tests/runtime/tiny_model.h"

namespace appliance::runtime {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// The client end of the channel: line-buffered reads with a timeout so a
// broken server fails the test instead of hanging it.
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

struct Reference {
  std::vector<int32_t> prompt_tokens, greedy;
  std::string prompt, greedy_text;
};

Reference LoadReference() {
  const auto j = Json::parse(testing::ReadText(testing::SharedPath("reference/stories260K.shared1.json")));
  return {j["prompt_tokens"].get<std::vector<int32_t>>(), j["greedy"].get<std::vector<int32_t>>(),
          j["prompt"].get<std::string>(), j["greedy_text"].get<std::string>()};
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start("stories260K.gguf", 4); }

  // Serves `model` with up to `max_jobs` jobs at once (restarting the server
  // when one runs).
  void Start(const std::string& model, int64_t max_jobs) {
    if (result_.valid()) {
      client_fd_.reset();
      (void)result_.get();
    }
    ctx_.reset();
    auto m = Model::LoadPath(testing::ModelPath(model));
    ASSERT_TRUE(m.ok()) << m.status().message();
    model_ = std::move(*m);
    ContextOptions o;
    o.n_threads = 2;
    o.n_seq = max_jobs;
    auto c = Context::Create(*model_, o);
    ASSERT_TRUE(c.ok());
    ctx_ = std::move(*c);
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_fd_.reset(sv[0]);
    client_fd_.reset(sv[1]);
    result_ = std::async(std::launch::async, [this] { return Serve(*ctx_, server_fd_.get()); });
  }

  // Each of eight prompts' greedy tokens, alone and with all eight at once.
  void CheckAloneAndTogether(const std::string& model);

  std::unique_ptr<Model> model_;
  std::unique_ptr<Context> ctx_;
  UniqueFd server_fd_, client_fd_;
  std::future<Status> result_;
};

TEST_F(ServerTest, ServesJobsAndSurvivesBadRequests) {
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next(), Json::parse(R"({"event":"ready","model":"llama","n_vocab":512})"));

  c.Send("this is not json\n");
  EXPECT_EQ(c.Next(), Json::parse(R"({"id":null,"event":"error","error":"malformed request: not valid JSON"})"));
  c.Send(std::string(70000, 'x') + "\n");
  EXPECT_EQ(c.Next(), Json::parse(R"({"id":null,"event":"error","error":"request line exceeds 65536 bytes"})"));
  c.Send(R"({"id":"u","op":"dance"})" "\n");
  EXPECT_EQ(c.Next(), Json::parse(R"({"id":"u","event":"error","error":"unknown op 'dance'"})"));
  c.Send(R"({"id":"m","op":"generate","prompt":"x","max_tokens":5000})" "\n");
  EXPECT_EQ(c.Next()["error"], "field 'max_tokens' must be in [1, 2048] (the context size)");
  c.Send(R"({"id":"big","op":"generate","prompt":"Once upon a time","max_tokens":2047})" "\n");
  const Json too_long = c.Next();
  EXPECT_EQ(too_long["event"], "error");
  EXPECT_EQ(too_long["id"], "big");
  EXPECT_EQ(too_long["error"], "prompt (5 tokens) + max_tokens (2047) exceeds the context size 2048");

  // The real job: greedy on stories260K must reproduce llama.cpp's 48 tokens.
  const Reference ref = LoadReference();
  Json job = {{"id", "j1"}, {"op", "generate"}, {"prompt", ref.prompt}, {"max_tokens", 48}, {"temperature", 0}};
  c.Send(job.dump() + "\n");
  std::vector<int32_t> streamed;
  std::string streamed_text;
  Json ev;
  while ((ev = c.Next())["event"] == "token") {
    EXPECT_EQ(ev["id"], "j1");
    streamed.push_back(ev["token"].get<int32_t>());
    streamed_text += ev["text"].get<std::string>();
  }
  ASSERT_EQ(ev["event"], "done") << ev.dump();
  EXPECT_EQ(ev["id"], "j1");
  EXPECT_EQ(ev["tokens"].get<std::vector<int32_t>>(), ref.greedy);
  EXPECT_EQ(streamed, ref.greedy);
  EXPECT_EQ(ev["text"], ref.greedy_text);
  EXPECT_EQ(streamed_text, ref.greedy_text);
  EXPECT_EQ(ev["n_prompt_tokens"], 5);
  EXPECT_EQ(ev["n_tokens"], 48);
  EXPECT_EQ(ev["stop"], "length");
  EXPECT_GT(ev["timings"]["tokens_per_s"].get<double>(), 0.0);

  // Pipelined: a job and the shutdown in one write; the job completes first.
  c.Send(R"({"id":"j2","op":"generate","prompt":"The cat","max_tokens":3,"temperature":0.8,"seed":7})"
         "\n"
         R"({"op":"shutdown"})"
         "\n");
  int tokens = 0;
  while ((ev = c.Next())["event"] == "token") ++tokens;
  EXPECT_EQ(ev["event"], "done");
  EXPECT_EQ(ev["id"], "j2");
  EXPECT_EQ(tokens, ev["n_tokens"].get<int>());
  EXPECT_EQ(c.Next(), Json::parse(R"({"event":"shutdown"})"));
  const Status s = result_.get();
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST_F(ServerTest, EofWithoutShutdownIsAnError) {
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  c.Send(R"({"op":"shut)");  // half a request, then the peer goes away
  client_fd_.reset();
  const Status s = result_.get();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "channel closed (EOF) without a shutdown request after 0 jobs");
}

TEST_F(ServerTest, PeerGoneMidJobEndsTheServer) {
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  c.Send(R"({"id":"j","op":"generate","prompt":"Once","max_tokens":2000})" "\n");
  EXPECT_EQ(c.Next()["event"], "token");
  client_fd_.reset();  // token events now fail with EPIPE (SIGPIPE is ignored)
  const Status s = result_.get();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("write channel"));
}

// Every event until (and including) the shutdown event, or until `jobs`
// jobs have ended; a timeout or EOF ends the list too (and fails the test).
std::vector<Json> Collect(Client& c, size_t jobs = SIZE_MAX) {
  std::vector<Json> events;
  size_t ended = 0;
  for (;;) {
    Json ev = c.Next();
    events.push_back(ev);
    const std::string kind = ev["event"];
    if (kind == "timeout" || kind == "closed") {
      ADD_FAILURE() << "channel " << kind;
      return events;
    }
    if (kind == "shutdown") return events;
    if ((kind == "done" || kind == "error") && !ev["id"].is_null() && ++ended == jobs) return events;
  }
}

Json Job(const std::string& id, const std::string& prompt, int max_tokens) {
  return {{"id", id}, {"op", "generate"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

// Per job id: its token events' ids, in order, checked against its done
// event (exactly one, after every token event).
std::map<std::string, std::vector<int32_t>> TokensByJob(const std::vector<Json>& events) {
  std::map<std::string, std::vector<int32_t>> streamed, done;
  for (const Json& ev : events) {
    if (ev["event"] == "token") {
      const std::string id = ev["id"];
      EXPECT_EQ(done.count(id), 0u) << "token after done: " << ev.dump();
      streamed[id].push_back(ev["token"].get<int32_t>());
    } else if (ev["event"] == "done") {
      const std::string id = ev["id"];
      EXPECT_EQ(done.count(id), 0u) << "second done: " << ev.dump();
      done[id] = ev["tokens"].get<std::vector<int32_t>>();
      EXPECT_EQ(ev["n_tokens"].get<size_t>(), done[id].size());
    }
  }
  for (const auto& [id, tokens] : done) EXPECT_EQ(streamed[id], tokens) << id;
  return done;
}

const char* const kPrompts[] = {"Once upon a time", "The cat", "Lily went to the park", "One day, a big dog",
                                "Tom and Sue", "The sun was hot", "A little bird sang", "Mom said"};

TEST_F(ServerTest, ConcurrentJobsInterleaveQueueAndEachEnd) {
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  // Six jobs for four sequences, a malformed line and a job that cannot fit
  // the context in the middle, and the shutdown: all in one write.
  std::string requests;
  for (int i = 0; i < 6; ++i) {
    requests += Job("j" + std::to_string(i), kPrompts[i], 24).dump() + "\n";
    if (i == 2) requests += "{not json\n" + Job("huge", "Once upon a time", 2047).dump() + "\n";
  }
  c.Send(requests + R"({"op":"shutdown"})" "\n");
  const std::vector<Json> events = Collect(c);
  ASSERT_EQ(events.back(), Json::parse(R"({"event":"shutdown"})"));
  EXPECT_TRUE(result_.get().ok());

  const auto done = TokensByJob(events);
  EXPECT_EQ(done.size(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(done.count("j" + std::to_string(i)), 1u) << i;
  int malformed = 0, huge = 0;
  for (const Json& ev : events) {
    if (ev["event"] != "error") continue;
    if (ev["id"].is_null()) {
      EXPECT_EQ(ev["error"], "malformed request: not valid JSON");
      ++malformed;
    } else {
      EXPECT_EQ(ev["id"], "huge");
      EXPECT_THAT(ev["error"].get<std::string>(), HasSubstr("exceeds the context size 2048"));
      ++huge;
    }
  }
  EXPECT_EQ(malformed, 1);
  EXPECT_EQ(huge, 1);
  // At most four jobs between their first token and their done event; the
  // first four interleave; j4 and j5 wait for a sequence.
  std::set<std::string> running;
  size_t max_running = 0, interleaved = 0;
  std::string last_token_id;
  for (const Json& ev : events) {
    if (ev["event"] == "token") {
      running.insert(ev["id"].get<std::string>());
      if (!last_token_id.empty() && ev["id"] != last_token_id) ++interleaved;
      last_token_id = ev["id"];
    } else if (ev["event"] == "done") {
      running.erase(ev["id"].get<std::string>());
    }
    max_running = std::max(max_running, running.size());
  }
  EXPECT_EQ(max_running, 4u);
  EXPECT_GT(interleaved, 20u);
}

// More jobs than sequences and queue places together: the channel is read as
// the queue drains, and every job ends.
TEST_F(ServerTest, QueuesBeyondTheJobLimitAndDropsNothing) {
  Start("stories260K.gguf", 1);
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  std::string jobs;
  for (int i = 0; i < 100; ++i) jobs += Job("q" + std::to_string(i), kPrompts[i % 8], 2).dump() + "\n";
  c.Send(jobs + R"({"op":"shutdown"})" "\n");
  const std::vector<Json> events = Collect(c);
  ASSERT_EQ(events.back()["event"], "shutdown");
  EXPECT_TRUE(result_.get().ok());
  const auto done = TokensByJob(events);
  EXPECT_EQ(done.size(), 100u);
  // One sequence: jobs run one after another, in order.
  std::vector<std::string> order;
  for (const Json& ev : events) {
    if (ev["event"] == "done") order.push_back(ev["id"]);
  }
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], "q" + std::to_string(i));
}

// With greedy sampling a job's tokens do not depend on what else runs: the
// same eight prompts give the same ids one at a time and all together.
// On stories260K (F32 weights: the sgemm route from some rows on) every
// job's prompt has a forward of its own; on the Q4_K/Q6_K model, where the
// products treat rows independently on AVX-512, the prompts of the eight
// jobs share forwards, and the tokens must not change either way.
TEST_F(ServerTest, GreedyTokensAreTheSameAloneAndBesideSevenOthers) {
  for (const char* model : {"stories260K.gguf", "synth-d256-q4_k_m.gguf"}) {
    SCOPED_TRACE(model);
    CheckAloneAndTogether(model);
  }
}

void ServerTest::CheckAloneAndTogether(const std::string& model) {
  Start(model, 8);
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  std::map<std::string, std::vector<int32_t>> alone;
  for (int i = 0; i < 8; ++i) {
    c.Send(Job("a" + std::to_string(i), kPrompts[i], 40).dump() + "\n");
    const auto done = TokensByJob(Collect(c, 1));
    ASSERT_EQ(done.size(), 1u);
    alone[std::to_string(i)] = done.begin()->second;
  }
  std::string all;
  for (int i = 0; i < 8; ++i) all += Job("b" + std::to_string(i), kPrompts[i], 40).dump() + "\n";
  c.Send(all);
  const auto together = TokensByJob(Collect(c, 8));
  ASSERT_EQ(together.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(together.at("b" + std::to_string(i)), alone.at(std::to_string(i))) << kPrompts[i];
  }
  c.Send(R"({"op":"shutdown"})" "\n");
  EXPECT_EQ(c.Next()["event"], "shutdown");
  EXPECT_TRUE(result_.get().ok());
}

// A shutdown while jobs run: the running and the queued jobs finish, a job
// sent after the shutdown is refused, then the shutdown event.
TEST_F(ServerTest, ShutdownLetsAcceptedJobsFinish) {
  Start("stories260K.gguf", 2);
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  std::string jobs;
  for (int i = 0; i < 3; ++i) jobs += Job("s" + std::to_string(i), kPrompts[i], 200).dump() + "\n";
  c.Send(jobs);
  std::vector<Json> events = {c.Next()};
  ASSERT_EQ(events[0]["event"], "token");
  c.Send(R"({"op":"shutdown"})" "\n" + Job("late", "The cat", 5).dump() + "\n");
  for (Json& ev : Collect(c)) events.push_back(std::move(ev));
  ASSERT_EQ(events.back()["event"], "shutdown");
  EXPECT_TRUE(result_.get().ok());
  const auto done = TokensByJob(events);
  EXPECT_EQ(done.size(), 3u);
  size_t refused = 0;
  for (const Json& ev : events) {
    if (ev["event"] == "error") {
      EXPECT_EQ(ev, Json::parse(R"({"id":"late","event":"error","error":"the server is shutting down"})"));
      ++refused;
    }
  }
  EXPECT_EQ(refused, 1u);
}

// EOF with jobs accepted: they finish (the client may still read), then the
// server reports the EOF.
TEST_F(ServerTest, EofLetsAcceptedJobsFinishThenFails) {
  Client c(client_fd_.get());
  EXPECT_EQ(c.Next()["event"], "ready");
  c.Send(Job("e0", "The cat", 8).dump() + "\n" + Job("e1", "Mom said", 8).dump() + "\n");
  ASSERT_EQ(::shutdown(client_fd_.get(), SHUT_WR), 0);
  EXPECT_EQ(TokensByJob(Collect(c, 2)).size(), 2u);
  const Status s = result_.get();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "channel closed (EOF) without a shutdown request after 2 jobs");
}

TEST(WriteAll, HandlesPartialWritesOnANonBlockingFd) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd writer(sv[0]), reader(sv[1]);
  int small = 4096;
  ASSERT_EQ(::setsockopt(writer.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  ASSERT_EQ(::fcntl(writer.get(), F_SETFL, O_NONBLOCK), 0);
  std::string data(1 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + i / 251);
  std::string received;
  std::thread t([&] {
    char buf[1000];
    while (received.size() < data.size()) {
      const ssize_t n = ::read(reader.get(), buf, sizeof buf);
      if (n <= 0) break;
      received.append(buf, static_cast<size_t>(n));
    }
  });
  const Status s = WriteAll(writer.get(), data);
  t.join();
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(received == data);
}

std::unique_ptr<Model> LoadTiny(const testing::TinyOptions& o) {
  const auto bytes = testing::BuildTinyLlama(o);
  UniqueFd fd(::memfd_create("tiny", MFD_CLOEXEC));
  EXPECT_EQ(::write(fd.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  auto file = MappedFile::FromFd(fd.get(), "tiny");
  EXPECT_TRUE(file.ok());
  auto m = Model::Load(std::move(*file), "tiny");
  EXPECT_TRUE(m.ok()) << m.status().message();
  return m.ok() ? std::move(*m) : nullptr;
}

// With every logit 0 greedy picks token 0; declaring 0 the EOS token makes
// generation end at once with stop "eos".
TEST(Generate, StopsAtEndOfGeneration) {
  testing::TinyOptions o;
  o.zero_output = true;
  o.extra_u32["tokenizer.ggml.eos_token_id"] = 0;
  auto m = LoadTiny(o);
  ASSERT_NE(m, nullptr);
  auto ctx = Context::Create(*m, {});
  ASSERT_TRUE(ctx.ok());
  GenerateParams p;
  p.max_tokens = 10;
  int calls = 0;
  auto r = Generate(**ctx, "hi", p, [&](int32_t, std::string_view) {
    ++calls;
    return Status::Ok();
  });
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->stopped_by_eos);
  EXPECT_TRUE(r->tokens.empty());
  EXPECT_EQ(calls, 0);
  // A callback error stops generation and is returned.
  testing::TinyOptions plain;
  auto m2 = LoadTiny(plain);
  ASSERT_NE(m2, nullptr);
  auto ctx2 = Context::Create(*m2, {});
  ASSERT_TRUE(ctx2.ok());
  auto r2 = Generate(**ctx2, "hi", p, [](int32_t, std::string_view) { return Status::Error("client gone"); });
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().message(), "client gone");
}

}  // namespace
}  // namespace appliance::runtime
