// Inference state for n_seq() sequences: one KV cache slot of n_ctx()
// positions per sequence (F32, or F16 at half the memory: kv_type), scratch buffers, the thread pool, and the forward
// pass of every architecture Model loads (llama, qwen2, qwen3: see model.h
// for what differs).
//
// Decode() runs one forward over a batch whose tokens belong to different
// sequences at different positions: every weight matrix is multiplied once
// with all n tokens of the batch (MatMul with n rows), and each token attends
// to its own sequence's cache. Eval() is the single-sequence form (sequence 0):
// it appends tokens at positions n_past()... . The matrix products are
// MatMulEngine's (runtime/matmul.h): integer dot products on quantized
// activations, or sgemm on dequantized panels, per type, ISA and row count
// as measured there. Attention
// is per run of consecutive tokens of one sequence: a run of one token takes
// the decode path (threaded dot products against its cache), a longer run the
// batched path (per-head GEMMs), so a token's attention arithmetic does not
// depend on the other sequences in its batch.
// Everything a decode step touches is allocated in Create(); decoding
// allocates nothing.
//
// Numerics follow llama.cpp's CPU backend: RMSNorm with a double sum, RoPE
// angles by repeated multiplication in float, activations converted to each
// weight's vec_dot_type before the product (8-bit blocks for the quantized
// types), softmax with a double sum.
// Results do not depend on the thread count: work is split into fixed chunks
// whose arithmetic is the same whichever thread runs them.
// Nor do they depend on the other sequences of a batch, except through the
// row count n that MatMul sees (its decode path for n = 1; OpenBLAS's sgemm
// rounds a row differently for different n): every other step works per
// token or per run.
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
  int64_t n_ctx = 0;        // KV cache positions per sequence; 0: min(model context, kDefaultMaxCtx)
  int n_threads = 1;
  int64_t max_batch = 512;  // tokens per batched forward (longer inputs are split); >= n_seq
  int64_t n_seq = 1;        // sequences with their own KV cache slot, [1, kMaxSeqs]
  // Element type of the KV cache: kF32 (the default: exact, what the
  // reference outputs used) or kF16 (half the memory and half the bytes
  // attention reads; llama.cpp's default, moving logits by ~1e-3 relative).
  // Keys and values are rounded once when stored; attention arithmetic is F32.
  TensorType kv_type = TensorType::kF32;
};

// One token of a Decode() batch: appended to sequence `seq` at position `pos`.
struct BatchToken {
  int32_t token = 0;
  int32_t seq = 0;
  int64_t pos = 0;
  bool logits = false;  // keep this token's logits
};

class Context {
 public:
  static constexpr int64_t kDefaultMaxCtx = 4096;
  static constexpr int64_t kMaxThreads = 256;
  static constexpr int64_t kMaxSeqs = 64;
  // Bound on the activation scratch (not the KV cache): 2 GiB.
  static constexpr uint64_t kMaxScratchBytes = uint64_t{1} << 31;
  // Bound on the KV cache of all sequences: 32 GiB of address space. Pages
  // are only touched as positions are written, so memory in use follows the
  // positions the sequences actually reach.
  static constexpr uint64_t kMaxKvBytes = uint64_t{1} << 35;

  static StatusOr<std::unique_ptr<Context>> Create(const Model& model, const ContextOptions& options);
  ~Context();

