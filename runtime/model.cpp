#include "runtime/model.h"

#include <sys/mman.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <unordered_set>
#include <utility>

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

// Looks up tensors by name, checks shape and type, and records which tensors
// were claimed so that leftovers (weights of something we do not implement,
// e.g. rope_freqs or a bias the architecture does not have) are refused
// instead of silently ignored.
class TensorBinder {
 public:
  TensorBinder(const GgufFile& gguf, std::string arch) : gguf_(gguf), arch_(std::move(arch)) {}

  const GgufTensorInfo* Lookup(const std::string& name) {
    const GgufTensorInfo* t = gguf_.FindTensor(name);
    if (t != nullptr) used_.insert(t->name);
    return t;
  }

  // A 1-D F32 vector of n elements (norms, biases).
  Status Vector(const std::string& name, int64_t n, const float** out) {
    const GgufTensorInfo* t = Lookup(name);
    if (t == nullptr) return Status::Error("missing tensor '" + name + "'");
    return BindVector(*t, n, out);
  }
  // As Vector, but a missing tensor leaves *out null.
  Status OptionalVector(const std::string& name, int64_t n, const float** out) {
    const GgufTensorInfo* t = Lookup(name);
    if (t == nullptr) return Status::Ok();
    return BindVector(*t, n, out);
  }

  Status BindVector(const GgufTensorInfo& t, int64_t n, const float** out) {
    const std::string name(t.name);
    if (t.n_dims != 1 || t.ne[0] != n) {
      return Status::Error("tensor '" + name + "' has shape " + Dims(t) + ", expected [" + std::to_string(n) + "]");
    }
    if (t.type != TensorType::kF32) {
      return Status::Error("tensor '" + name + "' has type " + TensorTypeName(t.type) + ", expected f32");
    }
    if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) != 0) {
      return Status::Error("tensor '" + name + "' data is not 4-byte aligned");
    }
    *out = reinterpret_cast<const float*>(t.data);
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
    if (kernels::FindWeight(t.type) == nullptr) {
      return Status::Error("tensor '" + name + "' has type " + TensorTypeName(t.type) +
                           ", which this runtime does not support for weights (supported: " +
                           kernels::SupportedWeightTypes() + ")");
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
        return Status::Error("unexpected tensor " + GgufQuote(t.name) + " (not part of the " + arch_ +
                             " architecture as this runtime implements it)");
      }
    }
    return Status::Ok();
  }

 private:
  const GgufFile& gguf_;
  const std::string arch_;
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

namespace {

// What each architecture adds to the common llama block.
struct ArchTraits {
  Arch arch;
  const char* name;
  RopeType rope;
  bool qkv_bias_required;  // qwen2
  bool bias_allowed;       // llama: optional q/k/v/o biases
  bool qk_norm;            // qwen3
};
constexpr ArchTraits kArchs[] = {
    {Arch::kLlama, "llama", RopeType::kNorm, false, true, false},
    {Arch::kQwen2, "qwen2", RopeType::kNeox, true, true, false},
    {Arch::kQwen3, "qwen3", RopeType::kNeox, false, false, true},
};

}  // namespace

const char* ArchName(Arch arch) {
  for (const ArchTraits& a : kArchs) {
    if (a.arch == arch) return a.name;
  }
  return "unknown";
}

