// The engine against llama.cpp's outputs in ../shared/reference: prompt
// tokens, teacher-forced top-8 logits (batched path and decode path), and
// stories260K's greedy continuation. Run on the CPU's kernels and on the
// portable ones.
//
// Tolerances: each reference top-8 logit within tol * max(1, |logit|), top-1
// identical at >= 98% of positions (100% for stories260K, a trained model
// without near ties). tol is 5e-3 for F32, F16 and BF16 weights: llama.cpp
// itself moves logits by ~2e-3 relative when only its KV cache goes from F32
// to F16, and we measure ~3e-6 (F32), ~2e-4 (F16), ~1.5e-3 (BF16).
// For F16, BF16 and Q8_0 weights we convert activations to the weight's type
// as ggml does, which halves the error; what is left are rounding flips of
// single activations at those types' coarse steps, triggered by float
// differences of 1e-6, which no engine that is not bit-identical avoids. On
// Q8_0 (steps of 1/127 of a block's maximum) that reaches ~5.4e-3, so Q8_0
// uses 1e-2, the variation shared/README.md measured for llama.cpp itself
// on the quantized files.
// The references were computed with an F32 KV cache. The cases with an F16
// cache (ContextOptions::kv_type) keep the same tolerances: llama.cpp's own
// F32 -> F16 switch moves logits by ~2e-3 (F32 weights) and ~1e-2 (quantized).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "runtime/context.h"
#include "runtime/generate.h"
#include "runtime/kernels/kernels.h"
#include "runtime/model.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

using TopK = std::vector<std::vector<std::pair<int32_t, float>>>;

struct Reference {
  std::string prompt;
  std::vector<int32_t> prompt_tokens, greedy, sequence;
  std::string greedy_text;
  TopK sequence_topk;
};

TopK ParseTopK(const nlohmann::json& j) {
  TopK out;
  for (const auto& pos : j) {
    std::vector<std::pair<int32_t, float>> row;
    for (const auto& e : pos) row.emplace_back(e[0].get<int32_t>(), e[1].get<float>());
    out.push_back(std::move(row));
  }
  return out;
}

Reference LoadReference(const std::string& model, const std::string& which) {
  const auto j = nlohmann::json::parse(testing::ReadText(testing::SharedPath("reference/" + model + "." + which + ".json")));
  Reference r;
  r.prompt = j.at("prompt").get<std::string>();
  r.prompt_tokens = j.at("prompt_tokens").get<std::vector<int32_t>>();
  r.greedy = j.at("greedy").get<std::vector<int32_t>>();
  // null when llama.cpp's greedy text was not valid UTF-8 (the random-weight models)
  if (!j.at("greedy_text").is_null()) r.greedy_text = j.at("greedy_text").get<std::string>();
  r.sequence = j.at("sequence").get<std::vector<int32_t>>();
  r.sequence_topk = ParseTopK(j.at("sequence_topk"));
  return r;
}

struct Agreement {
  size_t positions = 0;
  size_t top1_same = 0;
  double max_rel_err = 0;
  size_t out_of_tolerance = 0;
};

// Compares our full logits at each position with the reference top-8.
Agreement Compare(const TopK& ref, const std::vector<std::vector<float>>& logits, double tol) {
  Agreement a;
  a.positions = ref.size();
  for (size_t p = 0; p < ref.size(); ++p) {
    const std::vector<float>& l = logits[p];
    const int32_t top1 = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    if (top1 == ref[p][0].first) ++a.top1_same;
    for (const auto& [id, value] : ref[p]) {
      const double err = std::fabs(static_cast<double>(l[static_cast<size_t>(id)]) - value);
      const double scale = std::max(1.0, std::fabs(static_cast<double>(value)));
      a.max_rel_err = std::max(a.max_rel_err, err / scale);
      if (err > tol * scale) ++a.out_of_tolerance;
    }
  }
  return a;
}

