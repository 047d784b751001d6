#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

namespace appliance::runtime {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : s_) s = SplitMix64(x);  // never all zero: splitmix64 is a bijection of distinct inputs
}

uint64_t Rng::Next() {
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

double Rng::Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplerParams& params, int64_t n_vocab) : params_(params), rng_(params.seed) {
  candidates_.reserve(static_cast<size_t>(n_vocab));
}

int32_t Sampler::Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  }
  return best;
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (params_.temperature <= 0.0f) return Argmax(logits);

  // Softmax of logits / T in double (the sum over a large vocab needs it).
  const float max_logit = logits[static_cast<size_t>(Argmax(logits))];
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  candidates_.clear();
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const double p = std::exp((static_cast<double>(logits[i]) - max_logit) * inv_t);
    total += p;
    candidates_.emplace_back(static_cast<float>(p), static_cast<int32_t>(i));
  }

  size_t n_keep = candidates_.size();
  if (params_.top_p < 1.0f) {
    // A token with probability below (1 - top_p) / (n - 1) can never be in the
    // nucleus (all such tokens together weigh less than 1 - top_p), so only
    // the rest needs sorting (llama2.c's trick; keeps sampling cheap on 32k vocabs).
    const size_t n = candidates_.size();
    const double cutoff = n > 1 ? (1.0 - params_.top_p) / static_cast<double>(n - 1) * total : 0.0;
    auto end = std::partition(candidates_.begin(), candidates_.end(),
                              [cutoff](const std::pair<float, int32_t>& c) { return c.first >= cutoff; });
    // The argument needs at least one token above the cutoff; if there is
    // none (tiny vocab, tiny top_p), fall back to sorting everything.
    if (end == candidates_.begin()) end = candidates_.end();
    // Highest probability first; equal probabilities by id, so the order does
    // not depend on the partition above.
    std::sort(candidates_.begin(), end, [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    const double target = static_cast<double>(params_.top_p) * total;
    double cum = 0;
    n_keep = static_cast<size_t>(end - candidates_.begin());
    for (size_t i = 0; i < n_keep; ++i) {
      cum += candidates_[i].first;
      if (cum >= target) {
        n_keep = i + 1;
        break;
      }
    }
  }

  double kept = 0;
  for (size_t i = 0; i < n_keep; ++i) kept += candidates_[i].first;
  const double r = rng_.Uniform() * kept;
  double cum = 0;
  for (size_t i = 0; i < n_keep; ++i) {
    cum += candidates_[i].first;
    if (r < cum) return candidates_[i].second;
  }
  return candidates_[n_keep - 1].second;  // rounding: r landed on the very end
}

}  // namespace appliance::runtime
