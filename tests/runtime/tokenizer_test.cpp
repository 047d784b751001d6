// SentencePiece tokenizer: llama.cpp's own test vectors (shared/vocab), byte
// fallback, decoding, UTF-8 streaming, and hostile vocab metadata.
#include "runtime/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>

#include "base/mapped_file.h"
#include "tests/runtime/gguf_builder.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

using testing::GgufBuilder;
using ::testing::HasSubstr;

struct Loaded {
  std::vector<uint8_t> bytes;
  GgufFile gguf;
  Tokenizer tok;
};

std::unique_ptr<Loaded> LoadVocab(const std::string& path) {
  auto l = std::make_unique<Loaded>();
  l->bytes = testing::ReadFile(path);
  auto g = GgufFile::Parse(l->bytes);
  EXPECT_TRUE(g.ok()) << g.status().message();
  if (!g.ok()) return nullptr;
  l->gguf = std::move(*g);
  auto t = Tokenizer::FromGguf(l->gguf);
  EXPECT_TRUE(t.ok()) << t.status().message();
  if (!t.ok()) return nullptr;
  l->tok = std::move(*t);
  return l;
}

// llama.cpp's test-tokenizer-0 format: texts separated by a marker line, one
// line of expected ids per text (no BOS).
void CheckVectors(const std::string& vocab) {
  auto l = LoadVocab(testing::SharedPath("vocab/" + vocab));
  ASSERT_NE(l, nullptr);
  std::string inp = testing::ReadText(testing::SharedPath("vocab/" + vocab + ".inp"));
  const std::string out = testing::ReadText(testing::SharedPath("vocab/" + vocab + ".out"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos; (pos = inp.find(sep)) != std::string::npos;) {
    texts.push_back(inp.substr(0, pos));
    inp.erase(0, pos + sep.size());
  }
  std::vector<std::vector<int32_t>> expected;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    std::vector<int32_t> v;
    for (int32_t id; ids >> id;) v.push_back(id);
    expected.push_back(v);
  }
  ASSERT_EQ(texts.size(), 46u);
  ASSERT_EQ(expected.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = l->tok.Encode(texts[i], /*add_bos=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status().message();
    EXPECT_EQ(*ids, expected[i]) << vocab << " text #" << i << ": '" << texts[i] << "'";
  }
}

TEST(Tokenizer, LlamaSpmTestVectors) { CheckVectors("ggml-vocab-llama-spm.gguf"); }
TEST(Tokenizer, Phi3TestVectors) { CheckVectors("ggml-vocab-phi-3.gguf"); }

TEST(Tokenizer, Stories260KBasics) {
  auto l = LoadVocab(testing::ModelPath("stories260K.gguf"));
  ASSERT_NE(l, nullptr);
  const Tokenizer& t = l->tok;
  EXPECT_EQ(t.n_tokens(), 512);
  EXPECT_EQ(t.bos(), 1);
  EXPECT_EQ(t.eos(), 2);
  EXPECT_TRUE(t.add_bos());
  EXPECT_TRUE(t.IsEndOfGeneration(2));
  EXPECT_FALSE(t.IsEndOfGeneration(1));
  auto ids = t.Encode("Once upon a time", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(t.Text(403), "\xe2\x96\x81Once");
  EXPECT_EQ(t.Piece(403), " Once");
  EXPECT_EQ(t.Piece(1), "");  // control tokens print as nothing
  EXPECT_EQ(t.Decode(*ids), "Once upon a time");  // BOS skipped, the prefix space removed
  const std::vector<int32_t> no_bos(ids->begin() + 1, ids->end());
  EXPECT_EQ(t.Decode(no_bos), "Once upon a time");
  // Empty text: just BOS (or nothing).
  EXPECT_EQ(*t.Encode("", true), std::vector<int32_t>{1});
  EXPECT_TRUE(t.Encode("", false)->empty());
  // Control tokens typed into the text stay text.
  auto s = t.Encode("<s>", false);
  ASSERT_TRUE(s.ok());
  EXPECT_THAT(*s, ::testing::Not(::testing::Contains(1)));
}

TEST(Tokenizer, ByteFallbackRoundTrips) {
  auto l = LoadVocab(testing::ModelPath("stories260K.gguf"));
  ASSERT_NE(l, nullptr);
  const Tokenizer& t = l->tok;
  // Characters outside stories260K's 512-token vocab become <0xXX> tokens.
  const std::string text = "caf\xc3\xa9 \xf0\x9f\x99\x82 \x01";
  auto ids = t.Encode(text, false);
  ASSERT_TRUE(ids.ok());
  int bytes = 0;
  for (int32_t id : *ids) bytes += t.Text(id).size() == 6 && t.Text(id).substr(0, 3) == "<0x";
  EXPECT_GE(bytes, 5);  // at least the emoji's 4 bytes and \x01
  EXPECT_EQ(t.Decode(*ids), text);
  // Invalid UTF-8 survives too (each byte its own symbol).
  const std::string bad = "a\xff\xc3(";
  auto bad_ids = t.Encode(bad, false);
  ASSERT_TRUE(bad_ids.ok());
  EXPECT_EQ(t.Decode(*bad_ids), bad);
}

TEST(Tokenizer, RefusesOtherModels) {
  auto bytes = testing::ReadFile(testing::SharedPath("vocab/ggml-vocab-gpt-2.gguf"));
  auto g = GgufFile::Parse(bytes);
  ASSERT_TRUE(g.ok());
  auto t = Tokenizer::FromGguf(*g);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(),
            "tokenizer.ggml.model 'gpt2' is not supported (only the SentencePiece 'llama' tokenizer)");
}

// A vocab built in the test: <unk> <s> </s>, byte tokens, a few pieces.
GgufBuilder SmallVocab() {
  GgufBuilder b;
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  for (int i = 0; i < 256; ++i) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", i);
    tokens.push_back(name);
    types.push_back(6);
  }
  for (const char* p : {"\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81" "ab", "<tag>"}) {
    tokens.push_back(p);
    types.push_back(std::string(p) == "<tag>" ? 4 : 1);
  }
  std::vector<float> scores(tokens.size(), 0.0f);
  scores[tokens.size() - 3] = 5.0f;  // "ab" merges first
  scores[tokens.size() - 2] = 1.0f;
  b.KvString("tokenizer.ggml.model", "llama");
  b.KvStringArray("tokenizer.ggml.tokens", tokens);
  b.KvF32Array("tokenizer.ggml.scores", scores);
  b.KvI32Array("tokenizer.ggml.token_type", types);
  return b;
}

StatusOr<Tokenizer> FromBuilder(const GgufBuilder& b, std::vector<uint8_t>* storage, GgufFile* gguf) {
  *storage = b.Build();
  auto g = GgufFile::Parse(*storage);
  if (!g.ok()) return g.status();
  *gguf = std::move(*g);
  return Tokenizer::FromGguf(*gguf);
}

TEST(Tokenizer, MergesByScoreAndUserDefinedTokens) {
  std::vector<uint8_t> storage;
  GgufFile gguf;
  auto t = FromBuilder(SmallVocab(), &storage, &gguf);
  ASSERT_TRUE(t.ok()) << t.status().message();
  const int32_t base = 3 + 256;  // ▁=base, a, b, ab, ▁ab, <tag>
  EXPECT_EQ(*t->Encode("ab", true), (std::vector<int32_t>{1, base + 4}));    // "▁ab" after "ab" merged
  EXPECT_EQ(*t->Encode("ba", false), (std::vector<int32_t>{base, base + 2, base + 1}));
  // A user-defined token is cut out first; the text after it gets the space prefix again.
  EXPECT_EQ(*t->Encode("a<tag>b", false), (std::vector<int32_t>{base, base + 1, base + 5, base, base + 2}));
  // "c" is not in the vocab: byte fallback.
  EXPECT_EQ(*t->Encode("c", false), (std::vector<int32_t>{base, 3 + 'c'}));
  EXPECT_EQ(t->Piece(base + 5), "<tag>");
}

TEST(Tokenizer, RefusesHostileVocabArrays) {
  std::vector<uint8_t> storage;
  GgufFile gguf;
  {
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", {"a", "b"});
    b.KvF32Array("tokenizer.ggml.scores", {1.0f});
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().message(), "tokenizer: tokenizer.ggml.scores must be an array of 2 f32");
  }
  {
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", {"a", "b"});
    b.KvF32Array("tokenizer.ggml.token_type", {1.0f, 1.0f});
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().message(), "tokenizer: tokenizer.ggml.token_type must be an array of 2 i32");
  }
  {
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", {"a", "b"});
    b.KvI32Array("tokenizer.ggml.token_type", {1, 9});
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().message(), "tokenizer: token 1 has unknown token type 9");
  }
  {
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvF32Array("tokenizer.ggml.tokens", {1.0f});
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().message(), "tokenizer: tokenizer.ggml.tokens must be an array of strings");
  }
  {
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", {"a", "<0xZZ>"});
    b.KvI32Array("tokenizer.ggml.token_type", {1, 6});
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().message(), "tokenizer: byte token 1 is not of the form <0xXX>");
  }
  {
    // add_bos with a BOS id outside the vocab and no valid default.
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", {"a"});
    b.KvU32("tokenizer.ggml.bos_token_id", 7);
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_FALSE(t.ok());
    EXPECT_THAT(t.status().message(), HasSubstr("add_bos_token is true, but there is no valid bos_token_id"));
  }
  {
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", {"a", "b", "c"});
    b.KvString("tokenizer.ggml.bos_token_id", "1");
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_FALSE(t.ok());
    EXPECT_THAT(t.status().message(), HasSubstr("tokenizer.ggml.bos_token_id' has type string"));
  }
  {
    // No byte tokens and an invalid unknown_token_id: as in llama.cpp the
    // default <unk> id 0 stays, and characters outside the vocab map to it.
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", {"x", "<s>", "y"});
    b.KvU32("tokenizer.ggml.unknown_token_id", 0xffffffffu).KvBool("tokenizer.ggml.add_bos_token", false);
    auto t = FromBuilder(b, &storage, &gguf);
    ASSERT_TRUE(t.ok()) << t.status().message();
    auto ids = t->Encode("q", false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, (std::vector<int32_t>{0, 0, 0, 0}));  // the 3 bytes of U+2581, then 'q'
  }
}

TEST(Utf8Stream, HoldsBackIncompleteSequences) {
  Utf8Stream s;
  EXPECT_EQ(s.Push("a"), "a");
  EXPECT_EQ(s.Push("\xe2"), "");
  EXPECT_EQ(s.Push("\x96"), "");
  EXPECT_EQ(s.Push("\x81" "b"), "\xe2\x96\x81" "b");
  EXPECT_EQ(s.Push("\xf0\x9f"), "");
  EXPECT_EQ(s.Push("\x99\x82\xc3"), "\xf0\x9f\x99\x82");
  EXPECT_EQ(s.Flush(), "\xc3");
  EXPECT_EQ(s.Push("\xff" "x"), "\xff" "x");  // invalid bytes pass through
}

}  // namespace
}  // namespace appliance::runtime
