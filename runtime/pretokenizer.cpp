#include "runtime/pretokenizer.h"

#include "runtime/unicode.h"

namespace appliance::runtime {
namespace {

using unicode::CpFlags;

constexpr uint32_t kOutOfPiece = 0xFFFFFFFF;

// One piece [ini, end) of the code points being split, with llama.cpp's
// accessors: outside the piece a code point reads as kOutOfPiece and its
// flags as "none" (valid == false).
struct PieceView {
  std::span<const uint32_t> cps;
  size_t ini;
  size_t end;

  uint32_t cpt(size_t pos) const { return pos >= ini && pos < end ? cps[pos] : kOutOfPiece; }

  struct F {
    bool valid = false;
    CpFlags f;
    bool ws() const { return valid && f.is_whitespace(); }
    bool letter() const { return valid && f.is_letter(); }
    bool number() const { return valid && f.is_number(); }
  };
  F flags(size_t pos) const {
    if (pos < ini || pos >= end) return {};
    return {true, unicode::Flags(cps[pos])};
  }
};

// Collects word lengths of one piece: Cut(e) ends the current word at e.
struct Cutter {
  std::vector<size_t>* out;
  size_t prev;
  size_t Cut(size_t e) {
    const size_t len = e - prev;
    if (len > 0) out->push_back(len);
    prev = e;
    return len;
  }
};

// The contraction letters after an apostrophe; `fold` lowers ASCII A-Z (the
// only code points whose lowercase is one of these letters: unicode_gen
// checks that against UnicodeData.txt).
size_t Contraction(const PieceView& p, size_t pos, bool fold) {
  auto lower = [fold](uint32_t c) { return fold && c >= 'A' && c <= 'Z' ? c + 32 : c; };
  if (p.cpt(pos) != '\'' || pos + 1 >= p.end) return 0;
  const uint32_t n1 = lower(p.cpt(pos + 1));
  if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') return 2;
  if (pos + 2 < p.end) {
    const uint32_t n2 = lower(p.cpt(pos + 2));
    if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) return 3;
  }
  return 0;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (llama.cpp's unicode_regex_split_custom_gpt2).
void SplitGpt2(const PieceView& p, std::vector<size_t>* out) {
  Cutter cut{out, p.ini};
  for (size_t pos = p.ini; pos < p.end;) {
    const uint32_t cpt = p.cpt(pos);
    const PieceView::F flags = p.flags(pos);
    if (const size_t n = Contraction(p, pos, /*fold=*/false); n > 0) {
      pos += cut.Cut(pos + n);
      continue;
    }
    const PieceView::F flags2 = cpt == ' ' ? p.flags(pos + 1) : flags;
    if (flags2.letter()) {  // ' ?\p{L}+'
      pos += cpt == ' ';
      while (p.flags(pos).letter()) ++pos;
      cut.Cut(pos);
      continue;
    }
    if (flags2.number()) {  // ' ?\p{N}+'
      pos += cpt == ' ';
      while (p.flags(pos).number()) ++pos;
      cut.Cut(pos);
      continue;
    }
    auto other = [](const PieceView::F& f) { return f.valid && !f.ws() && !f.letter() && !f.number(); };
    if (other(flags2)) {  // ' ?[^\s\p{L}\p{N}]+'
      pos += cpt == ' ';
      while (other(p.flags(pos))) ++pos;
      cut.Cut(pos);
      continue;
    }
    size_t num_ws = 0;
    while (p.flags(pos + num_ws).ws()) ++num_ws;
    if (num_ws > 1 && p.cpt(pos + num_ws) != kOutOfPiece) {  // '\s+(?!\S)': leave the last one to the next word
      pos += num_ws - 1;
      cut.Cut(pos);
      continue;
    }
    if (num_ws > 0) {  // '\s+'
      pos += num_ws;
      cut.Cut(pos);
      continue;
    }
    cut.Cut(++pos);  // no alternative matches: a word of its own
  }
}

// LLAMA3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// (llama.cpp's unicode_regex_split_custom_llama3). With max_digits 1 it is
// Qwen2's regex, whose only difference is \p{N} for \p{N}{1,3}; llama.cpp runs
// that one through std::regex, which gives the same words (each alternative
// below is what backtracking finds for that regex at that position).
void SplitLlama3(const PieceView& p, size_t max_digits, std::vector<size_t>* out) {
  Cutter cut{out, p.ini};
  for (size_t pos = p.ini; pos < p.end;) {
    const uint32_t cpt = p.cpt(pos);
    const PieceView::F flags = p.flags(pos);
    if (const size_t n = Contraction(p, pos, /*fold=*/true); n > 0) {
      pos += cut.Cut(pos + n);
      continue;
    }
    // '[^\r\n\p{L}\p{N}]?\p{L}+'
    if (!(cpt == '\r' || cpt == '\n' || flags.number())) {
      if (flags.letter() || p.flags(pos + 1).letter()) {
        ++pos;
        while (p.flags(pos).letter()) ++pos;
        cut.Cut(pos);
        continue;
      }
    }
    // '\p{N}{1,max_digits}'
    if (flags.number()) {
      size_t ini = pos;
      while (p.flags(pos).number()) {
        if (++pos - ini >= max_digits) {
          cut.Cut(pos);
          ini = pos;
        }
      }
      cut.Cut(pos);
      continue;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    const PieceView::F flags2 = cpt == ' ' ? p.flags(pos + 1) : flags;
    auto other = [](const PieceView::F& f) { return f.valid && !f.ws() && !f.letter() && !f.number(); };
    if (!flags2.ws() && !flags2.letter() && !flags2.number() && flags.valid) {
      pos += cpt == ' ';
      while (other(p.flags(pos))) ++pos;
      while (p.cpt(pos) == '\r' || p.cpt(pos) == '\n') ++pos;
      cut.Cut(pos);
      continue;
    }
    size_t num_ws = 0;
    size_t last_end_r_or_n = 0;
    while (p.flags(pos + num_ws).ws()) {
      const uint32_t c2 = p.cpt(pos + num_ws);
      if (c2 == '\r' || c2 == '\n') last_end_r_or_n = pos + num_ws + 1;
      ++num_ws;
    }
    if (last_end_r_or_n > 0) {  // '\s*[\r\n]+'
      pos = last_end_r_or_n;
      cut.Cut(pos);
      continue;
    }
    if (num_ws > 1 && p.cpt(pos + num_ws) != kOutOfPiece) {  // '\s+(?!\S)'
      pos += num_ws - 1;
      cut.Cut(pos);
      continue;
    }
    if (num_ws > 0) {  // '\s+'
      pos += num_ws;
      cut.Cut(pos);
      continue;
    }
    cut.Cut(++pos);
  }
}

// One pass over every piece: the custom splitters above, or an "isolating"
// regex: its leftmost matches become words, and so do the gaps between them
// (llama.cpp's unicode_regex_split_stl over std::regex_iterator).
template <typename Split>
std::vector<size_t> Pass(std::span<const uint32_t> cps, const std::vector<size_t>& pieces, Split split) {
  std::vector<size_t> out;
  out.reserve(pieces.size());
  size_t start = 0;
  for (size_t len : pieces) {
    split(PieceView{cps, start, start + len}, &out);
    start += len;
  }
  return out;
}

// `match(p, pos)` is the length of the regex's match starting at pos (what
// the backtracking engine finds there), 0 when it does not match at pos.
template <typename Match>
std::vector<size_t> IsolatingPass(std::span<const uint32_t> cps, const std::vector<size_t>& pieces, Match match) {
  return Pass(cps, pieces, [&](const PieceView& p, std::vector<size_t>* out) {
    Cutter cut{out, p.ini};
    for (size_t pos = p.ini; pos < p.end;) {
      const size_t n = match(p, pos);
      if (n == 0) {
        ++pos;
        continue;
      }
      cut.Cut(pos);
      pos += n;
      cut.Cut(pos);
    }
    cut.Cut(p.end);
  });
}

// ---- character classes of the regexes run through std::regex/std::wregex in llama.cpp ----

// \s: White_Space (std::regex's isspace in the C locale for ASCII; llama.cpp
// replaces every other White_Space code point with U+000B, a \s, first).
bool IsSpace(uint32_t cp) { return unicode::Flags(cp).is_whitespace(); }

// For the literal classes of std::wregex the code point as llama.cpp presents
// it: non-ASCII whitespace reads as U+000B, so it is in none of them.
uint32_t WregexChar(uint32_t cp) { return cp > 0x7F && IsSpace(cp) ? 0x0B : cp; }

struct Range {
  uint32_t lo, hi;
};

template <size_t N>
bool InRanges(uint32_t cp, const Range (&ranges)[N]) {
  for (const Range& r : ranges) {
    if (cp >= r.lo && cp <= r.hi) return true;
  }
  return false;
}

// DeepSeek LLM's letter class, [A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]
// as code points (its ranges are the runs of cased letters, Lu/Ll/Lt).
constexpr Range kDeepseekLetters[] = {
    {0x0041, 0x005A},   {0x0061, 0x007A},   {0x00B5, 0x00B5},   {0x00C0, 0x00D6},   {0x00D8, 0x00F6},
    {0x00F8, 0x01BA},   {0x01BC, 0x01BF},   {0x01C4, 0x0293},   {0x0295, 0x02AF},   {0x0370, 0x0373},
    {0x0376, 0x0377},   {0x037B, 0x037D},   {0x037F, 0x037F},   {0x0386, 0x0386},   {0x0388, 0x038A},
    {0x038C, 0x038C},   {0x038E, 0x03A1},   {0x03A3, 0x03F5},   {0x03F7, 0x0481},   {0x048A, 0x052F},
    {0x0531, 0x0556},   {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},   {0x1C90, 0x1CBA},
    {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},   {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},
    {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},   {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},
    {0x1F5B, 0x1F5B},   {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},
    {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},   {0x2102, 0x2102},   {0x2107, 0x2107},
    {0x210A, 0x2113},   {0x2115, 0x2115},   {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},
    {0x2128, 0x2128},   {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},   {0x2C7E, 0x2CE4},
    {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},   {0xA680, 0xA69B},   {0xA722, 0xA76F},
    {0xA771, 0xA787},   {0xA78B, 0xA78E},   {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},
    {0xFF21, 0xFF3A},   {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};
// [!-/:-~！-／：-～‘-‟　-。]
constexpr Range kDeepseekPunct[] = {{0x0021, 0x002F}, {0x003A, 0x007E}, {0xFF01, 0xFF0F},
                                    {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002}};
// [一-龥ࠀ-一가-퟿]
constexpr Range kDeepseekCjk[] = {{0x4E00, 0x9FA5}, {0x0800, 0x4E00}, {0xAC00, 0xD7FF}};

// '\s?[class]+' at pos: the optional space is tried first (greedy), then without it.
template <size_t N>
size_t MatchSpaceRun(const PieceView& p, size_t pos, const Range (&cls)[N]) {
  auto in = [&](size_t i) { return i < p.end && InRanges(WregexChar(p.cps[i]), cls); };
  size_t i = pos;
  if (IsSpace(p.cps[pos]) && in(pos + 1)) {
    i = pos + 1;
  } else if (!in(pos)) {
    return 0;
  }
  while (in(i)) ++i;
  return i - pos;
}

// '[class]+'
template <typename In>
size_t MatchRun(const PieceView& p, size_t pos, In in) {
  size_t i = pos;
  while (i < p.end && in(p.cps[i])) ++i;
  return i - pos;
}

bool IsNumber(uint32_t cp) { return unicode::Flags(cp).is_number(); }

std::vector<size_t> SplitDeepseekLlm(std::span<const uint32_t> cps) {
  std::vector<size_t> pieces = {cps.size()};
  // [\r\n]
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) -> size_t {
    return p.cps[pos] == '\r' || p.cps[pos] == '\n' ? 1 : 0;
  });
  // \s?[letters]+
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) { return MatchSpaceRun(p, pos, kDeepseekLetters); });
  // \s?[punctuation]+
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) { return MatchSpaceRun(p, pos, kDeepseekPunct); });
  // \s+$ : the leftmost match is the whole run of trailing whitespace.
  pieces = Pass(cps, pieces, [](const PieceView& p, std::vector<size_t>* out) {
    size_t t = p.end;
    while (t > p.ini && IsSpace(p.cps[t - 1])) --t;
    Cutter cut{out, p.ini};
    cut.Cut(t);
    cut.Cut(p.end);
  });
  // [一-龥ࠀ-一가-퟿]+
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) {
    return MatchRun(p, pos, [](uint32_t c) { return InRanges(WregexChar(c), kDeepseekCjk); });
  });
  // \p{N}+
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) { return MatchRun(p, pos, IsNumber); });
  return pieces;
}

