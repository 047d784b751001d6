// Job protocol: request validation, reply formats, and the line splitter.
#include "runtime/protocol.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "runtime/sampler.h"

namespace appliance::runtime {
namespace {

using ::testing::HasSubstr;
using Kind = ParsedRequest::Kind;

ProtocolLimits Limits() {
  ProtocolLimits l;
  l.max_tokens = 2048;
  return l;
}

TEST(Protocol, ParsesGenerate) {
  const auto r = ParseRequest(
      R"({"id":"j1","op":"generate","prompt":"Once upon a time","max_tokens":48,"temperature":0.7,"top_p":0.95,"seed":18446744073709551615})",
      Limits());
  ASSERT_EQ(r.kind, Kind::kGenerate) << r.error;
  EXPECT_EQ(r.generate.id, "j1");
  EXPECT_EQ(r.generate.prompt, "Once upon a time");
  EXPECT_EQ(r.generate.max_tokens, 48);
  EXPECT_FLOAT_EQ(r.generate.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(r.generate.sampling.top_p, 0.95f);
  EXPECT_EQ(r.generate.sampling.seed, 18446744073709551615ull);
  // Defaults: greedy, no nucleus cut, seed 0.
  const auto d = ParseRequest(R"({"id":"j2","op":"generate","prompt":"","max_tokens":1,"temperature":0})", Limits());
  ASSERT_EQ(d.kind, Kind::kGenerate) << d.error;
  EXPECT_EQ(d.generate.sampling.temperature, 0.0f);
  EXPECT_EQ(d.generate.sampling.top_p, 1.0f);
  EXPECT_EQ(d.generate.sampling.seed, 0u);
}

TEST(Protocol, ParsesShutdown) {
  EXPECT_EQ(ParseRequest(R"({"op":"shutdown"})", Limits()).kind, Kind::kShutdown);
  EXPECT_EQ(ParseRequest(R"(  {"op":"shutdown","id":"x"}  )", Limits()).kind, Kind::kShutdown);
}

void ExpectError(std::string_view line, const std::string& message, std::optional<std::string> id = std::nullopt) {
  const auto r = ParseRequest(line, Limits());
  EXPECT_EQ(r.kind, Kind::kError) << line;
  EXPECT_EQ(r.error, message) << line;
  EXPECT_EQ(r.id, id) << line;
}

TEST(Protocol, RefusesMalformedRequests) {
  ExpectError("{\"op\":\"generate\"", "malformed request: not valid JSON");
  ExpectError("", "malformed request: not valid JSON");
  ExpectError("not json", "malformed request: not valid JSON");
  ExpectError("[1,2]", "malformed request: not a JSON object");
  ExpectError("\"shutdown\"", "malformed request: not a JSON object");
  ExpectError(std::string(100, '[') + std::string(100, ']'), "malformed request: JSON nested too deeply");
  ExpectError("{\"id\":\"a\",\"op\":\"generate\",\"prompt\":\"\xff\",\"max_tokens\":1}", "malformed request: not valid JSON");
}

TEST(Protocol, RefusesWrongTypesAndUnknownOps) {
  ExpectError(R"({"id":"j","op":"launch"})", "unknown op 'launch'", "j");
  ExpectError(R"({"id":"j"})", "missing field 'op'", "j");
  ExpectError(R"({"id":"j","op":7})", "field 'op' must be a string", "j");
  ExpectError(R"({"id":5,"op":"generate"})", "field 'id' must be a string");
  ExpectError(R"({"op":"generate","prompt":"x","max_tokens":4})", "op 'generate' needs an 'id' string");
  ExpectError(R"({"id":"j","op":"generate","max_tokens":4})", "missing field 'prompt'", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":["x"],"max_tokens":4})", "field 'prompt' must be a string", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x"})", "missing field 'max_tokens'", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":"4"})", "field 'max_tokens' must be an integer", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4.5})", "field 'max_tokens' must be an integer", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4,"temperature":"hot"})",
              "field 'temperature' must be a finite number", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4,"seed":-1})",
              "field 'seed' must be a non-negative integer", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4,"seed":1.5})",
              "field 'seed' must be a non-negative integer", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_token":4})", "unknown field 'max_token' for op 'generate'", "j");
  ExpectError(R"({"op":"shutdown","now":true})", "unknown field 'now' for op 'shutdown'");
  ExpectError("{\"id\":\"" + std::string(300, 'x') + "\",\"op\":\"shutdown\"}", "field 'id' is longer than 256 bytes");
}

TEST(Protocol, RefusesOutOfRangeValues) {
  const std::string bound = "field 'max_tokens' must be in [1, 2048] (the context size)";
  for (const char* v : {"0", "-3", "2049", "18446744073709551615", "-9223372036854775808"}) {
    ExpectError(std::string(R"({"id":"j","op":"generate","prompt":"x","max_tokens":)") + v + "}", bound, "j");
  }
}

TEST(Protocol, AcceptsBoundsAndRefusesBadSampling) {
  EXPECT_EQ(ParseRequest(R"({"id":"j","op":"generate","prompt":"x","max_tokens":2048})", Limits()).kind, Kind::kGenerate);
  EXPECT_EQ(ParseRequest(R"({"id":"j","op":"generate","prompt":"x","max_tokens":1,"top_p":1})", Limits()).kind,
            Kind::kGenerate);
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4,"temperature":-0.1})",
              "field 'temperature' must be in [0, 100]", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4,"temperature":1e300})",
              "field 'temperature' must be in [0, 100]", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4,"top_p":0})", "field 'top_p' must be in (0, 1]", "j");
  ExpectError(R"({"id":"j","op":"generate","prompt":"x","max_tokens":4,"top_p":1.5})", "field 'top_p' must be in (0, 1]",
              "j");
}

