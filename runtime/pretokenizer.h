// Pre-tokenizers of byte-level BPE vocabularies (tokenizer.ggml.pre): split a
// text into the words that BPE merges are applied to, exactly as llama.cpp's
// unicode_regex_split does for the same `pre` name. The regexes are
// implemented by hand-written matchers (no std::regex); each one's regex is
// quoted above its code in pretokenizer.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace appliance::runtime {

enum class PreTokenizer {
  kDefault,      // llama.cpp's fallback sequence: punctuation runs, the GPT-2 regex, numbers, 3-digit groups
  kGpt2,         // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,       // case-insensitive contractions, letters, \p{N}{1,3}, punctuation, newlines, spaces
  kQwen2,        // as kLlama3 with single digits (\p{N})
  kDeepseekLlm,  // DeepSeek LLM's sequence of six isolating regexes
};

// How a `tokenizer.ggml.pre` name behaves, from llama.cpp's vocab loader.
struct PreTokenizerInfo {
  PreTokenizer kind = PreTokenizer::kDefault;
  bool add_bos = false;        // default of tokenizer.ggml.add_bos_token
  bool ignore_merges = false;  // a word that is itself a token is not merged
  bool clean_spaces = true;    // decoding drops spaces before punctuation (clean_up_tokenization_spaces)
};

// The supported names, or nullopt for any other (an unknown pre-tokenizer is
// refused, never approximated).
std::optional<PreTokenizerInfo> LookupPreTokenizer(std::string_view name);
// "default, gpt-2, ..." for error messages.
std::string SupportedPreTokenizers();

// Splits code points into consecutive non-empty words; returns their lengths
// (in code points), which sum to cps.size().
std::vector<size_t> PreTokenize(PreTokenizer kind, std::span<const uint32_t> cps);

}  // namespace appliance::runtime
