// A tiny llama-architecture GGUF built in memory (dim 8, 2 heads, 1 KV head,
// FFN 16, 2 layers, byte-level vocab), with knobs to break it in one place.
#pragma once

#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/runtime/gguf_builder.h"

namespace appliance::runtime::testing {

struct TinyOptions {
  std::string arch = "llama";
  bool with_output = true;
  uint32_t n_embd = 8, n_head = 2, n_head_kv = 1, n_ff = 16, n_layer = 2, n_ctx = 64;
  float rms_eps = 1e-5f;
  std::set<std::string> omit;                                  // tensors to leave out
  std::map<std::string, std::vector<uint64_t>> shape_override;  // name -> dims (data sized to match)
  std::map<std::string, uint32_t> type_override;               // name -> ggml type id (data sized to match)
  std::vector<std::string> extra;                              // additional 1-D F32 tensors
  std::map<std::string, uint32_t> extra_u32;                   // additional/overriding u32 metadata
  uint32_t alignment = 32;
  bool misalign = false;  // put a 2-byte tensor first with alignment 2
  int32_t vocab_extra = 0;  // tokens added to the vocab but not to token_embd
  bool zero_output = false;  // output.weight all zeros: every logit 0, greedy picks token 0
};

inline std::vector<uint8_t> BuildTinyLlama(const TinyOptions& o = {}) {
  GgufBuilder b;
  if (o.misalign) b.Alignment(2);
  else if (o.alignment != 32) b.Alignment(o.alignment);
  b.KvString("general.architecture", o.arch).KvString("general.name", "tiny");
  std::map<std::string, uint32_t> u32 = {{o.arch + ".embedding_length", o.n_embd},
                                         {o.arch + ".block_count", o.n_layer},
                                         {o.arch + ".attention.head_count", o.n_head},
                                         {o.arch + ".attention.head_count_kv", o.n_head_kv},
                                         {o.arch + ".feed_forward_length", o.n_ff},
                                         {o.arch + ".context_length", o.n_ctx}};
  for (const auto& [k, v] : o.extra_u32) u32[k] = v;
  for (const auto& [k, v] : u32) b.KvU32(k, v);
  b.KvF32(o.arch + ".attention.layer_norm_rms_epsilon", o.rms_eps);

  // Vocab: <unk> <s> </s>, 256 byte tokens, U+2581.
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  for (int i = 0; i < 256; ++i) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", i);
    tokens.push_back(name);
    types.push_back(6);
  }
  tokens.push_back("\xe2\x96\x81");
  types.push_back(1);
  const uint64_t n_vocab = tokens.size();
  for (int32_t i = 0; i < o.vocab_extra; ++i) {
    tokens.push_back("extra" + std::to_string(i));
    types.push_back(1);
  }
  b.KvString("tokenizer.ggml.model", "llama");
  b.KvStringArray("tokenizer.ggml.tokens", tokens);
  b.KvF32Array("tokenizer.ggml.scores", std::vector<float>(tokens.size(), 0.0f));
  b.KvI32Array("tokenizer.ggml.token_type", types);

  if (o.misalign) b.Tensor("pad", {1}, 1, {0, 0});
  uint32_t seed = 12345;
  auto next = [&seed]() {  // deterministic small values in [-0.5, 0.5)
    seed = seed * 1664525u + 1013904223u;
    return static_cast<float>(seed >> 8) / 16777216.0f - 0.5f;
  };
  const uint64_t hd = o.n_embd / (o.n_head == 0 ? 1 : o.n_head);
  auto add = [&](const std::string& name, std::vector<uint64_t> dims, bool norm) {
    if (o.omit.count(name)) return;
    if (auto it = o.shape_override.find(name); it != o.shape_override.end()) dims = it->second;
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;
    if (auto it = o.type_override.find(name); it != o.type_override.end()) {
      // Sized for q4_0 (18 bytes per 32) or any 1-element-block type of 2 bytes.
      const uint64_t bytes = it->second == 2 ? n / 32 * 18 : n * 2;
      b.Tensor(name, dims, it->second, std::vector<uint8_t>(bytes, 0));
      return;
    }
    std::vector<float> v(n);
    for (float& x : v) x = norm ? 1.0f + 0.1f * next() : next();
    if (o.zero_output && name == "output.weight") std::fill(v.begin(), v.end(), 0.0f);
    b.TensorF32(name, dims, v);
  };
  add("token_embd.weight", {o.n_embd, n_vocab}, false);
  for (uint32_t l = 0; l < o.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {o.n_embd}, true);
    add(p + "attn_q.weight", {o.n_embd, o.n_head * hd}, false);
    add(p + "attn_k.weight", {o.n_embd, o.n_head_kv * hd}, false);
    add(p + "attn_v.weight", {o.n_embd, o.n_head_kv * hd}, false);
    add(p + "attn_output.weight", {o.n_head * hd, o.n_embd}, false);
    add(p + "ffn_norm.weight", {o.n_embd}, true);
    add(p + "ffn_gate.weight", {o.n_embd, o.n_ff}, false);
    add(p + "ffn_up.weight", {o.n_embd, o.n_ff}, false);
    add(p + "ffn_down.weight", {o.n_ff, o.n_embd}, false);
  }
  add("output_norm.weight", {o.n_embd}, true);
  if (o.with_output) add("output.weight", {o.n_embd, n_vocab}, false);
  for (const std::string& e : o.extra) add(e, {o.n_embd}, true);
  return b.Build();
}

}  // namespace appliance::runtime::testing
