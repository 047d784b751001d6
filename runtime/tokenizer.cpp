#include "runtime/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <iterator>
#include <queue>
#include <unordered_map>
#include <utility>

#include "runtime/pretokenizer.h"
#include "runtime/unicode.h"

namespace appliance::runtime {
namespace {

// llama.cpp's token types (tokenizer.ggml.token_type values).
enum TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

enum StripFlags : uint8_t { kLstrip = 1, kRstrip = 2 };

constexpr std::string_view kSpaceMarker = "\xe2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

// Tokens that end generation by their text (llama.cpp's special_eog_ids list).
constexpr std::string_view kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|im_end|>",      "<|end|>",          "<|return|>", "<|call|>",
    "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",     "<EOT>",      "_<EOT>",
    "<|end_of_text|>", "<end_of_utterance>",
};

void ReplaceAll(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (;;) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// Length of the UTF-8 sequence a byte starts, by its high nibble, exactly as
// llama.cpp's unicode_len_utf8 (continuation and invalid bytes count as 1).
size_t Utf8Len(char c) {
  static constexpr size_t kLookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLookup[static_cast<uint8_t>(c) >> 4];
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "<0xAB>" -> 0xAB, or -1.
int ParseByteToken(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  const int hi = HexDigit(t[3]);
  const int lo = HexDigit(t[4]);
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

// isspace() of the C locale, which llama.cpp uses for lstrip/rstrip.
bool AsciiSpace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

std::string Hex2(uint8_t b) {
  static const char kHex[] = "0123456789abcdef";
  return {kHex[b >> 4], kHex[b & 15]};
}

// A BPE merge "left right", looked up by a pair of views without allocating.
struct MergeKey {
  std::string left, right;
};
using MergeView = std::pair<std::string_view, std::string_view>;
struct MergeHash {
  using is_transparent = void;
  size_t operator()(const MergeView& k) const {
    const size_t a = std::hash<std::string_view>{}(k.first);
    const size_t b = std::hash<std::string_view>{}(k.second);
    return a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  }
  size_t operator()(const MergeKey& k) const { return (*this)(MergeView(k.left, k.right)); }
};
struct MergeEq {
  using is_transparent = void;
  static MergeView V(const MergeKey& k) { return {k.left, k.right}; }
  static MergeView V(const MergeView& k) { return k; }
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    return V(a) == V(b);
  }
};

}  // namespace

struct Tokenizer::Impl {
  bool bpe = false;
  PreTokenizerInfo pre;  // bpe
  std::string pre_name;  // bpe

  std::vector<std::string> text;   // as stored in the vocab
  std::vector<float> score;
  std::vector<int32_t> type;
  std::vector<uint8_t> strip;      // StripFlags
  std::vector<std::string> piece;  // what each token prints as
  std::unordered_map<std::string_view, int32_t> to_id;  // keys view into `text`, which never changes after load
  std::array<int32_t, 256> byte_token{};                // spm
  std::unordered_map<MergeKey, int32_t, MergeHash, MergeEq> ranks;  // bpe
  std::vector<int32_t> special;  // control, user-defined and unknown tokens, longest text first
  std::vector<int32_t> eog;      // sorted
  int32_t bos = kNoToken;
  int32_t eos = kNoToken;
  int32_t unk = kNoToken;
  bool add_bos = true;
  bool add_space_prefix = true;

  int32_t Lookup(std::string_view s) const {
    auto it = to_id.find(s);
    return it == to_id.end() ? kNoToken : it->second;
  }

  struct Fragment {
    int32_t token;  // kNoToken for raw text
    size_t offset;
    size_t length;
  };
  std::vector<Fragment> Partition(std::string_view input, std::span<const SpecialSpan> trusted) const;

  Status EncodeSpm(std::string_view fragment, bool space_prefix, std::vector<int32_t>* out) const;
  void EncodeBpe(std::string_view fragment, std::vector<int32_t>* out) const;
  void MergeWord(const std::string& word, std::vector<int32_t>* out) const;
};

// ---- special tokens ----

std::vector<Tokenizer::Impl::Fragment> Tokenizer::Impl::Partition(std::string_view input,
                                                                    std::span<const SpecialSpan> trusted) const {
  std::vector<Fragment> fragments = {{kNoToken, 0, input.size()}};
  std::array<bool, 256> present{};
  for (char c : input) present[static_cast<uint8_t>(c)] = true;
  // The trusted ranges sorted and merged, so that a lookup is a binary search.
  std::vector<SpecialSpan> spans(trusted.begin(), trusted.end());
  std::sort(spans.begin(), spans.end(), [](const SpecialSpan& a, const SpecialSpan& b) { return a.begin < b.begin; });
  size_t n_spans = 0;
  for (const SpecialSpan& s : spans) {
    if (s.end <= s.begin) continue;
    if (n_spans > 0 && s.begin <= spans[n_spans - 1].end) {
      spans[n_spans - 1].end = std::max(spans[n_spans - 1].end, s.end);
    } else {
      spans[n_spans++] = s;
    }
  }
  spans.resize(n_spans);
  auto in_trusted = [&](size_t begin, size_t end) {
    auto it = std::upper_bound(spans.begin(), spans.end(), begin,
                               [](size_t b, const SpecialSpan& s) { return b < s.begin; });
    return it != spans.begin() && end <= std::prev(it)->end;
  };
  for (int32_t id : special) {
    const std::string& needle = text[static_cast<size_t>(id)];
    if (!present[static_cast<uint8_t>(needle[0])]) continue;
    const bool control = type[static_cast<size_t>(id)] != kUserDefined;
    if (control && spans.empty()) continue;
    const uint8_t st = strip[static_cast<size_t>(id)];
    std::vector<Fragment> next;
    next.reserve(fragments.size());
    for (const Fragment& f : fragments) {
      if (f.token != kNoToken) {
        next.push_back(f);
        continue;
      }
      const size_t end = f.offset + f.length;
      const std::string_view area = input.substr(0, end);
      size_t raw_start = f.offset;
      size_t search = f.offset;
      for (;;) {
        const size_t hit = area.find(needle, search);
        if (hit == std::string_view::npos) break;
        if (control && !in_trusted(hit, hit + needle.size())) {
          search = hit + 1;
          continue;
        }
        size_t left_end = hit;
        if (st & kLstrip) {
          while (left_end > raw_start && AsciiSpace(input[left_end - 1])) --left_end;
        }
        if (left_end > raw_start) next.push_back({kNoToken, raw_start, left_end - raw_start});
        next.push_back({id, hit, needle.size()});
        size_t right = hit + needle.size();
        if (st & kRstrip) {
          while (right < end && AsciiSpace(input[right])) ++right;
        }
        raw_start = search = right;
      }
      if (raw_start < end) next.push_back({kNoToken, raw_start, end - raw_start});
    }
    fragments = std::move(next);
  }
  return fragments;
}

// ---- SentencePiece ----

namespace {

// The merge loop of llama.cpp's llm_tokenizer_spm_session.
struct Symbol {
  int prev;
  int next;
  const char* text;
  size_t n;
};

struct SpmBigram {
  int left;
  int right;
  float score;
  size_t size;
};

// Highest score on top; equal scores: the leftmost pair first.
struct SpmBigramOrder {
  bool operator()(const SpmBigram& l, const SpmBigram& r) const {
    return l.score < r.score || (l.score == r.score && l.left > r.left);
  }
};

std::vector<Symbol> SplitChars(const std::string& s) {
  std::vector<Symbol> symbols;
  symbols.reserve(s.size());
  for (size_t offs = 0; offs < s.size();) {
    Symbol sym;
    sym.text = s.data() + offs;
    sym.n = std::min(Utf8Len(s[offs]), s.size() - offs);
    offs += sym.n;
    sym.prev = static_cast<int>(symbols.size()) - 1;
    sym.next = offs == s.size() ? -1 : static_cast<int>(symbols.size()) + 1;
    symbols.push_back(sym);
  }
  return symbols;
}

}  // namespace

Status Tokenizer::Impl::EncodeSpm(std::string_view fragment, bool space_prefix, std::vector<int32_t>* out) const {
  std::string s;
  if (space_prefix) s = " ";
  s.append(fragment);
  ReplaceAll(s, " ", kSpaceMarker);

  std::vector<Symbol> symbols = SplitChars(s);
  std::priority_queue<SpmBigram, std::vector<SpmBigram>, SpmBigramOrder> queue;
  auto try_add = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const std::string_view merged(symbols[left].text, symbols[left].n + symbols[right].n);
    const int32_t id = Lookup(merged);
    if (id == kNoToken) return;
    queue.push(SpmBigram{left, right, score[static_cast<size_t>(id)], merged.size()});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const SpmBigram b = queue.top();
    queue.pop();
    Symbol& left = symbols[b.left];
    Symbol& right = symbols[b.right];
    // Stale: one side was merged away since this pair was queued.
    if (left.n == 0 || right.n == 0 || left.n + right.n != b.size) continue;
    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = b.left;
    try_add(left.prev, b.left);
    try_add(b.left, left.next);
  }

  // llama.cpp's resegment() also consults a reverse-merge map, but its keys
  // are always token texts and it is only consulted for texts that are not
  // tokens, so that lookup never hits: a symbol is a token or becomes bytes.
  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    const Symbol& sym = symbols[i];
    const int32_t id = Lookup(std::string_view(sym.text, sym.n));
    if (id != kNoToken) {
      out->push_back(id);
      continue;
    }
    for (size_t j = 0; j < sym.n; ++j) {
      const uint8_t byte = static_cast<uint8_t>(sym.text[j]);
      const int32_t bt = byte_token[byte];
      // FromGguf maps every byte to a byte token or <unk> (whose id defaults
      // to 0 as in llama.cpp), so this is a guard, not an expected path.
      if (bt == kNoToken) {
        return Status::Error("tokenizer: byte 0x" + Hex2(byte) +
                             " has no token and the vocab has no byte fallback or unknown token");
      }
      out->push_back(bt);
    }
  }
  return Status::Ok();
}

