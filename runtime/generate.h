// Prompt -> tokens -> prefill -> sample/decode loop, shared by the CLI's
// `generate` and the job server; chat messages are rendered by the model's
// chat template first.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "runtime/chat_template.h"
#include "runtime/context.h"
#include "runtime/sampler.h"

namespace appliance::runtime {

struct GenerateParams {
  int64_t max_tokens = 0;
  SamplerParams sampling;  // repeat_last_n -1 means the whole context
};

struct GenerateResult {
  std::vector<int32_t> prompt_tokens;  // BOS included when the model adds it
  std::vector<int32_t> tokens;         // generated, without a final end-of-generation token
  std::string text;                    // bytes of the generated tokens
  bool stopped_by_eos = false;         // EOS or end of turn; else max_tokens was reached
  double prompt_ms = 0;                // tokenizing + prefill + first logits
  double generate_ms = 0;              // sampling + decoding after that
  double tokens_per_s() const;         // tokens.size() / generate time
};

// Called once per generated token with its id and the text it completes:
// whole UTF-8 characters only, so it may be empty while a character spans
// several byte tokens; the texts concatenate to result.text (less an
// incomplete sequence at the very end).
// Returning an error stops generation and Generate() returns that error.
using TokenCallback = std::function<Status(int32_t token, std::string_view text)>;

// Errors: the prompt does not tokenize, or prompt + max_tokens exceeds the
// context size (checked before any compute). Control tokens typed into the
// prompt are text, never control tokens.
StatusOr<GenerateResult> Generate(Context& ctx, std::string_view prompt, const GenerateParams& params,
                                  const TokenCallback& on_token);

// Chat: `messages` rendered by `tmpl` (control tokens recognised only in the
// template's markup), tokenized with BOS when the model adds it; generation
// also stops at the template's end-of-turn token.
StatusOr<GenerateResult> GenerateChat(Context& ctx, const ChatTemplate& tmpl, std::span<const ChatMessage> messages,
                                      const GenerateParams& params, const TokenCallback& on_token);

}  // namespace appliance::runtime
