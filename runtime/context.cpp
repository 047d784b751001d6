#include "runtime/context.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <new>

#include "runtime/blas.h"
#include "runtime/kernels/kernels.h"

namespace appliance::runtime {
namespace {

// Query rows per batched attention task.
constexpr int64_t kQueryBlock = 64;
// Below this many multiply-adds a job runs on the calling thread: waking the
// workers costs more than the work (stories260K's matrices are all below it).
constexpr int64_t kMinParallelWork = 1 << 15;

bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

Context::Context(const Model& model, int64_t n_ctx, int n_threads, int64_t max_batch)
    : model_(model), cfg_(model.config()), n_ctx_(n_ctx), max_batch_(max_batch), pool_(n_threads) {}

Context::~Context() = default;

StatusOr<std::unique_ptr<Context>> Context::Create(const Model& model, const ContextOptions& options) {
  const LlamaConfig& c = model.config();
  int64_t n_ctx = options.n_ctx;
  if (n_ctx == 0) n_ctx = std::min(c.n_ctx_train, kDefaultMaxCtx);
  if (n_ctx < 1 || n_ctx > c.n_ctx_train) {
    return Status::Error("context size " + std::to_string(n_ctx) + " is outside [1, " + std::to_string(c.n_ctx_train) +
                         "] (the model's context_length)");
  }
  if (options.n_threads < 1 || options.n_threads > kMaxThreads) {
    return Status::Error("thread count " + std::to_string(options.n_threads) + " is outside [1, " +
                         std::to_string(kMaxThreads) + "]");
  }
  if (options.max_batch < 1 || options.max_batch > 8192) {
    return Status::Error("batch size " + std::to_string(options.max_batch) + " is outside [1, 8192]");
  }
  ConfigureBlas();  // before the pool's threads start and before any GEMM
  std::unique_ptr<Context> ctx(new Context(model, n_ctx, options.n_threads, std::min(options.max_batch, n_ctx)));
  RETURN_IF_ERROR(ctx->Allocate());
  return ctx;
}

Status Context::Allocate() {
  const LlamaConfig& c = cfg_;
  // Every size below is a product of values Model::Load bounded, checked
  // again here because the KV cache multiplies three of them.
  uint64_t k_size = 0, v_size = 0;
  if (!CheckedMul(static_cast<uint64_t>(c.n_layer), static_cast<uint64_t>(n_ctx_), &k_size) ||
      !CheckedMul(k_size, static_cast<uint64_t>(c.k_dim()), &k_size) || k_size > (uint64_t{1} << 33) ||
      !CheckedMul(static_cast<uint64_t>(c.n_layer), static_cast<uint64_t>(n_ctx_), &v_size) ||
      !CheckedMul(v_size, static_cast<uint64_t>(c.v_dim()), &v_size) || v_size > (uint64_t{1} << 33)) {
    return Status::Error("KV cache for " + std::to_string(n_ctx_) + " positions is too large");
  }
  // The widest matrix row (cols) any MatMul sees.
  const int64_t max_cols = std::max({c.n_embd, c.attn_dim(), c.n_ff});
  const size_t B = static_cast<size_t>(max_batch_);
  // Activation scratch grows with batch x width (every width bounded by
  // Model::Load, so no product below overflows): refuse a combination above
  // kMaxScratchBytes instead of letting a hostile header make us touch
  // gigabytes of zeroed memory.
  const uint64_t per_token = static_cast<uint64_t>(2 * c.n_embd + c.q_dim() + c.attn_dim() + 2 * c.n_ff + c.n_rot);
  const uint64_t per_thread = static_cast<uint64_t>(kQueryBlock * n_ctx_);
  const uint64_t scratch = 4 * (per_token * B + static_cast<uint64_t>(pool_.size()) * per_thread) +
                           MatMulEngine::ScratchBytes(max_cols, max_batch_, pool_.size());
  if (scratch > kMaxScratchBytes) {
    return Status::Error("inference scratch for batches of " + std::to_string(max_batch_) + " tokens would take " +
                         std::to_string(scratch >> 20) + " MiB (limit " + std::to_string(kMaxScratchBytes >> 20) +
                         " MiB); use a smaller batch or context");
  }
  try {
    k_cache_.assign(k_size, 0.0f);
    v_cache_.assign(v_size, 0.0f);
    x_.assign(B * static_cast<size_t>(c.n_embd), 0.0f);
    xn_.assign(B * static_cast<size_t>(c.n_embd), 0.0f);
    q_.assign(B * static_cast<size_t>(c.q_dim()), 0.0f);
    att_.assign(B * static_cast<size_t>(c.attn_dim()), 0.0f);
    gate_.assign(B * static_cast<size_t>(c.n_ff), 0.0f);
    up_.assign(B * static_cast<size_t>(c.n_ff), 0.0f);
    rope_cache_.assign(B * static_cast<size_t>(c.n_rot), 0.0f);
    scores_.resize(static_cast<size_t>(pool_.size()));
    for (auto& s : scores_) s.assign(static_cast<size_t>(kQueryBlock * n_ctx_), 0.0f);
    logits_.assign(static_cast<size_t>(c.n_vocab), 0.0f);
  } catch (const std::bad_alloc&) {
    return Status::Error("out of memory allocating the inference context (" + std::to_string(n_ctx_) + " positions)");
  }
  return matmul_.Allocate(max_cols, max_batch_, pool_.size());
}

Status Context::Eval(std::span<const int32_t> tokens, bool all_logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return Status::Error("eval: no tokens");
  if (n > n_ctx_ - n_past_) {
    return Status::Error("eval: " + std::to_string(n) + " tokens at position " + std::to_string(n_past_) +
                         " exceed the context size " + std::to_string(n_ctx_));
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= cfg_.n_vocab) {
      return Status::Error("eval: token id " + std::to_string(t) + " is outside [0, " + std::to_string(cfg_.n_vocab) +
                           ")");
    }
  }
  const int64_t rows = all_logits ? n : 1;
  try {
    logits_.resize(static_cast<size_t>(rows * cfg_.n_vocab));  // no-op for decode: capacity is kept
  } catch (const std::bad_alloc&) {
    return Status::Error("out of memory for " + std::to_string(rows) + " rows of logits");
  }
  n_logit_rows_ = rows;
  for (int64_t done = 0; done < n;) {
    const int64_t chunk = std::min(max_batch_, n - done);
    const bool last = done + chunk == n;
    float* out = nullptr;
    if (all_logits) {
      out = logits_.data() + done * cfg_.n_vocab;
    } else if (last) {
      out = logits_.data();
    }
    Forward(tokens.data() + done, chunk, all_logits, out);
    n_past_ += chunk;
    done += chunk;
  }
  return Status::Ok();
}

std::span<const float> Context::Logits(int64_t i) const {
  const int64_t row = n_logit_rows_ == 1 ? 0 : i;
  return {logits_.data() + row * cfg_.n_vocab, static_cast<size_t>(cfg_.n_vocab)};
}

std::span<const float> Context::LastLogits() const { return Logits(n_logit_rows_ - 1); }

void Context::RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float* out) const {
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = x + i * dim;
    float* oi = out + i * dim;
    double sum = 0;
    for (int64_t j = 0; j < dim; ++j) sum += static_cast<double>(xi[j] * xi[j]);
    const float mean = static_cast<float>(sum / static_cast<double>(dim));
    const float scale = 1.0f / std::sqrt(mean + cfg_.rms_eps);
    for (int64_t j = 0; j < dim; ++j) oi[j] = (xi[j] * scale) * weight[j];
  }
}

