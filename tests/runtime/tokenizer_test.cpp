// Tokenizers: llama.cpp's own test vectors for every vocab in shared/vocab
// (SentencePiece and byte-level BPE), byte fallback, special tokens, decoding,
// UTF-8 streaming, and hostile vocab metadata.
#include "runtime/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dirent.h>

#include <algorithm>
#include <cstdio>
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
// line of expected ids per text (no BOS). Returns the number of texts whose
// ids match exactly; every mismatch is a test failure.
struct VectorResult {
  size_t passed = 0;
  size_t total = 0;
};

VectorResult CheckVectors(const std::string& vocab) {
  VectorResult r;
  auto l = LoadVocab(testing::SharedPath("vocab/" + vocab));
  EXPECT_NE(l, nullptr) << vocab;
  if (l == nullptr) return r;
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
  EXPECT_GE(texts.size(), 40u) << vocab;
  EXPECT_EQ(expected.size(), texts.size()) << vocab;
  r.total = texts.size();
  for (size_t i = 0; i < texts.size() && i < expected.size(); ++i) {
    auto ids = l->tok.Encode(texts[i], /*add_bos=*/false);
    EXPECT_TRUE(ids.ok()) << ids.status().message();
    if (!ids.ok()) continue;
    EXPECT_EQ(*ids, expected[i]) << vocab << " text #" << i << ": '" << texts[i] << "'";
    if (*ids == expected[i]) ++r.passed;
  }
  return r;
}

TEST(Tokenizer, LlamaSpmTestVectors) {
  const VectorResult r = CheckVectors("ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(r.passed, 46u);
}
TEST(Tokenizer, Phi3TestVectors) {
  const VectorResult r = CheckVectors("ggml-vocab-phi-3.gguf");
  EXPECT_EQ(r.passed, 46u);
}
TEST(Tokenizer, Gpt2TestVectors) {
  const VectorResult r = CheckVectors("ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(r.passed, 46u);
}
TEST(Tokenizer, DeepseekLlmTestVectors) {
  const VectorResult r = CheckVectors("ggml-vocab-deepseek-llm.gguf");
  EXPECT_EQ(r.passed, 46u);
}

// Every vocab file in shared/vocab, including any added later: 100% of the
// texts must tokenize to the expected ids. Prints the per-file counts.
TEST(Tokenizer, EveryVocabFileInSharedPasses) {
  const std::string dir = testing::SharedPath("vocab");
  std::vector<std::string> files;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 5 && name.compare(name.size() - 5, 5, ".gguf") == 0) files.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 4u) << dir;
  for (const std::string& f : files) {
    const VectorResult r = CheckVectors(f);
    std::printf("[ vocab    ] %s: %zu/%zu texts match\n", f.c_str(), r.passed, r.total);
    EXPECT_EQ(r.passed, r.total) << f;
    EXPECT_GT(r.total, 0u) << f;
  }
}

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

