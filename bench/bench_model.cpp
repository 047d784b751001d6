// appliance-bench-model: writes a llama-architecture GGUF with seeded random
// weights, quantized like llama.cpp's Q4_K_M, for speed benchmarks.
//
//   appliance-bench-model --out FILE [--preset 1b|tiny] [--vocab-from GGUF] [--seed S]
//
// Presets: "1b" is TinyLlama-1.1B's shape (dim 2048, 22 layers, 32 heads,
// 4 KV heads, FFN 5632; about 670 MB), large enough that decoding is bound by
// memory bandwidth, not by the 300 MB L3 of the benchmark machine; "tiny"
// (dim 256, 2 layers) exists for the smoke test.
//
// The tokenizer (every tokenizer.* key) is copied from --vocab-from, by
// default shared/models/bench-d768-q4_k_m.gguf (a real 32000-token llama
// SentencePiece vocab); n_vocab follows it.
//
// Types as llama.cpp's Q4_K_M: Q4_K for token_embd and most matrices, Q6_K for
// output and for attn_v / ffn_down on the "use_more_bits" layers, F32 norms.
// The blocks are random bytes (every q4_K/q6_K bit pattern is a valid block)
// with fixed super-block scales chosen so that weights have an RMS of about
// 0.02, as initialised transformers do: activations stay finite through the
// RMSNorm'd residual stream and the logits spread over a few units.
//
// The file is streamed: tensor data is produced one row at a time into a
// 1 MiB buffer, so memory stays small whatever the model size. It is written
// to FILE.tmp and renamed at the end, so FILE is either complete or absent.
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "base/fd.h"
#include "base/mapped_file.h"
#include "base/status.h"
#include "runtime/gguf.h"
#include "runtime/model.h"
#include "runtime/tensor_type.h"

namespace appliance::bench {
namespace {

using runtime::GgufFile;
using runtime::GgufValue;
using runtime::GgufValueType;
using runtime::TensorType;

struct Preset {
  const char* name;
  uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx;
};
constexpr Preset kPresets[] = {
    {"1b", 2048, 22, 32, 4, 5632, 2048},
    {"tiny", 256, 2, 8, 4, 768, 512},
};

// Super-block scales (f16 bits). q4_K: w = d * sc * q - dmin * m with sc, m
// uniform in [0, 63] and q in [0, 15]; dmin = 7.5 d centres the mean, and
// E[(sc q - 7.5 m)^2] ~ 258^2, so d = 0.02 / 258. q6_K: w = d * s * (q - 32)
// with s a random int8 (RMS 74) and q in [0, 63] (RMS of q - 32: 18.5), so
// d = 0.02 / 1370.
constexpr uint16_t kQ4KD = 0x050C;     // 7.70e-5
constexpr uint16_t kQ4KDmin = 0x10BB;  // 5.77e-4
constexpr uint16_t kQ6KD = 0x00F5;     // 1.46e-5 (an f16 subnormal)
constexpr size_t kQ4KBlockBytes = 144;  // d, dmin, scales[12], qs[128]
constexpr size_t kQ6KBlockBytes = 210;  // ql[128], qh[64], scales[16], d
constexpr uint64_t kAlignment = 32;     // GGUF's default; no general.alignment key is written

// xoshiro256**, seeded by splitmix64: fast enough that writing the file, not
// generating it, is the cost.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& s : s_) {
      seed += 0x9E3779B97F4A7C15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      s = z ^ (z >> 31);
    }
  }
  uint64_t Next() {
    const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = Rotl(s_[3], 45);
    return result;
  }
  void Fill(uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t v = Next();
      std::memcpy(p + i, &v, std::min<size_t>(8, n - i));
    }
  }

 private:
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// Sequential writes through a 1 MiB buffer; counts the bytes for offsets.
class StreamWriter {
 public:
  explicit StreamWriter(UniqueFd fd, std::string name) : fd_(std::move(fd)), name_(std::move(name)) {
    buf_.reserve(kBufferBytes);
  }

  uint64_t offset() const { return offset_; }