// ---- byte-level BPE ----

namespace {

struct BpeBigram {
  int left;
  int right;
  int32_t rank;
  size_t size;
};

// Lowest rank on top; equal ranks: the leftmost pair first.
struct BpeBigramOrder {
  bool operator()(const BpeBigram& l, const BpeBigram& r) const {
    return l.rank > r.rank || (l.rank == r.rank && l.left > r.left);
  }
};

}  // namespace

// llama.cpp's llm_tokenizer_bpe_session::tokenize for one word (already in
// the byte-level alphabet).
void Tokenizer::Impl::MergeWord(const std::string& word, std::vector<int32_t>* out) const {
  if (pre.ignore_merges) {
    if (const int32_t id = Lookup(word); id != kNoToken) {
      out->push_back(id);
      return;
    }
  }
  std::vector<Symbol> symbols = SplitChars(word);
  std::priority_queue<BpeBigram, std::vector<BpeBigram>, BpeBigramOrder> queue;
  auto try_add = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const MergeView key(std::string_view(symbols[left].text, symbols[left].n),
                        std::string_view(symbols[right].text, symbols[right].n));
    auto it = ranks.find(key);
    if (it == ranks.end()) return;
    queue.push(BpeBigram{left, right, it->second, symbols[left].n + symbols[right].n});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const BpeBigram b = queue.top();
    queue.pop();
    Symbol& left = symbols[b.left];
    Symbol& right = symbols[b.right];
    // Stale (llama.cpp compares the texts; symbols only grow to the right or
    // vanish, so equal sizes of two live neighbours mean equal texts).
    if (left.n == 0 || right.n == 0 || left.next != b.right || left.n + right.n != b.size) continue;
    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = b.left;
    try_add(left.prev, b.left);
    try_add(b.left, left.next);
  }

  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    const Symbol& sym = symbols[i];
    const int32_t id = Lookup(std::string_view(sym.text, sym.n));
    if (id != kNoToken) {
      out->push_back(id);
      continue;
    }
    // As llama.cpp: each byte of the symbol as a one-byte token, if the vocab
    // has one (with every byte-level character a token, this never happens).
    for (size_t j = 0; j < sym.n; ++j) {
      const int32_t bt = Lookup(std::string_view(sym.text + j, 1));
      if (bt != kNoToken) out->push_back(bt);
    }
  }
}

