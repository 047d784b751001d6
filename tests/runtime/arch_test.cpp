// The architectures (llama with GQA, tied embeddings, partial and linearly
// scaled RoPE, biases; qwen2 with q/k/v biases and NeoX RoPE; qwen3 with
// per-head q/k norms and head sizes apart from n_embd / n_head) against the
// naive double-precision forward pass of tests/runtime/naive_forward.h, on
// models written by tests/runtime/model_writer.h in every weight type.
//
// Metric: per position, max |engine - naive| over all logits divided by
// max(1, max |naive logit|) of that position; and top-1 agreement.
//
// Two references: activations exact (double throughout), and activations
// rounded before each product as the weight's vec_dot_type defines (f16,
// bf16, 8-bit q8_0 / q8_K blocks), the one approximation the engine makes on
// purpose. Against the second the engine agrees to ~1e-7 until a "rounding
// flip": a float difference of ~1e-7 moves one activation across a rounding
// boundary, one step (2^-11 relative for f16, 1/127 of a block's maximum for
// 8 bits) that the KV cache then carries to later positions. Flips are rare
// (some models have none at all: qwen3_mixed_quants, llama_mqa_mixed_quants)
// but no engine that is not bit-identical avoids them, so both references get
// the same tolerance, from what separates exact from rounded activations:
//   f32         1e-4: float vs double arithmetic and RoPE angles (measured ~4e-7)
//   f16         5e-3: activations rounded to f16 before every product, as
//               llama.cpp does (measured ~8e-4)
//   bf16        2e-2: the same with bf16's 2^-8 steps (measured ~7.5e-3)
//   quantized   5e-2: activations quantized to 8-bit blocks (a step of 1/127 of
//               the block maximum) before the integer dot products (measured
//               ~2.2e-2 with 2 layers)
// A structural mistake (wrong RoPE pairing, a missing bias or norm, a head
// mapped to the wrong KV head) moves logits by O(1), far above all of these,
// and the f32 models pin the structure down to float rounding.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "base/fd.h"
#include "runtime/context.h"
#include "runtime/kernels/kernels.h"
#include "runtime/model.h"
#include "tests/runtime/model_writer.h"
#include "tests/runtime/naive_forward.h"

