#include "runtime/generate.h"

#include <chrono>

namespace appliance::runtime {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The loop after tokenizing: `result` holds the prompt tokens; `t0` is when
// tokenizing started; `stop` is an extra end-of-generation token (or none).
StatusOr<GenerateResult> Run(Context& ctx, GenerateResult result, std::chrono::steady_clock::time_point t0,
                             const GenerateParams& params, int32_t stop, const TokenCallback& on_token) {
  const Tokenizer& tok = ctx.model().tokenizer();
  const int64_t n_prompt = static_cast<int64_t>(result.prompt_tokens.size());
  if (n_prompt == 0) return Status::Error("the prompt is empty (and the model adds no BOS token)");
  if (params.max_tokens < 1) return Status::Error("max_tokens must be at least 1");
  // The last generated token is never fed back, so prompt + max_tokens - 1
  // positions are evaluated; require the simpler bound prompt + max_tokens.
  if (params.max_tokens > ctx.n_ctx() - n_prompt) {
    return Status::Error("prompt (" + std::to_string(n_prompt) + " tokens) + max_tokens (" +
                         std::to_string(params.max_tokens) + ") exceeds the context size " +
                         std::to_string(ctx.n_ctx()));
  }
  SamplerParams sampling = params.sampling;
  if (sampling.repeat_last_n < 0) sampling.repeat_last_n = ctx.n_ctx();
  const int64_t n_vocab = ctx.model().config().n_vocab;
  Sampler sampler(sampling, n_vocab);
  for (int32_t t : result.prompt_tokens) sampler.Accept(t);

  ctx.Reset();
  RETURN_IF_ERROR(ctx.Eval(result.prompt_tokens, /*all_logits=*/false));
  result.prompt_ms = MsSince(t0);

  const auto t1 = std::chrono::steady_clock::now();
  Utf8Stream utf8;
  result.tokens.reserve(static_cast<size_t>(params.max_tokens));
  for (;;) {
    const int32_t next = sampler.Sample(ctx.LastLogits());
    if (tok.IsEndOfGeneration(next) || next == stop) {
      result.stopped_by_eos = true;
      break;
    }
    result.tokens.push_back(next);
    sampler.Accept(next);
    const std::string_view piece = tok.Piece(next);
    result.text.append(piece);
    if (on_token) RETURN_IF_ERROR(on_token(next, utf8.Push(piece)));
    if (static_cast<int64_t>(result.tokens.size()) >= params.max_tokens) break;
    const int32_t one[1] = {next};
    RETURN_IF_ERROR(ctx.Eval(one, /*all_logits=*/false));
  }
  // A UTF-8 sequence still incomplete here is invalid; it stays in
  // result.text only (where JSON output replaces it with U+FFFD).
  result.generate_ms = MsSince(t1);
  return result;
}

}  // namespace

double GenerateResult::tokens_per_s() const {
  return generate_ms > 0 ? static_cast<double>(tokens.size()) * 1000.0 / generate_ms : 0.0;
}

StatusOr<GenerateResult> Generate(Context& ctx, std::string_view prompt, const GenerateParams& params,
                                  const TokenCallback& on_token) {
  const Tokenizer& tok = ctx.model().tokenizer();
  GenerateResult result;
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(result.prompt_tokens, tok.Encode(prompt, tok.add_bos()));
  return Run(ctx, std::move(result), t0, params, Tokenizer::kNoToken, on_token);
}

StatusOr<GenerateResult> GenerateChat(Context& ctx, const ChatTemplate& tmpl, std::span<const ChatMessage> messages,
                                      const GenerateParams& params, const TokenCallback& on_token) {
  const Tokenizer& tok = ctx.model().tokenizer();
  GenerateResult result;
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const RenderedChat chat, tmpl.Render(messages));
  ASSIGN_OR_RETURN(result.prompt_tokens, tok.Encode(chat.text, tok.add_bos(), chat.markup));
  return Run(ctx, std::move(result), t0, params, tok.Find(tmpl.end_of_turn()), on_token);
}

}  // namespace appliance::runtime
