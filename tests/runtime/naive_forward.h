// A naive double-precision forward pass of the llama / qwen2 / qwen3 block,
// written from the architectures' definitions with straightforward loops and
// no code shared with the engine: it reads the weights as tests/runtime/
// model_writer.h recorded them (decoded by quant_ref.h).
//
// Activations stay in double, unrounded (Activations::kExact), or, to model
// the one numeric choice the engine makes on purpose (as llama.cpp does), are
// rounded before each matrix product the way the weight's vec_dot_type
// defines (Activations::kAsVecDotType): f16 / bf16 rounding for f16 / bf16
// weights; 8-bit blocks for quantized weights: q8_0 (q4_0, q4_1, q5_0, q5_1,
// q8_0): d = max|x| / 127 stored as f16, q = round(x / d);
// q8_K (K types): blocks of 256, d = -max / 127 with max the element of
// largest magnitude, q = round(x / d). Written from those definitions here.
//
//   x = token_embd[token]
//   per layer: h = RMSNorm(x) * attn_norm
//              q = Wq h + bq, k = Wk h + bk, v = Wv h + bv         (biases: qwen2, optional llama)
//              q, k per head: RMSNorm(.) * q_norm / k_norm         (qwen3)
//              RoPE on the first n_rot dims of each q and k head at angle
//                pos * freq_scale * base^(-2j / n_rot) for pair j:
//                llama pairs (2j, 2j+1), qwen (NeoX) pairs (j, j + n_rot/2)
//              per query head h (KV head h / (n_head / n_head_kv)):
//                o_h = sum_u softmax_u(q_h . k_u / sqrt(head_k)) v_u over positions u <= pos
//              x += Wo o + bo
//              h = RMSNorm(x) * ffn_norm;  x += Wdown (silu(Wgate h) * (Wup h))
//   logits = Woutput (RMSNorm(x) * output_norm)    (Woutput = token_embd when tied)
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/runtime/model_writer.h"

namespace appliance::runtime::testing {

enum class Activations { kExact, kAsVecDotType };

// x as the engine's activation conversion for a weight of `type` leaves it.
inline std::vector<double> RoundActivations(uint32_t type, const std::vector<double>& x) {
  std::vector<double> out(x.size());
  auto q8 = [&](size_t block, bool k_type) {
    for (size_t b0 = 0; b0 < x.size(); b0 += block) {
      float amax = 0, max = 0;
      for (size_t i = b0; i < b0 + block; ++i) {
        const float v = static_cast<float>(x[i]);
        if (std::fabs(v) > amax) {
          amax = std::fabs(v);
          max = v;
        }
      }
      // d: the step; q8_0 stores it as f16, q8_K as a float from -127 / max.
      const double d = amax == 0 ? 0.0
                       : k_type  ? static_cast<double>(1.0f / (-127.f / max))
                                 : HalfValue(HalfBits(amax / 127.f));
      const float inv = amax == 0 ? 0.0f : k_type ? -127.f / max : 127.f / amax;
      for (size_t i = b0; i < b0 + block; ++i) {
        out[i] = d * static_cast<double>(std::nearbyint(static_cast<float>(x[i]) * inv));
      }
    }
  };
  switch (type) {
    case kTypeF32:
      return x;
    case kTypeF16:
      for (size_t i = 0; i < x.size(); ++i) out[i] = HalfValue(HalfBits(static_cast<float>(x[i])));
      return out;
    case kTypeBF16:
      for (size_t i = 0; i < x.size(); ++i) {  // round to nearest even on the upper 16 bits
        const float f = static_cast<float>(x[i]);
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        out[i] = BfloatValue(static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16));
      }
      return out;
    case kTypeQ8_0:
    case kTypeQ4_0:
    case kTypeQ5_0:
    case kTypeQ4_1:
    case kTypeQ5_1:
      q8(32, false);
      return out;
    default:
      q8(256, true);
      return out;  // q4_K, q5_K, q6_K
  }
}

inline std::vector<double> NaiveMatVec(const std::vector<double>& w, int64_t rows, int64_t cols,
                                       const std::vector<double>& x) {
  std::vector<double> y(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += w[static_cast<size_t>(r * cols + c)] * x[static_cast<size_t>(c)];
    y[static_cast<size_t>(r)] = sum;
  }
  return y;
}

// RMSNorm of x[offset, offset + n) in place, times weight[0, n).
inline void NaiveRmsNorm(std::vector<double>& x, size_t offset, size_t n, const std::vector<double>& weight,
                         double eps) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[offset + i] * x[offset + i];
  const double scale = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (size_t i = 0; i < n; ++i) x[offset + i] = x[offset + i] * scale * weight[i];
}

