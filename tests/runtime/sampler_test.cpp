// Sampling: a pinned random stream, greedy and nucleus semantics, and the
// same tokens for the same seed whatever the thread count.
#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "runtime/context.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

// Values from an independent implementation (Python) of splitmix64-seeded
// xoshiro256**: the stream must never change, or seeded jobs stop replaying.
TEST(Rng, StreamIsPinned) {
  Rng a(0);
  EXPECT_EQ(a.Next(), 0x99ec5f36cb75f2b4ull);
  EXPECT_EQ(a.Next(), 0xbf6e1f784956452aull);
  EXPECT_EQ(a.Next(), 0x1a5f849d4933e6e0ull);
  Rng b(42);
  EXPECT_DOUBLE_EQ(b.Uniform(), 0.08386297105988216);
  EXPECT_DOUBLE_EQ(b.Uniform(), 0.3789802506626686);
  EXPECT_DOUBLE_EQ(b.Uniform(), 0.6800434110281394);
}

TEST(Sampler, GreedyTakesTheLowestIndexOfTheMaximum) {
  Sampler s({0.0f, 1.0f, 7}, 5);
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
  EXPECT_EQ(s.Sample(logits), 1);
  EXPECT_EQ(Sampler::Argmax(logits), 1);
}

// Past the vectorized part (lengths around multiples of 8), with ties in
// different lanes, NaNs (never the maximum) and -inf everywhere.
TEST(Sampler, ArgmaxOverLongRowsTiesAndNaN) {
  for (size_t n : {1u, 7u, 8u, 9u, 31999u, 32000u}) {
    SCOPED_TRACE(n);
    std::vector<float> logits(n);
    for (size_t i = 0; i < n; ++i) logits[i] = static_cast<float>((i * 7919) % 1000) / 100.0f;
    const size_t want = static_cast<size_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(Sampler::Argmax(logits), static_cast<int32_t>(want));
    logits[n - 1] = 1e9f;  // in the scalar tail for n = 9 and 31999
    EXPECT_EQ(Sampler::Argmax(logits), static_cast<int32_t>(n - 1));
    if (n >= 3) {
      logits[1] = 1e9f;  // an earlier tie wins
      logits[0] = NAN;
      EXPECT_EQ(Sampler::Argmax(logits), 1);
    }
    std::fill(logits.begin(), logits.end(), -INFINITY);
    EXPECT_EQ(Sampler::Argmax(logits), 0);
  }
}

TEST(Sampler, TemperatureFollowsTheSoftmax) {
  // p = softmax([0, ln 2, ln 3, ln 4]) = [0.1, 0.2, 0.3, 0.4]
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  Sampler s({1.0f, 1.0f, 123}, 4);
  std::map<int32_t, int> counts;
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(logits)];
  for (int id = 0; id < 4; ++id) {
    EXPECT_NEAR(counts[id] / static_cast<double>(n), 0.1 * (id + 1), 0.01) << "token " << id;
  }
}

TEST(Sampler, TopPKeepsOnlyTheNucleus) {
  // p = [0.1, 0.2, 0.3, 0.4]: top_p 0.6 keeps {3, 2} (0.4 + 0.3 >= 0.6), renormalized to 4/7, 3/7.
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  Sampler s({1.0f, 0.6f, 99}, 4);
  std::map<int32_t, int> counts;
  const int n = 30000;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(logits)];
  EXPECT_EQ(counts[0] + counts[1], 0);
  EXPECT_NEAR(counts[3] / static_cast<double>(n), 4.0 / 7.0, 0.015);
  // A tiny top_p leaves only the most likely token.
  Sampler one({1.0f, 0.01f, 5}, 4);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(one.Sample(logits), 3);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits(512);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(std::sin(static_cast<double>(i)));
  auto draw = [&](uint64_t seed) {
    Sampler s({0.9f, 0.95f, seed}, 512);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.Sample(logits));
    return out;
  };
  EXPECT_EQ(draw(1), draw(1));
  EXPECT_NE(draw(1), draw(2));
}

// The whole pipeline: seeded sampling on real models gives the same tokens
// with 1 and 2 threads (the forward pass does not depend on the thread count).
TEST(Sampler, GenerationIsIndependentOfThreadCount) {
  for (const char* name : {"stories260K.gguf", "synth-d256-f32.gguf", "synth-d256-q8_0.gguf"}) {
    auto m = Model::LoadPath(testing::ModelPath(name));
    ASSERT_TRUE(m.ok()) << m.status().message();
    std::vector<std::vector<int32_t>> runs;
    for (int threads : {1, 2}) {
      ContextOptions o;
      o.n_threads = threads;
      auto ctx = Context::Create(**m, o);
      ASSERT_TRUE(ctx.ok());
      GenerateParams p;
      p.max_tokens = 64;
      p.sampling = {0.8f, 0.9f, 1234};
      auto r = Generate(**ctx, "Once upon a time, in a small town", p, nullptr);
      ASSERT_TRUE(r.ok()) << r.status().message();
      runs.push_back(r->tokens);
    }
    EXPECT_EQ(runs[0], runs[1]) << name;
    EXPECT_GE(runs[0].size(), 8u) << name;
  }
}

}  // namespace
}  // namespace appliance::runtime
