// A decoder-only transformer loaded from a GGUF file (llama2.c style: plain
// structs, weights are pointers into the file mapping, nothing is copied).
//
// Architectures (general.architecture), all pre-norm RMSNorm + SwiGLU:
//   llama  grouped-query attention, adjacent-pair RoPE, optional q/k/v/o biases,
//          tied embeddings when output.weight is absent, linear RoPE scaling
//   qwen2  llama with required q/k/v biases and NeoX RoPE (pairs (i, i + n_rot/2))
//   qwen3  qwen2 without biases, with a per-head RMSNorm of q and k before RoPE,
//          and head dims (attention.key_length/value_length) that may differ
//          from embedding_length / head_count
//
// Load() checks everything the forward pass relies on: the hyperparameters
// (bounded, consistent), every tensor's presence, shape and type against them,
// and the tokenizer. After Load() the forward pass does no checking.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/mapped_file.h"
#include "base/status.h"
#include "runtime/gguf.h"
#include "runtime/tensor_type.h"
#include "runtime/tokenizer.h"

namespace appliance::runtime {

enum class Arch { kLlama, kQwen2, kQwen3 };
const char* ArchName(Arch arch);  // "llama", as in general.architecture

// How RoPE pairs up the first n_rot dimensions of a head.
enum class RopeType {
  kNorm,  // llama: adjacent pairs (2j, 2j + 1)
  kNeox,  // GPT-NeoX layout (qwen2, qwen3): pairs (j, j + n_rot / 2)
};

// Hyperparameters; keys are "<arch>.<name>", e.g. llama.embedding_length.
struct LlamaConfig {
  Arch arch = Arch::kLlama;
  int64_t n_vocab = 0;      // rows of token_embd
  int64_t n_embd = 0;       // embedding_length
  int64_t n_layer = 0;      // block_count
  int64_t n_head = 0;       // attention.head_count
  int64_t n_head_kv = 0;    // attention.head_count_kv (default n_head)
  int64_t head_dim_k = 0;   // attention.key_length (default n_embd / n_head): query and key head size
  int64_t head_dim_v = 0;   // attention.value_length (default n_embd / n_head): value head size
  int64_t n_ff = 0;         // feed_forward_length
  int64_t n_rot = 0;        // rope.dimension_count (default head_dim_k)
  int64_t n_ctx_train = 0;  // context_length
  float rms_eps = 1e-5f;    // attention.layer_norm_rms_epsilon
  float rope_freq_base = 10000.0f;  // rope.freq_base
  // Linear RoPE scaling (position interpolation): positions are multiplied by
  // this, 1 / rope.scaling.factor (or the older rope.scale_linear).
  float rope_freq_scale = 1.0f;
  RopeType rope_type = RopeType::kNorm;

  int64_t q_dim() const { return n_head * head_dim_k; }     // one token's queries
  int64_t k_dim() const { return n_head_kv * head_dim_k; }  // one token's keys (a K cache row)
  int64_t v_dim() const { return n_head_kv * head_dim_v; }  // one token's values (a V cache row)
  int64_t attn_dim() const { return n_head * head_dim_v; }  // attention output, input of wo
};

// A weight matrix in the mapping: `rows` rows of `cols` elements of `type`,
// row-major, each row `row_bytes` long. In ggml terms ne[0] = cols (the input
// features, contiguous) and ne[1] = rows (the output features): y = W x.
struct Matrix {
  TensorType type = TensorType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
  const uint8_t* data = nullptr;
  // The same matrix in the kernels' packed layout (TypeKernels::pack), or
  // null; the matrix products use it when the current kernels have
  // gemm_packed. Owned by whoever packed it (Model::packed_).
  const uint8_t* packed = nullptr;

  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
};

// Anonymous memory for a packed matrix, 2 MiB-aligned and advised for
// transparent huge pages: decoding streams it once per token, and through
// 4 KiB pages that costs a TLB miss every 4 KiB (measured on a 1B model:
// 0.82 of the bandwidth ceiling instead of 0.95). Unmapped on destruction.
class PackedStorage {
 public:
  PackedStorage() = default;
  PackedStorage(PackedStorage&& other) noexcept;
  PackedStorage& operator=(PackedStorage&& other) noexcept;
  PackedStorage(const PackedStorage&) = delete;
  PackedStorage& operator=(const PackedStorage&) = delete;
  ~PackedStorage();

