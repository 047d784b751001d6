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

Context::Context(const Model& model, int64_t n_ctx, int n_threads, int64_t max_batch, int64_t n_seq,
                 TensorType kv_type)
    : model_(model),
      cfg_(model.config()),
      n_ctx_(n_ctx),
      max_batch_(max_batch),
      n_seq_(n_seq),
      kv_type_(kv_type),
      kv_elem_bytes_(kv_type == TensorType::kF16 ? 2 : 4),
      pool_(n_threads),
      seq_len_(static_cast<size_t>(n_seq), 0) {}

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
  if (options.n_seq < 1 || options.n_seq > kMaxSeqs) {
    return Status::Error("sequence count " + std::to_string(options.n_seq) + " is outside [1, " +
                         std::to_string(kMaxSeqs) + "]");
  }
  if (options.max_batch < options.n_seq || options.max_batch > 8192) {
    // A decode step holds one token of every sequence.
    return Status::Error("batch size " + std::to_string(options.max_batch) + " is outside [" +
                         std::to_string(options.n_seq) + " (the sequence count), 8192]");
  }
  if (options.kv_type != TensorType::kF32 && options.kv_type != TensorType::kF16) {
    return Status::Error(std::string("KV cache type ") + TensorTypeName(options.kv_type) + " is not f32 or f16");
  }
  ConfigureBlas();  // before the pool's threads start and before any GEMM
  // One batch holds at most n_ctx tokens of each sequence.
  const int64_t max_batch = std::min(options.max_batch, n_ctx * options.n_seq);
  std::unique_ptr<Context> ctx(new Context(model, n_ctx, options.n_threads, max_batch, options.n_seq, options.kv_type));
  RETURN_IF_ERROR(ctx->Allocate());
  return ctx;
}

Status Context::Allocate() {
  const LlamaConfig& c = cfg_;
  // Every size below is a product of values Model::Load bounded, checked
  // again here because the KV cache multiplies four of them.
  uint64_t positions = 0, k_size = 0, v_size = 0;
  const bool kv_fits =
      CheckedMul(static_cast<uint64_t>(c.n_layer) * static_cast<uint64_t>(n_seq_), static_cast<uint64_t>(n_ctx_),
                 &positions) &&
      CheckedMul(positions, static_cast<uint64_t>(c.k_dim()), &k_size) &&
      CheckedMul(positions, static_cast<uint64_t>(c.v_dim()), &v_size) && k_size + v_size <= kMaxKvBytes / kv_elem_bytes_;
  if (!kv_fits) {
    return Status::Error("KV cache for " + std::to_string(n_seq_) + " sequences x " + std::to_string(n_ctx_) +
                         " positions exceeds " + std::to_string(kMaxKvBytes >> 20) +
                         " MiB; use fewer sequences or a smaller context");
  }
  // The widest matrix row (cols) any MatMul sees.
  const int64_t max_cols = std::max({c.n_embd, c.attn_dim(), c.n_ff});
  const size_t B = static_cast<size_t>(max_batch_);
  // Activation scratch grows with batch x width (every width bounded by
  // Model::Load, so no product below overflows): refuse a combination above
  // kMaxScratchBytes instead of letting a hostile header make us touch
  // gigabytes of zeroed memory.
  const uint64_t per_token = static_cast<uint64_t>(2 * c.n_embd + c.q_dim() + c.k_dim() + c.v_dim() + c.attn_dim() +
                                                   2 * c.n_ff + c.n_rot) +
                             sizeof(BatchToken) / 4 + sizeof(Run) / 4;
  const int64_t kv_widened = kv_type_ == TensorType::kF32 ? 0 : n_ctx_ * std::max(c.head_dim_k, c.head_dim_v);
  const uint64_t per_thread = static_cast<uint64_t>(kQueryBlock * n_ctx_ + kv_widened);
  const uint64_t scratch = 4 * (per_token * B + static_cast<uint64_t>(pool_.size()) * per_thread) +
                           MatMulEngine::ScratchBytes(max_cols, max_batch_, pool_.size());
  if (scratch > kMaxScratchBytes) {
    return Status::Error("inference scratch for batches of " + std::to_string(max_batch_) + " tokens would take " +
                         std::to_string(scratch >> 20) + " MiB (limit " + std::to_string(kMaxScratchBytes >> 20) +
                         " MiB); use a smaller batch or context");
  }
  // Not value-initialized: the pages of positions no sequence reaches are
  // never touched.
  k_cache_.reset(new (std::nothrow) uint8_t[k_size * kv_elem_bytes_]);
  v_cache_.reset(new (std::nothrow) uint8_t[v_size * kv_elem_bytes_]);
  if (!k_cache_ || !v_cache_) {
    return Status::Error("out of memory allocating the KV cache (" + std::to_string(n_seq_) + " sequences x " +
                         std::to_string(n_ctx_) + " positions)");
  }
  try {
    batch_.resize(B);
    runs_.resize(B);
    x_.assign(B * static_cast<size_t>(c.n_embd), 0.0f);
    xn_.assign(B * static_cast<size_t>(c.n_embd), 0.0f);
    q_.assign(B * static_cast<size_t>(c.q_dim()), 0.0f);
    k_.assign(B * static_cast<size_t>(c.k_dim()), 0.0f);
    v_.assign(B * static_cast<size_t>(c.v_dim()), 0.0f);
    att_.assign(B * static_cast<size_t>(c.attn_dim()), 0.0f);
    gate_.assign(B * static_cast<size_t>(c.n_ff), 0.0f);
    up_.assign(B * static_cast<size_t>(c.n_ff), 0.0f);
    rope_cache_.assign(B * static_cast<size_t>(c.n_rot), 0.0f);
    scores_.resize(static_cast<size_t>(pool_.size()));
    for (auto& s : scores_) s.assign(static_cast<size_t>(kQueryBlock * n_ctx_), 0.0f);
    kv_widened_.resize(static_cast<size_t>(pool_.size()));
    for (auto& w : kv_widened_) w.assign(static_cast<size_t>(kv_widened), 0.0f);
    // A decode step keeps one row per sequence: reserved so it allocates nothing.
    logits_.reserve(static_cast<size_t>(n_seq_ * c.n_vocab));
    logits_.assign(static_cast<size_t>(c.n_vocab), 0.0f);
  } catch (const std::bad_alloc&) {
    return Status::Error("out of memory allocating the inference context (" + std::to_string(n_ctx_) + " positions)");
  }
  return matmul_.Allocate(max_cols, max_batch_, pool_.size());
}

