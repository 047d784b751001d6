#include "runtime/tokenizer.h"

#include <algorithm>
#include <array>
#include <queue>
#include <unordered_map>

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

constexpr std::string_view kSpaceMarker = "\xe2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK
constexpr size_t kMaxEncodeBytes = 16u << 20;

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

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> text;   // as stored in the vocab
  std::vector<float> score;
  std::vector<int32_t> type;
  std::vector<std::string> piece;  // what each token prints as
  std::unordered_map<std::string_view, int32_t> to_id;  // keys view into `text`, which never changes after load
  std::array<int32_t, 256> byte_token{};
  std::vector<int32_t> user_defined;  // longest text first
  int32_t bos = kNoToken;
  int32_t eos = kNoToken;
  int32_t unk = kNoToken;
  int32_t eot = kNoToken;
  bool add_bos = true;
  bool add_space_prefix = true;

  int32_t Lookup(std::string_view s) const {
    auto it = to_id.find(s);
    return it == to_id.end() ? kNoToken : it->second;
  }

  Status EncodeFragment(std::string_view fragment, bool space_prefix, std::vector<int32_t>* out) const;
};

namespace {

// The SentencePiece merge loop of llama.cpp's llm_tokenizer_spm_session.
struct Symbol {
  int prev;
  int next;
  const char* text;
  size_t n;
};

struct Bigram {
  int left;
  int right;
  float score;
  size_t size;
};

// Highest score on top; equal scores: the leftmost pair first.
struct BigramOrder {
  bool operator()(const Bigram& l, const Bigram& r) const {
    return l.score < r.score || (l.score == r.score && l.left > r.left);
  }
};

}  // namespace

Status Tokenizer::Impl::EncodeFragment(std::string_view fragment, bool space_prefix, std::vector<int32_t>* out) const {
  std::string s;
  if (space_prefix) s = " ";
  s.append(fragment);
  ReplaceAll(s, " ", kSpaceMarker);

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

  std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
  auto try_add = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const std::string_view merged(symbols[left].text, symbols[left].n + symbols[right].n);
    const int32_t id = Lookup(merged);
    if (id == kNoToken) return;
    queue.push(Bigram{left, right, score[static_cast<size_t>(id)], merged.size()});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);

  while (!queue.empty()) {
    const Bigram b = queue.top();
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
        return Status::Error("tokenizer: byte 0x" + std::string(1, "0123456789ABCDEF"[byte >> 4]) +
                             std::string(1, "0123456789ABCDEF"[byte & 15]) +
                             " has no token and the vocab has no byte fallback or unknown token");
      }
      out->push_back(bt);
    }
  }
  return Status::Ok();
}