// Logits after each of `tokens`, fed in order from position 0.
inline std::vector<std::vector<double>> NaiveForward(const TestModel& m, const std::vector<int32_t>& tokens,
                                                     Activations activations = Activations::kExact) {
  const ModelSpec& s = m.spec;
  const int64_t d = s.n_embd, nh = s.n_head, nkv = s.n_head_kv, hk = m.head_k(), hv = m.head_v();
  const int64_t n_rot = s.n_rot ? s.n_rot : hk;
  const int64_t nv = m.n_vocab;
  const bool neox = s.arch != "llama";
  double freq_scale = 1.0;
  if (s.rope_scaling_type != "none" && s.rope_scaling_factor != 0) freq_scale = 1.0 / s.rope_scaling_factor;
  const double eps = s.rms_eps;
  // W x for the tensor `name` of `rows` x `cols`.
  auto matvec = [&](const std::string& name, int64_t rows, int64_t cols, const std::vector<double>& x) {
    const std::vector<double> xr = activations == Activations::kExact ? x : RoundActivations(m.types.at(name), x);
    return NaiveMatVec(m.at(name), rows, cols, xr);
  };

  // caches[layer][pos] = one position's keys (nkv * hk) / values (nkv * hv).
  std::vector<std::vector<std::vector<double>>> kc(s.n_layer), vc(s.n_layer);
  std::vector<std::vector<double>> out;
  const std::vector<double>& embd = m.at("token_embd.weight");
  for (size_t pos = 0; pos < tokens.size(); ++pos) {
    std::vector<double> x(embd.begin() + tokens[pos] * d, embd.begin() + (tokens[pos] + 1) * d);
    for (uint32_t l = 0; l < s.n_layer; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      std::vector<double> h = x;
      NaiveRmsNorm(h, 0, static_cast<size_t>(d), m.at(p + "attn_norm.weight"), eps);
      std::vector<double> q = matvec(p + "attn_q.weight", nh * hk, d, h);
      std::vector<double> k = matvec(p + "attn_k.weight", nkv * hk, d, h);
      std::vector<double> v = matvec(p + "attn_v.weight", nkv * hv, d, h);
      if (m.has(p + "attn_q.bias")) {
        for (size_t i = 0; i < q.size(); ++i) q[i] += m.at(p + "attn_q.bias")[i];
        for (size_t i = 0; i < k.size(); ++i) k[i] += m.at(p + "attn_k.bias")[i];
        for (size_t i = 0; i < v.size(); ++i) v[i] += m.at(p + "attn_v.bias")[i];
      }
      if (m.has(p + "attn_q_norm.weight")) {
        for (int64_t hh = 0; hh < nh; ++hh)
          NaiveRmsNorm(q, static_cast<size_t>(hh * hk), static_cast<size_t>(hk), m.at(p + "attn_q_norm.weight"), eps);
        for (int64_t hh = 0; hh < nkv; ++hh)
          NaiveRmsNorm(k, static_cast<size_t>(hh * hk), static_cast<size_t>(hk), m.at(p + "attn_k_norm.weight"), eps);
      }
      auto rope = [&](std::vector<double>& t, int64_t heads) {
        for (int64_t hh = 0; hh < heads; ++hh) {
          double* head = t.data() + hh * hk;
          for (int64_t j = 0; j < n_rot / 2; ++j) {
            const double theta = static_cast<double>(pos) * freq_scale *
                                 std::pow(static_cast<double>(s.rope_freq_base),
                                          -2.0 * static_cast<double>(j) / static_cast<double>(n_rot));
            const int64_t a = neox ? j : 2 * j;
            const int64_t b = neox ? j + n_rot / 2 : 2 * j + 1;
            const double x0 = head[a], x1 = head[b];
            head[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
            head[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
          }
        }
      };
      rope(q, nh);
      rope(k, nkv);
      kc[l].push_back(k);
      vc[l].push_back(v);

      std::vector<double> o(static_cast<size_t>(nh * hv), 0.0);
      for (int64_t hh = 0; hh < nh; ++hh) {
        const int64_t g = hh / (nh / nkv);
        std::vector<double> score(pos + 1);
        double max = -INFINITY;
        for (size_t u = 0; u <= pos; ++u) {
          double dot = 0;
          for (int64_t i = 0; i < hk; ++i)
            dot += q[static_cast<size_t>(hh * hk + i)] * kc[l][u][static_cast<size_t>(g * hk + i)];
          score[u] = dot / std::sqrt(static_cast<double>(hk));
          max = std::max(max, score[u]);
        }
        double total = 0;
        for (double& sc : score) total += (sc = std::exp(sc - max));
        for (size_t u = 0; u <= pos; ++u) {
          for (int64_t i = 0; i < hv; ++i) {
            o[static_cast<size_t>(hh * hv + i)] += score[u] / total * vc[l][u][static_cast<size_t>(g * hv + i)];
          }
        }
      }
      std::vector<double> attn = matvec(p + "attn_output.weight", d, nh * hv, o);
      for (int64_t i = 0; i < d; ++i) {
        x[static_cast<size_t>(i)] +=
            attn[static_cast<size_t>(i)] +
            (m.has(p + "attn_output.bias") ? m.at(p + "attn_output.bias")[static_cast<size_t>(i)] : 0.0);
      }

      h = x;
      NaiveRmsNorm(h, 0, static_cast<size_t>(d), m.at(p + "ffn_norm.weight"), eps);
      const std::vector<double> gate = matvec(p + "ffn_gate.weight", s.n_ff, d, h);
      const std::vector<double> up = matvec(p + "ffn_up.weight", s.n_ff, d, h);
      std::vector<double> act(s.n_ff);
      for (size_t i = 0; i < act.size(); ++i) act[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      const std::vector<double> down = matvec(p + "ffn_down.weight", d, s.n_ff, act);
      for (int64_t i = 0; i < d; ++i) x[static_cast<size_t>(i)] += down[static_cast<size_t>(i)];
    }
    NaiveRmsNorm(x, 0, static_cast<size_t>(d), m.at("output_norm.weight"), eps);
    out.push_back(matvec(m.has("output.weight") ? "output.weight" : "token_embd.weight", nv, d, x));
  }
  return out;
}

}  // namespace appliance::runtime::testing
