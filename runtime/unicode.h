// Unicode support for the tokenizers: code point classes from the Unicode
// Character Database (tables generated at build time by runtime/unicode_gen.cpp
// from Debian's unicode-data package), UTF-8 decoding and encoding exactly as
// llama.cpp's unicode.cpp does them, and the GPT-2 byte-level alphabet.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace appliance::runtime::unicode {

// The general category class of a code point (the first letter of its
// category; Cn, i.e. not in UnicodeData.txt, is kUnassigned).
enum class Class : uint8_t {
  kUnassigned = 0,
  kNumber = 1,       // \p{N}
  kLetter = 2,       // \p{L}
  kSeparator = 3,    // \p{Z}
  kMark = 4,         // \p{M}
  kPunctuation = 5,  // \p{P}
  kSymbol = 6,       // \p{S}
  kOther = 7,        // \p{C} except Cn
};

struct CpFlags {
  uint8_t bits = 0;

  Class cls() const { return static_cast<Class>(bits & 7); }
  bool is_whitespace() const { return (bits & 8) != 0; }  // the White_Space property (\s)
  bool is_letter() const { return cls() == Class::kLetter; }
  bool is_number() const { return cls() == Class::kNumber; }
  bool is_punctuation() const { return cls() == Class::kPunctuation; }
};

// Flags of `cp`; code points from 0x110000 up are unassigned.
CpFlags Flags(uint32_t cp);

// The Unicode version the tables were generated from (e.g. "15.0.0").
const char* Version();

constexpr uint32_t kReplacement = 0xFFFD;

// Code points of `s`, decoded as llama.cpp's unicode_cpts_from_utf8: a lead
// byte with the continuation bytes it announces is one code point (overlong
// forms are not rejected); a byte that cannot start a complete sequence
// becomes U+FFFD and decoding resumes at the next byte. One difference: a
// 4-byte sequence above U+10FFFF (where llama.cpp throws later, when encoding
// it back) is treated as invalid bytes, U+FFFD each.
std::vector<uint32_t> DecodeUtf8(std::string_view s);

// Appends the UTF-8 encoding of cp (<= 0x10FFFF; surrogates are encoded as
// their 3-byte form, as llama.cpp does).
void AppendUtf8(uint32_t cp, std::string* out);

// GPT-2's byte-level alphabet: every byte stands for one printable code
// point ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF as themselves, the other 68
// bytes as U+0100..U+0143 in byte order). ByteToUtf8 gives its UTF-8 text;
// CodepointToByte inverts it (-1 for code points outside the alphabet).
std::string_view ByteToUtf8(uint8_t byte);
int CodepointToByte(uint32_t cp);

}  // namespace appliance::runtime::unicode