void Tokenizer::Impl::EncodeBpe(std::string_view fragment, std::vector<int32_t>* out) const {
  const std::vector<uint32_t> cps = unicode::DecodeUtf8(fragment);
  const std::vector<size_t> words = PreTokenize(pre.kind, cps);
  std::string utf8, word;
  size_t start = 0;
  for (size_t len : words) {
    utf8.clear();
    for (size_t i = start; i < start + len; ++i) unicode::AppendUtf8(cps[i], &utf8);
    start += len;
    word.clear();
    for (char c : utf8) word.append(unicode::ByteToUtf8(static_cast<uint8_t>(c)));
    MergeWord(word, out);
  }
}

// ---- loading ----

namespace {

// The bytes a BPE token's byte-level text stands for (llama.cpp's
// llama_decode_text, including its marker for characters outside the alphabet).
std::string DecodeByteLevel(std::string_view t) {
  std::string out;
  for (uint32_t cp : unicode::DecodeUtf8(t)) {
    const int b = unicode::CodepointToByte(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
      continue;
    }
    std::string utf8;
    unicode::AppendUtf8(cp, &utf8);
    out += "[UNK_BYTE_0x";
    for (char c : utf8) out += Hex2(static_cast<uint8_t>(c));
    out += std::string(t) + "]";
  }
  return out;
}

}  // namespace

