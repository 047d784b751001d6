// Portable kernels of the 4-, 5- and 6-bit weight types and of Q8_K, the
// activation type of the K types: the reference the AVX2 versions are tested
// against, and the fallback on CPUs without AVX2.
//
// As in ggml, activations meet each weight type quantized to its
// vec_dot_type (the *_0 and *_1 types -> Q8_0, K types -> Q8_K) and the dot
// product runs on integers block by block: exact integer sums, then one float
// scale per block. The weight types have no from_float: the runtime only
// reads them.
//
// One deliberate difference from ggml: Q4_1/Q5_1 meet Q8_0 activations, not
// Q8_1. ggml's Q8_1 carries s = d * sum(q) rounded to F16 for the weights'
// offset term m * s, an error of 2^-11 relative to |s| that reached 1.5% of
// the logits on test models and would make the decode path (these dot
// products) disagree with the batched path (dequantized F32 weights times
// the same 8-bit activations). Here the offset term is m * d * sum(q) from
// the exact integer sum, so both paths compute the same sum.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "runtime/kernels/internal.h"

namespace appliance::runtime::kernels::internal {
namespace {

// --- activation types ---

// Q8_K like ggml's quantize_row_q8_K_ref (what x86 runs too): the scale comes
// from the first element of largest magnitude *with its sign*, iscale =
// -127 / max, q = min(127, round-half-even(iscale * x)), d = 1 / iscale.
void Q8_KFromFloat(const float* src, void* dst, int64_t n) {
  BlockQ8_K* y = static_cast<BlockQ8_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* x = src + b * kQKK;
    float max = 0;
    float amax = 0;
    for (int64_t j = 0; j < kQKK; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    if (amax == 0.0f) {
      y[b].d = 0;
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      std::memset(y[b].bsums, 0, sizeof y[b].bsums);
      continue;
    }
    const float iscale = -127.f / max;
    for (int64_t j = 0; j < kQKK; ++j) y[b].qs[j] = RoundToInt8(iscale * x[j]);
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += y[b].qs[g * 16 + l];
      y[b].bsums[g] = static_cast<int16_t>(sum);
    }
    y[b].d = 1 / iscale;
  }
}

void Q8_KToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ8_K* x = static_cast<const BlockQ8_K*>(src);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    for (int64_t j = 0; j < kQKK; ++j) dst[b * kQKK + j] = x[b].d * static_cast<float>(x[b].qs[j]);
  }
}

// --- Q4_0 / Q4_1 / Q5_0 / Q5_1: blocks of 32 ---

// The 32 quants of a *_0/*_1 block in element order; the 5-bit types add
// bit j of qh as bit 4 of element j. `offset` is subtracted (8, 16 or 0).
template <bool kFiveBit>
void UnpackQ32(const uint8_t* qs, const uint8_t* qh, int offset, int32_t q[32]) {
  const uint32_t h = kFiveBit ? LoadU32(qh) : 0;
  for (int j = 0; j < 16; ++j) {
    int32_t lo = qs[j] & 0xF;
    int32_t hi = qs[j] >> 4;
    if (kFiveBit) {
      lo |= static_cast<int32_t>((h >> j) & 1u) << 4;
      hi |= static_cast<int32_t>((h >> (j + 16)) & 1u) << 4;
    }
    q[j] = lo - offset;
    q[j + 16] = hi - offset;
  }
}

int32_t DotQ32(const int32_t q[32], const int8_t* y) {
  int32_t sum = 0;
  for (int j = 0; j < 32; ++j) sum += q[j] * y[j];
  return sum;
}

void Q4_0ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(src);
  int32_t q[32];
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = HalfAt(x[b].d);
    UnpackQ32<false>(x[b].qs, nullptr, 8, q);
    for (int j = 0; j < 32; ++j) dst[b * kQK + j] = static_cast<float>(q[j]) * d;
  }
}
float Q4_0Dot(int64_t n, const void* w, const void* act) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act);
  int32_t q[32];
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    UnpackQ32<false>(x[b].qs, nullptr, 8, q);
    sum += static_cast<float>(DotQ32(q, y[b].qs)) * (HalfAt(x[b].d) * HalfAt(y[b].d));
  }
  return sum;
}

void Q4_1ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ4_1* x = static_cast<const BlockQ4_1*>(src);
  int32_t q[32];
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = HalfAt(x[b].d);
    const float m = HalfAt(x[b].m);
    UnpackQ32<false>(x[b].qs, nullptr, 0, q);
    for (int j = 0; j < 32; ++j) dst[b * kQK + j] = static_cast<float>(q[j]) * d + m;
  }
}
int32_t SumQ32(const int8_t* y) {
  int32_t sum = 0;
  for (int j = 0; j < 32; ++j) sum += y[j];
  return sum;
}

