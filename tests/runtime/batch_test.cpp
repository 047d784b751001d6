// Context::Decode: batches whose tokens belong to several sequences at
// different positions give each sequence the results it gets alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "runtime/context.h"
#include "runtime/model.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

struct Case {
  const char* model;
  // Logits of a sequence batched with others vs alone, relative to the row's
  // largest logit. MatMul's row arithmetic depends on its row count n: the
  // decode path for n = 1, and OpenBLAS's sgemm rounds a row differently for
  // different n (measured up to ~7e-7 on F32); on F16/BF16/Q8_0 weights that
  // is amplified by rounding flips of the converted activations (the bounds of
  // reference_test.cpp's SplitBatchesMatchOneBatch). A misplaced KV row or a
  // wrong position would be O(1).
  double tol;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string s = info.param.model;
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
}

// Largest |a - b| over the largest |a| (at least 1).
double RelDiff(std::span<const float> a, std::span<const float> b) {
  double scale = 1, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(a[i])));
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return diff / scale;
}

int32_t Argmax(std::span<const float> l) { return static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin()); }

class MultiSequence : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    auto m = Model::LoadPath(testing::ModelPath(std::string(GetParam().model) + ".gguf"));
    ASSERT_TRUE(m.ok()) << m.status().message();
    model_ = std::move(*m);
    const int64_t n_vocab = model_->config().n_vocab;
    // Lengths: a single token, short ones, and one spanning two attention
    // query blocks (64 queries each).
    for (int64_t len : {5, 1, 12, 70}) {
      std::vector<int32_t> p;
      for (int64_t i = 0; i < len; ++i) p.push_back(static_cast<int32_t>((i * 37 + len * 101 + 1) % n_vocab));
      prompts_.push_back(std::move(p));
    }
  }

  std::unique_ptr<Context> NewContext(int64_t n_seq) {
    ContextOptions o;
    o.n_threads = 2;
    o.n_ctx = 128;
    o.n_seq = n_seq;
    auto c = Context::Create(*model_, o);
    EXPECT_TRUE(c.ok()) << c.status().message();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::unique_ptr<Model> model_;
  std::vector<std::vector<int32_t>> prompts_;
};

// Every prompt prefilled together in one mixed batch, then decoded together
// one token each per step, against each sequence run alone with Eval().
TEST_P(MultiSequence, MatchesEachSequenceAlone) {
  constexpr int kSteps = 8;
  const size_t n_seq = prompts_.size();
  // Alone: the prompt's logits at every position, then greedy decode steps.
  std::vector<std::vector<std::vector<float>>> alone_prefill(n_seq), alone_steps(n_seq);
  std::vector<std::vector<int32_t>> fed(n_seq);
  for (size_t k = 0; k < n_seq; ++k) {
    auto ctx = NewContext(1);
    ASSERT_NE(ctx, nullptr);
    ASSERT_TRUE(ctx->Eval(prompts_[k], /*all_logits=*/true).ok());
    for (size_t p = 0; p < prompts_[k].size(); ++p) {
      auto l = ctx->Logits(static_cast<int64_t>(p));
      alone_prefill[k].emplace_back(l.begin(), l.end());
    }
    for (int t = 0; t < kSteps; ++t) {
      const int32_t one[1] = {Argmax(ctx->LastLogits())};
      fed[k].push_back(one[0]);
      ASSERT_TRUE(ctx->Eval(one, false).ok());
      auto l = ctx->LastLogits();
      alone_steps[k].emplace_back(l.begin(), l.end());
    }
  }

  auto ctx = NewContext(static_cast<int64_t>(n_seq));
  ASSERT_NE(ctx, nullptr);
  std::vector<BatchToken> batch;
  for (size_t k = 0; k < n_seq; ++k) {
    for (size_t p = 0; p < prompts_[k].size(); ++p) {
      batch.push_back({prompts_[k][p], static_cast<int32_t>(k), static_cast<int64_t>(p), true});
    }
  }
  ASSERT_TRUE(ctx->Decode(batch).ok());
  double prefill_max = 0;
  int64_t row = 0;
  for (size_t k = 0; k < n_seq; ++k) {
    EXPECT_EQ(ctx->seq_len(static_cast<int64_t>(k)), static_cast<int64_t>(prompts_[k].size()));
    for (size_t p = 0; p < prompts_[k].size(); ++p) {
      const double d = RelDiff(alone_prefill[k][p], ctx->Logits(row++));
      prefill_max = std::max(prefill_max, d);
      EXPECT_LT(d, GetParam().tol) << "sequence " << k << " position " << p;
    }
  }
  double decode_max = 0;
  for (int t = 0; t < kSteps; ++t) {
    batch.clear();
    for (size_t k = 0; k < n_seq; ++k) {
      batch.push_back({fed[k][static_cast<size_t>(t)], static_cast<int32_t>(k),
                       static_cast<int64_t>(prompts_[k].size()) + t, true});
    }
    ASSERT_TRUE(ctx->Decode(batch).ok());
    for (size_t k = 0; k < n_seq; ++k) {
      const double d = RelDiff(alone_steps[k][static_cast<size_t>(t)], ctx->Logits(static_cast<int64_t>(k)));
      decode_max = std::max(decode_max, d);
      EXPECT_LT(d, GetParam().tol) << "sequence " << k << " step " << t;
    }
  }
  std::printf("[multi-seq] %-20s prefill %.2e decode %.2e (relative to max |logit|)\n", GetParam().model, prefill_max,
              decode_max);
}

