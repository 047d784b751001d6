#include "runtime/model.h"

#include <cmath>
#include <cstdint>
#include <unordered_set>

#include "runtime/kernels/kernels.h"

namespace appliance::runtime {
namespace {

std::string Dims(const GgufTensorInfo& t) {
  std::string s = "[";
  for (uint32_t d = 0; d < t.n_dims; ++d) {
    if (d > 0) s += ", ";
    s += std::to_string(t.ne[d]);
  }
  return s + "]";
}

std::string SupportedTypes() { return "f32, f16, bf16, q8_0"; }

// Looks up tensors by name, checks shape and type, and records which tensors
// were claimed so that leftovers (weights of something we do not implement,
// e.g. biases or rope_freqs) are refused instead of silently ignored.
class TensorBinder {
 public:
  explicit TensorBinder(const GgufFile& gguf) : gguf_(gguf) {}

  const GgufTensorInfo* Lookup(const std::string& name) {
    const GgufTensorInfo* t = gguf_.FindTensor(name);
    if (t != nullptr) used_.insert(t->name);
    return t;
  }

  // A 1-D F32 vector of n elements (the norms).
  Status Vector(const std::string& name, int64_t n, const float** out) {
    const GgufTensorInfo* t = Lookup(name);
    if (t == nullptr) return Status::Error("missing tensor '" + name + "'");
    if (t->n_dims != 1 || t->ne[0] != n) {
      return Status::Error("tensor '" + name + "' has shape " + Dims(*t) + ", expected [" + std::to_string(n) + "]");
    }
    if (t->type != TensorType::kF32) {
      return Status::Error("tensor '" + name + "' has type " + TensorTypeName(t->type) + ", expected f32");
    }
    if (reinterpret_cast<uintptr_t>(t->data) % alignof(float) != 0) {
      return Status::Error("tensor '" + name + "' data is not 4-byte aligned");
    }
    *out = reinterpret_cast<const float*>(t->data);
    return Status::Ok();
  }

  // A matrix stored as ggml [cols, rows] (ne[0] = cols).
  Status Mat(const std::string& name, int64_t cols, int64_t rows, Matrix* out) {
    const GgufTensorInfo* t = Lookup(name);
    if (t == nullptr) return Status::Error("missing tensor '" + name + "'");
    return Bind(*t, cols, rows, out);
  }

  Status Bind(const GgufTensorInfo& t, int64_t cols, int64_t rows, Matrix* out) {
    const std::string name(t.name);
    if (t.n_dims != 2 || t.ne[0] != cols || t.ne[1] != rows) {
      return Status::Error("tensor '" + name + "' has shape " + Dims(t) + ", expected [" + std::to_string(cols) + ", " +
                           std::to_string(rows) + "]");
    }
    if (kernels::Find(t.type) == nullptr) {
      return Status::Error("tensor '" + name + "' has type " + TensorTypeName(t.type) +
                           ", which this runtime cannot compute with yet (supported: " + SupportedTypes() + ")");
    }
    // F32 rows go straight to BLAS and the float kernels, which need aligned
    // floats; the other types are read bytewise.
    if (t.type == TensorType::kF32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) != 0) {
      return Status::Error("tensor '" + name + "' data is not 4-byte aligned");
    }
    out->type = t.type;
    out->rows = rows;
    out->cols = cols;
    out->row_bytes = kernels::RowBytes(t.type, cols);
    out->data = t.data;
    return Status::Ok();
  }

  Status CheckAllUsed() const {
    for (const GgufTensorInfo& t : gguf_.tensors()) {
      if (used_.count(t.name) == 0) {
        return Status::Error("unexpected tensor '" + std::string(t.name) +
                             "' (not part of the llama architecture this runtime implements)");
      }
    }
    return Status::Ok();
  }