// sum_j (d q_j + m) * dy qy_j = d dy sum(q qy) + m dy sum(qy).
float Q4_1Dot(int64_t n, const void* w, const void* act) {
  const BlockQ4_1* x = static_cast<const BlockQ4_1*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act);
  int32_t q[32];
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    UnpackQ32<false>(x[b].qs, nullptr, 0, q);
    const float dy = HalfAt(y[b].d);
    sum += (HalfAt(x[b].d) * dy) * static_cast<float>(DotQ32(q, y[b].qs)) +
           (HalfAt(x[b].m) * dy) * static_cast<float>(SumQ32(y[b].qs));
  }
  return sum;
}

void Q5_0ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ5_0* x = static_cast<const BlockQ5_0*>(src);
  int32_t q[32];
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = HalfAt(x[b].d);
    UnpackQ32<true>(x[b].qs, x[b].qh, 16, q);
    for (int j = 0; j < 32; ++j) dst[b * kQK + j] = static_cast<float>(q[j]) * d;
  }
}
float Q5_0Dot(int64_t n, const void* w, const void* act) {
  const BlockQ5_0* x = static_cast<const BlockQ5_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act);
  int32_t q[32];
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    UnpackQ32<true>(x[b].qs, x[b].qh, 16, q);
    sum += (HalfAt(x[b].d) * HalfAt(y[b].d)) * static_cast<float>(DotQ32(q, y[b].qs));
  }
  return sum;
}

void Q5_1ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ5_1* x = static_cast<const BlockQ5_1*>(src);
  int32_t q[32];
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float d = HalfAt(x[b].d);
    const float m = HalfAt(x[b].m);
    UnpackQ32<true>(x[b].qs, x[b].qh, 0, q);
    for (int j = 0; j < 32; ++j) dst[b * kQK + j] = static_cast<float>(q[j]) * d + m;
  }
}
float Q5_1Dot(int64_t n, const void* w, const void* act) {
  const BlockQ5_1* x = static_cast<const BlockQ5_1*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act);
  int32_t q[32];
  float sum = 0;
  for (int64_t b = 0; b < n / kQK; ++b) {
    UnpackQ32<true>(x[b].qs, x[b].qh, 0, q);
    const float dy = HalfAt(y[b].d);
    sum += (HalfAt(x[b].d) * dy) * static_cast<float>(DotQ32(q, y[b].qs)) +
           (HalfAt(x[b].m) * dy) * static_cast<float>(SumQ32(y[b].qs));
  }
  return sum;
}

// --- Q4_K / Q5_K: super-blocks of 256 in 8 sub-blocks of 32 ---

// The 256 quants (0..15 or 0..31) of a Q4_K/Q5_K super-block in element order.
void UnpackQK4(const uint8_t* qs, const uint8_t* qh, uint8_t q[256]) {
  for (int s = 0; s < 8; ++s) {
    const uint8_t* p = qs + 32 * (s / 2);
    for (int l = 0; l < 32; ++l) {
      uint8_t v = (s % 2 == 0) ? (p[l] & 0xF) : (p[l] >> 4);
      if (qh != nullptr) v = static_cast<uint8_t>(v | (((qh[l] >> s) & 1) << 4));
      q[32 * s + l] = v;
    }
  }
}

template <typename Block>
void QK4ToFloat(const void* src, float* dst, int64_t n) {
  const Block* x = static_cast<const Block*>(src);
  uint8_t q[256];
  uint8_t sc[8], m[8];
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float d = HalfAt(x[b].d);
    const float dmin = HalfAt(x[b].dmin);
    if constexpr (std::is_same_v<Block, BlockQ5_K>) {
      UnpackQK4(x[b].qs, x[b].qh, q);
    } else {
      UnpackQK4(x[b].qs, nullptr, q);
    }
    UnpackScalesMinsK4(x[b].scales, sc, m);
    for (int s = 0; s < 8; ++s) {
      const float d1 = d * static_cast<float>(sc[s]);
      const float m1 = dmin * static_cast<float>(m[s]);
      for (int l = 0; l < 32; ++l) dst[b * kQKK + 32 * s + l] = d1 * static_cast<float>(q[32 * s + l]) - m1;
    }
  }
}

// sum_i (d sc q_i - dmin m) * dy qy_i = d dy sum_s sc_s sum(q qy) - dmin dy sum_s m_s sum(qy),
// where sum(qy) over a sub-block of 32 is two of Q8_K's bsums.
template <typename Block>
float QK4Dot(int64_t n, const void* w, const void* act) {
  const Block* x = static_cast<const Block*>(w);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(act);
  uint8_t q[256];
  uint8_t sc[8], m[8];
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    if constexpr (std::is_same_v<Block, BlockQ5_K>) {
      UnpackQK4(x[b].qs, x[b].qh, q);
    } else {
      UnpackQK4(x[b].qs, nullptr, q);
    }
    UnpackScalesMinsK4(x[b].scales, sc, m);
    int32_t isum = 0;
    for (int s = 0; s < 8; ++s) {
      int32_t part = 0;
      for (int l = 0; l < 32; ++l) part += q[32 * s + l] * y[b].qs[32 * s + l];
      isum += sc[s] * part;
    }
    int32_t msum = 0;
    for (int g = 0; g < 16; ++g) msum += y[b].bsums[g] * m[g / 2];
    sum +=
        (HalfAt(x[b].d) * y[b].d) * static_cast<float>(isum) - (HalfAt(x[b].dmin) * y[b].d) * static_cast<float>(msum);
  }
  return sum;
}