// llama.cpp's fallback when tokenizer.ggml.pre is "default":
//   [\p{P}\$\+<=>\^~\|]+ , the GPT-2 regex, \p{N}+ , [0-9][0-9][0-9]
std::vector<size_t> SplitDefault(std::span<const uint32_t> cps) {
  std::vector<size_t> pieces = {cps.size()};
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) {
    return MatchRun(p, pos, [](uint32_t c) {
      if (c < 0x80) {
        return c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' || c == '~' || c == '|' ||
               unicode::Flags(c).is_punctuation();
      }
      const CpFlags f = unicode::Flags(c);
      return !f.is_whitespace() && f.is_punctuation();
    });
  });
  pieces = Pass(cps, pieces, SplitGpt2);
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) { return MatchRun(p, pos, IsNumber); });
  pieces = IsolatingPass(cps, pieces, [](const PieceView& p, size_t pos) -> size_t {
    auto digit = [&](size_t i) { return i < p.end && p.cps[i] >= '0' && p.cps[i] <= '9'; };
    return digit(pos) && digit(pos + 1) && digit(pos + 2) ? 3 : 0;
  });
  return pieces;
}

struct NamedPre {
  const char* name;
  PreTokenizerInfo info;
};

// From llama.cpp's llama_vocab::impl::load: pre-tokenizer type and flags.
constexpr NamedPre kPreTokenizers[] = {
    {"default", {PreTokenizer::kDefault, false, false, true}},
    {"gpt-2", {PreTokenizer::kGpt2, false, false, true}},
    {"phi-2", {PreTokenizer::kGpt2, false, false, true}},
    {"llama3", {PreTokenizer::kLlama3, true, true, true}},
    {"llama-v3", {PreTokenizer::kLlama3, true, true, true}},
    {"llama-bpe", {PreTokenizer::kLlama3, true, true, true}},
    {"falcon3", {PreTokenizer::kLlama3, true, true, true}},
    {"dbrx", {PreTokenizer::kLlama3, false, false, true}},
    {"smaug-bpe", {PreTokenizer::kLlama3, false, false, true}},
    {"qwen2", {PreTokenizer::kQwen2, false, false, false}},
    {"deepseek-r1-qwen", {PreTokenizer::kQwen2, false, false, false}},
    {"stablelm2", {PreTokenizer::kQwen2, false, false, true}},
    {"megrez", {PreTokenizer::kQwen2, false, false, true}},
    {"deepseek-llm", {PreTokenizer::kDeepseekLlm, false, false, false}},
};

}  // namespace

