// Tokenizers built from GGUF metadata, behaving like llama.cpp's llama_vocab:
//
// SentencePiece ("llama" tokenizer.ggml.model, llm_tokenizer_spm):
//   - each raw fragment (see special tokens below) gets a leading space when
//     add_space_prefix and it starts the text or follows a special token;
//     spaces become U+2581;
//   - the fragment is split into UTF-8 characters and adjacent symbols are
//     merged, best vocab score first (ties: leftmost), while the merge is a token;
//   - symbols that are not tokens fall back to <0xXX> byte tokens.
//
// Byte-level BPE ("gpt2" tokenizer.ggml.model, llm_tokenizer_bpe):
//   - each raw fragment is split into words by the pre-tokenizer that
//     tokenizer.ggml.pre names (runtime/pretokenizer.h; an unknown or missing
//     name is refused), each word's UTF-8 bytes are mapped to GPT-2's
//     byte-level alphabet, and adjacent symbols are merged by the rank of the
//     pair in tokenizer.ggml.merges (lowest first; ties: leftmost);
//   - a final symbol that is not a token is emitted byte by byte (as llama.cpp:
//     single-byte tokens, bytes without one are dropped).
//
// Special tokens (both): control, user-defined and unknown tokens are cut out
// of the text before anything else, longest first (llama.cpp's
// tokenizer_st_partition). User-defined tokens are always matched; control
// and unknown tokens only inside the byte ranges the caller marks as trusted
// (a chat template's own markup), never in client text, so a prompt cannot
// inject <|im_end|> or </s>. Per-token lstrip/rstrip (llama.cpp sets rstrip on
// the special tokens of Phi-3 models) drop the whitespace beside a match.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "runtime/gguf.h"

namespace appliance::runtime {

// A byte range [begin, end) of a text in which control tokens are recognised.
struct SpecialSpan {
  size_t begin = 0;
  size_t end = 0;
};

class Tokenizer {
 public:
  static constexpr int32_t kNoToken = -1;
  static constexpr uint64_t kMaxTokens = 1u << 22;
  static constexpr uint64_t kMaxMerges = 1u << 22;
  static constexpr size_t kMaxTokenBytes = 1024;
  static constexpr size_t kMaxEncodeBytes = 16u << 20;

  Tokenizer() = default;  // empty; only useful as a target for assignment
  static StatusOr<Tokenizer> FromGguf(const GgufFile& gguf);

  int64_t n_tokens() const;
  int32_t bos() const;
  int32_t eos() const;
  bool add_bos() const;
  // "SentencePiece" or "byte-level BPE (pre-tokenizer 'qwen2')", for logs.
  std::string Describe() const;
  // True for tokens that end generation: EOS, EOT/EOM ids from the metadata,
  // and the end-of-turn tokens llama.cpp recognises by text (<|im_end|>,
  // <|eot_id|>, <|end|>, <|endoftext|>, <end_of_turn>, ...).
  bool IsEndOfGeneration(int32_t id) const;
  // The id of the token whose vocab text is exactly `text`, or kNoToken.
  int32_t Find(std::string_view text) const;

  // Token ids of `text`, with BOS first when `add_bos` (and the model has one).
  // Control tokens are recognised only inside `special` ranges.
  StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_bos,
                                        std::span<const SpecialSpan> special = {}) const;

  // The bytes token `id` stands for when generated text is printed: U+2581 as
  // space (SentencePiece), the byte-level alphabet decoded (BPE), <0xXX> as
  // that byte, user-defined tokens as their text, control and unknown tokens
  // as nothing (llama.cpp's token_to_piece with special = false). id must be
  // in range.
  std::string_view Piece(int32_t id) const;
  // The token's text as stored in the vocab (for display, e.g. "▁Once").
  std::string_view Text(int32_t id) const;

  // Text of a whole sequence: pieces concatenated, a BOS in front skipped, the
  // leading space that add_space_prefix put before the first word removed, and
  // for BPE vocabs with clean_up_tokenization_spaces llama.cpp's clean-up of
  // spaces before punctuation and contractions.
  std::string Decode(std::span<const int32_t> ids) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;  // immutable after load, so sharing is safe
};

// Streams UTF-8: Push() returns the bytes that complete whole characters so
// far and holds back an incomplete trailing sequence, so the text of every
// token event is valid UTF-8 and the events concatenate to the full text.
// Invalid bytes are passed through (JSON output replaces them).
class Utf8Stream {
 public:
  std::string Push(std::string_view bytes);
  std::string Flush();  // whatever is held back (an incomplete sequence)

 private:
  std::string pending_;
};

}  // namespace appliance::runtime
