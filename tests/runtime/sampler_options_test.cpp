// Sampling options beyond temperature/top-p: top-k, min-p, the repetition,
// frequency and presence penalties with their window, parameter validation,
// and that seeded generation with every option on gives the same tokens with
// 1 and 2 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "runtime/context.h"
#include "runtime/generate.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

// p = softmax([0, ln 2, ln 3, ln 4]) = [0.1, 0.2, 0.3, 0.4]
const std::vector<float> kLogits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};

std::map<int32_t, double> Frequencies(SamplerParams p, int n) {
  Sampler s(p, 4);
  std::map<int32_t, int> counts;
  for (int i = 0; i < n; ++i) ++counts[s.Sample(kLogits)];
  std::map<int32_t, double> f;
  for (int id = 0; id < 4; ++id) f[id] = counts[id] / static_cast<double>(n);
  return f;
}

SamplerParams T1(uint64_t seed) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.seed = seed;
  return p;
}

TEST(SamplerOptions, TopKKeepsTheKMostLikely) {
  SamplerParams p = T1(1);
  p.top_k = 2;  // {3, 2}, renormalised to 4/7 and 3/7
  const auto f = Frequencies(p, 30000);
  EXPECT_EQ(f.at(0) + f.at(1), 0.0);
  EXPECT_NEAR(f.at(3), 4.0 / 7.0, 0.015);
  p.top_k = 1;
  EXPECT_EQ(Frequencies(p, 200).at(3), 1.0);
  p.top_k = 100;  // more than the vocab: no cut
  EXPECT_NEAR(Frequencies(p, 40000).at(0), 0.1, 0.01);
}

TEST(SamplerOptions, TopKThenTopP) {
  SamplerParams p = T1(2);
  p.top_k = 3;    // {3, 2, 1}: 4/9, 3/9, 2/9
  p.top_p = 0.5;  // 4/9 < 0.5, 7/9 >= 0.5: {3, 2}
  const auto f = Frequencies(p, 30000);
  EXPECT_EQ(f.at(0) + f.at(1), 0.0);
  EXPECT_NEAR(f.at(2), 3.0 / 7.0, 0.015);
}

TEST(SamplerOptions, MinPIsRelativeToTheMostLikely) {
  SamplerParams p = T1(3);
  p.min_p = 0.6f;  // threshold 0.6 * 0.4 = 0.24: {2, 3}
  auto f = Frequencies(p, 30000);
  EXPECT_EQ(f.at(0) + f.at(1), 0.0);
  EXPECT_NEAR(f.at(3), 4.0 / 7.0, 0.015);
  p.min_p = 0.8f;  // 0.32: only 3
  EXPECT_EQ(Frequencies(p, 200).at(3), 1.0);
  p.min_p = 0.2f;  // 0.08: everything
  f = Frequencies(p, 40000);
  EXPECT_NEAR(f.at(0), 0.1, 0.01);
  // After a nucleus cut too.
  p.min_p = 0.6f;
  p.top_p = 0.9f;
  f = Frequencies(p, 30000);
  EXPECT_EQ(f.at(0) + f.at(1), 0.0);
}

TEST(SamplerOptions, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplerParams p;  // greedy
  p.repeat_penalty = 1.5f;
  {
    Sampler s(p, 3);
    const std::vector<float> l = {2.0f, 1.9f, -1.0f};
    EXPECT_EQ(s.Sample(l), 0);
    s.Accept(0);  // 2.0 / 1.5 = 1.33 < 1.9
    EXPECT_EQ(s.Sample(l), 1);
  }
  {
    Sampler s(p, 2);
    const std::vector<float> l = {-1.0f, -1.2f};
    s.Accept(0);  // -1.0 * 1.5 = -1.5 < -1.2
    EXPECT_EQ(s.Sample(l), 1);
  }
}

TEST(SamplerOptions, FrequencyAndPresencePenalties) {
  const std::vector<float> l = {1.0f, 0.5f};
  SamplerParams p;
  p.frequency_penalty = 0.3f;
  Sampler once(p, 2);
  once.Accept(0);  // 1.0 - 0.3 = 0.7 > 0.5
  EXPECT_EQ(once.Sample(l), 0);
  Sampler twice(p, 2);
  twice.Accept(0);
  twice.Accept(0);  // 1.0 - 0.6 = 0.4 < 0.5
  EXPECT_EQ(twice.Sample(l), 1);
  SamplerParams q;
  q.presence_penalty = 0.6f;
  Sampler pres(q, 2);
  pres.Accept(0);  // 1.0 - 0.6 = 0.4
  EXPECT_EQ(pres.Sample(l), 1);
}

TEST(SamplerOptions, PenaltyWindow) {
  const std::vector<float> l = {1.0f, 0.9f, 0.0f};
  SamplerParams p;
  p.repeat_penalty = 2.0f;
  p.repeat_last_n = 1;
  Sampler s(p, 3);
  s.Accept(0);
  s.Accept(2);  // only the last token is in the window: 0 is not penalised
  EXPECT_EQ(s.Sample(l), 0);
  for (int i = 0; i < 10; ++i) s.Accept(2);  // history trimming keeps the window right
  EXPECT_EQ(s.Sample(l), 0);
  s.Accept(0);
  EXPECT_EQ(s.Sample(l), 1);
  p.repeat_last_n = 0;  // off
  Sampler off(p, 3);
  off.Accept(0);
  EXPECT_EQ(off.Sample(l), 0);
  p.repeat_last_n = -1;  // everything accepted
  Sampler all(p, 3);
  all.Accept(0);
  for (int i = 0; i < 100; ++i) all.Accept(2);
  EXPECT_EQ(all.Sample(l), 1);
  // Out-of-range ids are ignored, not a crash.
  all.Accept(-5);
  all.Accept(3);
}