Status Context::Eval(std::span<const int32_t> tokens, bool all_logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return Status::Error("eval: no tokens");
  if (n > n_ctx_ - n_past()) {
    return Status::Error("eval: " + std::to_string(n) + " tokens at position " + std::to_string(n_past()) +
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
    const int64_t pos0 = n_past();
    for (int64_t i = 0; i < chunk; ++i) {
      batch_[static_cast<size_t>(i)] = {tokens[static_cast<size_t>(done + i)], 0, pos0 + i,
                                        all_logits || (last && i == chunk - 1)};
    }
    Forward(chunk, logits_.data() + (all_logits ? done * cfg_.n_vocab : 0));
    done += chunk;
  }
  return Status::Ok();
}

Status Context::Decode(std::span<const BatchToken> batch) {
  const int64_t n = static_cast<int64_t>(batch.size());
  if (n == 0 || n > max_batch_) {
    return Status::Error("decode: " + std::to_string(n) + " tokens is outside [1, " + std::to_string(max_batch_) +
                         "] (the batch size)");
  }
  bool seen[kMaxSeqs] = {};
  int64_t rows = 0;
  for (int64_t i = 0; i < n; ++i) {
    const BatchToken& b = batch[static_cast<size_t>(i)];
    auto where = [i] { return "decode: batch token " + std::to_string(i); };  // only built for an error
    if (b.token < 0 || b.token >= cfg_.n_vocab) {
      return Status::Error(where() + ": token id " + std::to_string(b.token) + " is outside [0, " +
                           std::to_string(cfg_.n_vocab) + ")");
    }
    if (b.seq < 0 || b.seq >= n_seq_) {
      return Status::Error(where() + ": sequence " + std::to_string(b.seq) + " is outside [0, " + std::to_string(n_seq_) +
                           ")");
    }
    if (i > 0 && batch[static_cast<size_t>(i - 1)].seq == b.seq) {
      if (b.pos != batch[static_cast<size_t>(i - 1)].pos + 1) {
        return Status::Error(where() + ": position " + std::to_string(b.pos) + " does not follow its sequence's " +
                             "previous token in the batch");
      }
    } else {
      if (seen[b.seq]) {
        return Status::Error(where() + ": sequence " + std::to_string(b.seq) + " is not adjacent in the batch");
      }
      seen[b.seq] = true;
      if (b.pos < 0 || b.pos > seq_len(b.seq)) {
        return Status::Error(where() + ": position " + std::to_string(b.pos) + " leaves a gap after the " +
                             std::to_string(seq_len(b.seq)) + " positions of sequence " + std::to_string(b.seq));
      }
    }
    if (b.pos >= n_ctx_) {
      return Status::Error(where() + ": position " + std::to_string(b.pos) + " is beyond the context size " +
                           std::to_string(n_ctx_));
    }
    rows += b.logits ? 1 : 0;
  }
  try {
    logits_.resize(static_cast<size_t>(rows * cfg_.n_vocab));  // no-op up to n_seq rows: capacity is reserved
  } catch (const std::bad_alloc&) {
    return Status::Error("out of memory for " + std::to_string(rows) + " rows of logits");
  }
  n_logit_rows_ = rows;
  std::copy(batch.begin(), batch.end(), batch_.begin());
  Forward(n, logits_.data());
  return Status::Ok();
}

std::span<const float> Context::Logits(int64_t i) const {
  const int64_t row = n_logit_rows_ == 1 ? 0 : i;
  return {logits_.data() + row * cfg_.n_vocab, static_cast<size_t>(cfg_.n_vocab)};
}

bool Context::RowsIndependent() const {
  const LlamaWeights& w = model_.weights();
  auto independent = [](const Matrix& m) { return kernels::Find(m.type)->sgemm_min_rows == 0; };
  for (const LayerWeights& l : w.layers) {
    for (const Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      if (!independent(*m)) return false;
    }
  }
  return independent(w.output);
}

std::span<const float> Context::LastLogits() const { return Logits(n_logit_rows_ - 1); }

void Context::RmsNorm(const float* x, const float* weight, int64_t rows, int64_t dim, float* out) const {
  for (int64_t i = 0; i < rows; ++i) RmsNormRow(x + i * dim, weight, dim, out + i * dim);
}

void Context::RmsNormRow(const float* x, const float* weight, int64_t dim, float* out) const {
  // ggml sums x^2 in double in one chain; eight chains (4 cycles per add
  // each, not per element) round differently only past double precision,
  // which the float mean below does not see.
  double part[8] = {};
  int64_t e = 0;
  for (; e + 8 <= dim; e += 8) {
    for (int k = 0; k < 8; ++k) part[k] += static_cast<double>(x[e + k] * x[e + k]);
  }
  for (; e < dim; ++e) part[0] += static_cast<double>(x[e] * x[e]);
  const double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  const float mean = static_cast<float>(sum / static_cast<double>(dim));
  const float scale = 1.0f / std::sqrt(mean + cfg_.rms_eps);
  for (int64_t j = 0; j < dim; ++j) out[j] = (x[j] * scale) * weight[j];
}

void Context::RopeHead(float* v, const float* cs) const {
  // Rotate pairs of the head's first n_rot dimensions by pos * base^(-2j/n_rot)
  // (times the linear scale; cs holds the cos, sin pairs of the token's
  // position); dimensions past n_rot are left alone. llama pairs adjacent
  // dimensions (2j, 2j+1), NeoX (qwen) the halves (j, j + n_rot/2).
  const int64_t half = cfg_.n_rot / 2;
  const bool neox = cfg_.rope_type == RopeType::kNeox;
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

void Context::PrepareHeads(int64_t layer, int64_t i, int64_t g) {
  const LayerWeights& L = model_.weights().layers[static_cast<size_t>(layer)];
  const int64_t hk = cfg_.head_dim_k;
  const int64_t hv = cfg_.head_dim_v;
  const int64_t group = cfg_.n_head / cfg_.n_head_kv;
  const float* cs = rope_cache_.data() + i * cfg_.n_rot;
  // One head of hd floats: bias, then (qwen3) RMSNorm on its own, then RoPE.
  auto finish = [&](float* v, const float* bias, const float* norm) {
    if (bias != nullptr) {
      for (int64_t e = 0; e < hk; ++e) v[e] += bias[e];
    }
    if (norm != nullptr) RmsNormRow(v, norm, hk, v);
    RopeHead(v, cs);
  };
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    finish(q_.data() + i * cfg_.q_dim() + h * hk, L.bq != nullptr ? L.bq + h * hk : nullptr, L.q_norm);
  }
  float* k = k_.data() + i * cfg_.k_dim() + g * hk;
  finish(k, L.bk != nullptr ? L.bk + g * hk : nullptr, L.k_norm);
  float* v = v_.data() + i * cfg_.v_dim() + g * hv;
  if (L.bv != nullptr) {
    for (int64_t e = 0; e < hv; ++e) v[e] += L.bv[g * hv + e];
  }
  const BatchToken& b = batch_[static_cast<size_t>(i)];
  const kernels::TypeKernels& kv = *kernels::Find(kv_type_);
  const int64_t elem = static_cast<int64_t>(kv_elem_bytes_);
  kv.from_float(k, KHead(layer, b.seq, g) + b.pos * hk * elem, hk);
  kv.from_float(v, VHead(layer, b.seq, g) + b.pos * hv * elem, hv);
}

void Context::MatMul(const Matrix& w, const float* x, int64_t n, float* y) { matmul_.Run(pool_, w, x, n, y); }

uint8_t* Context::KHead(int64_t layer, int64_t seq, int64_t g) const {
  const int64_t head = (layer * n_seq_ + seq) * cfg_.n_head_kv + g;
  return k_cache_.get() + head * n_ctx_ * cfg_.head_dim_k * static_cast<int64_t>(kv_elem_bytes_);
}

uint8_t* Context::VHead(int64_t layer, int64_t seq, int64_t g) const {
  const int64_t head = (layer * n_seq_ + seq) * cfg_.n_head_kv + g;
  return v_cache_.get() + head * n_ctx_ * cfg_.head_dim_v * static_cast<int64_t>(kv_elem_bytes_);
}

void Context::AttendBlock(const float* q, int64_t m, const uint8_t* kc, const uint8_t* vc, int64_t pos0, int64_t len,
                          int thread, float* out) {
  // S = Q K^T over every cached position the block can see, causal softmax
  // per row, then O = P V. An F16 cache is widened to F32 first (keys, then
  // values into the same scratch).
  const int64_t hk = cfg_.head_dim_k;
  const int64_t hv = cfg_.head_dim_v;
  const int64_t q_dim = cfg_.q_dim();
  const int64_t a_dim = cfg_.attn_dim();
  float* s = scores_[static_cast<size_t>(thread)].data();
  const float* keys = reinterpret_cast<const float*>(kc);
  const float* values = reinterpret_cast<const float*>(vc);
  float* widened = kv_widened_[static_cast<size_t>(thread)].data();
  const kernels::TypeKernels& f16 = *kernels::Find(TensorType::kF16);
  if (kv_type_ == TensorType::kF16) {
    f16.to_float(kc, widened, len * hk);
    keys = widened;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(len), static_cast<int>(hk),
              1.0f, q, static_cast<int>(q_dim), keys, static_cast<int>(hk), 0.0f, s, static_cast<int>(len));
  const float scale = 1.0f / std::sqrt(static_cast<float>(hk));
  for (int64_t r = 0; r < m; ++r) {
    float* row = s + r * len;
    const int64_t visible = pos0 + r + 1;
    kernels::Vec().softmax_f32(visible, row, scale);
    std::fill(row + visible, row + len, 0.0f);
  }
  if (kv_type_ == TensorType::kF16) {
    f16.to_float(vc, widened, len * hv);
    values = widened;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(hv),
              static_cast<int>(len), 1.0f, s, static_cast<int>(len), values, static_cast<int>(hv), 0.0f, out,
              static_cast<int>(a_dim));
}

void Context::Attention(int64_t layer, int64_t n_runs) {
  const int64_t hk = cfg_.head_dim_k;
  const int64_t hv = cfg_.head_dim_v;
  const int64_t q_dim = cfg_.q_dim();
  const int64_t a_dim = cfg_.attn_dim();
  const int64_t n_head = cfg_.n_head;
  const int64_t group = cfg_.n_head / cfg_.n_head_kv;  // query heads per KV head (GQA)
  const float scale = 1.0f / std::sqrt(static_cast<float>(hk));
  const kernels::VecKernels& vec = kernels::Vec();

  // A run of one token has a task per KV head (its `group` query heads one
  // after the other, so the cached rows they share are read from memory once
  // and then from L1: with several jobs the caches are in L3), a longer one a
  // task per (block of queries, head); the tasks of all runs form one pool job.
  int64_t tasks = 0, work = 0;
  for (int64_t r = 0; r < n_runs; ++r) {
    Run& run = runs_[static_cast<size_t>(r)];
    run.task0 = tasks;
    tasks += run.m == 1 ? cfg_.n_head_kv : (run.m + kQueryBlock - 1) / kQueryBlock * n_head;
    work += (run.pos0 + run.m) * run.m * (hk + hv) * n_head;
  }
  // The heads' inputs (PrepareHeads): a decode run's task prepares its own
  // first; when a run of several tokens is in the batch, each of its tasks
  // reads all its rows' keys, so every row is prepared in a job before.
  bool all_decode = true;
  for (int64_t r = 0; r < n_runs; ++r) all_decode = all_decode && runs_[static_cast<size_t>(r)].m == 1;
  const int64_t n = runs_[static_cast<size_t>(n_runs - 1)].i0 + runs_[static_cast<size_t>(n_runs - 1)].m;
  if (!all_decode) {
    auto prepare = [&](int64_t t, int) {
      for (int64_t i = n * t / pool_.size(); i < n * (t + 1) / pool_.size(); ++i) {
        for (int64_t g = 0; g < cfg_.n_head_kv; ++g) PrepareHeads(layer, i, g);
      }
    };
    if (n >= 2 * pool_.size()) {
      pool_.For(pool_.size(), prepare);
    } else {
      for (int t = 0; t < pool_.size(); ++t) prepare(t, 0);
    }
  }
  auto task = [&](int64_t t, int thread) {
    const Run& run = *(std::upper_bound(runs_.begin(), runs_.begin() + n_runs, t,
                                        [](int64_t v, const Run& x) { return v < x.task0; }) -
                       1);
    const int64_t local = t - run.task0;
    if (run.m == 1) {
      // Decode: one query per head of KV head g against the run's cache.
      const int64_t g = local;
      if (all_decode) PrepareHeads(layer, run.i0, g);
      const int64_t len = run.pos0 + 1;
      const uint8_t* kc = KHead(layer, run.seq, g);
      const uint8_t* vc = VHead(layer, run.seq, g);
      float* s = scores_[static_cast<size_t>(thread)].data();
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const float* q = q_.data() + run.i0 * q_dim + h * hk;
        float* out = att_.data() + run.i0 * a_dim + h * hv;
        std::fill(out, out + hv, 0.0f);
        if (kv_type_ == TensorType::kF16) {
          vec.dot_rows_f16(hk, q, reinterpret_cast<const uint16_t*>(kc), hk, len, s);
          vec.softmax_f32(len, s, scale);
          vec.axpy_rows_f16(hv, s, reinterpret_cast<const uint16_t*>(vc), hv, len, out);
        } else {
          vec.dot_rows_f32(hk, q, reinterpret_cast<const float*>(kc), hk, len, s);
          vec.softmax_f32(len, s, scale);
          vec.axpy_rows_f32(hv, s, reinterpret_cast<const float*>(vc), hv, len, out);
        }
      }
      return;
    }
    // Batched: per (head, block of queries).
    const int64_t h = local % n_head;
    const int64_t b0 = (local / n_head) * kQueryBlock;  // first query of the block, within the run
    const int64_t m = std::min(kQueryBlock, run.m - b0);
    const int64_t g = h / group;
    const int64_t i0 = run.i0 + b0;  // the block's first row in the batch
    AttendBlock(q_.data() + i0 * q_dim + h * hk, m, KHead(layer, run.seq, g), VHead(layer, run.seq, g), run.pos0 + b0,
                run.pos0 + b0 + m, thread, att_.data() + i0 * a_dim + h * hv);
  };
  if (work > 2 * kMinParallelWork) {
    pool_.For(tasks, task);
  } else {
    for (int64_t t = 0; t < tasks; ++t) task(t, 0);
  }
}

