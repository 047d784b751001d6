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

// Highest probability first; equal probabilities by id, so the order never
// depends on the algorithm that produced it.
bool ByProbability(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

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

Status ValidateSamplerParams(const SamplerParams& p, int64_t max_last_n, ParamStyle style) {
  auto name = [style](std::string key) {
    if (style == ParamStyle::kJson) return "field '" + key + "'";
    std::replace(key.begin(), key.end(), '_', '-');
    return "--" + key;
  };
  auto bad = [&](const char* key, const std::string& range) {
    return Status::Error(name(key) + " must be in " + range);
  };
  if (!std::isfinite(p.temperature) || p.temperature < 0 || p.temperature > 100) return bad("temperature", "[0, 100]");
  if (!(p.top_p > 0 && p.top_p <= 1)) return bad("top_p", "(0, 1]");
  if (p.top_k < 0 || p.top_k > (int64_t{1} << 22)) return bad("top_k", "[0, 4194304] (0: off)");
  if (!(p.min_p >= 0 && p.min_p <= 1)) return bad("min_p", "[0, 1]");
  if (!(p.repeat_penalty > 0 && p.repeat_penalty <= 10)) return bad("repeat_penalty", "(0, 10]");
  if (!(p.frequency_penalty >= -10 && p.frequency_penalty <= 10)) return bad("frequency_penalty", "[-10, 10]");
  if (!(p.presence_penalty >= -10 && p.presence_penalty <= 10)) return bad("presence_penalty", "[-10, 10]");
  if (p.repeat_last_n < -1 || p.repeat_last_n > max_last_n) {
    return bad("repeat_last_n", "[-1, " + std::to_string(max_last_n) + "] (-1: the whole context, 0: off)");
  }
  return Status::Ok();
}

Sampler::Sampler(const SamplerParams& params, int64_t n_vocab) : params_(params), rng_(params.seed) {
  candidates_.reserve(static_cast<size_t>(n_vocab));
  if (params_.penalties_enabled()) {
    penalized_.resize(static_cast<size_t>(n_vocab));
    counts_.assign(static_cast<size_t>(n_vocab), 0);
    if (params_.repeat_last_n > 0) {
      history_.reserve(static_cast<size_t>(params_.repeat_last_n));
      distinct_.reserve(static_cast<size_t>(params_.repeat_last_n));
    }
  }
}

void Sampler::Accept(int32_t token) {
  if (!params_.penalties_enabled() || token < 0 || static_cast<size_t>(token) >= counts_.size()) return;
  // Keep at most 2 * window tokens, dropping the oldest in one go: amortised
  // O(1) per token and bounded memory.
  const size_t window = static_cast<size_t>(params_.repeat_last_n);
  if (params_.repeat_last_n > 0 && history_.size() >= 2 * window) {
    history_.erase(history_.begin(), history_.end() - static_cast<std::ptrdiff_t>(window - 1));
  }
  history_.push_back(token);
}

std::span<const float> Sampler::ApplyPenalties(std::span<const float> logits) {
  if (!params_.penalties_enabled() || history_.empty() || logits.size() != penalized_.size()) return logits;
  std::copy(logits.begin(), logits.end(), penalized_.begin());
  const size_t n = params_.repeat_last_n < 0 ? history_.size()
                                             : std::min(history_.size(), static_cast<size_t>(params_.repeat_last_n));
  distinct_.clear();
  for (size_t i = history_.size() - n; i < history_.size(); ++i) {
    const size_t t = static_cast<size_t>(history_[i]);
    if (counts_[t]++ == 0) distinct_.push_back(history_[i]);
  }
  for (int32_t id : distinct_) {
    const size_t t = static_cast<size_t>(id);
    float& l = penalized_[t];
    l = l <= 0 ? l * params_.repeat_penalty : l / params_.repeat_penalty;
    l -= static_cast<float>(counts_[t]) * params_.frequency_penalty + params_.presence_penalty;
    counts_[t] = 0;
  }
  return penalized_;
}

int32_t Sampler::Argmax(std::span<const float> logits) {
  // The first index of the largest logit (NaNs never win), in two passes
  // the compiler vectorizes: eight running maxima, then a scan for the first
  // element equal to their maximum. One pass carrying the index ran at ~1.5
  // ns per logit, 3% of a decode step of 8 jobs over 32000 logits each.
  float lane_max[8];
  std::fill(lane_max, lane_max + 8, -INFINITY);
  size_t i = 0;
  for (; i + 8 <= logits.size(); i += 8) {
    for (size_t j = 0; j < 8; ++j) lane_max[j] = logits[i + j] > lane_max[j] ? logits[i + j] : lane_max[j];
  }
  float max = -INFINITY;
  for (float m : lane_max) max = m > max ? m : max;
  for (; i < logits.size(); ++i) max = logits[i] > max ? logits[i] : max;
  for (size_t k = 0; k < logits.size(); ++k) {
    if (logits[k] == max) return static_cast<int32_t>(k);
  }
  return 0;  // every logit NaN
}

int32_t Sampler::Sample(std::span<const float> raw_logits) {
  const std::span<const float> logits = ApplyPenalties(raw_logits);
  if (params_.temperature <= 0.0f) return Argmax(logits);

  // Softmax of logits / T in double (the sum over a large vocab needs it).
  // The most likely token has weight exactly 1.
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
  bool sorted = false;  // candidates_[0, n_keep) in ByProbability order
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n_keep) {
    n_keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(n_keep),
                      candidates_.end(), ByProbability);
    sorted = true;
    total = 0;
    for (size_t i = 0; i < n_keep; ++i) total += candidates_[i].first;
  }
  if (params_.top_p < 1.0f) {
    if (!sorted) {
      // A token with probability below (1 - top_p) / (n - 1) can never be in
      // the nucleus (all such tokens together weigh less than 1 - top_p), so
      // only the rest needs sorting (llama2.c's trick; keeps sampling cheap on
      // 32k vocabs).
      const size_t n = candidates_.size();
      const double cutoff = n > 1 ? (1.0 - params_.top_p) / static_cast<double>(n - 1) * total : 0.0;
      auto end = std::partition(candidates_.begin(), candidates_.end(),
                                [cutoff](const std::pair<float, int32_t>& c) { return c.first >= cutoff; });
      // The argument needs at least one token above the cutoff; if there is
      // none (tiny vocab, tiny top_p), fall back to sorting everything.
      if (end == candidates_.begin()) end = candidates_.end();
      std::sort(candidates_.begin(), end, ByProbability);
      n_keep = static_cast<size_t>(end - candidates_.begin());
      sorted = true;
    }
    const double target = static_cast<double>(params_.top_p) * total;
    double cum = 0;
    for (size_t i = 0; i < n_keep; ++i) {
      cum += candidates_[i].first;
      if (cum >= target) {
        n_keep = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    // Relative to the most likely token, whose weight is 1 (and which every
    // cut above keeps).
    const float threshold = params_.min_p;
    if (sorted) {
      size_t i = 1;
      while (i < n_keep && candidates_[i].first >= threshold) ++i;
      n_keep = i;
    } else {
      size_t w = 0;  // stable compaction: the order stays by id
      for (size_t i = 0; i < n_keep; ++i) {
        if (candidates_[i].first >= threshold) candidates_[w++] = candidates_[i];
      }
      n_keep = w;
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
