// A llama-architecture model loaded from a GGUF file (llama2.c style: plain
// structs, weights are pointers into the file mapping, nothing is copied).
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

struct LlamaConfig {
  int64_t n_vocab = 0;      // rows of token_embd
  int64_t n_embd = 0;       // llama.embedding_length
  int64_t n_layer = 0;      // llama.block_count
  int64_t n_head = 0;       // llama.attention.head_count
  int64_t n_head_kv = 0;    // llama.attention.head_count_kv (default n_head)
  int64_t head_dim = 0;     // n_embd / n_head
  int64_t n_ff = 0;         // llama.feed_forward_length
  int64_t n_rot = 0;        // llama.rope.dimension_count (default head_dim)
  int64_t n_ctx_train = 0;  // llama.context_length
  float rms_eps = 1e-5f;    // llama.attention.layer_norm_rms_epsilon
  float rope_freq_base = 10000.0f;  // llama.rope.freq_base

  int64_t q_dim() const { return n_head * head_dim; }
  int64_t kv_dim() const { return n_head_kv * head_dim; }
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

  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
};

struct LayerWeights {
  const float* attn_norm = nullptr;  // [n_embd]
  Matrix wq;                         // [q_dim rows][n_embd cols]
  Matrix wk;                         // [kv_dim rows][n_embd cols]
  Matrix wv;                         // [kv_dim rows][n_embd cols]
  Matrix wo;                         // [n_embd rows][q_dim cols]
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
  Tokenizer tokenizer_;
  std::string name_;
};

}  // namespace appliance::runtime