Status Model::Init(const std::string& /*name*/) {
  ASSIGN_OR_RETURN(gguf_, GgufFile::Parse(file_.bytes()));

  std::string_view arch_name;
  RETURN_IF_ERROR(gguf_.GetString("general.architecture", &arch_name, true));
  const ArchTraits* arch = nullptr;
  for (const ArchTraits& a : kArchs) {
    if (arch_name == a.name) arch = &a;
  }
  if (arch == nullptr) {
    return Status::Error("architecture " + GgufQuote(arch_name) +
                         " is not supported (this runtime implements llama, qwen2, qwen3)");
  }
  const std::string p = std::string(arch->name) + ".";
  auto key = [&p](const char* k) { return p + k; };
  std::string_view general_name;
  RETURN_IF_ERROR(gguf_.GetString("general.name", &general_name, false));
  name_ = std::string(general_name.substr(0, 256));

  // --- hyperparameters ---
  uint32_t n_embd = 0, n_layer = 0, n_head = 0, n_ff = 0, n_ctx = 0;
  RETURN_IF_ERROR(gguf_.GetUint32(key("embedding_length"), &n_embd, true));
  RETURN_IF_ERROR(gguf_.GetUint32(key("block_count"), &n_layer, true));
  RETURN_IF_ERROR(gguf_.GetUint32(key("attention.head_count"), &n_head, true));
  RETURN_IF_ERROR(gguf_.GetUint32(key("feed_forward_length"), &n_ff, true));
  RETURN_IF_ERROR(gguf_.GetUint32(key("context_length"), &n_ctx, true));
  uint32_t n_head_kv = n_head;
  RETURN_IF_ERROR(gguf_.GetUint32(key("attention.head_count_kv"), &n_head_kv, false));
  float rms_eps = 0;
  RETURN_IF_ERROR(gguf_.GetFloat(key("attention.layer_norm_rms_epsilon"), &rms_eps, true));
  float freq_base = 10000.0f;
  RETURN_IF_ERROR(gguf_.GetFloat(key("rope.freq_base"), &freq_base, false));

  LlamaConfig& c = config_;
  c.arch = arch->arch;
  c.rope_type = arch->rope;
  c.n_embd = n_embd;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.n_ff = n_ff;
  c.n_ctx_train = n_ctx;
  c.rms_eps = rms_eps;
  c.rope_freq_base = freq_base;
  RETURN_IF_ERROR(CheckRange(key("embedding_length").c_str(), c.n_embd, 1, kMaxEmbd));
  RETURN_IF_ERROR(CheckRange(key("block_count").c_str(), c.n_layer, 1, kMaxLayers));
  RETURN_IF_ERROR(CheckRange(key("attention.head_count").c_str(), c.n_head, 1, kMaxHeads));
  RETURN_IF_ERROR(CheckRange(key("attention.head_count_kv").c_str(), c.n_head_kv, 1, c.n_head));
  RETURN_IF_ERROR(CheckRange(key("feed_forward_length").c_str(), c.n_ff, 1, kMaxFf));
  RETURN_IF_ERROR(CheckRange(key("context_length").c_str(), c.n_ctx_train, 1, INT32_MAX));
  if (c.n_head % c.n_head_kv != 0) {
    return Status::Error(key("attention.head_count") + " " + std::to_string(c.n_head) + " is not a multiple of " +
                         key("attention.head_count_kv") + " " + std::to_string(c.n_head_kv));
  }
  // Head sizes: explicit (qwen3 decouples them from the embedding width) or
  // embedding_length / head_count, which must then divide evenly.
  for (const char* k : {"attention.key_length", "attention.value_length"}) {
    int64_t* dim = std::string_view(k) == "attention.key_length" ? &c.head_dim_k : &c.head_dim_v;
    if (gguf_.Find(key(k)) != nullptr) {
      uint32_t v = 0;
      RETURN_IF_ERROR(gguf_.GetUint32(key(k), &v, true));
      *dim = v;
      RETURN_IF_ERROR(CheckRange(key(k).c_str(), *dim, 1, kMaxHeadDim));
      continue;
    }
    if (c.n_embd % c.n_head != 0) {
      return Status::Error(key("embedding_length") + " " + std::to_string(c.n_embd) + " is not a multiple of " +
                           key("attention.head_count") + " " + std::to_string(c.n_head));
    }
    *dim = c.n_embd / c.n_head;
    RETURN_IF_ERROR(CheckRange(("head size " + key("embedding_length") + " / head_count").c_str(), *dim, 1,
                               kMaxHeadDim));
  }
  RETURN_IF_ERROR(CheckRange("query width (head_count * key_length)", c.q_dim(), 1, kMaxAttnDim));
  RETURN_IF_ERROR(CheckRange("attention output width (head_count * value_length)", c.attn_dim(), 1, kMaxAttnDim));
  uint32_t n_rot = static_cast<uint32_t>(c.head_dim_k);
  RETURN_IF_ERROR(gguf_.GetUint32(key("rope.dimension_count"), &n_rot, false));
  c.n_rot = n_rot;
  if (c.n_rot < 2 || c.n_rot > c.head_dim_k || c.n_rot % 2 != 0) {
    return Status::Error(key("rope.dimension_count") + " " + std::to_string(c.n_rot) +
                         " must be even and within [2, key head size " + std::to_string(c.head_dim_k) + "]");
  }
  if (!std::isfinite(c.rms_eps) || c.rms_eps <= 0.0f || c.rms_eps >= 1.0f) {
    return Status::Error(key("attention.layer_norm_rms_epsilon") + " " + std::to_string(c.rms_eps) +
                         " is outside (0, 1)");
  }
  if (!std::isfinite(c.rope_freq_base) || c.rope_freq_base <= 1.0f) {
    return Status::Error(key("rope.freq_base") + " " + std::to_string(c.rope_freq_base) + " must be finite and > 1");
  }

  // RoPE scaling as llama.cpp reads it: the type defaults to linear; the
  // factor comes from rope.scaling.factor or the older rope.scale_linear (0 =
  // unset); type "none" disables scaling whatever the factor. YaRN, LongRoPE
  // and llama-3 frequency factors change more than a scale and are refused.
  std::string_view scaling = "linear";
  RETURN_IF_ERROR(gguf_.GetString(key("rope.scaling.type"), &scaling, false));
  if (scaling != "linear" && scaling != "none") {
    return Status::Error(key("rope.scaling.type") + " " + GgufQuote(scaling) +
                         " is not supported (only linear and none)");
  }
  float factor = 0.0f;
  std::string factor_key = key("rope.scaling.factor");
  if (gguf_.Find(factor_key) == nullptr) factor_key = key("rope.scale_linear");
  RETURN_IF_ERROR(gguf_.GetFloat(factor_key, &factor, false));
  if (!std::isfinite(factor) || factor < 0.0f || (factor > 0.0f && (factor < 1e-3f || factor > 1e3f))) {
    return Status::Error(factor_key + " " + std::to_string(factor) + " is outside [1e-3, 1e3] (0 = unset)");
  }
  c.rope_freq_scale = (scaling == "none" || factor == 0.0f) ? 1.0f : 1.0f / factor;

  // Variants this forward pass does not implement are refused rather than
  // computed wrongly.
  uint32_t experts = 0;
  RETURN_IF_ERROR(gguf_.GetUint32(key("expert_count"), &experts, false));
  if (experts > 0) {
    return Status::Error("mixture-of-experts models (" + key("expert_count") + ") are not supported");
  }

  // --- tensors ---
  TensorBinder bind(gguf_, arch->name);
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
    const std::string b = "blk." + std::to_string(l) + ".";
    RETURN_IF_ERROR(bind.Vector(b + "attn_norm.weight", c.n_embd, &L.attn_norm));
    RETURN_IF_ERROR(bind.Mat(b + "attn_q.weight", c.n_embd, c.q_dim(), &L.wq));
    RETURN_IF_ERROR(bind.Mat(b + "attn_k.weight", c.n_embd, c.k_dim(), &L.wk));
    RETURN_IF_ERROR(bind.Mat(b + "attn_v.weight", c.n_embd, c.v_dim(), &L.wv));
    if (arch->qkv_bias_required) {
      RETURN_IF_ERROR(bind.Vector(b + "attn_q.bias", c.q_dim(), &L.bq));
      RETURN_IF_ERROR(bind.Vector(b + "attn_k.bias", c.k_dim(), &L.bk));
      RETURN_IF_ERROR(bind.Vector(b + "attn_v.bias", c.v_dim(), &L.bv));
    } else if (arch->bias_allowed) {
      RETURN_IF_ERROR(bind.OptionalVector(b + "attn_q.bias", c.q_dim(), &L.bq));
      RETURN_IF_ERROR(bind.OptionalVector(b + "attn_k.bias", c.k_dim(), &L.bk));
      RETURN_IF_ERROR(bind.OptionalVector(b + "attn_v.bias", c.v_dim(), &L.bv));
    }
    if (arch->bias_allowed && arch->arch == Arch::kLlama) {
      RETURN_IF_ERROR(bind.OptionalVector(b + "attn_output.bias", c.n_embd, &L.bo));
    }
    if (arch->qk_norm) {
      RETURN_IF_ERROR(bind.Vector(b + "attn_q_norm.weight", c.head_dim_k, &L.q_norm));
      RETURN_IF_ERROR(bind.Vector(b + "attn_k_norm.weight", c.head_dim_k, &L.k_norm));
    }
    RETURN_IF_ERROR(bind.Mat(b + "attn_output.weight", c.attn_dim(), c.n_embd, &L.wo));
    RETURN_IF_ERROR(bind.Vector(b + "ffn_norm.weight", c.n_embd, &L.ffn_norm));
    RETURN_IF_ERROR(bind.Mat(b + "ffn_gate.weight", c.n_embd, c.n_ff, &L.w_gate));
    RETURN_IF_ERROR(bind.Mat(b + "ffn_up.weight", c.n_embd, c.n_ff, &L.w_up));
    RETURN_IF_ERROR(bind.Mat(b + "ffn_down.weight", c.n_ff, c.n_embd, &L.w_down));
  }
  RETURN_IF_ERROR(bind.Vector("output_norm.weight", c.n_embd, &weights_.output_norm));
  if (bind.Lookup("output.weight") != nullptr) {
    RETURN_IF_ERROR(bind.Mat("output.weight", c.n_embd, c.n_vocab, &weights_.output));
  } else {
    weights_.output = weights_.token_embd;  // tied embeddings
  }
  RETURN_IF_ERROR(bind.CheckAllUsed());

  // --- packed copies for the matrix products (a tied output shares token_embd's rows but is packed on its own) ---
  std::vector<Matrix*> matrices;
  for (LayerWeights& L : weights_.layers) {
    for (Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) matrices.push_back(m);
  }
  matrices.push_back(&weights_.output);
  packed_.resize(matrices.size());
  for (size_t i = 0; i < matrices.size(); ++i) RETURN_IF_ERROR(PackMatrix(matrices[i], &packed_[i]));

  // --- tokenizer ---
  ASSIGN_OR_RETURN(tokenizer_, Tokenizer::FromGguf(gguf_));
  if (tokenizer_.n_tokens() != c.n_vocab) {
    return Status::Error("tokenizer has " + std::to_string(tokenizer_.n_tokens()) + " tokens but token_embd.weight has " +
                         std::to_string(c.n_vocab) + " rows");
  }
  return Status::Ok();
}

