// SentencePiece tokenizer ("llama" tokenizer.ggml.model), built from GGUF
// metadata and behaving like llama.cpp's llm_tokenizer_spm:
//   - user-defined tokens in the text are matched first (llama.cpp's special
//     token partition with parse_special = false; control tokens such as <s>
//     typed into a prompt stay plain text, so a prompt cannot inject them);
//   - each remaining fragment gets a leading space when add_space_prefix and it
//     starts the text or follows a user-defined token; spaces become U+2581;
//   - the fragment is split into UTF-8 characters and adjacent symbols are
//     merged, best vocab score first (ties: leftmost), while the merge is a token;
//   - symbols that are not tokens fall back to <0xXX> byte tokens.
// Other tokenizer models (BPE, ...) are refused at load.
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

class Tokenizer {
 public:
  static constexpr int32_t kNoToken = -1;
  static constexpr uint64_t kMaxTokens = 1u << 22;
  static constexpr size_t kMaxTokenBytes = 1024;

  Tokenizer() = default;  // empty; only useful as a target for assignment
  static StatusOr<Tokenizer> FromGguf(const GgufFile& gguf);

  int64_t n_tokens() const;
  int32_t bos() const;
  int32_t eos() const;
  bool add_bos() const;
  // True for tokens that end generation (EOS, and EOT when the model has one).
  bool IsEndOfGeneration(int32_t id) const;

  // Token ids of `text`, with BOS first when `add_bos` (and the model has one).
  StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_bos) const;

  // The bytes token `id` stands for when generated text is printed: U+2581 as
  // space, <0xXX> as that byte, control and unknown tokens as nothing (like
  // llama.cpp's token_to_piece with special = false). id must be in range.
  std::string_view Piece(int32_t id) const;
  // The token's text as stored in the vocab (for display, e.g. "▁Once").
  std::string_view Text(int32_t id) const;

  // Text of a whole sequence: pieces concatenated, the leading space that
  // add_space_prefix put before the first word removed (a BOS in front is
  // skipped first; SentencePiece's own decoding does the same).
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