TEST(Protocol, EventsAreSingleJsonLines) {
  EXPECT_EQ(ReadyEvent("llama", 512), "{\"event\":\"ready\",\"model\":\"llama\",\"n_vocab\":512}\n");
  EXPECT_EQ(TokenEvent("j1", 123, " the"), "{\"id\":\"j1\",\"event\":\"token\",\"token\":123,\"text\":\" the\"}\n");
  EXPECT_EQ(ErrorEvent(std::nullopt, "bad"), "{\"id\":null,\"event\":\"error\",\"error\":\"bad\"}\n");
  EXPECT_EQ(ErrorEvent(std::string("j"), "bad"), "{\"id\":\"j\",\"event\":\"error\",\"error\":\"bad\"}\n");
  EXPECT_EQ(ShutdownEvent(), "{\"event\":\"shutdown\"}\n");
  GenerateResult r;
  r.prompt_tokens = {1, 2, 3};
  r.tokens = {4, 5};
  r.text = "ab\n\xff";  // newline escaped, invalid byte replaced
  r.prompt_ms = 1.23456;
  r.generate_ms = 2.0;
  const std::string done = DoneEvent("j1", r);
  ASSERT_EQ(done.back(), '\n');
  EXPECT_EQ(done.find('\n'), done.size() - 1);
  const auto j = nlohmann::json::parse(done);
  EXPECT_EQ(j["id"], "j1");
  EXPECT_EQ(j["event"], "done");
  EXPECT_EQ(j["tokens"], nlohmann::json::array({4, 5}));
  EXPECT_EQ(j["n_prompt_tokens"], 3);
  EXPECT_EQ(j["n_tokens"], 2);
  EXPECT_EQ(j["text"], "ab\n\xef\xbf\xbd");
  EXPECT_EQ(j["stop"], "length");
  EXPECT_DOUBLE_EQ(j["timings"]["prompt_ms"].get<double>(), 1.235);
  EXPECT_DOUBLE_EQ(j["timings"]["tokens_per_s"].get<double>(), 1000.0);
  // Control characters in a token cannot break the line framing.
  EXPECT_EQ(TokenEvent("j", 1, "\n\r").find('\n'), TokenEvent("j", 1, "\n\r").size() - 1);
}

// Random byte soup and random JSON-ish token soup never crash the parser or
// the splitter (run under ASan/UBSan too).
TEST(Protocol, SurvivesRandomInput) {
  Rng rng(77);
  const char* pieces[] = {"{", "}", "[", "]", "\"", ":", ",", "\"id\"", "\"op\"", "\"generate\"", "\"shutdown\"",
                          "\"prompt\"", "\"max_tokens\"", "1e309", "-0", "18446744073709551616", "null", "true",
                          "\\u0000", "\\ud800", "\xff", "\n", " ", "0.5", "\"seed\"", "\"top_p\""};
  LineReader reader;
  std::vector<LineReader::Item> items;
  for (int i = 0; i < 20000; ++i) {
    std::string line;
    const int n = static_cast<int>(rng.Next() % 40);
    for (int k = 0; k < n; ++k) {
      if (i % 2 == 0) {
        line += static_cast<char>(rng.Next());
      } else {
        line += pieces[rng.Next() % (sizeof pieces / sizeof pieces[0])];
      }
    }
    const ParsedRequest r = ParseRequest(line, Limits());
    if (r.kind == Kind::kError) {
      EXPECT_FALSE(r.error.empty());
    }
    items.clear();
    reader.Feed(line, &items);
  }
}

std::vector<LineReader::Item> FeedAll(LineReader& r, std::initializer_list<std::string_view> chunks) {
  std::vector<LineReader::Item> out;
  for (std::string_view c : chunks) r.Feed(c, &out);
  return out;
}

TEST(LineReader, SplitsLinesAcrossChunks) {
  LineReader r;
  auto items = FeedAll(r, {"{\"a\":", "1}\n{\"b\"", ":2}\r\n\n", "tail"});
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].line, "{\"a\":1}");
  EXPECT_EQ(items[1].line, "{\"b\":2}");  // \r dropped
  EXPECT_EQ(items[2].line, "");
  EXPECT_TRUE(r.InLine());
  items = FeedAll(r, {"\n"});
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].line, "tail");
  EXPECT_FALSE(r.InLine());
}

TEST(LineReader, OversizeLineIsReportedOnceAndDiscarded) {
  LineReader r;
  const std::string max(LineReader::kMaxLine, 'x');
  auto items = FeedAll(r, {max, "\n"});
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].kind, LineReader::Item::Kind::kLine);  // exactly the limit is fine
  EXPECT_EQ(items[0].line.size(), LineReader::kMaxLine);

  // One byte over, arriving in pieces: reported as soon as it is known, the
  // rest of the line dropped, the next line intact.
  items = FeedAll(r, {max, "yy", std::string(200000, 'z'), "zzz\n{\"op\":\"shutdown\"}\n"});
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].kind, LineReader::Item::Kind::kOversize);
  EXPECT_EQ(items[1].kind, LineReader::Item::Kind::kLine);
  EXPECT_EQ(items[1].line, "{\"op\":\"shutdown\"}");
  // A too-long line that arrives with its newline in one chunk.
  items = FeedAll(r, {max + "x\nok\n"});
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].kind, LineReader::Item::Kind::kOversize);
  EXPECT_EQ(items[1].line, "ok");
}

}  // namespace
}  // namespace appliance::runtime