void Context::AddBias(float* y, const float* bias, int64_t n, int64_t dim) {
  if (bias == nullptr) return;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < dim; ++j) y[i * dim + j] += bias[j];
  }
}

void Context::Rope(float* x, int64_t n, int64_t n_heads) const {
  // Rotate pairs of each head's first n_rot dimensions by pos * base^(-2j/n_rot)
  // (times the linear scale); dimensions past n_rot are left alone. llama
  // pairs adjacent dimensions (2j, 2j+1), NeoX (qwen) the halves (j, j + n_rot/2).
  const int64_t hd = cfg_.head_dim_k;
  const int64_t half = cfg_.n_rot / 2;
  const bool neox = cfg_.rope_type == RopeType::kNeox;
  for (int64_t i = 0; i < n; ++i) {
    const float* cs = rope_cache_.data() + i * cfg_.n_rot;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (i * n_heads + h) * hd;
      for (int64_t j = 0; j < half; ++j) {
        const float c = cs[2 * j];
        const float s = cs[2 * j + 1];
        const int64_t a = neox ? j : 2 * j;
        const int64_t b = neox ? j + half : 2 * j + 1;
        const float x0 = v[a];
        const float x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
      }
    }
  }
}

void Context::MatMul(const Matrix& w, const float* x, int64_t n, float* y) { matmul_.Run(pool_, w, x, n, y); }

