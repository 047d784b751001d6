// Build-time generator of the runtime's Unicode tables (runtime/unicode.h).
//
//   appliance_unicode_gen UnicodeData.txt PropList.txt OUT.inc
//
// Reads the Unicode Character Database files of Debian's unicode-data package
// (/usr/share/unicode) and writes a two-stage lookup table: for every code
// point below 0x110000 one byte holding its general category class (the first
// letter of the category: L, N, P, S, M, Z, C, or "unassigned") and whether it
// has the White_Space property. The classes are the ones llama.cpp's
// pre-tokenizer regexes use (\p{L}, \p{N}, \s, ...); a code point missing from
// UnicodeData.txt (Cn) is "unassigned", as in llama.cpp's generated table.
//
// It also checks an assumption the pre-tokenizers make: the contractions of
// the llama3-style regexes ('s 't 're 've 'm 'll 'd) are matched case-
// insensitively via the simple lowercase mapping, and only A-Z map onto those
// letters, so ASCII case folding is exact. If a future Unicode version broke
// that, generation fails instead of the tokenizer silently diverging.
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr uint32_t kMaxCodepoint = 0x110000;
constexpr uint32_t kBlock = 256;

// Must match runtime/unicode.h.
enum Class : uint8_t {
  kUnassigned = 0,
  kNumber = 1,
  kLetter = 2,
  kSeparator = 3,
  kMark = 4,
  kPunctuation = 5,
  kSymbol = 6,
  kOther = 7,  // Cc Cf Co Cs
};
constexpr uint8_t kWhitespaceBit = 0x08;

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "appliance_unicode_gen: %s\n", msg.c_str());
  std::exit(1);
}

std::vector<std::string> Split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::string Trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) --e;
  return s.substr(b, e - b);
}

uint32_t ParseHex(const std::string& s, const std::string& where) {
  if (s.empty() || s.size() > 6) Die(where + ": bad code point '" + s + "'");
  uint32_t v = 0;
  for (char c : s) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= static_cast<uint32_t>(c - '0');
    } else if (c >= 'A' && c <= 'F') {
      v |= static_cast<uint32_t>(c - 'A' + 10);
    } else if (c >= 'a' && c <= 'f') {
      v |= static_cast<uint32_t>(c - 'a' + 10);
    } else {
      Die(where + ": bad code point '" + s + "'");
    }
  }
  if (v >= kMaxCodepoint) Die(where + ": code point " + s + " out of range");
  return v;
}