  Status Bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const size_t take = std::min(n, kBufferBytes - buf_.size());
      buf_.insert(buf_.end(), p, p + take);
      p += take;
      n -= take;
      offset_ += take;
      if (buf_.size() == kBufferBytes) RETURN_IF_ERROR(Flush());
    }
    return Status::Ok();
  }
  template <typename T>
  Status Pod(T v) {
    return Bytes(&v, sizeof v);
  }
  Status String(std::string_view s) {
    RETURN_IF_ERROR(Pod(static_cast<uint64_t>(s.size())));
    return Bytes(s.data(), s.size());
  }
  Status PadToAlignment() {
    static constexpr uint8_t kZeros[kAlignment] = {};
    return Bytes(kZeros, (kAlignment - offset_ % kAlignment) % kAlignment);
  }
  Status Flush() {
    size_t done = 0;
    while (done < buf_.size()) {
      const ssize_t n = ::write(fd_.get(), buf_.data() + done, buf_.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return PosixError("write " + name_);
      done += static_cast<size_t>(n);
    }
    buf_.clear();
    return Status::Ok();
  }
  Status Close() {
    RETURN_IF_ERROR(Flush());
    if (::fsync(fd_.get()) != 0) return PosixError("fsync " + name_);
    if (::close(fd_.release()) != 0) return PosixError("close " + name_);
    return Status::Ok();
  }

 private:
  static constexpr size_t kBufferBytes = 1 << 20;
  UniqueFd fd_;
  std::string name_;
  std::vector<uint8_t> buf_;
  uint64_t offset_ = 0;
};

struct TensorPlan {
  std::string name;
  uint64_t cols = 0;  // ne[0]
  uint64_t rows = 1;  // ne[1]; 1 and n_dims 1 for vectors
  uint32_t n_dims = 2;
  TensorType type = TensorType::kF32;
  uint64_t row_bytes = 0;
  uint64_t offset = 0;  // in the data section
};