TEST(Tokenizer, DescribesWhatItLoaded) {
  auto spm = LoadVocab(testing::SharedPath("vocab/ggml-vocab-llama-spm.gguf"));
  auto gpt2 = LoadVocab(testing::SharedPath("vocab/ggml-vocab-gpt-2.gguf"));
  auto ds = LoadVocab(testing::SharedPath("vocab/ggml-vocab-deepseek-llm.gguf"));
  ASSERT_TRUE(spm && gpt2 && ds);
  EXPECT_EQ(spm->tok.Describe(), "SentencePiece");
  EXPECT_EQ(gpt2->tok.Describe(), "byte-level BPE (pre-tokenizer 'gpt-2')");
  EXPECT_EQ(ds->tok.Describe(), "byte-level BPE (pre-tokenizer 'deepseek-llm')");
  // add_bos: GPT-2 has no key (BPE default false); DeepSeek sets it.
  EXPECT_FALSE(gpt2->tok.add_bos());
  EXPECT_TRUE(ds->tok.add_bos());
  EXPECT_EQ(*ds->tok.Encode("Hello", true), (std::vector<int32_t>{100000, 17464}));
  EXPECT_EQ(*gpt2->tok.Encode("Hello", gpt2->tok.add_bos()), (std::vector<int32_t>{15496}));
  // Byte-level pieces decode to the original bytes; Decode() cleans spaces.
  auto ids = gpt2->tok.Encode(" Hello, world! caf\xc3\xa9 \xf0\x9f\xa6\x99", false);
  ASSERT_TRUE(ids.ok());
  std::string pieces;
  for (int32_t id : *ids) pieces += gpt2->tok.Piece(id);
  EXPECT_EQ(pieces, " Hello, world! caf\xc3\xa9 \xf0\x9f\xa6\x99");
  EXPECT_EQ(gpt2->tok.Piece(50256), "");  // <|endoftext|> is control: prints as nothing
  EXPECT_TRUE(gpt2->tok.IsEndOfGeneration(50256));
  const std::vector<int32_t> spaced = *gpt2->tok.Encode("a , b . I 'm", false);
  EXPECT_EQ(gpt2->tok.Decode(spaced), "a, b. I'm");
  // Invalid UTF-8 becomes U+FFFD before byte-level encoding (as llama.cpp).
  auto bad = gpt2->tok.Encode("a\xff", false);
  ASSERT_TRUE(bad.ok());
  std::string bad_text;
  for (int32_t id : *bad) bad_text += gpt2->tok.Piece(id);
  EXPECT_EQ(bad_text, "a\xef\xbf\xbd");
}

TEST(Tokenizer, RefusesUnsupportedModelsAndPreTokenizers) {
  std::vector<uint8_t> storage;
  GgufFile gguf;
  auto make = [](const std::string& model, const char* pre) {
    GgufBuilder b;
    b.KvString("tokenizer.ggml.model", model).KvStringArray("tokenizer.ggml.tokens", {"a", "b", "ab"});
    b.KvStringArray("tokenizer.ggml.merges", {"a b"});
    if (pre != nullptr) b.KvString("tokenizer.ggml.pre", pre);
    return b;
  };
  auto load = [&](const GgufBuilder& b) {
    storage = b.Build();
    auto g = GgufFile::Parse(storage);
    EXPECT_TRUE(g.ok());
    gguf = std::move(*g);
    return Tokenizer::FromGguf(gguf);
  };
  auto t = load(make("bert", "default"));
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(),
            "tokenizer.ggml.model 'bert' is not supported (only SentencePiece 'llama' and byte-level BPE 'gpt2')");
  t = load(make("gpt2", "falcon"));
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("pre-tokenizer 'falcon' (tokenizer.ggml.pre) is not supported"));
  EXPECT_THAT(t.status().message(), HasSubstr("llama3"));
  t = load(make("gpt2", nullptr));
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("BPE vocab without tokenizer.ggml.pre; refusing to guess"));
  t = load(make("gpt2", "qwen2"));
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(*t->Encode("ab", false), std::vector<int32_t>{2});
  EXPECT_EQ(*t->Encode("ba", false), (std::vector<int32_t>{1, 0}));
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