StatusOr<Tokenizer> Tokenizer::FromGguf(const GgufFile& gguf) {
  std::string_view model;
  RETURN_IF_ERROR(gguf.GetString("tokenizer.ggml.model", &model, true));
  auto impl = std::make_shared<Impl>();
  if (model == "gpt2") {
    impl->bpe = true;
  } else if (model != "llama") {
    return Status::Error("tokenizer.ggml.model '" + std::string(model.substr(0, 32)) +
                         "' is not supported (only SentencePiece 'llama' and byte-level BPE 'gpt2')");
  }
  if (impl->bpe) {
    const GgufValue* pre = gguf.Find("tokenizer.ggml.pre");
    if (pre == nullptr) {
      return Status::Error(
          "tokenizer: BPE vocab without tokenizer.ggml.pre; refusing to guess the pre-tokenizer (supported: " +
          SupportedPreTokenizers() + ")");
    }
    std::string_view name;
    RETURN_IF_ERROR(gguf.GetString("tokenizer.ggml.pre", &name, true).Context("tokenizer"));
    const std::optional<PreTokenizerInfo> info = LookupPreTokenizer(name);
    if (!info) {
      return Status::Error("tokenizer: pre-tokenizer '" + std::string(name.substr(0, 64)) +
                           "' (tokenizer.ggml.pre) is not supported (supported: " + SupportedPreTokenizers() + ")");
    }
    impl->pre = *info;
    impl->pre_name = std::string(name);
  }

  const GgufValue* tokens = gguf.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr) return Status::Error("tokenizer: required key 'tokenizer.ggml.tokens' is missing");
  if (tokens->type != GgufValueType::kArray || tokens->elem_type != GgufValueType::kString) {
    return Status::Error("tokenizer: tokenizer.ggml.tokens must be an array of strings");
  }
  const uint64_t n = tokens->count;
  if (n == 0 || n > kMaxTokens || tokens->strings.size() != n) {
    return Status::Error("tokenizer: tokenizer.ggml.tokens has " + std::to_string(n) + " entries, expected 1.." +
                         std::to_string(kMaxTokens));
  }
  const GgufValue* scores = gguf.Find("tokenizer.ggml.scores");
  if (scores != nullptr && (scores->type != GgufValueType::kArray || scores->elem_type != GgufValueType::kF32 ||
                            scores->count != n)) {
    return Status::Error("tokenizer: tokenizer.ggml.scores must be an array of " + std::to_string(n) + " f32");
  }
  const GgufValue* types = gguf.Find("tokenizer.ggml.token_type");
  if (types != nullptr && (types->type != GgufValueType::kArray || types->elem_type != GgufValueType::kI32 ||
                           types->count != n)) {
    return Status::Error("tokenizer: tokenizer.ggml.token_type must be an array of " + std::to_string(n) + " i32");
  }

  impl->text.reserve(n);
  impl->score.reserve(n);
  impl->type.reserve(n);
  impl->piece.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    std::string_view t = tokens->strings[i];
    if (t.size() > kMaxTokenBytes) {
      return Status::Error("tokenizer: token " + std::to_string(i) + " is " + std::to_string(t.size()) +
                           " bytes long (limit " + std::to_string(kMaxTokenBytes) + ")");
    }
    // As llama.cpp: an empty token text would be unmatchable and ambiguous.
    impl->text.push_back(t.empty() ? "[EMPTY_" + std::to_string(i) + "]" : std::string(t));
    impl->score.push_back(scores != nullptr ? GgufFile::ArrayFloat(*scores, i) : 0.0f);
    const int64_t type = types != nullptr ? GgufFile::ArrayInt(*types, i) : int64_t{kNormal};
    if (type < kUndefined || type > kByte) {
      return Status::Error("tokenizer: token " + std::to_string(i) + " has unknown token type " + std::to_string(type));
    }
    impl->type.push_back(static_cast<int32_t>(type));
  }
  impl->strip.assign(n, 0);

  if (impl->bpe) {
    const GgufValue* merges = gguf.Find("tokenizer.ggml.merges");
    if (merges == nullptr) return Status::Error("tokenizer: BPE vocab without tokenizer.ggml.merges");
    if (merges->type != GgufValueType::kArray || merges->elem_type != GgufValueType::kString) {
      return Status::Error("tokenizer: tokenizer.ggml.merges must be an array of strings");
    }
    if (merges->count > kMaxMerges || merges->strings.size() != merges->count) {
      return Status::Error("tokenizer: tokenizer.ggml.merges has " + std::to_string(merges->count) +
                           " entries (limit " + std::to_string(kMaxMerges) + ")");
    }
    impl->ranks.reserve(static_cast<size_t>(merges->count));
    for (uint64_t i = 0; i < merges->count; ++i) {
      const std::string_view m = merges->strings[i];
      if (m.size() > 2 * kMaxTokenBytes + 1) {
        return Status::Error("tokenizer: merge " + std::to_string(i) + " is " + std::to_string(m.size()) +
                             " bytes long (limit " + std::to_string(2 * kMaxTokenBytes + 1) + ")");
      }
      // As llama.cpp: split at the first space after the first byte; the
      // first occurrence of a pair keeps its rank. A merge without a space
      // could never apply.
      const size_t space = m.size() > 1 ? m.find(' ', 1) : std::string_view::npos;
      if (space == std::string_view::npos) continue;
      impl->ranks.emplace(MergeKey{std::string(m.substr(0, space)), std::string(m.substr(space + 1))},
                          static_cast<int32_t>(i));
    }
  }

  impl->byte_token.fill(kNoToken);
  for (uint64_t i = 0; i < n; ++i) {
    const int32_t id = static_cast<int32_t>(i);
    const std::string& t = impl->text[i];
    impl->to_id[t] = id;  // a later duplicate wins
    std::string p;
    switch (impl->type[i]) {
      case kNormal:
        if (impl->bpe) {
          p = DecodeByteLevel(t);
        } else {
          p = t;
          ReplaceAll(p, kSpaceMarker, " ");
        }
        break;
      case kUserDefined:
        p = t;
        break;
      case kByte: {
        const int b = ParseByteToken(t);
        if (b < 0) return Status::Error("tokenizer: byte token " + std::to_string(i) + " is not of the form <0xXX>");
        p = std::string(1, static_cast<char>(b));
        break;
      }
      default:  // control, unknown, unused, undefined print as nothing
        break;
    }
    impl->piece.push_back(std::move(p));
    if (impl->type[i] == kControl || impl->type[i] == kUserDefined || impl->type[i] == kUnknown) {
      impl->special.push_back(id);
    }
  }
  // Longest first; equal lengths by id, so the order never depends on the sort.
  std::stable_sort(impl->special.begin(), impl->special.end(), [&](int32_t a, int32_t b) {
    return impl->text[static_cast<size_t>(a)].size() > impl->text[static_cast<size_t>(b)].size();
  });

  if (!impl->bpe) {
    // Byte fallback as llama.cpp's byte_to_token: "<0xXX>", else the byte
    // itself as a one-character token, else (where llama.cpp would throw) <unk>.
    static const char kHex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      const char name[6] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
      int32_t id = impl->Lookup(std::string_view(name, 6));
      if (id == kNoToken) id = impl->Lookup(std::string_view(std::string(1, static_cast<char>(b))));
      impl->byte_token[static_cast<size_t>(b)] = id;
    }
  }

  // Special ids: llama.cpp's defaults per tokenizer model, overridden by
  // valid metadata; an out-of-range id (e.g. 0xFFFFFFFF for "none") keeps the
  // default, as there.
  auto special = [&](const char* key, int32_t def, int32_t* out) -> Status {
    *out = def >= 0 && def < static_cast<int64_t>(n) ? def : kNoToken;
    const GgufValue* v = gguf.Find(key);
    if (v == nullptr) return Status::Ok();
    uint32_t id = 0;
    Status s = gguf.GetUint32(key, &id, true);
    if (!s.ok()) {
      if (v->type == GgufValueType::kI32 || v->type == GgufValueType::kI64) return Status::Ok();  // negative = none
      return s.Context("tokenizer");
    }
    if (id < n) *out = static_cast<int32_t>(id);
    return Status::Ok();
  };
  int32_t eot = kNoToken, eom = kNoToken;
  RETURN_IF_ERROR(special("tokenizer.ggml.bos_token_id", impl->bpe ? 11 : 1, &impl->bos));
  RETURN_IF_ERROR(special("tokenizer.ggml.eos_token_id", impl->bpe ? 11 : 2, &impl->eos));
  RETURN_IF_ERROR(special("tokenizer.ggml.unknown_token_id", impl->bpe ? kNoToken : 0, &impl->unk));
  RETURN_IF_ERROR(special("tokenizer.ggml.eot_token_id", kNoToken, &eot));
  RETURN_IF_ERROR(special("tokenizer.ggml.eom_token_id", kNoToken, &eom));
  for (int32_t id : {impl->eos, eot, eom}) {
    if (id != kNoToken) impl->eog.push_back(id);
  }
  for (std::string_view t : kEndOfGenerationTexts) {
    if (const int32_t id = impl->Lookup(t); id != kNoToken) impl->eog.push_back(id);
  }
  std::sort(impl->eog.begin(), impl->eog.end());
  impl->eog.erase(std::unique(impl->eog.begin(), impl->eog.end()), impl->eog.end());
  if (!impl->bpe) {
    for (int b = 0; b < 256; ++b) {
      if (impl->byte_token[static_cast<size_t>(b)] == kNoToken) impl->byte_token[static_cast<size_t>(b)] = impl->unk;
    }
  }

  impl->add_bos = impl->bpe ? impl->pre.add_bos : true;
  impl->add_space_prefix = !impl->bpe;
  RETURN_IF_ERROR(gguf.GetBool("tokenizer.ggml.add_bos_token", &impl->add_bos, false).Context("tokenizer"));
  RETURN_IF_ERROR(gguf.GetBool("tokenizer.ggml.add_space_prefix", &impl->add_space_prefix, false).Context("tokenizer"));
  if (impl->add_bos && impl->bos == kNoToken) {
    return Status::Error("tokenizer: tokenizer.ggml.add_bos_token is true, but there is no valid bos_token_id");
  }

  // Per-token strip attributes, set by model name as llama.cpp does: Phi-3's
  // special tokens (and </s>) swallow the whitespace after them, except
  // <unk>, <s> and <|endoftext|>.
  std::string_view name;
  RETURN_IF_ERROR(gguf.GetString("general.name", &name, false).Context("tokenizer"));
  std::string lname(name.substr(0, 256));
  for (char& c : lname) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lname.find("phi-3") != std::string::npos || lname.find("phi3") != std::string::npos) {
    for (int32_t id : impl->special) impl->strip[static_cast<size_t>(id)] |= kRstrip;
    if (const int32_t id = impl->Lookup("</s>"); id != kNoToken) impl->strip[static_cast<size_t>(id)] |= kRstrip;
    for (std::string_view t : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (const int32_t id = impl->Lookup(t); id != kNoToken) impl->strip[static_cast<size_t>(id)] &= static_cast<uint8_t>(~kRstrip);
    }
  }

  Tokenizer tok;
  tok.impl_ = std::move(impl);
  return tok;
}

