#include "runtime/generate.h"

namespace appliance::runtime {
namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Generate() and GenerateChat() after Start: the prompt, then one token at a
// time on sequence 0.
StatusOr<GenerateResult> Run(Context& ctx, Generation gen, const TokenCallback& on_token) {
  ctx.Reset();
  RETURN_IF_ERROR(ctx.Eval(gen.prompt_tokens(), /*all_logits=*/false));
  for (;;) {
    ASSIGN_OR_RETURN(const bool more, gen.Next(ctx.LastLogits(), on_token));
    if (!more) break;
    const int32_t one[1] = {gen.next_token()};
    RETURN_IF_ERROR(ctx.Eval(one, /*all_logits=*/false));
  }
  return gen.Finish();
}

// Checks that the prompt and max_tokens fit the context.
Status CheckFits(int64_t n_prompt, int64_t n_ctx, const GenerateParams& params) {
  if (n_prompt == 0) return Status::Error("the prompt is empty (and the model adds no BOS token)");
  if (params.max_tokens < 1) return Status::Error("max_tokens must be at least 1");
  // The last generated token is never fed back, so prompt + max_tokens - 1
  // positions are evaluated; require the simpler bound prompt + max_tokens.
  if (params.max_tokens > n_ctx - n_prompt) {
    return Status::Error("prompt (" + std::to_string(n_prompt) + " tokens) + max_tokens (" +
                         std::to_string(params.max_tokens) + ") exceeds the context size " + std::to_string(n_ctx));
  }
  return Status::Ok();
}

SamplerParams ForContext(SamplerParams p, int64_t n_ctx) {
  if (p.repeat_last_n < 0) p.repeat_last_n = n_ctx;
  return p;
}

}  // namespace

double GenerateResult::tokens_per_s() const {
  return generate_ms > 0 ? static_cast<double>(tokens.size()) * 1000.0 / generate_ms : 0.0;
}

Generation::Generation(const Model& model, int64_t n_ctx, const GenerateParams& params, int32_t stop,
                       GenerateResult result, Clock::time_point t0)
    : tok_(&model.tokenizer()),
      max_tokens_(params.max_tokens),
      stop_(stop),
      sampler_(ForContext(params.sampling, n_ctx), model.config().n_vocab),
      result_(std::move(result)),
      t0_(t0) {
  for (int32_t t : result_.prompt_tokens) sampler_.Accept(t);
  result_.tokens.reserve(static_cast<size_t>(max_tokens_));
}

StatusOr<Generation> Generation::Start(const Model& model, int64_t n_ctx, std::string_view prompt,
                                       const GenerateParams& params) {
  const Tokenizer& tok = model.tokenizer();
  const auto t0 = Clock::now();
  GenerateResult result;
  ASSIGN_OR_RETURN(result.prompt_tokens, tok.Encode(prompt, tok.add_bos()));
  RETURN_IF_ERROR(CheckFits(static_cast<int64_t>(result.prompt_tokens.size()), n_ctx, params));
  return Generation(model, n_ctx, params, Tokenizer::kNoToken, std::move(result), t0);
}

StatusOr<Generation> Generation::StartChat(const Model& model, int64_t n_ctx, const ChatTemplate& tmpl,
                                           std::span<const ChatMessage> messages, const GenerateParams& params) {
  const Tokenizer& tok = model.tokenizer();
  const auto t0 = Clock::now();
  GenerateResult result;
  ASSIGN_OR_RETURN(const RenderedChat chat, tmpl.Render(messages));
  ASSIGN_OR_RETURN(result.prompt_tokens, tok.Encode(chat.text, tok.add_bos(), chat.markup));
  RETURN_IF_ERROR(CheckFits(static_cast<int64_t>(result.prompt_tokens.size()), n_ctx, params));
  return Generation(model, n_ctx, params, tok.Find(tmpl.end_of_turn()), std::move(result), t0);
}

StatusOr<bool> Generation::Next(std::span<const float> logits, const TokenCallback& on_token) {
  if (!started_) {
    result_.prompt_ms = MsSince(t0_);
    t1_ = Clock::now();
    started_ = true;
  }
  const int32_t next = sampler_.Sample(logits);
  if (tok_->IsEndOfGeneration(next) || next == stop_) {
    result_.stopped_by_eos = true;
    return false;
  }
  result_.tokens.push_back(next);
  sampler_.Accept(next);
  const std::string_view piece = tok_->Piece(next);
  result_.text.append(piece);
  if (on_token) RETURN_IF_ERROR(on_token(next, utf8_.Push(piece)));
  return static_cast<int64_t>(result_.tokens.size()) < max_tokens_;
}

GenerateResult Generation::Finish() {
  // A UTF-8 sequence still incomplete here is invalid; it stays in
  // result.text only (where JSON output replaces it with U+FFFD).
  result_.generate_ms = started_ ? MsSince(t1_) : 0;
  return std::move(result_);
}

StatusOr<GenerateResult> Generate(Context& ctx, std::string_view prompt, const GenerateParams& params,
                                  const TokenCallback& on_token) {
  ASSIGN_OR_RETURN(Generation gen, Generation::Start(ctx.model(), ctx.n_ctx(), prompt, params));
  return Run(ctx, std::move(gen), on_token);
}

StatusOr<GenerateResult> GenerateChat(Context& ctx, const ChatTemplate& tmpl, std::span<const ChatMessage> messages,
                                      const GenerateParams& params, const TokenCallback& on_token) {
  ASSIGN_OR_RETURN(Generation gen, Generation::StartChat(ctx.model(), ctx.n_ctx(), tmpl, messages, params));
  return Run(ctx, std::move(gen), on_token);
}

}  // namespace appliance::runtime
