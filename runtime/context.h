// Inference state for one sequence: the F32 KV cache, scratch buffers, the
// thread pool, and the forward pass of every architecture Model loads
// (llama, qwen2, qwen3: see model.h for what differs).
//
// Eval() appends tokens at positions n_past()..: n > 1 tokens go through the
// batched path (one cblas_sgemm per weight panel, attention as per-head GEMMs),
// a single token through the decode path (threaded matrix-vector products).
// Everything the decode path touches is allocated in Create(); decoding a
// token allocates nothing.
//
// Numerics follow llama.cpp's CPU backend: RMSNorm with a double sum, RoPE
// angles by repeated multiplication in float, activations converted to each
// weight's vec_dot_type before the product (8-bit blocks for the quantized
// types: integer dot products when decoding; when batching, the quantized
// activations in float against a weight panel dequantized to F32, one sgemm),
// softmax with a double sum.
// Results do not depend on the thread count: work is split into fixed chunks
// whose arithmetic is the same whichever thread runs them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/status.h"
#include "runtime/matmul.h"
#include "runtime/model.h"
#include "runtime/thread_pool.h"

namespace appliance::runtime {

struct ContextOptions {
  int64_t n_ctx = 0;        // KV cache positions; 0: min(model context, kDefaultMaxCtx)
  int n_threads = 1;
  int64_t max_batch = 512;  // tokens per batched forward (longer inputs are split)
};

class Context {
 public:
  static constexpr int64_t kDefaultMaxCtx = 4096;
  static constexpr int64_t kMaxThreads = 256;
  // Bound on the activation scratch (not the KV cache): 2 GiB.
  static constexpr uint64_t kMaxScratchBytes = uint64_t{1} << 31;

  static StatusOr<std::unique_ptr<Context>> Create(const Model& model, const ContextOptions& options);
  ~Context();

  const Model& model() const { return model_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_past() const { return n_past_; }
  int n_threads() const { return pool_.size(); }

  // Forgets the sequence (the KV cache is overwritten from position 0).
  void Reset() { n_past_ = 0; }

  // Runs `tokens` (ids < n_vocab, n_past() + size <= n_ctx()) as the next
  // positions. With all_logits the logits of every token are kept (teacher
  // forcing); otherwise only those of the last token.
  Status Eval(std::span<const int32_t> tokens, bool all_logits);

  // Logits of the i-th token of the last Eval (only the last token unless it
  // was called with all_logits).
  std::span<const float> Logits(int64_t i) const;
  std::span<const float> LastLogits() const;

 private:
  Context(const Model& model, int64_t n_ctx, int n_threads, int64_t max_batch);
  Status Allocate();

  // One batch of n <= max_batch tokens at positions n_past_... .
  void Forward(const int32_t* tokens, int64_t n, bool all_logits, float* logits);
  // y[n, W.rows] = x[n, W.cols] * W^T (MatMulEngine::Run).
  void MatMul(const Matrix& w, const float* x, int64_t n, float* y);
  void Attention(int64_t layer, int64_t n, int64_t pos0);
  // out[r] = RMSNorm(x[r]) * weight for `rows` rows of `dim` floats (in place allowed).
  void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float* out) const;
  // Rotates n tokens x n_heads heads of head_dim_k floats; uses rope_cache_ rows 0..n-1.
  void Rope(float* x, int64_t n, int64_t n_heads) const;
  // y[i][j] += bias[j] for n rows of dim (no-op when bias is null).
  static void AddBias(float* y, const float* bias, int64_t n, int64_t dim);

  const Model& model_;
  const LlamaConfig& cfg_;
  const int64_t n_ctx_;
  const int64_t max_batch_;
  int64_t n_past_ = 0;
  ThreadPool pool_;

  // KV cache: [n_layer][n_ctx][k_dim] and [n_layer][n_ctx][v_dim].
  std::vector<float> k_cache_, v_cache_;
  // Activations for up to max_batch_ tokens, row-major [token][feature]:
  // x_, xn_ [n_embd], q_ [q_dim], att_ [attn_dim], gate_, up_ [n_ff].
  std::vector<float> x_, xn_, q_, att_, gate_, up_;
  std::vector<float> rope_cache_;  // [max_batch][n_rot]: cos, sin pairs
  MatMulEngine matmul_;
  // Per thread: attention scores.
  std::vector<std::vector<float>> scores_;
  std::vector<float> logits_;  // [n_logit_rows][n_vocab]
  int64_t n_logit_rows_ = 0;
};

}  // namespace appliance::runtime