// --- Q6_K: super-blocks of 256 in 16 groups of 16 ---

// The 256 quants of a Q6_K super-block in element order, minus 32.
void UnpackQ6K(const BlockQ6_K& x, int8_t q[256]) {
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = x.ql + 64 * h;
    const uint8_t* qh = x.qh + 32 * h;
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t low = ql[l + 32 * (k & 1)];
        const int v = (k < 2 ? (low & 0xF) : (low >> 4)) | (((qh[l] >> (2 * k)) & 3) << 4);
        q[128 * h + 32 * k + l] = static_cast<int8_t>(v - 32);
      }
    }
  }
}

void Q6_KToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(src);
  int8_t q[256];
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float d = HalfAt(x[b].d);
    UnpackQ6K(x[b], q);
    for (int g = 0; g < 16; ++g) {
      const float dg = d * static_cast<float>(x[b].scales[g]);
      for (int l = 0; l < 16; ++l) dst[b * kQKK + 16 * g + l] = dg * static_cast<float>(q[16 * g + l]);
    }
  }
}

float Q6_KDot(int64_t n, const void* w, const void* act) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(act);
  int8_t q[256];
  float sum = 0;
  for (int64_t b = 0; b < n / kQKK; ++b) {
    UnpackQ6K(x[b], q);
    int32_t isum = 0;
    for (int g = 0; g < 16; ++g) {
      int32_t part = 0;
      for (int l = 0; l < 16; ++l) part += q[16 * g + l] * y[b].qs[16 * g + l];
      isum += x[b].scales[g] * part;
    }
    sum += (HalfAt(x[b].d) * y[b].d) * static_cast<float>(isum);
  }
  return sum;
}

const TypeKernels kQ8_K = {TensorType::kQ8_K, TensorType::kQ8_K, Q8_KToFloat, Q8_KFromFloat, nullptr, nullptr, 0};
const TypeKernels kQ4_0 =
    WithDot<Q4_0Dot>(TensorType::kQ4_0, TensorType::kQ8_0, Q4_0ToFloat, nullptr, kPortableSgemmMinRows);
const TypeKernels kQ4_1 =
    WithDot<Q4_1Dot>(TensorType::kQ4_1, TensorType::kQ8_0, Q4_1ToFloat, nullptr, kPortableSgemmMinRows);
const TypeKernels kQ5_0 =
    WithDot<Q5_0Dot>(TensorType::kQ5_0, TensorType::kQ8_0, Q5_0ToFloat, nullptr, kPortableSgemmMinRows);
const TypeKernels kQ5_1 =
    WithDot<Q5_1Dot>(TensorType::kQ5_1, TensorType::kQ8_0, Q5_1ToFloat, nullptr, kPortableSgemmMinRows);
const TypeKernels kQ4_K = WithDot<QK4Dot<BlockQ4_K>>(TensorType::kQ4_K, TensorType::kQ8_K, QK4ToFloat<BlockQ4_K>,
                                                     nullptr, kPortableSgemmMinRows);
const TypeKernels kQ5_K = WithDot<QK4Dot<BlockQ5_K>>(TensorType::kQ5_K, TensorType::kQ8_K, QK4ToFloat<BlockQ5_K>,
                                                     nullptr, kPortableSgemmMinRows);
const TypeKernels kQ6_K =
    WithDot<Q6_KDot>(TensorType::kQ6_K, TensorType::kQ8_K, Q6_KToFloat, nullptr, kPortableSgemmMinRows);

}  // namespace

const TypeKernels* PortableQuantKernels(TensorType type) {
  switch (type) {
    case TensorType::kQ8_K:
      return &kQ8_K;
    case TensorType::kQ4_0:
      return &kQ4_0;
    case TensorType::kQ4_1:
      return &kQ4_1;
    case TensorType::kQ5_0:
      return &kQ5_0;
    case TensorType::kQ5_1:
      return &kQ5_1;
    case TensorType::kQ4_K:
      return &kQ4_K;
    case TensorType::kQ5_K:
      return &kQ5_K;
    case TensorType::kQ6_K:
      return &kQ6_K;
    default:
      return nullptr;
  }
}

}  // namespace appliance::runtime::kernels::internal