  // Maps `bytes` (zeroed), replacing any earlier mapping.
  Status Allocate(size_t bytes);
  uint8_t* data() const { return data_; }

 private:
  void Release();
  void* base_ = nullptr;  // the mapping, for munmap
  size_t mapped_ = 0;
  uint8_t* data_ = nullptr;  // base_ rounded up to 2 MiB
};

// Packs `w` into `storage` and points w->packed at it when the current
// kernels have a packed layout for w's type; otherwise leaves both alone.
Status PackMatrix(Matrix* w, PackedStorage* storage);

// Vectors are F32 in the mapping; optional ones are null when absent.
struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  Matrix wq;                         // [q_dim rows][n_embd cols]
  Matrix wk;                         // [k_dim rows][n_embd cols]
  Matrix wv;                         // [v_dim rows][n_embd cols]
  const float* bq = nullptr;         // [q_dim]  qwen2 (required), llama (optional)
  const float* bk = nullptr;         // [k_dim]  as bq
  const float* bv = nullptr;         // [v_dim]  as bq
  const float* q_norm = nullptr;     // [head_dim_k]  qwen3: RMSNorm weight of every query head
  const float* k_norm = nullptr;     // [head_dim_k]  qwen3: of every key head
  Matrix wo;                         // [n_embd rows][attn_dim cols]
  const float* bo = nullptr;         // [n_embd]  llama (optional)
  const float* ffn_norm = nullptr;   // [n_embd]
  Matrix w_gate;                     // [n_ff rows][n_embd cols]
  Matrix w_up;                       // [n_ff rows][n_embd cols]
  Matrix w_down;                     // [n_embd rows][n_ff cols]
};

struct LlamaWeights {
  Matrix token_embd;                   // [n_vocab rows][n_embd cols]
  std::vector<LayerWeights> layers;    // n_layer
  const float* output_norm = nullptr;  // [n_embd]
  Matrix output;                       // [n_vocab rows][n_embd cols]; token_embd when the file has no output.weight
};

class Model {
 public:
  // Bounds on hyperparameters: far above any model this appliance targets,
  // low enough that sizes derived from them cannot overflow.
  static constexpr int64_t kMaxEmbd = 1 << 16;
  static constexpr int64_t kMaxLayers = 1024;
  static constexpr int64_t kMaxHeads = 1024;
  static constexpr int64_t kMaxHeadDim = 1024;
  static constexpr int64_t kMaxAttnDim = 1 << 18;  // q_dim and attn_dim
  static constexpr int64_t kMaxFf = 1 << 18;
  static constexpr int64_t kMaxVocab = 1 << 22;

  // Takes ownership of the mapping; `name` (a path or "fd 4") prefixes errors.
  static StatusOr<std::unique_ptr<Model>> Load(MappedFile file, const std::string& name);
  static StatusOr<std::unique_ptr<Model>> LoadPath(const std::string& path);

  const LlamaConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const GgufFile& gguf() const { return gguf_; }
  // general.name, or "" when the file has none.
  const std::string& name() const { return name_; }

 private:
  Model() = default;
  Status Init(const std::string& name);

  MappedFile file_;
  GgufFile gguf_;
  LlamaConfig config_;
  LlamaWeights weights_;
  // The packed copies of the matrices (PackMatrix), one per packed matrix.
  std::vector<PackedStorage> packed_;
  Tokenizer tokenizer_;
  std::string name_;
};

}  // namespace appliance::runtime
