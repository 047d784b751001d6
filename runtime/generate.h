// Prompt -> tokens -> prefill -> sample/decode loop, shared by the CLI's
// `generate` and the job server; chat messages are rendered by the model's
// chat template first.
#pragma once

#include <chrono>
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
#include "runtime/tokenizer.h"

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

// One generation between forward passes: the prompt's tokens, the sampler,
// the output so far and the stop rules. Generate() drives one over a whole
// Context; the server drives many, one per sequence, batching their forwards.
class Generation {
 public:
  // Tokenizes the prompt (control tokens typed into it stay text) / renders
  // the messages with `tmpl` and tokenizes them (control tokens recognised
  // only in the template's markup; generation also stops at its end-of-turn
  // token), BOS first when the model adds it. Errors: the prompt does not
  // tokenize, or prompt + max_tokens exceeds n_ctx.
  static StatusOr<Generation> Start(const Model& model, int64_t n_ctx, std::string_view prompt,
                                    const GenerateParams& params);
  static StatusOr<Generation> StartChat(const Model& model, int64_t n_ctx, const ChatTemplate& tmpl,
                                        std::span<const ChatMessage> messages, const GenerateParams& params);

  const std::vector<int32_t>& prompt_tokens() const { return result_.prompt_tokens; }

  // Samples the next token from the logits of the last position evaluated
  // (the prompt's last token first), records it and reports it to on_token
  // (may be null). Returns whether generation goes on; if so next_token() is
  // the token to evaluate next. An error from on_token is returned as is.
  StatusOr<bool> Next(std::span<const float> logits, const TokenCallback& on_token);
  int32_t next_token() const { return result_.tokens.back(); }

  // The result with its timings; the Generation is spent.
  GenerateResult Finish();

 private:
  using Clock = std::chrono::steady_clock;
  Generation(const Model& model, int64_t n_ctx, const GenerateParams& params, int32_t stop, GenerateResult result,
             Clock::time_point t0);

  const Tokenizer* tok_;
  int64_t max_tokens_;
  int32_t stop_;  // an extra end-of-generation token, or Tokenizer::kNoToken
  Sampler sampler_;
  Utf8Stream utf8_;
  GenerateResult result_;
  Clock::time_point t0_;       // tokenizing started
  Clock::time_point t1_;       // the prompt's logits were first sampled
  bool started_ = false;       // Next() has been called
};

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
