#include "runtime/unicode.h"

#include <array>

namespace appliance::runtime::unicode {
namespace {

#include "runtime/unicode_tables.inc"  // kUnicodeVersion, kStage1, kStage2 (generated)

static_assert(sizeof(kStage1) / sizeof(kStage1[0]) == 0x110000 / 256);

struct ByteAlphabet {
  std::array<std::string, 256> utf8;  // byte -> UTF-8 of its code point
  std::array<int16_t, 0x144> byte;    // code point (< 0x144) -> byte, or -1

  ByteAlphabet() {
    byte.fill(-1);
    auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    uint32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = printable(b) ? static_cast<uint32_t>(b) : next++;
      AppendUtf8(cp, &utf8[static_cast<size_t>(b)]);
      byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

}  // namespace

CpFlags Flags(uint32_t cp) {
  if (cp >= 0x110000) return CpFlags{};
  return CpFlags{kStage2[kStage1[cp >> 8]][cp & 0xFF]};
}

const char* Version() { return kUnicodeVersion; }

std::vector<uint32_t> DecodeUtf8(std::string_view s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  const size_t n = s.size();
  auto cont = [&](size_t i) { return i < n && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80; };
  auto at = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[i])); };
  for (size_t i = 0; i < n;) {
    const uint32_t c = at(i);
    if (c < 0x80) {
      out.push_back(c);
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && cont(i + 1)) {
      out.push_back(((c & 0x1F) << 6) | (at(i + 1) & 0x3F));
      i += 2;
    } else if ((c & 0xF0) == 0xE0 && cont(i + 1) && cont(i + 2)) {
      out.push_back(((c & 0x0F) << 12) | ((at(i + 1) & 0x3F) << 6) | (at(i + 2) & 0x3F));
      i += 3;
    } else if ((c & 0xF8) == 0xF0 && cont(i + 1) && cont(i + 2) && cont(i + 3) &&
               (((c & 0x07) << 18) | ((at(i + 1) & 0x3F) << 12)) <= 0x10FFFF) {
      out.push_back(((c & 0x07) << 18) | ((at(i + 1) & 0x3F) << 12) | ((at(i + 2) & 0x3F) << 6) | (at(i + 3) & 0x3F));
      i += 4;
    } else {
      out.push_back(kReplacement);
      i += 1;
    }
  }
  return out;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp <= 0x7F) {
    out->push_back(static_cast<char>(cp));
  } else if (cp <= 0x7FF) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp <= 0xFFFF) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | ((cp >> 18) & 0x07)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string_view ByteToUtf8(uint8_t byte) { return Alphabet().utf8[byte]; }

int CodepointToByte(uint32_t cp) {
  const ByteAlphabet& a = Alphabet();
  return cp < a.byte.size() ? a.byte[cp] : -1;
}

}  // namespace appliance::runtime::unicode