void Context::Forward(int64_t n, float* logits) {
  const LlamaConfig& c = cfg_;
  const LlamaWeights& W = model_.weights();
  const int64_t d = c.n_embd;

  int64_t n_runs = 0;
  for (int64_t i = 0; i < n; ++i) {
    const BatchToken& b = batch_[static_cast<size_t>(i)];
    if (i == 0 || b.seq != batch_[static_cast<size_t>(i - 1)].seq) runs_[static_cast<size_t>(n_runs++)] = {b.seq, b.pos, i, 0, 0};
    ++runs_[static_cast<size_t>(n_runs - 1)].m;
  }

  const kernels::TypeKernels& embd = *kernels::Find(W.token_embd.type);
  for (int64_t i = 0; i < n; ++i) {
    embd.to_float(W.token_embd.row(batch_[static_cast<size_t>(i)].token), x_.data() + i * d, d);
  }

  // RoPE angles per position, as ggml's rope cache: theta starts at the
  // position and is multiplied by base^(-2/n_rot) (in float) per pair; the
  // angle used is freq_scale * theta (linear scaling; exact when it is 1).
  const float theta_scale = std::pow(c.rope_freq_base, -2.0f / static_cast<float>(c.n_rot));
  for (int64_t i = 0; i < n; ++i) {
    float theta = static_cast<float>(batch_[static_cast<size_t>(i)].pos);
    float* cs = rope_cache_.data() + i * c.n_rot;
    for (int64_t j = 0; j < c.n_rot / 2; ++j) {
      const float angle = c.rope_freq_scale * theta;
      cs[2 * j] = std::cos(angle);
      cs[2 * j + 1] = std::sin(angle);
      theta *= theta_scale;
    }
  }

  // The per-row steps between the products (residual adds, RMSNorm, SwiGLU)
  // run as each product's row preparation (MatMulEngine::Run's prep), on
  // every thread. xn_ holds the previous product's output until then: from
  // the second layer on, the attention input adds the last FFN output to x_.
  const float* pending_residual = nullptr;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = W.layers[static_cast<size_t>(l)];
    auto attn_in = [&](int64_t i, int) {
      float* xi = x_.data() + i * d;
      float* xni = xn_.data() + i * d;
      if (pending_residual != nullptr) {
        for (int64_t j = 0; j < d; ++j) xi[j] += xni[j];
      }
      RmsNormRow(xi, L.attn_norm, d, xni);
    };
    const TaskFn attn_prep(attn_in);
    const MatMulEngine::Product qkv[] = {{&L.wq, q_.data()}, {&L.wk, k_.data()}, {&L.wv, v_.data()}};
    matmul_.RunGroup(pool_, qkv, xn_.data(), n, &attn_prep);
    Attention(l, n_runs);
    MatMul(L.wo, att_.data(), n, xn_.data());

    auto ffn_in = [&](int64_t i, int) {
      float* xi = x_.data() + i * d;
      float* xni = xn_.data() + i * d;
      for (int64_t j = 0; j < d; ++j) xi[j] += L.bo != nullptr ? xni[j] + L.bo[j] : xni[j];
      RmsNormRow(xi, L.ffn_norm, d, xni);
    };
    const TaskFn ffn_prep(ffn_in);
    const MatMulEngine::Product gate_up[] = {{&L.w_gate, gate_.data()}, {&L.w_up, up_.data()}};
    matmul_.RunGroup(pool_, gate_up, xn_.data(), n, &ffn_prep);
    auto down_in = [&](int64_t i, int) {
      kernels::Vec().swiglu_f32(c.n_ff, gate_.data() + i * c.n_ff, up_.data() + i * c.n_ff);
    };
    const TaskFn down_prep(down_in);
    matmul_.Run(pool_, L.w_down, gate_.data(), n, xn_.data(), &down_prep);
    pending_residual = xn_.data();
  }
  for (int64_t r = 0; r < n_runs; ++r) {
    const Run& run = runs_[static_cast<size_t>(r)];
    seq_len_[static_cast<size_t>(run.seq)] = run.pos0 + run.m;
  }

  // Logits of the marked tokens only (none for an inner chunk of a long prompt).
  // The last FFN output is added only to these rows; row `rows` <= i of xn_
  // is free by then (rows are taken in order).
  int64_t rows = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!batch_[static_cast<size_t>(i)].logits) continue;
    float* xi = x_.data() + i * d;
    const float* xni = xn_.data() + i * d;
    for (int64_t j = 0; j < d; ++j) xi[j] += xni[j];
    RmsNormRow(xi, W.output_norm, d, xn_.data() + rows++ * d);
  }
  if (rows > 0) MatMul(W.output, xn_.data(), rows, logits);
}

}  // namespace appliance::runtime
