// The project's test-model writer: a llama / qwen2 / qwen3 GGUF with seeded
// random weights in any mix of tensor types, written in memory, together with
// the exact values every tensor encodes (decoded by tests/runtime/quant_ref.h,
// not by the engine) for reference computations.
//
// The vocabulary is a small SentencePiece ("llama") one: <unk> <s> </s>, the
// 256 byte tokens and U+2581, so any text tokenizes. Weights are uniform with
// standard deviation 1/sqrt(fan-in) for matrices (activations stay O(1)),
// +-1 for the embeddings, 1 +- 0.2 for norms and +-0.2 for biases, so that
// logits spread over several units and top-1 is rarely a near tie.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/runtime/gguf_builder.h"
#include "tests/runtime/quant_ref.h"

namespace appliance::runtime::testing {

struct ModelSpec {
  std::string arch = "llama";  // llama, qwen2, qwen3
  uint32_t n_embd = 64, n_head = 4, n_head_kv = 2, n_ff = 96, n_layer = 2, n_ctx = 128;
  uint32_t key_length = 0;    // 0: key absent (head size n_embd / n_head)
  uint32_t value_length = 0;  // 0: key absent
  uint32_t n_rot = 0;         // 0: rope.dimension_count absent (= key head size)
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  std::string rope_scaling_type;  // "" = key absent
  float rope_scaling_factor = 0;  // 0 = key absent
  bool tied_output = false;       // no output.weight: logits from token_embd
  bool qkv_bias = false;          // attn_q/k/v.bias
  bool o_bias = false;            // attn_output.bias (llama only)
  bool qk_norm = false;           // attn_q_norm / attn_k_norm (qwen3)
  uint32_t type = kTypeF32;       // type of every matrix not in `types`
  // Per-tensor types by name suffix, e.g. {"ffn_down.weight", kTypeQ5_1}; the
  // longest matching suffix wins ("blk.1.ffn_down.weight" beats "ffn_down.weight").
  std::map<std::string, uint32_t> types;
  uint64_t seed = 1;
  // Metadata surgery for hostile-file tests: keys left out, and keys whose
  // value is replaced by (GGUF value type, encoded value); added if absent.
  std::set<std::string> omit_kvs;
  std::map<std::string, std::pair<uint32_t, std::vector<uint8_t>>> raw_kvs;
};

struct TestModel {
  ModelSpec spec;
  std::vector<uint8_t> bytes;  // the GGUF file
  // What each tensor encodes, row-major [rows][cols] (ne[1] x ne[0]).
  std::map<std::string, std::vector<double>> values;
  std::map<std::string, uint32_t> types;  // each tensor's ggml type
  std::vector<std::string> tensor_order;  // tensor i of the file (layout.tensors[i])
  GgufBuilder::Layout layout;             // where each field landed, for corrupting one
  int64_t n_vocab = 0;
  int64_t head_k() const { return spec.key_length ? spec.key_length : spec.n_embd / spec.n_head; }
  int64_t head_v() const { return spec.value_length ? spec.value_length : spec.n_embd / spec.n_head; }
  const std::vector<double>& at(const std::string& name) const { return values.at(name); }
  bool has(const std::string& name) const { return values.count(name) != 0; }
  const GgufBuilder::TensorLayout& tensor(const std::string& name) const {
    for (size_t i = 0; i < tensor_order.size(); ++i) {
      if (tensor_order[i] == name) return layout.tensors[i];
    }
    throw std::invalid_argument("no tensor " + name);
  }
};

inline uint32_t TypeFor(const ModelSpec& s, const std::string& name) {
  uint32_t type = s.type;
  size_t best = 0;
  for (const auto& [suffix, t] : s.types) {
    if (suffix.size() > best && name.size() >= suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      best = suffix.size();
      type = t;
    }
  }
  return type;
}

inline TestModel WriteModel(const ModelSpec& s) {
  TestModel m;
  m.spec = s;
  GgufBuilder b;
  std::set<std::string> written;
  auto kv = [&](const std::string& key, uint32_t type, std::vector<uint8_t> value) {
    written.insert(key);
    if (s.omit_kvs.count(key) != 0) return;
    if (auto it = s.raw_kvs.find(key); it != s.raw_kvs.end()) {
      b.Kv(key, it->second.first, it->second.second);
    } else {
      b.Kv(key, type, std::move(value));
    }
  };
  auto u32 = [&](const std::string& key, uint32_t v) { kv(key, GgufBuilder::kU32, GgufBuilder::Pod(v)); };
  auto f32 = [&](const std::string& key, float v) { kv(key, GgufBuilder::kF32, GgufBuilder::Pod(v)); };
  auto str = [&](const std::string& key, const std::string& v) { kv(key, GgufBuilder::kString, GgufBuilder::Str(v)); };
  const std::string a = s.arch;
  str("general.architecture", a);
  str("general.name", "test-" + a);
  u32(a + ".embedding_length", s.n_embd);
  u32(a + ".block_count", s.n_layer);
  u32(a + ".attention.head_count", s.n_head);
  u32(a + ".attention.head_count_kv", s.n_head_kv);
  u32(a + ".feed_forward_length", s.n_ff);
  u32(a + ".context_length", s.n_ctx);
  f32(a + ".attention.layer_norm_rms_epsilon", s.rms_eps);
  f32(a + ".rope.freq_base", s.rope_freq_base);
  if (s.key_length) u32(a + ".attention.key_length", s.key_length);
  if (s.value_length) u32(a + ".attention.value_length", s.value_length);
  if (s.n_rot) u32(a + ".rope.dimension_count", s.n_rot);
  if (!s.rope_scaling_type.empty()) str(a + ".rope.scaling.type", s.rope_scaling_type);
  if (s.rope_scaling_factor != 0) f32(a + ".rope.scaling.factor", s.rope_scaling_factor);

  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> token_types = {2, 3, 3};
  for (int i = 0; i < 256; ++i) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", i);
    tokens.push_back(name);
    token_types.push_back(6);
  }
  tokens.push_back("\xe2\x96\x81");
  token_types.push_back(1);
  m.n_vocab = static_cast<int64_t>(tokens.size());
  str("tokenizer.ggml.model", "llama");
  kv("tokenizer.ggml.tokens", GgufBuilder::kArray, GgufBuilder::StringArray(tokens));
  kv("tokenizer.ggml.scores", GgufBuilder::kArray,
     GgufBuilder::PodArray(GgufBuilder::kF32, std::vector<float>(tokens.size(), 0.0f)));
  kv("tokenizer.ggml.token_type", GgufBuilder::kArray, GgufBuilder::PodArray(GgufBuilder::kI32, token_types));
  for (const auto& [key, value] : s.raw_kvs) {
    if (written.count(key) == 0) b.Kv(key, value.first, value.second);
  }