StatusOr<Tokenizer> Tokenizer::FromGguf(const GgufFile& gguf) {
  std::string_view model;
  RETURN_IF_ERROR(gguf.GetString("tokenizer.ggml.model", &model, true));
  if (model != "llama") {
    return Status::Error("tokenizer.ggml.model '" + std::string(model.substr(0, 32)) +
                         "' is not supported (only the SentencePiece 'llama' tokenizer)");
  }
  auto impl = std::make_shared<Impl>();

  const GgufValue* tokens = gguf.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr) return Status::Error("tokenizer: required key 'tokenizer.ggml.tokens' is missing");
  if (tokens->type != GgufValueType::kArray || tokens->elem_type != GgufValueType::kString) {
    return Status::Error("tokenizer: tokenizer.ggml.tokens must be an array of strings");
  }
  const uint64_t n = tokens->count;
  if (n == 0 || n > kMaxTokens) {
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

  impl->byte_token.fill(kNoToken);
  for (uint64_t i = 0; i < n; ++i) {
    const int32_t id = static_cast<int32_t>(i);
    const std::string& t = impl->text[i];
    impl->to_id[t] = id;  // a later duplicate wins, as in llama.cpp
    std::string p;
    switch (impl->type[i]) {
      case kNormal:
        p = t;
        ReplaceAll(p, kSpaceMarker, " ");
        break;
      case kUserDefined:
        p = t;
        impl->user_defined.push_back(id);
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
  }
  // Byte fallback as llama.cpp's byte_to_token: "<0xXX>", else the byte itself
  // as a one-character token, else (where llama.cpp would throw) <unk>.
  static const char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char name[6] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
    int32_t id = impl->Lookup(std::string_view(name, 6));
    if (id == kNoToken) id = impl->Lookup(std::string_view(std::string(1, static_cast<char>(b))));
    impl->byte_token[static_cast<size_t>(b)] = id;
  }
  std::stable_sort(impl->user_defined.begin(), impl->user_defined.end(), [&](int32_t a, int32_t b) {
    return impl->text[static_cast<size_t>(a)].size() > impl->text[static_cast<size_t>(b)].size();
  });

  // Special ids: llama.cpp's SPM defaults, overridden by valid metadata; an
  // out-of-range id (e.g. 0xFFFFFFFF for "none") keeps the default, as there.
  auto special = [&](const char* key, int32_t def, int32_t* out) -> Status {
    *out = def < static_cast<int64_t>(n) ? def : kNoToken;
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
  RETURN_IF_ERROR(special("tokenizer.ggml.bos_token_id", 1, &impl->bos));
  RETURN_IF_ERROR(special("tokenizer.ggml.eos_token_id", 2, &impl->eos));
  RETURN_IF_ERROR(special("tokenizer.ggml.unknown_token_id", 0, &impl->unk));
  RETURN_IF_ERROR(special("tokenizer.ggml.eot_token_id", kNoToken, &impl->eot));
  if (impl->eot == kNoToken) {
    // Chat models end a turn with one of these (llama.cpp's list for SPM-era models).
    for (const char* t : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<EOT>"}) {
      const int32_t id = impl->Lookup(t);
      if (id != kNoToken && impl->type[static_cast<size_t>(id)] == kControl) {
        impl->eot = id;
        break;
      }
    }
  }
  for (int b = 0; b < 256; ++b) {
    if (impl->byte_token[static_cast<size_t>(b)] == kNoToken) impl->byte_token[static_cast<size_t>(b)] = impl->unk;
  }

  RETURN_IF_ERROR(gguf.GetBool("tokenizer.ggml.add_bos_token", &impl->add_bos, false).Context("tokenizer"));
  RETURN_IF_ERROR(gguf.GetBool("tokenizer.ggml.add_space_prefix", &impl->add_space_prefix, false).Context("tokenizer"));
  if (impl->add_bos && impl->bos == kNoToken) {
    return Status::Error("tokenizer: tokenizer.ggml.add_bos_token is true, but there is no valid bos_token_id");
  }

  Tokenizer tok;
  tok.impl_ = std::move(impl);
  return tok;
}

int64_t Tokenizer::n_tokens() const { return impl_ ? static_cast<int64_t>(impl_->text.size()) : 0; }
int32_t Tokenizer::bos() const { return impl_->bos; }
int32_t Tokenizer::eos() const { return impl_->eos; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  return id != kNoToken && (id == impl_->eos || id == impl_->eot);
}

std::string_view Tokenizer::Piece(int32_t id) const { return impl_->piece[static_cast<size_t>(id)]; }
std::string_view Tokenizer::Text(int32_t id) const { return impl_->text[static_cast<size_t>(id)]; }

StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  if (text.size() > kMaxEncodeBytes) {
    return Status::Error("tokenizer: text of " + std::to_string(text.size()) + " bytes exceeds the limit of " +
                         std::to_string(kMaxEncodeBytes));
  }
  const Impl& im = *impl_;
  std::vector<int32_t> out;
  if (add_bos && im.bos != kNoToken) out.push_back(im.bos);
  if (text.empty()) return out;

  // Fragments: user-defined tokens cut out of the text, longest token first.
  struct Fragment {
    int32_t token;  // kNoToken for raw text
    size_t offset;
    size_t length;
  };
  std::vector<Fragment> fragments = {{kNoToken, 0, text.size()}};
  for (int32_t ud : im.user_defined) {
    const std::string& needle = im.text[static_cast<size_t>(ud)];
    std::vector<Fragment> next;
    for (const Fragment& f : fragments) {
      if (f.token != kNoToken) {
        next.push_back(f);
        continue;
      }
      size_t pos = f.offset;
      const size_t end = f.offset + f.length;
      for (;;) {
        const size_t hit = text.substr(0, end).find(needle, pos);
        if (hit == std::string_view::npos) break;
        if (hit > pos) next.push_back({kNoToken, pos, hit - pos});
        next.push_back({ud, hit, needle.size()});
        pos = hit + needle.size();
      }
      if (pos < end) next.push_back({kNoToken, pos, end - pos});
    }
    fragments = std::move(next);
  }

  bool prev_special = true;  // the first fragment gets the space prefix
  for (const Fragment& f : fragments) {
    if (f.token != kNoToken) {
      out.push_back(f.token);
      prev_special = true;
      continue;
    }
    RETURN_IF_ERROR(im.EncodeFragment(text.substr(f.offset, f.length), im.add_space_prefix && prev_special, &out));
    prev_special = false;
  }
  return out;
}

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