// With the row count fixed, a token's logits do not depend on which other
// sequences share its batch, on their tokens or positions, or on the order:
// bit for bit.
TEST_P(MultiSequence, CompanionsDoNotChangeATokensResult) {
  auto ctx = NewContext(4);
  ASSERT_NE(ctx, nullptr);
  std::vector<BatchToken> batch;
  for (int32_t k = 0; k < 4; ++k) {
    const auto& p = prompts_[static_cast<size_t>(k)];
    for (size_t i = 0; i < p.size(); ++i) batch.push_back({p[i], k, static_cast<int64_t>(i), false});
  }
  ASSERT_TRUE(ctx->Decode(batch).ok());
  // Sequence 0 at position 5 with companions 1, 2, 3 ...
  const int64_t pos0 = 5;
  ASSERT_TRUE(ctx->Decode(std::vector<BatchToken>{{7, 0, pos0, true}, {8, 1, 1, true}, {9, 2, 12, true}, {10, 3, 70, true}}).ok());
  const std::vector<float> first(ctx->Logits(0).begin(), ctx->Logits(0).end());
  // ... then again (cut back to position 5), last in the batch, with other
  // tokens, and one companion rewound to an earlier position.
  ASSERT_TRUE(ctx->Decode(std::vector<BatchToken>{{11, 3, 71, true}, {12, 2, 3, true}, {13, 1, 2, true}, {7, 0, pos0, true}}).ok());
  const auto again = ctx->Logits(3);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), again.begin(), again.end()));
  EXPECT_EQ(ctx->seq_len(0), pos0 + 1);
  EXPECT_EQ(ctx->seq_len(2), 4);
}

INSTANTIATE_TEST_SUITE_P(Models, MultiSequence,
                         ::testing::Values(Case{"stories260K", 1e-5}, Case{"synth-d256-f16", 5e-3},
                                           Case{"synth-d256-q8_0", 1e-2}, Case{"synth-d256-q4_k_m", 2e-2}),
                         CaseName);

TEST(Decode, RefusesMalformedBatches) {
  auto m = Model::LoadPath(testing::ModelPath("stories260K.gguf"));
  ASSERT_TRUE(m.ok());
  ContextOptions o;
  o.n_ctx = 16;
  o.n_seq = 2;
  o.max_batch = 8;
  auto c = Context::Create(**m, o);
  ASSERT_TRUE(c.ok()) << c.status().message();
  Context& ctx = **c;
  auto error = [&](std::vector<BatchToken> b) {
    const Status s = ctx.Decode(b);
    return s.ok() ? std::string("ok") : s.message();
  };
  EXPECT_EQ(error({}), "decode: 0 tokens is outside [1, 8] (the batch size)");
  EXPECT_EQ(error(std::vector<BatchToken>(9, BatchToken{})), "decode: 9 tokens is outside [1, 8] (the batch size)");
  EXPECT_EQ(error({{512, 0, 0, false}}), "decode: batch token 0: token id 512 is outside [0, 512)");
  EXPECT_EQ(error({{1, 2, 0, false}}), "decode: batch token 0: sequence 2 is outside [0, 2)");
  EXPECT_EQ(error({{1, 0, 1, false}}), "decode: batch token 0: position 1 leaves a gap after the 0 positions of sequence 0");
  EXPECT_EQ(error({{1, 0, 0, false}, {1, 0, 2, false}}),
            "decode: batch token 1: position 2 does not follow its sequence's previous token in the batch");
  EXPECT_EQ(error({{1, 0, 0, false}, {1, 1, 0, false}, {1, 0, 1, false}}),
            "decode: batch token 2: sequence 0 is not adjacent in the batch");
  EXPECT_EQ(ctx.seq_len(0), 0);  // nothing ran
  std::vector<BatchToken> full;
  for (int64_t p = 0; p < 8; ++p) full.push_back({1, 1, p, false});
  EXPECT_EQ(error(full), "ok");
  for (int64_t p = 0; p < 8; ++p) full[static_cast<size_t>(p)].pos = 8 + p;
  EXPECT_EQ(error(full), "ok");
  EXPECT_EQ(ctx.seq_len(1), 16);
  EXPECT_EQ(error({{1, 1, 16, false}}), "decode: batch token 0: position 16 is beyond the context size 16");
  // Eval() runs on sequence 0 and leaves sequence 1 alone.
  const int32_t two[2] = {1, 2};
  ASSERT_TRUE(ctx.Eval(two, false).ok());
  EXPECT_EQ(ctx.n_past(), 2);
  EXPECT_EQ(ctx.seq_len(1), 16);
}

TEST(Decode, BoundsSequencesAndBatch) {
  auto m = Model::LoadPath(testing::ModelPath("stories260K.gguf"));
  ASSERT_TRUE(m.ok());
  ContextOptions o;
  o.n_seq = 0;
  EXPECT_EQ(Context::Create(**m, o).status().message(), "sequence count 0 is outside [1, 64]");
  o.n_seq = 65;
  EXPECT_EQ(Context::Create(**m, o).status().message(), "sequence count 65 is outside [1, 64]");
  o.n_seq = 16;
  o.max_batch = 8;
  EXPECT_EQ(Context::Create(**m, o).status().message(), "batch size 8 is outside [16 (the sequence count), 8192]");
}

}  // namespace
}  // namespace appliance::runtime