namespace appliance::runtime {
namespace {

using testing::ModelSpec;
using testing::TestModel;

StatusOr<std::unique_ptr<Model>> LoadBytes(const std::vector<uint8_t>& bytes) {
  UniqueFd fd(::memfd_create("model", MFD_CLOEXEC));
  if (!fd.valid()) return PosixError("memfd_create");
  if (::write(fd.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) return PosixError("write");
  ASSIGN_OR_RETURN(MappedFile file, MappedFile::FromFd(fd.get(), "test-model"));
  return Model::Load(std::move(file), "test-model");
}

struct ArchCase {
  const char* name;
  ModelSpec spec;
  double tol;          // against the reference with exact activations
  double tol_rounded;  // against the reference that rounds activations like the engine
};

ModelSpec Llama() {
  ModelSpec s;
  s.arch = "llama";
  s.n_embd = 64;
  s.n_head = 8;
  s.n_head_kv = 2;  // 4 query heads per KV head
  s.n_ff = 96;
  return s;
}
ModelSpec Qwen2() {
  ModelSpec s;
  s.arch = "qwen2";
  s.n_embd = 64;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 128;
  s.qkv_bias = true;
  s.rope_freq_base = 1000000.0f;
  s.rms_eps = 1e-6f;
  return s;
}
ModelSpec Qwen3() {
  ModelSpec s;
  s.arch = "qwen3";
  s.n_embd = 64;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.key_length = 32;    // q_dim 128 != n_embd
  s.value_length = 24;  // attention output 96
  s.n_ff = 128;
  s.qk_norm = true;
  s.rope_freq_base = 1000000.0f;
  s.rms_eps = 1e-6f;
  return s;
}

// Mixed 4-6 bit types as a Q4_K_M file mixes them, with the fallbacks a
// quantizer uses for rows that are not a multiple of 256 (n_ff 320: ffn_down
// rows; qwen3's 192-wide attention output: attn_output rows).
void MixedQuants(ModelSpec& s) {
  s.n_embd = 256;
  s.n_ff = 320;
  s.types = {{"token_embd.weight", testing::kTypeQ4_K},   {"attn_q.weight", testing::kTypeQ4_K},
             {"attn_k.weight", testing::kTypeQ5_K},       {"attn_v.weight", testing::kTypeQ6_K},
             {"attn_output.weight", testing::kTypeQ4_0},  {"ffn_gate.weight", testing::kTypeQ4_1},
             {"ffn_up.weight", testing::kTypeQ5_0},       {"ffn_down.weight", testing::kTypeQ5_1},
             {"output.weight", testing::kTypeQ8_0},       {"blk.1.ffn_gate.weight", testing::kTypeQ6_K},
             {"blk.1.ffn_up.weight", testing::kTypeQ5_K}, {"blk.1.ffn_down.weight", testing::kTypeQ8_0}};
}

std::vector<ArchCase> Cases() {
  std::vector<ArchCase> c;
  {
    ModelSpec s = Llama();
    c.push_back({"llama_gqa_f32", s, 1e-4, 1e-4});
  }
  {
    ModelSpec s = Llama();
    s.tied_output = true;
    s.rope_scaling_type = "linear";
    s.rope_scaling_factor = 4.0f;
    s.n_rot = 4;  // rotate half of each 8-wide head
    s.qkv_bias = true;
    s.o_bias = true;
    c.push_back({"llama_tied_linear_rope_partial_biases_f32", s, 1e-4, 1e-4});
  }
  {
    ModelSpec s = Llama();
    s.rope_scaling_type = "none";  // "none" ignores the factor
    s.rope_scaling_factor = 8.0f;
    s.type = testing::kTypeF16;
    c.push_back({"llama_scaling_none_f16", s, 5e-3, 5e-3});
  }
  c.push_back({"qwen2_f32", Qwen2(), 1e-4, 1e-4});
  {
    ModelSpec s = Qwen2();
    s.tied_output = true;
    s.n_rot = 8;
    s.type = testing::kTypeBF16;
    c.push_back({"qwen2_tied_partial_rope_bf16", s, 2e-2, 2e-2});
  }
  {
    ModelSpec s = Qwen2();
    MixedQuants(s);
    c.push_back({"qwen2_mixed_quants", s, 5e-2, 5e-2});
  }
  c.push_back({"qwen3_f32", Qwen3(), 1e-4, 1e-4});
  {
    ModelSpec s = Qwen3();
    s.type = testing::kTypeF16;
    c.push_back({"qwen3_f16", s, 5e-3, 5e-3});
  }
  {
    ModelSpec s = Qwen3();
    MixedQuants(s);
    s.key_length = 64;
    s.value_length = 48;
    s.types["attn_output.weight"] = testing::kTypeQ5_0;  // 192 columns
    c.push_back({"qwen3_mixed_quants", s, 5e-2, 5e-2});
  }
  {
    ModelSpec s = Llama();
    MixedQuants(s);
    s.n_head = 4;
    s.n_head_kv = 1;
    c.push_back({"llama_mqa_mixed_quants", s, 5e-2, 5e-2});
  }
  return c;
}

struct Result {
  double max_err = 0;  // max over positions of max |diff| / max(1, max |naive|)
  size_t top1_same = 0, positions = 0;
};

Result Compare(const std::vector<std::vector<double>>& want, const std::vector<std::vector<float>>& got) {
  Result r;
  r.positions = want.size();
  for (size_t p = 0; p < want.size(); ++p) {
    double scale = 1.0, err = 0;
    for (double v : want[p]) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < want[p].size(); ++i) err = std::max(err, std::fabs(want[p][i] - got[p][i]));
    r.max_err = std::max(r.max_err, err / scale);
    const size_t a = static_cast<size_t>(std::max_element(want[p].begin(), want[p].end()) - want[p].begin());
    const size_t b = static_cast<size_t>(std::max_element(got[p].begin(), got[p].end()) - got[p].begin());
    if (a == b) ++r.top1_same;
  }
  return r;
}

class ArchTest : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ArchTest, MatchesNaiveReference) {
  const ArchCase& c = GetParam();
  const TestModel m = testing::WriteModel(c.spec);
  auto model = LoadBytes(m.bytes);
  ASSERT_TRUE(model.ok()) << model.status().message();
  const LlamaConfig& cfg = (*model)->config();
  EXPECT_EQ(cfg.head_dim_k, m.head_k());
  EXPECT_EQ(cfg.head_dim_v, m.head_v());
  EXPECT_EQ(cfg.rope_type, c.spec.arch == "llama" ? RopeType::kNorm : RopeType::kNeox);

  // 40 positions: BOS then seeded random ids.
  testing::TestRng rng(77);
  std::vector<int32_t> tokens = {1};
  while (tokens.size() < 40) tokens.push_back(static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(m.n_vocab)));
  const std::vector<std::vector<double>> exact = testing::NaiveForward(m, tokens, testing::Activations::kExact);
  const std::vector<std::vector<double>> rounded =
      testing::NaiveForward(m, tokens, testing::Activations::kAsVecDotType);