std::optional<PreTokenizerInfo> LookupPreTokenizer(std::string_view name) {
  for (const NamedPre& p : kPreTokenizers) {
    if (name == p.name) return p.info;
  }
  return std::nullopt;
}

std::string SupportedPreTokenizers() {
  std::string s;
  for (const NamedPre& p : kPreTokenizers) {
    if (!s.empty()) s += ", ";
    s += p.name;
  }
  return s;
}

std::vector<size_t> PreTokenize(PreTokenizer kind, std::span<const uint32_t> cps) {
  if (cps.empty()) return {};
  const std::vector<size_t> whole = {cps.size()};
  switch (kind) {
    case PreTokenizer::kGpt2:
      return Pass(cps, whole, SplitGpt2);
    case PreTokenizer::kLlama3:
      return Pass(cps, whole, [](const PieceView& p, std::vector<size_t>* out) { SplitLlama3(p, 3, out); });
    case PreTokenizer::kQwen2:
      return Pass(cps, whole, [](const PieceView& p, std::vector<size_t>* out) { SplitLlama3(p, 1, out); });
    case PreTokenizer::kDeepseekLlm:
      return SplitDeepseekLlm(cps);
    case PreTokenizer::kDefault:
      break;
  }
  return SplitDefault(cps);
}

}  // namespace appliance::runtime