uint8_t ClassOf(const std::string& cat, const std::string& where) {
  if (cat.size() != 2) Die(where + ": bad category '" + cat + "'");
  switch (cat[0]) {
    case 'L': return kLetter;
    case 'N': return kNumber;
    case 'P': return kPunctuation;
    case 'S': return kSymbol;
    case 'M': return kMark;
    case 'Z': return kSeparator;
    case 'C': return cat == "Cn" ? kUnassigned : kOther;
    default: Die(where + ": unknown category '" + cat + "'");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) Die("usage: appliance_unicode_gen UnicodeData.txt PropList.txt OUT.inc");
  std::vector<uint8_t> flags(kMaxCodepoint, kUnassigned);
  std::vector<std::pair<uint32_t, uint32_t>> lower;  // code point -> simple lowercase

  {
    std::ifstream in(argv[1]);
    if (!in) Die(std::string("cannot read ") + argv[1]);
    std::string line;
    size_t n = 0;
    uint32_t range_first = 0;
    bool in_range = false;
    while (std::getline(in, line)) {
      ++n;
      if (line.empty()) continue;
      const std::string where = std::string(argv[1]) + ":" + std::to_string(n);
      const std::vector<std::string> f = Split(line, ';');
      if (f.size() != 15) Die(where + ": expected 15 fields");
      const uint32_t cp = ParseHex(f[0], where);
      const uint8_t cls = ClassOf(f[2], where);
      const std::string& name = f[1];
      if (name.size() > 8 && name.compare(name.size() - 8, 8, ", First>") == 0) {
        range_first = cp;
        in_range = true;
        continue;
      }
      if (name.size() > 7 && name.compare(name.size() - 7, 7, ", Last>") == 0) {
        if (!in_range || range_first > cp) Die(where + ": range end without start");
        for (uint32_t c = range_first; c <= cp; ++c) flags[c] = cls;
        in_range = false;
        continue;
      }
      flags[cp] = cls;
      if (!f[13].empty()) lower.emplace_back(cp, ParseHex(f[13], where));
    }
    if (n < 30000) Die(std::string(argv[1]) + ": only " + std::to_string(n) + " lines, not a UnicodeData.txt");
  }

  std::string version = "unknown";
  size_t n_white = 0;
  {
    std::ifstream in(argv[2]);
    if (!in) Die(std::string("cannot read ") + argv[2]);
    std::string line;
    size_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (n == 1 && line.rfind("# PropList-", 0) == 0) {
        version = line.substr(11);
        if (version.size() > 4 && version.compare(version.size() - 4, 4, ".txt") == 0) version.resize(version.size() - 4);
      }
      const size_t hash = line.find('#');
      const std::string body = Trim(line.substr(0, hash));
      if (body.empty()) continue;
      const std::vector<std::string> f = Split(body, ';');
      if (f.size() != 2 || Trim(f[1]) != "White_Space") continue;
      const std::string where = std::string(argv[2]) + ":" + std::to_string(n);
      const std::string range = Trim(f[0]);
      const size_t dots = range.find("..");
      const uint32_t lo = ParseHex(range.substr(0, dots), where);
      const uint32_t hi = dots == std::string::npos ? lo : ParseHex(range.substr(dots + 2), where);
      for (uint32_t c = lo; c <= hi; ++c) {
        flags[c] = static_cast<uint8_t>(flags[c] | kWhitespaceBit);
        ++n_white;
      }
    }
    if (n_white < 20) Die(std::string(argv[2]) + ": found only " + std::to_string(n_white) + " White_Space code points");
  }

  for (const auto& [cp, lo] : lower) {
    const bool ascii_upper = cp >= 'A' && cp <= 'Z';
    for (char c : std::string("stmdrevl")) {
      if (lo == static_cast<uint32_t>(c) && !ascii_upper) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "U+%04X lowercases to '%c'", cp, c);
        Die(std::string(buf) + ": the contraction matcher's ASCII case folding would be wrong");
      }
    }
  }

  // Two stages: block index per 256 code points, deduplicated blocks.
  std::vector<std::array<uint8_t, kBlock>> blocks;
  std::map<std::array<uint8_t, kBlock>, size_t> block_index;
  std::vector<size_t> stage1;
  for (uint32_t b = 0; b < kMaxCodepoint / kBlock; ++b) {
    std::array<uint8_t, kBlock> blk{};
    for (uint32_t i = 0; i < kBlock; ++i) blk[i] = flags[b * kBlock + i];
    auto [it, inserted] = block_index.emplace(blk, blocks.size());
    if (inserted) blocks.push_back(blk);
    stage1.push_back(it->second);
  }
  if (blocks.size() > 0xFFFF) Die("too many distinct blocks");

  std::ostringstream out;
  out << "// Generated at build time by runtime/unicode_gen.cpp from\n// " << argv[1] << " and\n// " << argv[2]
      << " (Unicode " << version << "). Do not edit.\n";
  out << "inline constexpr char kUnicodeVersion[] = \"" << version << "\";\n";
  out << "inline constexpr uint16_t kStage1[" << stage1.size() << "] = {";
  for (size_t i = 0; i < stage1.size(); ++i) out << (i % 24 == 0 ? "\n" : "") << stage1[i] << ",";
  out << "\n};\n";
  out << "inline constexpr uint8_t kStage2[" << blocks.size() << "][" << kBlock << "] = {\n";
  for (const auto& blk : blocks) {
    out << "{";
    for (size_t i = 0; i < kBlock; ++i) out << (i % 64 == 0 ? "\n" : "") << static_cast<int>(blk[i]) << ",";
    out << "},\n";
  }
  out << "};\n";

  std::ofstream o(argv[3], std::ios::binary | std::ios::trunc);
  if (!o) Die(std::string("cannot write ") + argv[3]);
  o << out.str();
  if (!o.flush()) Die(std::string("write failed: ") + argv[3]);
  return 0;
}