struct Case {
  const char* model;
  kernels::Isa isa;
  double min_top1;  // fraction of positions
  double tol;       // relative logit tolerance
  TensorType kv_type = TensorType::kF32;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string n = std::string(info.param.model) + "_" + kernels::IsaName(info.param.isa);
  if (info.param.kv_type != TensorType::kF32) n += "_kv_" + TensorTypeName(info.param.kv_type);
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

class ReferenceTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!kernels::IsaAvailable(GetParam().isa)) GTEST_SKIP() << "CPU has no " << kernels::IsaName(GetParam().isa);
    kernels::OverrideIsaForTesting(GetParam().isa);
    auto m = Model::LoadPath(testing::ModelPath(std::string(GetParam().model) + ".gguf"));
    ASSERT_TRUE(m.ok()) << m.status().message();
    model_ = std::move(*m);
  }
  void TearDown() override { kernels::OverrideIsaForTesting(std::nullopt); }

  std::unique_ptr<Context> NewContext(int threads, int64_t max_batch) {
    ContextOptions o;
    o.n_threads = threads;
    o.max_batch = max_batch;
    o.kv_type = GetParam().kv_type;
    auto c = Context::Create(*model_, o);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return c.ok() ? std::move(*c) : nullptr;
  }

  void Report(const char* path, const std::string& which, const Agreement& a) {
    std::printf("[reference] %-22s %-7s %-8s %-7s kv %-3s top1 %zu/%zu  max rel err %.2e\n", GetParam().model,
                which.c_str(), kernels::IsaName(GetParam().isa), path, TensorTypeName(GetParam().kv_type).c_str(),
                a.top1_same, a.positions, a.max_rel_err);
    EXPECT_EQ(a.out_of_tolerance, 0u) << "logits beyond " << GetParam().tol << " relative; max " << a.max_rel_err;
    EXPECT_GE(static_cast<double>(a.top1_same), GetParam().min_top1 * static_cast<double>(a.positions));
  }

  std::unique_ptr<Model> model_;
};

TEST_P(ReferenceTest, PromptTokensMatch) {
  for (const char* which : {"shared1", "shared2"}) {
    const Reference ref = LoadReference(GetParam().model, which);
    auto ids = model_->tokenizer().Encode(ref.prompt, model_->tokenizer().add_bos());
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*ids, ref.prompt_tokens) << which;
    EXPECT_EQ(std::vector<int32_t>(ref.sequence.begin(), ref.sequence.begin() + static_cast<std::ptrdiff_t>(ref.prompt_tokens.size())),
              ref.prompt_tokens);
  }
}

// The whole sequence in one batch, every position's logits (teacher forcing).
TEST_P(ReferenceTest, TeacherForcedBatch) {
  for (const char* which : {"shared1", "shared2"}) {
    const Reference ref = LoadReference(GetParam().model, which);
    auto ctx = NewContext(2, 512);
    ASSERT_NE(ctx, nullptr);
    ASSERT_TRUE(ctx->Eval(ref.sequence, /*all_logits=*/true).ok());
    std::vector<std::vector<float>> logits;
    for (size_t p = 0; p < ref.sequence.size(); ++p) {
      auto l = ctx->Logits(static_cast<int64_t>(p));
      logits.emplace_back(l.begin(), l.end());
    }
    Report("batch", which, Compare(ref.sequence_topk, logits, GetParam().tol));
  }
}

// The same sequence one token at a time: the decode path generation uses.
TEST_P(ReferenceTest, TeacherForcedDecode) {
  for (const char* which : {"shared1", "shared2"}) {
    const Reference ref = LoadReference(GetParam().model, which);
    auto ctx = NewContext(2, 512);
    ASSERT_NE(ctx, nullptr);
    std::vector<std::vector<float>> logits;
    for (int32_t t : ref.sequence) {
      const int32_t one[1] = {t};
      ASSERT_TRUE(ctx->Eval(one, false).ok());
      auto l = ctx->LastLogits();
      logits.emplace_back(l.begin(), l.end());
    }
    Report("decode", which, Compare(ref.sequence_topk, logits, GetParam().tol));
  }
}