TEST(SamplerOptions, Validation) {
  SamplerParams ok;
  EXPECT_TRUE(ValidateSamplerParams(ok, 2048, ParamStyle::kJson).ok());
  auto msg = [](SamplerParams p, ParamStyle style) { return ValidateSamplerParams(p, 2048, style).message(); };
  SamplerParams p;
  p.top_k = -1;
  EXPECT_EQ(msg(p, ParamStyle::kJson), "field 'top_k' must be in [0, 4194304] (0: off)");
  EXPECT_EQ(msg(p, ParamStyle::kCli), "--top-k must be in [0, 4194304] (0: off)");
  p = {};
  p.min_p = 1.01f;
  EXPECT_EQ(msg(p, ParamStyle::kJson), "field 'min_p' must be in [0, 1]");
  p = {};
  p.repeat_penalty = 0.0f;
  EXPECT_EQ(msg(p, ParamStyle::kCli), "--repeat-penalty must be in (0, 10]");
  p = {};
  p.frequency_penalty = -10.5f;
  EXPECT_EQ(msg(p, ParamStyle::kJson), "field 'frequency_penalty' must be in [-10, 10]");
  p = {};
  p.presence_penalty = std::nanf("");
  EXPECT_EQ(msg(p, ParamStyle::kJson), "field 'presence_penalty' must be in [-10, 10]");
  p = {};
  p.repeat_last_n = 2049;
  EXPECT_EQ(msg(p, ParamStyle::kJson), "field 'repeat_last_n' must be in [-1, 2048] (-1: the whole context, 0: off)");
  p.repeat_last_n = -1;
  EXPECT_TRUE(ValidateSamplerParams(p, 2048, ParamStyle::kJson).ok());
  p = {};
  p.temperature = INFINITY;
  EXPECT_EQ(msg(p, ParamStyle::kCli), "--temperature must be in [0, 100]");
  p = {};
  p.top_p = 0.0f;
  EXPECT_EQ(msg(p, ParamStyle::kJson), "field 'top_p' must be in (0, 1]");
}

// Defaults leave the pre-existing sampler untouched: the same seed gives the
// same tokens as plain temperature + top-p (whose stream other tests pin).
TEST(SamplerOptions, DefaultsChangeNothing) {
  std::vector<float> logits(512);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(std::sin(static_cast<double>(i)));
  SamplerParams base{0.9f, 0.95f, 17};
  SamplerParams with_zeroes = base;
  with_zeroes.top_k = 0;
  with_zeroes.min_p = 0.0f;
  with_zeroes.repeat_penalty = 1.0f;
  Sampler a(base, 512), b(with_zeroes, 512);
  for (int i = 0; i < 64; ++i) {
    const int32_t x = a.Sample(logits);
    EXPECT_EQ(x, b.Sample(logits));
    a.Accept(x);
    b.Accept(x);
  }
}

// Seeded generation with every option on: identical tokens for 1 and 2
// threads, on the real model and on a quantized synthetic one.
TEST(SamplerOptions, GenerationWithAllOptionsIsIndependentOfThreadCount) {
  for (const char* name : {"stories260K.gguf", "synth-d256-q8_0.gguf"}) {
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
      p.sampling.temperature = 0.9f;
      p.sampling.top_p = 0.95f;
      p.sampling.top_k = 40;
      p.sampling.min_p = 0.02f;
      p.sampling.repeat_penalty = 1.15f;
      p.sampling.frequency_penalty = 0.2f;
      p.sampling.presence_penalty = 0.1f;
      p.sampling.repeat_last_n = -1;
      p.sampling.seed = 987654321;
      auto r = Generate(**ctx, "Once upon a time, in a small town", p, nullptr);
      ASSERT_TRUE(r.ok()) << r.status().message();
      runs.push_back(r->tokens);
    }
    EXPECT_EQ(runs[0], runs[1]) << name;
    EXPECT_GE(runs[0].size(), 8u) << name;
  }
}

// The penalties act on generation: a greedy run that repeats itself repeats
// less with a strong repetition penalty.
TEST(SamplerOptions, RepetitionPenaltyReducesRepeats) {
  auto m = Model::LoadPath(testing::ModelPath("stories260K.gguf"));
  ASSERT_TRUE(m.ok()) << m.status().message();
  auto ctx = Context::Create(**m, {});
  ASSERT_TRUE(ctx.ok());
  auto distinct = [](const std::vector<int32_t>& v) {
    std::vector<int32_t> s = v;
    std::sort(s.begin(), s.end());
    return static_cast<size_t>(std::unique(s.begin(), s.end()) - s.begin());
  };
  GenerateParams p;
  p.max_tokens = 200;
  auto plain = Generate(**ctx, "Once upon a time", p, nullptr);
  ASSERT_TRUE(plain.ok());
  p.sampling.repeat_penalty = 2.0f;
  p.sampling.repeat_last_n = 200;
  auto penalised = Generate(**ctx, "Once upon a time", p, nullptr);
  ASSERT_TRUE(penalised.ok());
  EXPECT_NE(plain->tokens, penalised->tokens);
  EXPECT_GT(distinct(penalised->tokens) * plain->tokens.size(), distinct(plain->tokens) * penalised->tokens.size());
}

}  // namespace
}  // namespace appliance::runtime