int64_t Tokenizer::n_tokens() const { return impl_ ? static_cast<int64_t>(impl_->text.size()) : 0; }
int32_t Tokenizer::bos() const { return impl_->bos; }
int32_t Tokenizer::eos() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }

std::string Tokenizer::Describe() const {
  if (!impl_) return "none";
  if (!impl_->bpe) return "SentencePiece";
  return "byte-level BPE (pre-tokenizer '" + impl_->pre_name + "')";
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return id != kNoToken && std::binary_search(impl_->eog.begin(), impl_->eog.end(), id);
}

int32_t Tokenizer::Find(std::string_view text) const { return impl_->Lookup(text); }

std::string_view Tokenizer::Piece(int32_t id) const { return impl_->piece[static_cast<size_t>(id)]; }
std::string_view Tokenizer::Text(int32_t id) const { return impl_->text[static_cast<size_t>(id)]; }

StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_bos,
                                                 std::span<const SpecialSpan> special) const {
  if (text.size() > kMaxEncodeBytes) {
    return Status::Error("tokenizer: text of " + std::to_string(text.size()) + " bytes exceeds the limit of " +
                         std::to_string(kMaxEncodeBytes));
  }
  const Impl& im = *impl_;
  std::vector<int32_t> out;
  if (add_bos && im.bos != kNoToken) out.push_back(im.bos);
  if (text.empty()) return out;

  bool prev_special = true;  // SentencePiece: the first fragment gets the space prefix
  for (const Impl::Fragment& f : im.Partition(text, special)) {
    if (f.token != kNoToken) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    const std::string_view fragment = text.substr(f.offset, f.length);
    if (im.bpe) {
      im.EncodeBpe(fragment, &out);
    } else {
      RETURN_IF_ERROR(im.EncodeSpm(fragment, im.add_space_prefix && prev_special, &out));
    }
    prev_special = false;
  }
  return out;
}