// Control tokens are cut out of the text only inside trusted ranges (a chat
// template's markup); user-defined tokens everywhere.
TEST(Tokenizer, ControlTokensOnlyInTrustedRanges) {
  GgufBuilder b;
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  for (int i = 0; i < 256; ++i) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", i);
    tokens.push_back(name);
    types.push_back(6);
  }
  tokens.push_back("<c>");
  types.push_back(3);
  tokens.push_back("<u>");
  types.push_back(4);
  b.KvString("tokenizer.ggml.model", "llama").KvStringArray("tokenizer.ggml.tokens", tokens);
  b.KvI32Array("tokenizer.ggml.token_type", types).KvBool("tokenizer.ggml.add_space_prefix", false);
  std::vector<uint8_t> storage;
  GgufFile gguf;
  auto t = FromBuilder(b, &storage, &gguf);
  ASSERT_TRUE(t.ok()) << t.status().message();
  const int32_t c = 259, u = 260;
  auto byte = [](char ch) { return 3 + static_cast<uint8_t>(ch); };
  const std::string text = "<c>x<u>";
  const std::vector<int32_t> c_as_text = {byte('<'), byte('c'), byte('>')};
  std::vector<int32_t> expect = c_as_text;
  expect.push_back(byte('x'));
  expect.push_back(u);
  EXPECT_EQ(*t->Encode(text, false), expect);
  const SpecialSpan whole[] = {{0, 3}};
  EXPECT_EQ(*t->Encode(text, false, whole), (std::vector<int32_t>{c, byte('x'), u}));
  const SpecialSpan partial[] = {{0, 2}};  // does not cover the whole token
  EXPECT_EQ(*t->Encode(text, false, partial), expect);
  // Unsorted, overlapping and empty ranges are fine.
  const SpecialSpan messy[] = {{5, 6}, {1, 3}, {4, 4}, {0, 2}};
  EXPECT_EQ(*t->Encode(text, false, messy), (std::vector<int32_t>{c, byte('x'), u}));
  const SpecialSpan after[] = {{3, 7}};
  EXPECT_EQ(*t->Encode(text, false, after), expect);
  // Every occurrence inside a range, none outside.
  const std::string twice = "<c><c>";
  const SpecialSpan second[] = {{3, 6}};
  std::vector<int32_t> e2 = c_as_text;
  e2.push_back(c);
  EXPECT_EQ(*t->Encode(twice, false, second), e2);
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

// Random text (valid UTF-8 from a mix of scripts, whitespace, digits and
// special-token texts) and random bytes, with random trusted ranges, through
// every shared vocab: ids stay in range, and byte-level BPE reproduces valid
// UTF-8 input exactly from its pieces. Run under ASan/UBSan too.
TEST(Tokenizer, SurvivesRandomTextBytesAndRanges) {
  const char* pieces[] = {" ", "  ", "\n", "\r\n", "\t", "a", "Hello", "'s", "'LL", "123", "4567", "\xc3\xa9",
                          "\xe6\x88\x91", "\xe3\x80\x80", "\xf0\x9f\xa6\x99", "\xe1\x9e\xb6", "!!", "...",
                          "<|endoftext|>", "<|end|>", "</s>", "<s>", "\xc3\xb8", "\xe2\x96\x81", "\xd9\xa1"};
  uint64_t x = 99;
  auto next = [&x] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(x >> 33);
  };
  for (const char* vocab : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-deepseek-llm.gguf", "ggml-vocab-phi-3.gguf",
                            "ggml-vocab-llama-spm.gguf"}) {
    auto l = LoadVocab(testing::SharedPath(std::string("vocab/") + vocab));
    ASSERT_NE(l, nullptr);
    const Tokenizer& t = l->tok;
    for (int iter = 0; iter < 300; ++iter) {
      std::string text;
      const bool bytes = iter % 3 == 2;
      const uint32_t n = next() % 24;
      for (uint32_t k = 0; k < n; ++k) {
        if (bytes) {
          text += static_cast<char>(next());
        } else {
          text += pieces[next() % (sizeof pieces / sizeof pieces[0])];
        }
      }
      std::vector<SpecialSpan> spans;
      for (uint32_t k = next() % 4; k > 0; --k) {
        const size_t a = text.empty() ? 0 : next() % (text.size() + 1);
        spans.push_back({a, a + next() % 16});  // may run past the end
      }
      auto ids = t.Encode(text, iter % 2 == 0, spans);
      ASSERT_TRUE(ids.ok()) << ids.status().message();
      for (int32_t id : *ids) ASSERT_TRUE(id >= 0 && id < t.n_tokens()) << id;
      if (std::string(vocab) == "ggml-vocab-gpt-2.gguf" && !bytes) {
        auto plain = t.Encode(text, false);
        ASSERT_TRUE(plain.ok());
        std::string joined;
        for (int32_t id : *plain) joined += t.Piece(id);
        EXPECT_EQ(joined, text);
      }
    }
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