// Long inputs are split into batches; the split must not change the result
// beyond float reassociation (amplified on the coarse types as above).
TEST_P(ReferenceTest, SplitBatchesMatchOneBatch) {
  const Reference ref = LoadReference(GetParam().model, "shared2");
  auto whole = NewContext(1, 512);
  auto split = NewContext(2, 7);  // 60 tokens -> 9 batches, the last of 4
  ASSERT_TRUE(whole && split);
  ASSERT_TRUE(whole->Eval(ref.sequence, true).ok());
  ASSERT_TRUE(split->Eval(ref.sequence, true).ok());
  // Differences relative to the row's largest logit: small logits carry the
  // same absolute float noise as large ones.
  double max_rel = 0;
  for (size_t p = 0; p < ref.sequence.size(); ++p) {
    auto a = whole->Logits(static_cast<int64_t>(p));
    auto b = split->Logits(static_cast<int64_t>(p));
    double scale = 1.0;
    for (float v : a) scale = std::max(scale, std::fabs(static_cast<double>(v)));
    for (size_t i = 0; i < a.size(); ++i) {
      max_rel = std::max(max_rel, std::fabs(static_cast<double>(a[i]) - b[i]) / scale);
    }
  }
  std::printf("[split] %-22s %-8s max diff / max |logit| %.2e\n", GetParam().model, kernels::IsaName(GetParam().isa),
              max_rel);
  EXPECT_LT(max_rel, GetParam().tol);
  const bool plain_f32 = std::string(GetParam().model) == "stories260K" || std::string(GetParam().model) == "synth-d256-f32";
  if (plain_f32 && GetParam().kv_type == TensorType::kF32) {
    EXPECT_LT(max_rel, 1e-5);  // plain F32: only summation order differs
  }
}

// The benchmark-sized model (12 layers, 32000-token SentencePiece vocab, Q4_K
// and Q6_K weights): no reference file exists for it, so it must load,
// prefill, generate with finite logits, and the batched and decode paths must
// agree on the prompt's last logits within rounding-flip noise.
TEST(Bench, D768LoadsAndGenerates) {
  auto m = Model::LoadPath(testing::ModelPath("bench-d768-q4_k_m.gguf"));
  ASSERT_TRUE(m.ok()) << m.status().message();
  const LlamaConfig& c = (*m)->config();
  EXPECT_EQ(c.n_layer, 12);
  EXPECT_EQ(c.n_embd, 768);
  EXPECT_EQ(c.n_vocab, 32000);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ((*m)->weights().layers[0].wq.type, TensorType::kQ4_K);
  EXPECT_EQ((*m)->weights().output.type, TensorType::kQ6_K);
  auto ids = (*m)->tokenizer().Encode("Once upon a time, in a land far away, there lived", true);
  ASSERT_TRUE(ids.ok());
  ContextOptions o;
  o.n_threads = 2;
  o.n_ctx = 256;
  auto batch = Context::Create(**m, o);
  auto decode = Context::Create(**m, o);
  ASSERT_TRUE(batch.ok() && decode.ok());
  ASSERT_TRUE((*batch)->Eval(*ids, false).ok());
  for (int32_t t : *ids) {
    const int32_t one[1] = {t};
    ASSERT_TRUE((*decode)->Eval(one, false).ok());
  }
  auto a = (*batch)->LastLogits();
  auto b = (*decode)->LastLogits();
  double scale = 1, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i]) && std::isfinite(b[i])) << i;
    scale = std::max(scale, std::fabs(static_cast<double>(a[i])));
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  // 12 layers of 8-bit activations: a rounding flip in one path (see the top
  // of this file) grows to ~1e-2 of the logit range (measured 1.1e-2); a
  // wrong kernel or layout would be O(1).
  EXPECT_LT(diff / scale, 5e-2) << "batch and decode paths disagree";
  // Greedy generation on the batched context.
  std::vector<int32_t> out;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 32; ++i) {
    auto l = (*batch)->LastLogits();
    const int32_t next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    out.push_back(next);
    const int32_t one[1] = {next};
    ASSERT_TRUE((*batch)->Eval(one, false).ok());
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (float v : (*batch)->LastLogits()) ASSERT_TRUE(std::isfinite(v));
  std::printf("[bench] bench-d768-q4_k_m: %zu prompt tokens, 32 generated at %.1f tokens/s (2 threads); batch vs "
              "decode %.2e\n", ids->size(), 32 / s, diff / scale);
}