void Context::Attention(int64_t layer, int64_t n, int64_t pos0) {
  const int64_t hk = cfg_.head_dim_k;
  const int64_t hv = cfg_.head_dim_v;
  const int64_t k_dim = cfg_.k_dim();
  const int64_t v_dim = cfg_.v_dim();
  const int64_t q_dim = cfg_.q_dim();
  const int64_t a_dim = cfg_.attn_dim();
  const int64_t n_head = cfg_.n_head;
  const int64_t group = cfg_.n_head / cfg_.n_head_kv;  // query heads per KV head (GQA)
  const float* kc = k_cache_.data() + layer * n_ctx_ * k_dim;
  const float* vc = v_cache_.data() + layer * n_ctx_ * v_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hk));
  const kernels::VecKernels& vec = kernels::Vec();

  if (n == 1) {
    const int64_t len = pos0 + 1;
    auto task = [&](int64_t h, int thread) {
      const int64_t g = h / group;
      const float* q = q_.data() + h * hk;
      float* s = scores_[static_cast<size_t>(thread)].data();
      vec.dot_rows_f32(hk, q, kc + g * hk, k_dim, len, s);
      vec.softmax_f32(len, s, scale);
      float* out = att_.data() + h * hv;
      std::fill(out, out + hv, 0.0f);
      vec.axpy_rows_f32(hv, s, vc + g * hv, v_dim, len, out);
    };
    if (len * (hk + hv) * n_head > 2 * kMinParallelWork) {
      pool_.For(n_head, task);
    } else {
      for (int64_t h = 0; h < n_head; ++h) task(h, 0);
    }
    return;
  }

  // Batched: per (head, block of queries) S = Q K^T over every cached
  // position the block can see, causal softmax per row, then O = P V.
  const int64_t blocks = (n + kQueryBlock - 1) / kQueryBlock;
  auto task = [&](int64_t t, int thread) {
    const int64_t h = t % n_head;
    const int64_t i0 = (t / n_head) * kQueryBlock;
    const int64_t m = std::min(kQueryBlock, n - i0);
    const int64_t g = h / group;
    const int64_t len = pos0 + i0 + m;  // keys visible to the block's last query
    float* s = scores_[static_cast<size_t>(thread)].data();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(len),
                static_cast<int>(hk), 1.0f, q_.data() + i0 * q_dim + h * hk, static_cast<int>(q_dim), kc + g * hk,
                static_cast<int>(k_dim), 0.0f, s, static_cast<int>(len));
    for (int64_t r = 0; r < m; ++r) {
      float* row = s + r * len;
      const int64_t visible = pos0 + i0 + r + 1;
      vec.softmax_f32(visible, row, scale);
      std::fill(row + visible, row + len, 0.0f);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(hv),
                static_cast<int>(len), 1.0f, s, static_cast<int>(len), vc + g * hv, static_cast<int>(v_dim), 0.0f,
                att_.data() + i0 * a_dim + h * hv, static_cast<int>(a_dim));
  };
  const int64_t tasks = blocks * n_head;
  if ((pos0 + n) * n * (hk + hv) * n_head > 2 * kMinParallelWork) {
    pool_.For(tasks, task);
  } else {
    for (int64_t t = 0; t < tasks; ++t) task(t, 0);
  }
}

