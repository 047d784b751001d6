// Unicode tables (generated from the Unicode Character Database), UTF-8 as
// llama.cpp decodes it, the GPT-2 byte alphabet, and every pre-tokenizer's
// word splits against hand-worked expectations of its regex.
#include "runtime/pretokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "runtime/unicode.h"

namespace appliance::runtime {
namespace {

using unicode::Class;
using unicode::Flags;

TEST(Unicode, ClassesComeFromTheDatabase) {
  EXPECT_TRUE(Flags('A').is_letter());
  EXPECT_TRUE(Flags('z').is_letter());
  EXPECT_TRUE(Flags('5').is_number());
  EXPECT_EQ(Flags('!').cls(), Class::kPunctuation);
  EXPECT_EQ(Flags('$').cls(), Class::kSymbol);
  EXPECT_EQ(Flags('`').cls(), Class::kSymbol);
  EXPECT_EQ(Flags('_').cls(), Class::kPunctuation);
  EXPECT_TRUE(Flags(' ').is_whitespace());
  EXPECT_EQ(Flags(' ').cls(), Class::kSeparator);
  EXPECT_TRUE(Flags('\t').is_whitespace());
  EXPECT_EQ(Flags('\t').cls(), Class::kOther);  // Cc
  EXPECT_FALSE(Flags(0x1C).is_whitespace());    // not White_Space (Python's isspace() says yes)
  EXPECT_TRUE(Flags(0x85).is_whitespace());     // NEXT LINE: Cc and White_Space
  EXPECT_TRUE(Flags(0xA0).is_whitespace());
  EXPECT_TRUE(Flags(0x3000).is_whitespace());
  EXPECT_FALSE(Flags(0x200B).is_whitespace());  // ZERO WIDTH SPACE is Cf, not White_Space
  EXPECT_EQ(Flags(0x200B).cls(), Class::kOther);
  EXPECT_TRUE(Flags(0xBD).is_number());         // ½ (No)
  EXPECT_TRUE(Flags(0x0661).is_number());       // ARABIC-INDIC DIGIT ONE
  EXPECT_EQ(Flags(0x17B6).cls(), Class::kMark);  // KHMER VOWEL SIGN AA (Mc)
  EXPECT_EQ(Flags(0x1F999).cls(), Class::kSymbol);  // 🦙
  EXPECT_TRUE(Flags(0x4E00).is_letter());       // CJK ideograph: a <..., First>/<..., Last> range
  EXPECT_TRUE(Flags(0x9FA5).is_letter());
  EXPECT_TRUE(Flags(0xAC01).is_letter());       // Hangul syllable range
  EXPECT_EQ(Flags(0xE000).cls(), Class::kOther);  // private use range
  EXPECT_EQ(Flags(0xD800).cls(), Class::kOther);  // surrogate range
  EXPECT_EQ(Flags(0x0378).cls(), Class::kUnassigned);
  EXPECT_EQ(Flags(0x10FFFF).cls(), Class::kUnassigned);
  EXPECT_EQ(Flags(0x110000).cls(), Class::kUnassigned);
  EXPECT_FALSE(Flags(0xFFFFFFFF).is_whitespace());
  const std::string v = unicode::Version();
  ASSERT_FALSE(v.empty());
  EXPECT_TRUE(v[0] >= '1' && v[0] <= '9') << v;
}

TEST(Unicode, DecodesUtf8LikeLlamaCpp) {
  using V = std::vector<uint32_t>;
  EXPECT_EQ(unicode::DecodeUtf8("a\xc3\xa9\xe2\x96\x81\xf0\x9f\xa6\x99"), (V{'a', 0xE9, 0x2581, 0x1F999}));
  EXPECT_EQ(unicode::DecodeUtf8("a\xff"), (V{'a', 0xFFFD}));
  EXPECT_EQ(unicode::DecodeUtf8("\xc3"), (V{0xFFFD}));               // truncated
  EXPECT_EQ(unicode::DecodeUtf8("\xe2\x96" "b"), (V{0xFFFD, 0xFFFD, 'b'}));
  EXPECT_EQ(unicode::DecodeUtf8("\x80"), (V{0xFFFD}));               // stray continuation
  EXPECT_EQ(unicode::DecodeUtf8("\xc0\x80"), (V{0}));                // overlong: not rejected (as llama.cpp)
  EXPECT_EQ(unicode::DecodeUtf8("\xf4\x90\x80\x80"), (V{0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}));  // > U+10FFFF
  EXPECT_TRUE(unicode::DecodeUtf8("").empty());
  for (uint32_t cp : {0u, 0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xFFFFu, 0x10000u, 0x10FFFFu}) {
    std::string s;
    unicode::AppendUtf8(cp, &s);
    EXPECT_EQ(unicode::DecodeUtf8(s), V{cp}) << cp;
  }
}

TEST(Unicode, Gpt2ByteAlphabet) {
  EXPECT_EQ(unicode::ByteToUtf8(' '), "\xc4\xa0");   // Ġ U+0120
  EXPECT_EQ(unicode::ByteToUtf8('\n'), "\xc4\x8a");  // Ċ U+010A
  EXPECT_EQ(unicode::ByteToUtf8(0), "\xc4\x80");     // Ā U+0100
  EXPECT_EQ(unicode::ByteToUtf8('a'), "a");
  EXPECT_EQ(unicode::ByteToUtf8(0xAD), "\xc5\x83");  // the last remapped byte: U+0143
  std::set<std::string> seen;
  for (int b = 0; b < 256; ++b) {
    const std::string_view u = unicode::ByteToUtf8(static_cast<uint8_t>(b));
    seen.insert(std::string(u));
    const std::vector<uint32_t> cps = unicode::DecodeUtf8(u);
    ASSERT_EQ(cps.size(), 1u);
    EXPECT_EQ(unicode::CodepointToByte(cps[0]), b);
  }
  EXPECT_EQ(seen.size(), 256u);
  EXPECT_EQ(unicode::CodepointToByte(' '), -1);  // space is remapped, so not in the alphabet
  EXPECT_EQ(unicode::CodepointToByte(0x144), -1);
}

// The words `text` splits into.
std::vector<std::string> Words(PreTokenizer kind, std::string_view text) {
  const std::vector<uint32_t> cps = unicode::DecodeUtf8(text);
  std::vector<std::string> out;
  size_t start = 0;
  size_t sum = 0;
  for (size_t len : PreTokenize(kind, cps)) {
    EXPECT_GT(len, 0u);
    std::string w;
    for (size_t i = start; i < start + len; ++i) unicode::AppendUtf8(cps[i], &w);
    out.push_back(w);
    start += len;
    sum += len;
  }
  EXPECT_EQ(sum, cps.size());
  return out;
}

using W = std::vector<std::string>;

TEST(PreTokenizer, Gpt2) {
  const auto k = PreTokenizer::kGpt2;
  EXPECT_EQ(Words(k, "Hello world"), (W{"Hello", " world"}));
  EXPECT_EQ(Words(k, "I'm here's"), (W{"I", "'m", " here", "'s"}));
  EXPECT_EQ(Words(k, "I'M"), (W{"I", "'", "M"}));  // contractions are case-sensitive here
  EXPECT_EQ(Words(k, "  Hello"), (W{" ", " Hello"}));  // \s+(?!\S) leaves one space to the word
  EXPECT_EQ(Words(k, "a  \n"), (W{"a", "  \n"}));     // trailing whitespace stays together
  EXPECT_EQ(Words(k, "x 123 4567"), (W{"x", " 123", " 4567"}));
  EXPECT_EQ(Words(k, "\xc2\xa1\xc2\xa1hola"), (W{"\xc2\xa1\xc2\xa1", "hola"}));
  EXPECT_EQ(Words(k, "\xc3\xa9t\xc3\xa9!?"), (W{"\xc3\xa9t\xc3\xa9", "!?"}));
  EXPECT_EQ(Words(k, ""), W{});
}

TEST(PreTokenizer, Llama3) {
  const auto k = PreTokenizer::kLlama3;
  EXPECT_EQ(Words(k, "Hello world"), (W{"Hello", " world"}));
  EXPECT_EQ(Words(k, "I'M here"), (W{"I", "'M", " here"}));  // (?i:...) contractions
  EXPECT_EQ(Words(k, "12345"), (W{"123", "45"}));            // \p{N}{1,3}
  EXPECT_EQ(Words(k, "a\n\nb"), (W{"a", "\n\n", "b"}));      // \s*[\r\n]+
  EXPECT_EQ(Words(k, "  \n  x"), (W{"  \n", " ", " x"}));
  EXPECT_EQ(Words(k, "(hello)"), (W{"(hello", ")"}));        // [^\r\n\p{L}\p{N}]?\p{L}+
  EXPECT_EQ(Words(k, "!!\n\nx"), (W{"!!\n\n", "x"}));        //  ?[^\s\p{L}\p{N}]+[\r\n]*
  EXPECT_EQ(Words(k, "\tword"), (W{"\tword"}));
  EXPECT_EQ(Words(k, "x "), (W{"x", " "}));
}

TEST(PreTokenizer, Qwen2SplitsDigitsOneByOne) {
  const auto k = PreTokenizer::kQwen2;
  EXPECT_EQ(Words(k, "12345"), (W{"1", "2", "3", "4", "5"}));
  EXPECT_EQ(Words(k, "abc 42"), (W{"abc", " ", "4", "2"}));
  EXPECT_EQ(Words(k, "It's 3pm"), (W{"It", "'s", " ", "3", "pm"}));
}

TEST(PreTokenizer, DeepseekLlm) {
  const auto k = PreTokenizer::kDeepseekLlm;
  EXPECT_EQ(Words(k, "Hello world"), (W{"Hello", " world"}));
  EXPECT_EQ(Words(k, "Hello, world!"), (W{"Hello", ",", " world", "!"}));
  EXPECT_EQ(Words(k, "a\nb"), (W{"a", "\n", "b"}));
  EXPECT_EQ(Words(k, "x  "), (W{"x", "  "}));
  EXPECT_EQ(Words(k, "\xe6\x88\x91\xe6\x83\xb3" "apple"), (W{"\xe6\x88\x91\xe6\x83\xb3", "apple"}));  // 我想apple
  EXPECT_EQ(Words(k, "1314151"), (W{"1314151"}));  // \p{N}+: numbers are not split
  EXPECT_EQ(Words(k, " 12"), (W{" ", "12"}));
  // U+3000 IDEOGRAPHIC SPACE is \s, and (as in llama.cpp's std::wregex path)
  // never a member of a literal class, although the ranges ࠀ-一 and 　-。
  // include it: the CJK pass splits it from the 、 (U+3001) after it.
  EXPECT_EQ(Words(k, "\xe3\x80\x80\xe3\x80\x81"), (W{"\xe3\x80\x80", "\xe3\x80\x81"}));
  EXPECT_EQ(Words(k, "a\xe3\x80\x80\xe3\x80\x80"), (W{"a", "\xe3\x80\x80\xe3\x80\x80"}));
}

TEST(PreTokenizer, LlamaCppDefault) {
  const auto k = PreTokenizer::kDefault;
  EXPECT_EQ(Words(k, "a+b=3"), (W{"a", "+", "b", "=", "3"}));
  EXPECT_EQ(Words(k, "12345"), (W{"123", "45"}));  // [0-9][0-9][0-9]
  EXPECT_EQ(Words(k, "Hello, world"), (W{"Hello", ",", " world"}));
}

TEST(PreTokenizer, NamesAndFlags) {
  auto l3 = LookupPreTokenizer("llama-bpe");
  ASSERT_TRUE(l3.has_value());
  EXPECT_EQ(l3->kind, PreTokenizer::kLlama3);
  EXPECT_TRUE(l3->ignore_merges);
  EXPECT_TRUE(l3->add_bos);
  auto q = LookupPreTokenizer("qwen2");
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->kind, PreTokenizer::kQwen2);
  EXPECT_FALSE(q->clean_spaces);
  EXPECT_FALSE(q->add_bos);
  EXPECT_FALSE(LookupPreTokenizer("falcon").has_value());
  EXPECT_FALSE(LookupPreTokenizer("").has_value());
  EXPECT_THAT(SupportedPreTokenizers(), ::testing::HasSubstr("deepseek-llm"));
}

// Random code points (valid, invalid, whitespace-heavy) never break the
// invariants: non-empty words covering the input exactly.
TEST(PreTokenizer, RandomInputCoversTheText) {
  uint64_t x = 12345;
  auto next = [&x] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(x >> 33);
  };
  const uint32_t pool[] = {' ', '\n', '\r', '\t', 'a', 'Z', '\'', 's', '1', '!', 0xA0, 0x3000, 0x3001, 0x4E00,
                           0xAC00, 0x0661, 0x17B6, 0x1F999, 0x0378, 0xFFFD, 0x2028};
  for (int iter = 0; iter < 2000; ++iter) {
    std::vector<uint32_t> cps(next() % 40);
    for (uint32_t& c : cps) c = pool[next() % (sizeof pool / sizeof pool[0])];
    for (auto kind : {PreTokenizer::kDefault, PreTokenizer::kGpt2, PreTokenizer::kLlama3, PreTokenizer::kQwen2,
                      PreTokenizer::kDeepseekLlm}) {
      size_t sum = 0;
      for (size_t len : PreTokenize(kind, cps)) {
        ASSERT_GT(len, 0u);
        sum += len;
      }
      ASSERT_EQ(sum, cps.size());
    }
  }
}

}  // namespace
}  // namespace appliance::runtime
