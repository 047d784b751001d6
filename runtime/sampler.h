// Token sampling: greedy (temperature 0) or seeded temperature + top-p.
//
// The random stream is our own (splitmix64-seeded xoshiro256**, 53-bit
// uniform doubles), not <random>'s distributions, whose algorithms differ
// between standard libraries: the same seed yields the same tokens on every
// platform. With the forward pass independent of the thread count, it is
// also the same for every --threads.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace appliance::runtime {

class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t Next();
  double Uniform();  // [0, 1) with 53 random bits

 private:
  uint64_t s_[4];
};

struct SamplerParams {
  float temperature = 0.0f;  // 0: greedy
  float top_p = 1.0f;        // (0, 1]; 1 keeps every token
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Buffers for n_vocab candidates are allocated here, not per token.
  Sampler(const SamplerParams& params, int64_t n_vocab);

  int32_t Sample(std::span<const float> logits);

  // Index of the largest logit; the lowest index wins a tie.
  static int32_t Argmax(std::span<const float> logits);

 private:
  SamplerParams params_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // (probability, id)
};

}  // namespace appliance::runtime