INSTANTIATE_TEST_SUITE_P(
    Models, ReferenceTest,
    ::testing::Values(Case{"stories260K", kernels::Isa::kAvx2, 1.0, 5e-3},
                      Case{"stories260K", kernels::Isa::kAvx512, 1.0, 5e-3},
                      Case{"stories260K", kernels::Isa::kPortable, 1.0, 5e-3},
                      Case{"synth-d256-f32", kernels::Isa::kAvx2, 0.98, 5e-3},
                      Case{"synth-d256-f32", kernels::Isa::kAvx512, 0.98, 5e-3},
                      Case{"synth-d256-f32", kernels::Isa::kPortable, 0.98, 5e-3},
                      Case{"synth-d256-f16", kernels::Isa::kAvx2, 0.98, 5e-3},
                      Case{"synth-d256-f16", kernels::Isa::kAvx512, 0.98, 5e-3},
                      Case{"synth-d256-f16", kernels::Isa::kPortable, 0.98, 5e-3},
                      Case{"synth-d256-bf16", kernels::Isa::kAvx2, 0.98, 5e-3},
                      Case{"synth-d256-bf16", kernels::Isa::kAvx512, 0.98, 5e-3},
                      Case{"synth-d256-bf16", kernels::Isa::kPortable, 0.98, 5e-3},
                      Case{"synth-d256-q8_0", kernels::Isa::kAvx2, 0.98, 1e-2},
                      Case{"synth-d256-q8_0", kernels::Isa::kAvx512, 0.98, 1e-2},
                      Case{"synth-d256-q8_0", kernels::Isa::kPortable, 0.98, 1e-2},
                      Case{"synth-d256-q4_0", kernels::Isa::kAvx2, 0.94, 2e-2},
                      Case{"synth-d256-q4_0", kernels::Isa::kAvx512, 0.94, 2e-2},
                      Case{"synth-d256-q4_0", kernels::Isa::kPortable, 0.94, 2e-2},
                      Case{"synth-d256-q4_k_m", kernels::Isa::kAvx2, 0.94, 2e-2},
                      Case{"synth-d256-q4_k_m", kernels::Isa::kAvx512, 0.94, 2e-2},
                      Case{"synth-d256-q4_k_m", kernels::Isa::kPortable, 0.94, 2e-2},
                      Case{"synth-d256-q5_k_m", kernels::Isa::kAvx2, 0.94, 2e-2},
                      Case{"synth-d256-q5_k_m", kernels::Isa::kAvx512, 0.94, 2e-2},
                      Case{"synth-d256-q5_k_m", kernels::Isa::kPortable, 0.94, 2e-2},
                      Case{"synth-d256-q6_k", kernels::Isa::kAvx2, 0.94, 2e-2},
                      Case{"synth-d256-q6_k", kernels::Isa::kAvx512, 0.94, 2e-2},
                      Case{"synth-d256-q6_k", kernels::Isa::kPortable, 0.94, 2e-2},
                      Case{"stories260K", kernels::Isa::kAvx512, 1.0, 5e-3, TensorType::kF16},
                      Case{"synth-d256-f32", kernels::Isa::kAvx2, 0.98, 5e-3, TensorType::kF16},
                      Case{"synth-d256-f32", kernels::Isa::kPortable, 0.98, 5e-3, TensorType::kF16},
                      Case{"synth-d256-q4_k_m", kernels::Isa::kAvx512, 0.94, 2e-2, TensorType::kF16},
                      Case{"synth-d256-q4_k_m", kernels::Isa::kPortable, 0.94, 2e-2, TensorType::kF16}),
    CaseName);

}  // namespace
}  // namespace appliance::runtime