 private:
  const GgufFile& gguf_;
  std::unordered_set<std::string_view> used_;
};

Status CheckRange(const char* what, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) {
    return Status::Error(std::string(what) + " = " + std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "]");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::unique_ptr<Model>> Model::Load(MappedFile file, const std::string& name) {
  std::unique_ptr<Model> model(new Model());
  model->file_ = std::move(file);
  Status s = model->Init(name);
  if (!s.ok()) return s.Context(name);
  return model;
}

StatusOr<std::unique_ptr<Model>> Model::LoadPath(const std::string& path) {
  ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  return Load(std::move(file), path);
}

Status Model::Init(const std::string& /*name*/) {
  ASSIGN_OR_RETURN(gguf_, GgufFile::Parse(file_.bytes()));

  std::string_view arch;
  RETURN_IF_ERROR(gguf_.GetString("general.architecture", &arch, true));
  if (arch != "llama") {
    return Status::Error("architecture '" + std::string(arch.substr(0, 64)) +
                         "' is not supported (this runtime implements llama)");
  }
  std::string_view general_name;
  RETURN_IF_ERROR(gguf_.GetString("general.name", &general_name, false));
  name_ = std::string(general_name.substr(0, 256));

  // --- hyperparameters ---
  uint32_t n_embd = 0, n_layer = 0, n_head = 0, n_ff = 0, n_ctx = 0;
  RETURN_IF_ERROR(gguf_.GetUint32("llama.embedding_length", &n_embd, true));
  RETURN_IF_ERROR(gguf_.GetUint32("llama.block_count", &n_layer, true));
  RETURN_IF_ERROR(gguf_.GetUint32("llama.attention.head_count", &n_head, true));
  RETURN_IF_ERROR(gguf_.GetUint32("llama.feed_forward_length", &n_ff, true));
  RETURN_IF_ERROR(gguf_.GetUint32("llama.context_length", &n_ctx, true));
  uint32_t n_head_kv = n_head;
  RETURN_IF_ERROR(gguf_.GetUint32("llama.attention.head_count_kv", &n_head_kv, false));
  float rms_eps = 0;
  RETURN_IF_ERROR(gguf_.GetFloat("llama.attention.layer_norm_rms_epsilon", &rms_eps, true));
  float freq_base = 10000.0f;
  RETURN_IF_ERROR(gguf_.GetFloat("llama.rope.freq_base", &freq_base, false));

  LlamaConfig& c = config_;
  c.n_embd = n_embd;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.n_ff = n_ff;
  c.n_ctx_train = n_ctx;
  c.rms_eps = rms_eps;
  c.rope_freq_base = freq_base;
  RETURN_IF_ERROR(CheckRange("llama.embedding_length", c.n_embd, 1, kMaxEmbd));
  RETURN_IF_ERROR(CheckRange("llama.block_count", c.n_layer, 1, kMaxLayers));
  RETURN_IF_ERROR(CheckRange("llama.attention.head_count", c.n_head, 1, kMaxHeads));
  RETURN_IF_ERROR(CheckRange("llama.attention.head_count_kv", c.n_head_kv, 1, c.n_head));
  RETURN_IF_ERROR(CheckRange("llama.feed_forward_length", c.n_ff, 1, kMaxFf));
  RETURN_IF_ERROR(CheckRange("llama.context_length", c.n_ctx_train, 1, INT32_MAX));
  if (c.n_embd % c.n_head != 0) {
    return Status::Error("llama.embedding_length " + std::to_string(c.n_embd) +
                         " is not a multiple of llama.attention.head_count " + std::to_string(c.n_head));
  }
  if (c.n_head % c.n_head_kv != 0) {
    return Status::Error("llama.attention.head_count " + std::to_string(c.n_head) +
                         " is not a multiple of llama.attention.head_count_kv " + std::to_string(c.n_head_kv));
  }
  c.head_dim = c.n_embd / c.n_head;
  uint32_t n_rot = static_cast<uint32_t>(c.head_dim);
  RETURN_IF_ERROR(gguf_.GetUint32("llama.rope.dimension_count", &n_rot, false));
  c.n_rot = n_rot;
  if (c.n_rot < 2 || c.n_rot > c.head_dim || c.n_rot % 2 != 0) {
    return Status::Error("llama.rope.dimension_count " + std::to_string(c.n_rot) +
                         " must be even and within [2, head_dim " + std::to_string(c.head_dim) + "]");
  }
  if (!std::isfinite(c.rms_eps) || c.rms_eps <= 0.0f || c.rms_eps >= 1.0f) {
    return Status::Error("llama.attention.layer_norm_rms_epsilon " + std::to_string(c.rms_eps) +
                         " is outside (0, 1)");
  }
  if (!std::isfinite(c.rope_freq_base) || c.rope_freq_base <= 1.0f) {
    return Status::Error("llama.rope.freq_base " + std::to_string(c.rope_freq_base) + " must be finite and > 1");
  }

  // Variants of the architecture this forward pass does not implement are
  // refused rather than computed wrongly.
  uint32_t experts = 0;
  RETURN_IF_ERROR(gguf_.GetUint32("llama.expert_count", &experts, false));
  if (experts > 0) return Status::Error("mixture-of-experts llama models (llama.expert_count) are not supported");
  std::string_view scaling = "none";
  RETURN_IF_ERROR(gguf_.GetString("llama.rope.scaling.type", &scaling, false));
  if (scaling != "none") {
    return Status::Error("llama.rope.scaling.type '" + std::string(scaling.substr(0, 32)) + "' is not supported");
  }
  float scale_linear = 1.0f;
  RETURN_IF_ERROR(gguf_.GetFloat("llama.rope.scale_linear", &scale_linear, false));
  if (scale_linear != 1.0f) return Status::Error("llama.rope.scale_linear other than 1 is not supported");
  for (const char* key : {"llama.attention.key_length", "llama.attention.value_length"}) {
    uint32_t len = static_cast<uint32_t>(c.head_dim);
    RETURN_IF_ERROR(gguf_.GetUint32(key, &len, false));
    if (len != c.head_dim) {
      return Status::Error(std::string(key) + " " + std::to_string(len) + " differs from embedding_length / head_count " +
                           std::to_string(c.head_dim) + " (not supported)");
    }
  }

  // --- tensors ---
  TensorBinder bind(gguf_);
  const GgufTensorInfo* embd = bind.Lookup("token_embd.weight");
  if (embd == nullptr) return Status::Error("missing tensor 'token_embd.weight'");
  if (embd->n_dims != 2) {
    return Status::Error("tensor 'token_embd.weight' has shape " + Dims(*embd) + ", expected [n_embd, n_vocab]");
  }
  c.n_vocab = embd->ne[1];
  RETURN_IF_ERROR(CheckRange("n_vocab (token_embd.weight ne[1])", c.n_vocab, 1, kMaxVocab));
  RETURN_IF_ERROR(bind.Bind(*embd, c.n_embd, c.n_vocab, &weights_.token_embd));

  weights_.layers.resize(static_cast<size_t>(c.n_layer));
  for (int64_t l = 0; l < c.n_layer; ++l) {
    LayerWeights& L = weights_.layers[static_cast<size_t>(l)];
    const std::string p = "blk." + std::to_string(l) + ".";
    RETURN_IF_ERROR(bind.Vector(p + "attn_norm.weight", c.n_embd, &L.attn_norm));
    RETURN_IF_ERROR(bind.Mat(p + "attn_q.weight", c.n_embd, c.q_dim(), &L.wq));
    RETURN_IF_ERROR(bind.Mat(p + "attn_k.weight", c.n_embd, c.kv_dim(), &L.wk));
    RETURN_IF_ERROR(bind.Mat(p + "attn_v.weight", c.n_embd, c.kv_dim(), &L.wv));
    RETURN_IF_ERROR(bind.Mat(p + "attn_output.weight", c.q_dim(), c.n_embd, &L.wo));
    RETURN_IF_ERROR(bind.Vector(p + "ffn_norm.weight", c.n_embd, &L.ffn_norm));
    RETURN_IF_ERROR(bind.Mat(p + "ffn_gate.weight", c.n_embd, c.n_ff, &L.w_gate));
    RETURN_IF_ERROR(bind.Mat(p + "ffn_up.weight", c.n_embd, c.n_ff, &L.w_up));
    RETURN_IF_ERROR(bind.Mat(p + "ffn_down.weight", c.n_ff, c.n_embd, &L.w_down));
  }
  RETURN_IF_ERROR(bind.Vector("output_norm.weight", c.n_embd, &weights_.output_norm));
  if (bind.Lookup("output.weight") != nullptr) {
    RETURN_IF_ERROR(bind.Mat("output.weight", c.n_embd, c.n_vocab, &weights_.output));
  } else {
    weights_.output = weights_.token_embd;  // tied embeddings
  }
  RETURN_IF_ERROR(bind.CheckAllUsed());

  // --- tokenizer ---
  ASSIGN_OR_RETURN(tokenizer_, Tokenizer::FromGguf(gguf_));
  if (tokenizer_.n_tokens() != c.n_vocab) {
    return Status::Error("tokenizer has " + std::to_string(tokenizer_.n_tokens()) + " tokens but token_embd.weight has " +
                         std::to_string(c.n_vocab) + " rows");
  }
  return Status::Ok();
}

}  // namespace appliance::runtime
