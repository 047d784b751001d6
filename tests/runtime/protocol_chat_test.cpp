// Job protocol: the sampling keys added to "generate", and the "chat" op.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "runtime/protocol.h"

namespace appliance::runtime {
namespace {

using ::testing::HasSubstr;
using Kind = ParsedRequest::Kind;

ProtocolLimits Limits() {
  ProtocolLimits l;
  l.max_tokens = 2048;
  return l;
}

void ExpectError(std::string_view line, const std::string& message, std::optional<std::string> id = "j") {
  const auto r = ParseRequest(line, Limits());
  EXPECT_EQ(r.kind, Kind::kError) << line;
  EXPECT_EQ(r.error, message) << line;
  EXPECT_EQ(r.id, id) << line;
}

TEST(ProtocolSampling, ParsesAllKeys) {
  const auto r = ParseRequest(
      R"({"id":"j","op":"generate","prompt":"p","max_tokens":8,"temperature":0.5,"top_p":0.9,"seed":4,"top_k":40,)"
      R"("min_p":0.05,"repeat_penalty":1.1,"frequency_penalty":-0.5,"presence_penalty":0.25,"repeat_last_n":-1})",
      Limits());
  ASSERT_EQ(r.kind, Kind::kGenerate) << r.error;
  const SamplerParams& s = r.generate.sampling;
  EXPECT_FLOAT_EQ(s.temperature, 0.5f);
  EXPECT_FLOAT_EQ(s.top_p, 0.9f);
  EXPECT_EQ(s.seed, 4u);
  EXPECT_EQ(s.top_k, 40);
  EXPECT_FLOAT_EQ(s.min_p, 0.05f);
  EXPECT_FLOAT_EQ(s.repeat_penalty, 1.1f);
  EXPECT_FLOAT_EQ(s.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(s.presence_penalty, 0.25f);
  EXPECT_EQ(s.repeat_last_n, -1);
  // Defaults: every new option off, window 64.
  const auto d = ParseRequest(R"({"id":"j","op":"generate","prompt":"p","max_tokens":1})", Limits());
  ASSERT_EQ(d.kind, Kind::kGenerate) << d.error;
  EXPECT_EQ(d.generate.sampling.top_k, 0);
  EXPECT_EQ(d.generate.sampling.min_p, 0.0f);
  EXPECT_EQ(d.generate.sampling.repeat_penalty, 1.0f);
  EXPECT_EQ(d.generate.sampling.frequency_penalty, 0.0f);
  EXPECT_EQ(d.generate.sampling.presence_penalty, 0.0f);
  EXPECT_EQ(d.generate.sampling.repeat_last_n, 64);
  EXPECT_FALSE(d.generate.sampling.penalties_enabled());
}

TEST(ProtocolSampling, RefusesBadValues) {
  const std::string head = R"({"id":"j","op":"generate","prompt":"p","max_tokens":8,)";
  ExpectError(head + R"("top_k":-1})", "field 'top_k' must be in [0, 4194304] (0: off)");
  ExpectError(head + R"("top_k":1.5})", "field 'top_k' must be an integer");
  ExpectError(head + R"("top_k":18446744073709551615})", "field 'top_k' must be in [0, 4194304] (0: off)");
  ExpectError(head + R"("min_p":1.5})", "field 'min_p' must be in [0, 1]");
  ExpectError(head + R"("min_p":1e300})", "field 'min_p' must be in [0, 1]");
  ExpectError(head + R"("min_p":"x"})", "field 'min_p' must be a finite number");
  ExpectError(head + R"("repeat_penalty":0})", "field 'repeat_penalty' must be in (0, 10]");
  ExpectError(head + R"("repeat_penalty":-1e300})", "field 'repeat_penalty' must be in (0, 10]");
  ExpectError(head + R"("frequency_penalty":10.5})", "field 'frequency_penalty' must be in [-10, 10]");
  ExpectError(head + R"("presence_penalty":null})", "field 'presence_penalty' must be a finite number");
  ExpectError(head + R"("repeat_last_n":-2})", "field 'repeat_last_n' must be in [-1, 2048] (-1: the whole context, 0: off)");
  ExpectError(head + R"("repeat_last_n":4096})", "field 'repeat_last_n' must be in [-1, 2048] (-1: the whole context, 0: off)");
  ExpectError(head + R"("repeat_last_n":"all"})", "field 'repeat_last_n' must be an integer");
  ExpectError(head + R"("temperature":1e300})", "field 'temperature' must be in [0, 100]");
  ExpectError(head + R"("messages":[]})", "unknown field 'messages' for op 'generate'");
}

TEST(ProtocolChat, ParsesChat) {
  const auto r = ParseRequest(
      R"({"id":"c","op":"chat","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi \u00e9"},)"
      R"({"content":"Hello","role":"assistant"}],"max_tokens":16,"temperature":0.7,"top_k":20,"seed":9})",
      Limits());
  ASSERT_EQ(r.kind, Kind::kChat) << r.error;
  EXPECT_EQ(r.generate.id, "c");
  ASSERT_EQ(r.generate.messages.size(), 3u);
  EXPECT_EQ(r.generate.messages[0].role, "system");
  EXPECT_EQ(r.generate.messages[1].content, "Hi \xc3\xa9");
  EXPECT_EQ(r.generate.messages[2].role, "assistant");
  EXPECT_EQ(r.generate.messages[2].content, "Hello");
  EXPECT_EQ(r.generate.max_tokens, 16);
  EXPECT_EQ(r.generate.sampling.top_k, 20);
  EXPECT_EQ(r.generate.sampling.seed, 9u);
  EXPECT_TRUE(r.generate.prompt.empty());
}

TEST(ProtocolChat, RefusesBadChats) {
  ExpectError(R"({"id":"j","op":"chat","max_tokens":4})", "missing field 'messages'");
  ExpectError(R"({"id":"j","op":"chat","messages":[],"max_tokens":4})",
              "field 'messages' must be a non-empty array of {\"role\", \"content\"} objects");
  ExpectError(R"({"id":"j","op":"chat","messages":{"role":"user"},"max_tokens":4})",
              "field 'messages' must be a non-empty array of {\"role\", \"content\"} objects");
  ExpectError(R"({"id":"j","op":"chat","messages":["hi"],"max_tokens":4})",
              "messages[0] must be an object with 'role' and 'content'");
  ExpectError(R"({"id":"j","op":"chat","messages":[{"role":"user","content":"x"},{"role":"tool","content":"y"}],"max_tokens":4})",
              "messages[1]: field 'role' must be one of system, user, assistant");
  ExpectError(R"({"id":"j","op":"chat","messages":[{"role":"user"}],"max_tokens":4})",
              "messages[0]: field 'content' must be a string");
  ExpectError(R"({"id":"j","op":"chat","messages":[{"role":"user","content":7}],"max_tokens":4})",
              "messages[0]: field 'content' must be a string");
  ExpectError(R"({"id":"j","op":"chat","messages":[{"role":"user","content":"x","name":"n"}],"max_tokens":4})",
              "messages[0]: unknown field 'name'");
  ExpectError(R"({"id":"j","op":"chat","messages":[{"role":["user"],"content":"x"}],"max_tokens":4})",
              "messages[0]: field 'role' must be a string");
  ExpectError(R"({"id":"j","op":"chat","prompt":"x","messages":[{"role":"user","content":"x"}],"max_tokens":4})",
              "unknown field 'prompt' for op 'chat'");
  ExpectError(R"({"id":"j","op":"chat","messages":[{"role":"user","content":"x"}]})", "missing field 'max_tokens'");
  ExpectError(R"({"op":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":4})",
              "op 'chat' needs an 'id' string", std::nullopt);
  ExpectError(R"({"id":"j","op":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":4,"top_k":-3})",
              "field 'top_k' must be in [0, 4194304] (0: off)");
}

TEST(ProtocolChat, ParsesMessageFiles) {
  auto m = ParseChatMessages(R"([{"role":"user","content":"a"},{"role":"assistant","content":"b"}])");
  ASSERT_TRUE(m.ok()) << m.status().message();
  ASSERT_EQ(m->size(), 2u);
  EXPECT_EQ((*m)[1].content, "b");
  EXPECT_EQ(ParseChatMessages("not json").status().message(), "messages: not valid JSON");
  EXPECT_EQ(ParseChatMessages(R"({"role":"user"})").status().message(),
            "field 'messages' must be a non-empty array of {\"role\", \"content\"} objects");
  EXPECT_EQ(ParseChatMessages(std::string(50, '[') + std::string(50, ']')).status().message(),
            "messages: JSON nested too deeply");
  std::string many = "[";
  for (int i = 0; i < 4097; ++i) many += std::string(i ? "," : "") + R"({"role":"user","content":""})";
  many += "]";
  EXPECT_THAT(ParseChatMessages(many).status().message(), HasSubstr("more than 4096 entries"));
}

}  // namespace
}  // namespace appliance::runtime