  TestRng rng(s.seed);
  // rows x cols values of `type` (1-D tensors: rows = 1, always F32).
  auto add = [&](const std::string& name, uint64_t cols, uint64_t rows, float amplitude, float center, bool matrix) {
    std::vector<float> v(cols * rows);
    for (float& x : v) x = center + rng.Symmetric(amplitude);
    const uint32_t type = matrix ? TypeFor(s, name) : kTypeF32;
    std::vector<uint8_t> data = Encode(type, v.data(), static_cast<int64_t>(v.size()));
    m.values[name] = Decode(type, data.data(), static_cast<int64_t>(v.size()));
    m.types[name] = type;
    m.tensor_order.push_back(name);
    std::vector<uint64_t> dims = matrix ? std::vector<uint64_t>{cols, rows} : std::vector<uint64_t>{cols};
    b.Tensor(name, dims, type, std::move(data));
  };
  // Uniform on [-a, a] has std a / sqrt(3): a = sqrt(3 / fan_in) gives std 1/sqrt(fan_in).
  auto fan = [](uint64_t fan_in) { return static_cast<float>(std::sqrt(3.0 / static_cast<double>(fan_in))); };
  const uint64_t hk = static_cast<uint64_t>(m.head_k()), hv = static_cast<uint64_t>(m.head_v());
  const uint64_t q_dim = s.n_head * hk, k_dim = s.n_head_kv * hk, v_dim = s.n_head_kv * hv, a_dim = s.n_head * hv;
  const uint64_t nv = static_cast<uint64_t>(m.n_vocab);
  add("token_embd.weight", s.n_embd, nv, 1.0f, 0.0f, true);
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", s.n_embd, 1, 0.2f, 1.0f, false);
    add(p + "attn_q.weight", s.n_embd, q_dim, fan(s.n_embd), 0.0f, true);
    add(p + "attn_k.weight", s.n_embd, k_dim, fan(s.n_embd), 0.0f, true);
    add(p + "attn_v.weight", s.n_embd, v_dim, fan(s.n_embd), 0.0f, true);
    if (s.qkv_bias) {
      add(p + "attn_q.bias", q_dim, 1, 0.2f, 0.0f, false);
      add(p + "attn_k.bias", k_dim, 1, 0.2f, 0.0f, false);
      add(p + "attn_v.bias", v_dim, 1, 0.2f, 0.0f, false);
    }
    if (s.qk_norm) {
      add(p + "attn_q_norm.weight", hk, 1, 0.2f, 1.0f, false);
      add(p + "attn_k_norm.weight", hk, 1, 0.2f, 1.0f, false);
    }
    add(p + "attn_output.weight", a_dim, s.n_embd, fan(a_dim), 0.0f, true);
    if (s.o_bias) add(p + "attn_output.bias", s.n_embd, 1, 0.2f, 0.0f, false);
    add(p + "ffn_norm.weight", s.n_embd, 1, 0.2f, 1.0f, false);
    add(p + "ffn_gate.weight", s.n_embd, s.n_ff, fan(s.n_embd), 0.0f, true);
    add(p + "ffn_up.weight", s.n_embd, s.n_ff, fan(s.n_embd), 0.0f, true);
    add(p + "ffn_down.weight", s.n_ff, s.n_embd, fan(s.n_ff), 0.0f, true);
  }
  add("output_norm.weight", s.n_embd, 1, 0.2f, 1.0f, false);
  if (!s.tied_output) add("output.weight", s.n_embd, nv, fan(s.n_embd) * 2.0f, 0.0f, true);
  m.bytes = b.Build(&m.layout);
  return m;
}

}  // namespace appliance::runtime::testing