namespace {

// llama.cpp's clean_up_tokenization_spaces passes of detokenize(), ported
// as they are (in place, each pass keeping the first byte).
std::string CleanSpaces(std::string t) {
  size_t total = t.size();
  {  // " ?", " !", " .", " ,": drop the space
    const size_t n = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {
      const char x = t[i];
      if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
      t[total++] = x;
    }
  }
  {  // " ' ": a lone apostrophe between spaces loses both
    const size_t n = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {
      const char x = t[i];
      if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
        --total;
        t[++i] = '\0';
      }
      t[total++] = x;
    }
  }
  {  // " 's", " 'm", " 're", " 've": drop the space
    const size_t n = total;
    total = total ? 1 : 0;
    for (size_t i = 1; i < n; ++i) {
      const char x = t[i];
      if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
        const char x1 = t[i + 1];
        if (x1 == 's' || x1 == 'm') {
          --total;
        } else if (x1 != 't' && x1 != 'd' && i + 2 < n) {
          const char x2 = t[i + 2];
          if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
        }
      }
      t[total++] = x;
    }
  }
  t.resize(total);
  return t;
}

}  // namespace

std::string Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::string out;
  bool strip_space = impl_->add_space_prefix;
  size_t i = 0;
  if (!ids.empty() && ids[0] == impl_->bos) i = 1;
  for (; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= n_tokens()) continue;
    std::string_view p = Piece(ids[i]);
    if (strip_space && !p.empty() && p[0] == ' ') p.remove_prefix(1);
    strip_space = false;
    out.append(p);
  }
  if (impl_->bpe && impl_->pre.clean_spaces) out = CleanSpaces(out);
  return out;
}

std::string Utf8Stream::Push(std::string_view bytes) {
  pending_.append(bytes);
  const size_t n = pending_.size();
  size_t cut = n;
  // Find the last lead byte within the final 3 bytes; hold it back when its
  // sequence is not complete yet.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const uint8_t c = static_cast<uint8_t>(pending_[n - back]);
    if ((c & 0xC0) == 0x80) continue;
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (need > back) cut = n - back;
    break;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string Utf8Stream::Flush() { return std::exchange(pending_, std::string()); }

}  // namespace appliance::runtime