PackedStorage::PackedStorage(PackedStorage&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      mapped_(std::exchange(other.mapped_, 0)),
      data_(std::exchange(other.data_, nullptr)) {}

PackedStorage& PackedStorage::operator=(PackedStorage&& other) noexcept {
  if (this != &other) {
    Release();
    base_ = std::exchange(other.base_, nullptr);
    mapped_ = std::exchange(other.mapped_, 0);
    data_ = std::exchange(other.data_, nullptr);
  }
  return *this;
}

PackedStorage::~PackedStorage() { Release(); }

void PackedStorage::Release() {
  if (base_ != nullptr) munmap(base_, mapped_);
  base_ = nullptr;
  mapped_ = 0;
  data_ = nullptr;
}

Status PackedStorage::Allocate(size_t bytes) {
  Release();
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t mapped = bytes + kHugePage;
  void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return Status::Error("mmap " + std::to_string(mapped) + " bytes: " + std::strerror(errno));
  base_ = base;
  mapped_ = mapped;
  const uintptr_t aligned = (reinterpret_cast<uintptr_t>(base) + kHugePage - 1) & ~(kHugePage - 1);
  data_ = reinterpret_cast<uint8_t*>(aligned);
  // Advice only: without THP (or with it disabled) the pages are 4 KiB.
  madvise(data_, bytes, MADV_HUGEPAGE);
  return Status::Ok();
}

Status PackMatrix(Matrix* w, PackedStorage* storage) {
  const kernels::TypeKernels* k = kernels::FindWeight(w->type);
  if (k == nullptr || k->pack == nullptr) return Status::Ok();
  const size_t bytes = k->packed_bytes(w->rows, w->cols);
  if (Status s = storage->Allocate(bytes); !s.ok()) {
    return Status::Error("packing a " + std::to_string(w->rows) + " x " + std::to_string(w->cols) + " " +
                         TensorTypeName(w->type) + " matrix: " + s.message());
  }
  k->pack(w->data, w->row_bytes, w->rows, w->cols, storage->data());
  w->packed = storage->data();
  return Status::Ok();
}

}  // namespace appliance::runtime