void Context::Forward(const int32_t* tokens, int64_t n, bool all_logits, float* logits) {
  const LlamaConfig& c = cfg_;
  const LlamaWeights& W = model_.weights();
  const int64_t d = c.n_embd;
  const int64_t pos0 = n_past_;
  const int64_t k_dim = c.k_dim();
  const int64_t v_dim = c.v_dim();

  const kernels::TypeKernels& embd = *kernels::Find(W.token_embd.type);
  for (int64_t i = 0; i < n; ++i) embd.to_float(W.token_embd.row(tokens[i]), x_.data() + i * d, d);

  // RoPE angles per position, as ggml's rope cache: theta starts at the
  // position and is multiplied by base^(-2/n_rot) (in float) per pair; the
  // angle used is freq_scale * theta (linear scaling; exact when it is 1).
  const float theta_scale = std::pow(c.rope_freq_base, -2.0f / static_cast<float>(c.n_rot));
  for (int64_t i = 0; i < n; ++i) {
    float theta = static_cast<float>(pos0 + i);
    float* cs = rope_cache_.data() + i * c.n_rot;
    for (int64_t j = 0; j < c.n_rot / 2; ++j) {
      const float angle = c.rope_freq_scale * theta;
      cs[2 * j] = std::cos(angle);
      cs[2 * j + 1] = std::sin(angle);
      theta *= theta_scale;
    }
  }

  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = W.layers[static_cast<size_t>(l)];
    RmsNorm(x_.data(), L.attn_norm, n, d, xn_.data());
    MatMul(L.wq, xn_.data(), n, q_.data());
    AddBias(q_.data(), L.bq, n, c.q_dim());
    // K and V rows go straight into the cache: its layout is [pos][k_dim / v_dim].
    float* kc = k_cache_.data() + (l * n_ctx_ + pos0) * k_dim;
    float* vc = v_cache_.data() + (l * n_ctx_ + pos0) * v_dim;
    MatMul(L.wk, xn_.data(), n, kc);
    AddBias(kc, L.bk, n, k_dim);
    MatMul(L.wv, xn_.data(), n, vc);
    AddBias(vc, L.bv, n, v_dim);
    if (L.q_norm != nullptr) {
      // qwen3: every head of q and k normalized on its own (rows of head_dim_k).
      RmsNorm(q_.data(), L.q_norm, n * c.n_head, c.head_dim_k, q_.data());
      RmsNorm(kc, L.k_norm, n * c.n_head_kv, c.head_dim_k, kc);
    }
    Rope(q_.data(), n, c.n_head);
    Rope(kc, n, c.n_head_kv);
    Attention(l, n, pos0);
    MatMul(L.wo, att_.data(), n, xn_.data());
    AddBias(xn_.data(), L.bo, n, d);
    for (int64_t i = 0; i < n * d; ++i) x_[static_cast<size_t>(i)] += xn_[static_cast<size_t>(i)];

    RmsNorm(x_.data(), L.ffn_norm, n, d, xn_.data());
    MatMul(L.w_gate, xn_.data(), n, gate_.data());
    MatMul(L.w_up, xn_.data(), n, up_.data());
    for (int64_t i = 0; i < n * c.n_ff; ++i) {
      const float g = gate_[static_cast<size_t>(i)];
      gate_[static_cast<size_t>(i)] = g / (1.0f + std::exp(-g)) * up_[static_cast<size_t>(i)];  // SwiGLU
    }
    MatMul(L.w_down, gate_.data(), n, xn_.data());
    for (int64_t i = 0; i < n * d; ++i) x_[static_cast<size_t>(i)] += xn_[static_cast<size_t>(i)];
  }

  if (logits == nullptr) return;  // an inner chunk of a long prompt
  const int64_t first = all_logits ? 0 : n - 1;
  const int64_t rows = n - first;
  RmsNorm(x_.data() + first * d, W.output_norm, rows, d, xn_.data());
  MatMul(W.output, xn_.data(), rows, logits);
}

}  // namespace appliance::runtime