  const Model& model() const { return model_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_seq() const { return n_seq_; }
  int64_t max_batch() const { return max_batch_; }
  int n_threads() const { return pool_.size(); }
  TensorType kv_type() const { return kv_type_; }
  // Positions of sequence 0 (the one Eval() extends).
  int64_t n_past() const { return seq_len_[0]; }
  // Positions held by a sequence, < n_seq().
  int64_t seq_len(int64_t seq) const { return seq_len_[static_cast<size_t>(seq)]; }

  // Forgets sequence 0 (its KV cache is overwritten from position 0).
  void Reset() { seq_len_[0] = 0; }

  // Runs `tokens` (ids < n_vocab, n_past() + size <= n_ctx()) as the next
  // positions of sequence 0. With all_logits the logits of every token are
  // kept (teacher forcing); otherwise only those of the last token.
  Status Eval(std::span<const int32_t> tokens, bool all_logits);

  // One forward over up to max_batch() tokens of any sequences. The tokens of
  // one sequence are adjacent in the batch at consecutive positions, the first
  // at most seq_len(seq): a sequence continues where it ends or is cut back to
  // that position (0 starts it afresh), and afterwards holds up to its last
  // batch token. The logits of the tokens marked `logits` are Logits(0),
  // Logits(1), ... in batch order. Checked before any compute.
  Status Decode(std::span<const BatchToken> batch);

  // True when every matrix product computes each row of a batch exactly as
  // it computes that row alone, whatever the batch (all the weights' types
  // stay on the integer route: TypeKernels::sgemm_min_rows == 0). Then
  // tokens of different sequences can share a forward without changing any
  // sequence's results.
  bool RowsIndependent() const;

  // Logits of the i-th token of the last Eval (only the last token unless it
  // was called with all_logits), or of the i-th marked token of the last
  // Decode.
  std::span<const float> Logits(int64_t i) const;
  std::span<const float> LastLogits() const;

 private:
  // Consecutive batch tokens i0..i0+m-1 of one sequence at positions pos0...
  struct Run {
    int64_t seq = 0, pos0 = 0, i0 = 0, m = 0;
    int64_t task0 = 0;  // first attention task of the run (prefix sum over runs)
  };

  Context(const Model& model, int64_t n_ctx, int n_threads, int64_t max_batch, int64_t n_seq, TensorType kv_type);
  Status Allocate();

  // One checked batch of n <= max_batch tokens (batch_[0..n)); writes the
  // logits of the marked tokens, in order, to `logits`.
  void Forward(int64_t n, float* logits);
  // y[n, W.rows] = x[n, W.cols] * W^T (MatMulEngine::Run).
  void MatMul(const Matrix& w, const float* x, int64_t n, float* y);
  // Attention of every run in runs_[0..n_runs) for one layer: att_ rows from
  // the q_, k_, v_ rows of the layer's products (PrepareHeads) and the runs'
  // caches.
  void Attention(int64_t layer, int64_t n_runs);
  // out[r] = RMSNorm(x[r]) * weight for `rows` rows of `dim` floats (in place allowed).
  void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float* out) const;
  void RmsNormRow(const float* x, const float* weight, int64_t dim, float* out) const;
  // Rotates one head (head_dim_k floats) by its token's rope_cache_ row cs.
  void RopeHead(float* v, const float* cs) const;
  // The attention inputs of batch row i for KV head g: the group's q heads
  // and k head g biased, normalized (qwen3) and rotated, v head g biased, and
  // k and v head g stored in the row's sequence cache. Each (i, g) touches
  // its own data only, so any thread can run any of them.
  void PrepareHeads(int64_t layer, int64_t i, int64_t g);

  // Start of KV head g's cached keys or values of (layer, seq): n_ctx_ rows
  // of head_dim_k or head_dim_v elements of kv_type_, one per position.
  uint8_t* KHead(int64_t layer, int64_t seq, int64_t g) const;
  uint8_t* VHead(int64_t layer, int64_t seq, int64_t g) const;
  // Scores (and output) of one attention query block against the cached keys
  // and values kc, vc of one KV head (KHead, VHead): the batched path of
  // Attention().
  void AttendBlock(const float* q, int64_t m, const uint8_t* kc, const uint8_t* vc, int64_t pos0, int64_t len,
                   int thread, float* out);

  const Model& model_;
  const LlamaConfig& cfg_;
  const int64_t n_ctx_;
  const int64_t max_batch_;
  const int64_t n_seq_;
  const TensorType kv_type_;
  const size_t kv_elem_bytes_;  // 4 or 2
  ThreadPool pool_;

  std::vector<int64_t> seq_len_;  // [n_seq]
  // KV cache: [n_layer][n_seq][n_head_kv][n_ctx][head_dim_k] and the same
  // with head_dim_v, of kv_type_, left uninitialized (positions are written
  // before they are read). Head-major, so that the attention of one KV head
  // reads its keys and values as two contiguous streams.
  std::unique_ptr<uint8_t[]> k_cache_, v_cache_;
  // The batch being run: tokens [max_batch] and its runs [max_batch].
  std::vector<BatchToken> batch_;
  std::vector<Run> runs_;
  // Activations for up to max_batch_ tokens, row-major [token][feature]:
  // x_, xn_ [n_embd], q_ [q_dim], k_ [k_dim], v_ [v_dim], att_ [attn_dim],
  // gate_, up_ [n_ff].
  std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_;
  std::vector<float> rope_cache_;  // [max_batch][n_rot]: cos, sin pairs
  MatMulEngine matmul_;
  // Per thread: attention scores; with an F16 cache also one KV head's
  // keys, then values, widened to F32 for the batched path's GEMMs.
  std::vector<std::vector<float>> scores_;
  std::vector<std::vector<float>> kv_widened_;
  std::vector<float> logits_;  // [n_logit_rows][n_vocab], capacity for n_seq rows
  int64_t n_logit_rows_ = 0;
};

}  // namespace appliance::runtime