// llama.cpp's use_more_bits(): the first and last eighth of the layers and
// every third layer in between get Q6_K for attn_v and ffn_down in Q4_K_M.
bool UseMoreBits(uint32_t layer, uint32_t n_layer) {
  return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

StatusOr<std::vector<TensorPlan>> PlanTensors(const Preset& p, uint64_t n_vocab) {
  std::vector<TensorPlan> plan;
  auto add = [&](std::string name, uint64_t cols, uint64_t rows, TensorType type) -> Status {
    const runtime::TensorTypeInfo* info = runtime::FindTensorType(static_cast<uint32_t>(type));
    if (info == nullptr || cols % info->block_elems != 0) {
      return Status::Error(name + ": " + std::to_string(cols) + " columns are not a whole number of " +
                           runtime::TensorTypeName(type) + " blocks");
    }
    TensorPlan t{std::move(name), cols, rows, rows == 1 ? 1u : 2u, type, cols / info->block_elems * info->block_bytes};
    plan.push_back(std::move(t));
    return Status::Ok();
  };
  const uint64_t head_dim = p.n_embd / p.n_head;
  const uint64_t kv_dim = head_dim * p.n_head_kv;
  RETURN_IF_ERROR(add("token_embd.weight", p.n_embd, n_vocab, TensorType::kQ4_K));
  for (uint32_t l = 0; l < p.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    const TensorType more = UseMoreBits(l, p.n_layer) ? TensorType::kQ6_K : TensorType::kQ4_K;
    RETURN_IF_ERROR(add(b + "attn_norm.weight", p.n_embd, 1, TensorType::kF32));
    RETURN_IF_ERROR(add(b + "attn_q.weight", p.n_embd, p.n_embd, TensorType::kQ4_K));
    RETURN_IF_ERROR(add(b + "attn_k.weight", p.n_embd, kv_dim, TensorType::kQ4_K));
    RETURN_IF_ERROR(add(b + "attn_v.weight", p.n_embd, kv_dim, more));
    RETURN_IF_ERROR(add(b + "attn_output.weight", p.n_embd, p.n_embd, TensorType::kQ4_K));
    RETURN_IF_ERROR(add(b + "ffn_norm.weight", p.n_embd, 1, TensorType::kF32));
    RETURN_IF_ERROR(add(b + "ffn_gate.weight", p.n_embd, p.n_ff, TensorType::kQ4_K));
    RETURN_IF_ERROR(add(b + "ffn_up.weight", p.n_embd, p.n_ff, TensorType::kQ4_K));
    RETURN_IF_ERROR(add(b + "ffn_down.weight", p.n_ff, p.n_embd, more));
  }
  RETURN_IF_ERROR(add("output_norm.weight", p.n_embd, 1, TensorType::kF32));
  RETURN_IF_ERROR(add("output.weight", p.n_embd, n_vocab, TensorType::kQ6_K));
  uint64_t offset = 0;
  for (TensorPlan& t : plan) {
    t.offset = offset;
    offset += (t.row_bytes * t.rows + kAlignment - 1) / kAlignment * kAlignment;
  }
  return plan;
}

// One row of random blocks (or of 1.0f norm weights).
void FillRow(const TensorPlan& t, Rng& rng, uint8_t* row) {
  if (t.type == TensorType::kF32) {
    const float one = 1.0f;
    for (uint64_t i = 0; i < t.cols; ++i) std::memcpy(row + 4 * i, &one, 4);
    return;
  }
  rng.Fill(row, t.row_bytes);
  if (t.type == TensorType::kQ4_K) {
    for (uint64_t b = 0; b < t.row_bytes; b += kQ4KBlockBytes) {
      std::memcpy(row + b, &kQ4KD, 2);
      std::memcpy(row + b + 2, &kQ4KDmin, 2);
    }
  } else {  // kQ6_K: d is the last field
    for (uint64_t b = 0; b < t.row_bytes; b += kQ6KBlockBytes) std::memcpy(row + b + kQ6KBlockBytes - 2, &kQ6KD, 2);
  }
}

// A metadata value copied verbatim from the vocab file.
Status WriteValue(StreamWriter& w, const GgufValue& v) {
  RETURN_IF_ERROR(w.Pod(static_cast<uint32_t>(v.type)));
  if (v.type == GgufValueType::kString) return w.String(v.str);
  if (v.type != GgufValueType::kArray) return w.Bytes(v.raw.data(), v.raw.size());
  RETURN_IF_ERROR(w.Pod(static_cast<uint32_t>(v.elem_type)));
  RETURN_IF_ERROR(w.Pod(v.count));
  if (v.elem_type != GgufValueType::kString) return w.Bytes(v.raw.data(), v.raw.size());
  for (std::string_view s : v.strings) RETURN_IF_ERROR(w.String(s));
  return Status::Ok();
}

Status WriteModel(const Preset& p, const std::string& vocab_path, uint64_t seed, const std::string& out) {
  ASSIGN_OR_RETURN(MappedFile vocab_file, MappedFile::Open(vocab_path));
  ASSIGN_OR_RETURN(GgufFile vocab, GgufFile::Parse(vocab_file.bytes()));
  const GgufValue* tokens = vocab.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr || tokens->type != GgufValueType::kArray || tokens->count == 0 ||
      tokens->count > static_cast<uint64_t>(runtime::Model::kMaxVocab)) {
    return Status::Error(vocab_path + ": no tokenizer.ggml.tokens array of 1.." +
                         std::to_string(runtime::Model::kMaxVocab) + " tokens to copy");
  }
  const uint64_t n_vocab = tokens->count;
  ASSIGN_OR_RETURN(std::vector<TensorPlan> plan, PlanTensors(p, n_vocab));
  std::vector<const runtime::GgufKv*> tokenizer_kvs;
  for (const runtime::GgufKv& kv : vocab.kvs()) {
    if (kv.key.starts_with("tokenizer.")) tokenizer_kvs.push_back(&kv);
  }

  const std::string tmp = out + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return PosixError("create " + tmp);
  StreamWriter w(std::move(fd), tmp);

  struct U32Kv {
    const char* key;
    uint32_t value;
  };
  const U32Kv u32_kvs[] = {
      {"llama.context_length", p.n_ctx},
      {"llama.embedding_length", p.n_embd},
      {"llama.block_count", p.n_layer},
      {"llama.feed_forward_length", p.n_ff},
      {"llama.attention.head_count", p.n_head},
      {"llama.attention.head_count_kv", p.n_head_kv},
      {"llama.rope.dimension_count", p.n_embd / p.n_head},
      {"llama.vocab_size", static_cast<uint32_t>(n_vocab)},
      {"general.quantization_version", 2},
      {"general.file_type", 15},  // LLAMA_FTYPE_MOSTLY_Q4_K_M
  };
  const uint64_t n_kv = 3 + std::size(u32_kvs) + tokenizer_kvs.size();

  RETURN_IF_ERROR(w.Bytes("GGUF", 4));
  RETURN_IF_ERROR(w.Pod(uint32_t{3}));
  RETURN_IF_ERROR(w.Pod(static_cast<uint64_t>(plan.size())));
  RETURN_IF_ERROR(w.Pod(n_kv));
  auto string_kv = [&](std::string_view key, std::string_view value) -> Status {
    RETURN_IF_ERROR(w.String(key));
    RETURN_IF_ERROR(w.Pod(static_cast<uint32_t>(GgufValueType::kString)));
    return w.String(value);
  };
  RETURN_IF_ERROR(string_kv("general.architecture", "llama"));
  RETURN_IF_ERROR(string_kv("general.name", std::string("bench-") + p.name + "-q4_k_m"));
  for (const U32Kv& kv : u32_kvs) {
    RETURN_IF_ERROR(w.String(kv.key));
    RETURN_IF_ERROR(w.Pod(static_cast<uint32_t>(GgufValueType::kU32)));
    RETURN_IF_ERROR(w.Pod(kv.value));
  }
  RETURN_IF_ERROR(w.String("llama.attention.layer_norm_rms_epsilon"));
  RETURN_IF_ERROR(w.Pod(static_cast<uint32_t>(GgufValueType::kF32)));
  RETURN_IF_ERROR(w.Pod(1e-5f));
  for (const runtime::GgufKv* kv : tokenizer_kvs) {
    RETURN_IF_ERROR(w.String(kv->key));
    RETURN_IF_ERROR(WriteValue(w, kv->value));
  }
  for (const TensorPlan& t : plan) {
    RETURN_IF_ERROR(w.String(t.name));
    RETURN_IF_ERROR(w.Pod(t.n_dims));
    RETURN_IF_ERROR(w.Pod(t.cols));
    if (t.n_dims == 2) RETURN_IF_ERROR(w.Pod(t.rows));
    RETURN_IF_ERROR(w.Pod(static_cast<uint32_t>(t.type)));
    RETURN_IF_ERROR(w.Pod(t.offset));
  }
  RETURN_IF_ERROR(w.PadToAlignment());

  const uint64_t data_start = w.offset();
  Rng rng(seed);
  std::vector<uint8_t> row;
  for (const TensorPlan& t : plan) {
    RETURN_IF_ERROR(w.PadToAlignment());
    if (w.offset() - data_start != t.offset) return Status::Error("internal: " + t.name + " landed off its offset");
    row.resize(t.row_bytes);
    for (uint64_t r = 0; r < t.rows; ++r) {
      FillRow(t, rng, row.data());
      RETURN_IF_ERROR(w.Bytes(row.data(), row.size()));
    }
  }
  const uint64_t total = w.offset();
  RETURN_IF_ERROR(w.Close());
  if (::rename(tmp.c_str(), out.c_str()) != 0) return PosixError("rename " + tmp + " to " + out);
  std::printf("%s: %s preset, %zu tensors, %llu bytes, vocab %llu from %s\n", out.c_str(), p.name, plan.size(),
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(n_vocab), vocab_path.c_str());
  return Status::Ok();
}

}  // namespace
}  // namespace appliance::bench

int main(int argc, char** argv) {
  using namespace appliance::bench;
  CLI::App app{"Writes a llama GGUF with seeded random Q4_K_M-style weights for benchmarks"};
  std::string out, preset_name = "1b", vocab = std::string(APPLIANCE_SHARED_DIR) + "/models/bench-d768-q4_k_m.gguf";
  uint64_t seed = 1;
  app.add_option("--out", out, "Output GGUF file")->required();
  app.add_option("--preset", preset_name, "Model shape: 1b (dim 2048, 22 layers, ~670 MB) or tiny")
      ->capture_default_str();
  app.add_option("--vocab-from", vocab, "GGUF whose tokenizer.* keys are copied")->capture_default_str();
  app.add_option("--seed", seed, "Weight seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  for (const Preset& p : kPresets) {
    if (preset_name != p.name) continue;
    const appliance::Status s = WriteModel(p, vocab, seed, out);
    if (!s.ok()) {
      std::fprintf(stderr, "error: %s\n", s.message().c_str());
      return 1;
    }
    return 0;
  }
  std::fprintf(stderr, "error: unknown preset '%s' (1b, tiny)\n", preset_name.c_str());
  return 2;
}
