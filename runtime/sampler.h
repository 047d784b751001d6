// Token sampling: repetition penalties, then greedy (temperature 0) or seeded
// sampling from the temperature-scaled distribution cut by top-k, top-p and
// min-p (in that order, each on what the previous left; the order of Hugging
// Face transformers' logits warpers, temperature first).
//
// Penalties (llama.cpp's): every token that occurs c > 0 times among the last
// repeat_last_n accepted tokens (prompt and generated) has its logit divided
// by repeat_penalty when positive, multiplied when not, then lowered by
// c * frequency_penalty + presence_penalty.
//
// The random stream is our own (splitmix64-seeded xoshiro256**, 53-bit
// uniform doubles), not <random>'s distributions, whose algorithms differ
// between standard libraries: the same seed yields the same tokens on every
// platform. With the forward pass independent of the thread count, it is
// also the same for every --threads. One uniform draw per sampled token.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"

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
  float temperature = 0.0f;        // 0: greedy
  float top_p = 1.0f;              // (0, 1]; 1 keeps every token
  uint64_t seed = 0;
  int64_t top_k = 0;               // keep the k most likely tokens; 0: off
  float min_p = 0.0f;              // [0, 1]: keep tokens with p >= min_p * p(most likely); 0: off
  float repeat_penalty = 1.0f;     // (0, 10]; 1: off
  float frequency_penalty = 0.0f;  // [-10, 10]; 0: off
  float presence_penalty = 0.0f;   // [-10, 10]; 0: off
  int64_t repeat_last_n = 64;      // penalty window in tokens; 0: off, -1: everything accepted

  bool penalties_enabled() const {
    return repeat_last_n != 0 && (repeat_penalty != 1.0f || frequency_penalty != 0.0f || presence_penalty != 0.0f);
  }
};

// Checks the ranges above; messages name the parameter as the caller spells
// it: kJson "field 'top_k' must be ...", kCli "--top-k must be ...".
// max_last_n bounds repeat_last_n (the context size).
enum class ParamStyle { kJson, kCli };
Status ValidateSamplerParams(const SamplerParams& p, int64_t max_last_n, ParamStyle style);

class Sampler {
 public:
  // Buffers for n_vocab candidates are allocated here, not per token.
  Sampler(const SamplerParams& params, int64_t n_vocab);

  // Records a token (of the prompt or generated) for the repetition penalties.
  void Accept(int32_t token);

  int32_t Sample(std::span<const float> logits);

  // Index of the largest logit; the lowest index wins a tie.
  static int32_t Argmax(std::span<const float> logits);

 private:
  std::span<const float> ApplyPenalties(std::span<const float> logits);

  SamplerParams params_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // (probability, id)
  std::vector<int32_t> history_;                       // accepted tokens (penalties only)
  std::vector<float> penalized_;                       // logits after penalties
  std::vector<int32_t> counts_;                        // per token, zero between calls
  std::vector<int32_t> distinct_;
};

}  // namespace appliance::runtime
