// libFuzzer target: the GGUF parser on the fuzzed bytes, then the model
// loader (parser, hyperparameters, tensor binding, tokenizer) on the same
// bytes mapped from a memfd exactly as `serve --model-fd` maps the model; a
// model that loads also tokenizes, evaluates a short batch and decodes a
// token, so hostile weights (NaN, infinities, extreme scales) and every
// tensor type's kernels run too. Built with ASan + UBSan (tests/fuzz).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/mapped_file.h"
#include "runtime/context.h"
#include "runtime/gguf.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace {

using appliance::MappedFile;
using appliance::UniqueFd;
using namespace appliance::runtime;

// Evaluating is linear in the weights; skip it for inputs whose model would
// take more than a few milliseconds per token (a fuzzer needs thousands of
// executions per second to get anywhere).
constexpr int64_t kMaxEvalWeights = int64_t{4} << 20;

int64_t WeightCount(const LlamaConfig& c) {
  const int64_t per_layer =
      c.n_embd * (c.q_dim() + c.k_dim() + c.v_dim()) + c.attn_dim() * c.n_embd + 3 * c.n_embd * c.n_ff;
  return c.n_layer * per_layer + c.n_vocab * c.n_embd;
}

void Run(const uint8_t* data, size_t size) {
  // 1. The parser alone, on the fuzzer's own buffer: ASan sees any read past it.
  auto parsed = GgufFile::Parse(std::span<const uint8_t>(data, size));
  if (!parsed.ok()) return;
  // The tokenizer straight from the metadata (vocab-only files never get
  // past the model's tensor checks to it).
  if (auto tok = Tokenizer::FromGguf(*parsed); tok.ok()) {
    if (auto ids = tok->Encode("Hello world \xe2\x96\x81 <|im_end|> 42", true); ids.ok()) (void)tok->Decode(*ids);
  }

  // 2. The loader on a private mapping of the same bytes.
  UniqueFd fd(::memfd_create("fuzz", MFD_CLOEXEC));
  if (!fd.valid() || ::write(fd.get(), data, size) != static_cast<ssize_t>(size)) return;
  auto file = MappedFile::FromFd(fd.get(), "fuzz");
  if (!file.ok()) return;
  auto model = Model::Load(std::move(*file), "fuzz");
  if (!model.ok()) return;
  const Model& m = **model;

  // 3. Tokenize and detokenize.
  auto ids = m.tokenizer().Encode("Once upon a time, <s> caf\xc3\xa9 \xe2\x96\x81 123", true);
  if (ids.ok()) (void)m.tokenizer().Decode(*ids);

  // 4. A batch of three tokens and one decoded token.
  const LlamaConfig& c = m.config();
  if (WeightCount(c) > kMaxEvalWeights) return;
  ContextOptions o;
  o.n_ctx = c.n_ctx_train < 8 ? c.n_ctx_train : 8;
  o.max_batch = 4;
  o.n_threads = 1;
  auto ctx = Context::Create(m, o);
  if (!ctx.ok()) return;
  std::vector<int32_t> tokens;
  for (int32_t i = 0; i < 3 && i < o.n_ctx; ++i) tokens.push_back(static_cast<int32_t>((i * 7 + 1) % c.n_vocab));
  if (!(*ctx)->Eval(tokens, /*all_logits=*/true).ok()) return;
  if ((*ctx)->n_past() < (*ctx)->n_ctx()) {
    const int32_t one[1] = {static_cast<int32_t>(c.n_vocab - 1)};
    (void)(*ctx)->Eval(one, false);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Run(data, size);
  return 0;
}