  for (kernels::Isa isa : {kernels::Isa::kPortable, kernels::Isa::kAvx2, kernels::Isa::kAvx512, kernels::Isa::kAmx}) {
    if (!kernels::IsaAvailable(isa)) continue;
    kernels::OverrideIsaForTesting(isa);
    ContextOptions o;
    o.n_threads = 2;
    o.max_batch = 16;  // 40 tokens: batches of 16, 16, 8 (the KV cache carries across)
    auto ctx = Context::Create(**model, o);
    ASSERT_TRUE(ctx.ok()) << ctx.status().message();
    ASSERT_TRUE((*ctx)->Eval(tokens, /*all_logits=*/true).ok());
    std::vector<std::vector<float>> batch, decode;
    for (size_t p = 0; p < tokens.size(); ++p) {
      auto l = (*ctx)->Logits(static_cast<int64_t>(p));
      batch.emplace_back(l.begin(), l.end());
    }
    (*ctx)->Reset();
    for (int32_t t : tokens) {
      const int32_t one[1] = {t};
      ASSERT_TRUE((*ctx)->Eval(one, false).ok());
      auto l = (*ctx)->LastLogits();
      decode.emplace_back(l.begin(), l.end());
    }
    for (const auto& [path, got] : {std::pair{"batch", &batch}, std::pair{"decode", &decode}}) {
      const Result e = Compare(exact, *got);
      const Result r = Compare(rounded, *got);
      std::printf(
          "[arch] %-42s %-8s %-6s exact: max err %.2e (tol %.0e) top1 %zu/%zu | rounded act: %.2e (tol %.0e) "
          "top1 %zu/%zu\n",
          c.name, kernels::IsaName(isa), path, e.max_err, c.tol, e.top1_same, e.positions, r.max_err, c.tol_rounded,
          r.top1_same, r.positions);
      EXPECT_LE(e.max_err, c.tol) << c.name << " " << path << " on " << kernels::IsaName(isa);
      EXPECT_LE(r.max_err, c.tol_rounded) << c.name << " " << path << " on " << kernels::IsaName(isa);
      EXPECT_GE(static_cast<double>(r.top1_same), 0.95 * static_cast<double>(r.positions));
    }
  }
  kernels::OverrideIsaForTesting(std::nullopt);
}

INSTANTIATE_TEST_SUITE_P(Archs, ArchTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<ArchCase>& i) { return std::string(i.param.name); });

// The hyperparameter keys each architecture reads, and what it refuses.
TEST(Arch, ConfigFromKeys) {
  ModelSpec s = Qwen3();
  s.rope_scaling_type = "linear";
  s.rope_scaling_factor = 2.0f;
  s.n_rot = 16;
  auto m = LoadBytes(testing::WriteModel(s).bytes);
  ASSERT_TRUE(m.ok()) << m.status().message();
  const LlamaConfig& c = (*m)->config();
  EXPECT_EQ(c.arch, Arch::kQwen3);
  EXPECT_EQ(c.head_dim_k, 32);
  EXPECT_EQ(c.head_dim_v, 24);
  EXPECT_EQ(c.q_dim(), 128);
  EXPECT_EQ(c.k_dim(), 64);
  EXPECT_EQ(c.v_dim(), 48);
  EXPECT_EQ(c.attn_dim(), 96);
  EXPECT_EQ(c.n_rot, 16);
  EXPECT_EQ(c.rope_freq_scale, 0.5f);
  EXPECT_EQ(c.rope_freq_base, 1000000.0f);
  EXPECT_NE((*m)->weights().layers[1].q_norm, nullptr);
  EXPECT_EQ((*m)->weights().layers[1].bq, nullptr);
}

std::string LoadError(const std::vector<uint8_t>& bytes) {
  auto m = LoadBytes(bytes);
  return m.ok() ? "<loaded>" : m.status().message();
}

TEST(Arch, RefusesWhatItDoesNotImplement) {
  ModelSpec s = Qwen2();
  s.qkv_bias = false;
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes), "test-model: missing tensor 'blk.0.attn_q.bias'");
  s = Qwen3();
  s.qk_norm = false;
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes), "test-model: missing tensor 'blk.0.attn_q_norm.weight'");
  s = Qwen3();
  s.qkv_bias = true;  // qwen3 has no biases
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes),
            "test-model: unexpected tensor 'blk.0.attn_q.bias' (not part of the qwen3 architecture as this runtime "
            "implements it)");
  s = Qwen2();
  s.o_bias = true;  // llama only
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes),
            "test-model: unexpected tensor 'blk.0.attn_output.bias' (not part of the qwen2 architecture as this "
            "runtime implements it)");
  s = Llama();
  s.rope_scaling_type = "yarn";
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes),
            "test-model: llama.rope.scaling.type 'yarn' is not supported (only linear and none)");
  s = Llama();
  s.rope_scaling_factor = -2.0f;
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes),
            "test-model: llama.rope.scaling.factor -2.000000 is outside [1e-3, 1e3] (0 = unset)");
  s = Qwen3();
  s.key_length = 2000;
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes),
            "test-model: qwen3.attention.key_length = 2000 is outside [1, 1024]");
  s = Qwen3();
  s.n_rot = 34;  // more than the 32-wide key heads
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes),
            "test-model: qwen3.rope.dimension_count 34 must be even and within [2, key head size 32]");
  s = Llama();
  s.n_embd = 60;
  s.n_head = 8;  // 60 / 8 is not whole and no key_length says otherwise
  EXPECT_EQ(LoadError(testing::WriteModel(s).bytes),
            "test-model: llama.embedding_length 60 is not a multiple of llama.attention.head_count 8");
}

}  // namespace
}  // namespace appliance::runtime
