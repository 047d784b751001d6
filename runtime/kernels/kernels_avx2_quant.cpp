// AVX2 kernels of the 4-, 5- and 6-bit weight types (see
// kernels_portable_quant.cpp for the arithmetic; these compute the same
// integer sums 32 bytes at a time). As in kernels_avx2.cpp every function
// carries its own target attribute, and the dispatcher hands them out only
// after CPUID said yes.
//
// The integer products use maddubs (unsigned 8-bit x signed 8-bit, adjacent
// pairs summed to int16). No pair can saturate: weights are at most 63 in
// magnitude here (Q8_0 weights: 128, see kernels_avx2.cpp) and activations
// at most 127 (Q8_0/Q8_K never produce -128), so a pair is below
// 2 * 63 * 127 < 32767.
//
// Dequantization (to_float, used for the batched path's weight panels) does
// the portable path's float operations in the same order, so both produce
// identical floats; this file is built with -ffp-contract=off so the compiler
// cannot fuse a multiply and an add into an FMA behind our back.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "runtime/kernels/internal.h"

#define APPLIANCE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace appliance::runtime::kernels::internal {
namespace {

APPLIANCE_AVX2 inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

APPLIANCE_AVX2 inline __m256i Load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 16 bytes of nibbles -> 32 bytes in element order: the low nibbles (elements
// 0-15) then the high nibbles (16-31), each in [0, 15].
APPLIANCE_AVX2 inline __m256i Nibbles32(const uint8_t* p) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// The 32 bits of a little-endian u32 -> 32 bytes, 0xFF where the bit is set.
APPLIANCE_AVX2 inline __m256i BitsToBytes32(const uint8_t* p) {
  const uint32_t bits = LoadU32(p);
  // Byte j of the result takes byte j / 8 of the word ...
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(bits)),
      _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000));
  // ... and is all ones after OR-ing every bit but bit j % 8 iff that bit was set.
  const __m256i others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
  return _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
}

// Unsigned x signed bytes -> 8 int32 lanes, each the sum of 4 products.
APPLIANCE_AVX2 inline __m256i MulSumU8I8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
// Signed x signed: move x's sign onto y so maddubs sees |x|.
APPLIANCE_AVX2 inline __m256i MulSumI8(__m256i x, __m256i y) {
  return MulSumU8I8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

APPLIANCE_AVX2 inline __m256 BytesToFloat8(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)); }

// dst[0..16) from the 16 signed bytes q: float(q) * d, optionally + add or - sub
// (the portable order of operations).
enum class Offset { kNone, kAdd, kSub };
template <Offset kOffset>
APPLIANCE_AVX2 inline void Store16(__m128i q, __m256 d, __m256 off, float* dst) {
  __m256 lo = _mm256_mul_ps(BytesToFloat8(q), d);
  __m256 hi = _mm256_mul_ps(BytesToFloat8(_mm_srli_si128(q, 8)), d);
  if constexpr (kOffset == Offset::kAdd) {
    lo = _mm256_add_ps(lo, off);
    hi = _mm256_add_ps(hi, off);
  } else if constexpr (kOffset == Offset::kSub) {
    lo = _mm256_sub_ps(lo, off);
    hi = _mm256_sub_ps(hi, off);
  }
  _mm256_storeu_ps(dst, lo);
  _mm256_storeu_ps(dst + 8, hi);
}
template <Offset kOffset>
APPLIANCE_AVX2 inline void Store32(__m256i q, float d, float off, float* dst) {
  const __m256 vd = _mm256_set1_ps(d);
  const __m256 vo = _mm256_set1_ps(off);
  Store16<kOffset>(_mm256_castsi256_si128(q), vd, vo, dst);
  Store16<kOffset>(_mm256_extracti128_si256(q, 1), vd, vo, dst + 16);
}

// --- Q4_0 / Q4_1 / Q5_0 / Q5_1 ---

// Q5_0's 5-bit value minus 16 as a signed byte: the nibble, with 0xF0 OR-ed
// in where the fifth bit is clear (nibble - 16 in two's complement).
APPLIANCE_AVX2 inline __m256i Q5_0Values(const BlockQ5_0& b) {
  return _mm256_or_si256(Nibbles32(b.qs),
                         _mm256_andnot_si256(BitsToBytes32(b.qh), _mm256_set1_epi8(static_cast<char>(0xF0))));
}
APPLIANCE_AVX2 inline __m256i Q5_1Values(const BlockQ5_1& b) {
  return _mm256_or_si256(Nibbles32(b.qs), _mm256_and_si256(BitsToBytes32(b.qh), _mm256_set1_epi8(0x10)));
}

APPLIANCE_AVX2 void Q4_0ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m256i q = _mm256_sub_epi8(Nibbles32(x[b].qs), _mm256_set1_epi8(8));
    Store32<Offset::kNone>(q, HalfAt(x[b].d), 0.0f, dst + b * kQK);
  }
}
APPLIANCE_AVX2 float Q4_0Dot(int64_t n, const void* w, const void* act) {
  const BlockQ4_0* x = static_cast<const BlockQ4_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQK; ++b) {
    PrefetchAhead<sizeof(BlockQ4_0)>(x + b);
    const __m256i q = _mm256_sub_epi8(Nibbles32(x[b].qs), _mm256_set1_epi8(8));
    const __m256 p = _mm256_cvtepi32_ps(MulSumI8(q, Load32(y[b].qs)));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfAt(x[b].d) * HalfAt(y[b].d)), p, acc);
  }
  return Hsum(acc);
}

APPLIANCE_AVX2 void Q4_1ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ4_1* x = static_cast<const BlockQ4_1*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    Store32<Offset::kAdd>(Nibbles32(x[b].qs), HalfAt(x[b].d), HalfAt(x[b].m), dst + b * kQK);
  }
}
// The *_1 types' offset term m * dy * sum(qy): sum(qy) as 8 int32 lanes
// (maddubs with all-ones), folded into the same accumulator.
APPLIANCE_AVX2 inline __m256i OffsetValues(const BlockQ4_1& b) { return Nibbles32(b.qs); }
APPLIANCE_AVX2 inline __m256i OffsetValues(const BlockQ5_1& b) { return Q5_1Values(b); }

template <typename Block>
APPLIANCE_AVX2 inline float OffsetDot(int64_t n, const void* w, const void* act) {
  const Block* x = static_cast<const Block*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act);
  const __m256i ones = _mm256_set1_epi8(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m256i qy = Load32(y[b].qs);
    const float dy = HalfAt(y[b].d);
    const __m256 p = _mm256_cvtepi32_ps(MulSumU8I8(OffsetValues(x[b]), qy));
    const __m256 s = _mm256_cvtepi32_ps(MulSumU8I8(ones, qy));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfAt(x[b].d) * dy), p, acc);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfAt(x[b].m) * dy), s, acc);
  }
  return Hsum(acc);
}

APPLIANCE_AVX2 float Q4_1Dot(int64_t n, const void* w, const void* act) { return OffsetDot<BlockQ4_1>(n, w, act); }

APPLIANCE_AVX2 void Q5_0ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ5_0* x = static_cast<const BlockQ5_0*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) Store32<Offset::kNone>(Q5_0Values(x[b]), HalfAt(x[b].d), 0.0f, dst + b * kQK);
}
APPLIANCE_AVX2 float Q5_0Dot(int64_t n, const void* w, const void* act) {
  const BlockQ5_0* x = static_cast<const BlockQ5_0*>(w);
  const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQK; ++b) {
    const __m256 p = _mm256_cvtepi32_ps(MulSumI8(Q5_0Values(x[b]), Load32(y[b].qs)));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfAt(x[b].d) * HalfAt(y[b].d)), p, acc);
  }
  return Hsum(acc);
}

APPLIANCE_AVX2 void Q5_1ToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ5_1* x = static_cast<const BlockQ5_1*>(src);
  for (int64_t b = 0; b < n / kQK; ++b) {
    Store32<Offset::kAdd>(Q5_1Values(x[b]), HalfAt(x[b].d), HalfAt(x[b].m), dst + b * kQK);
  }
}
APPLIANCE_AVX2 float Q5_1Dot(int64_t n, const void* w, const void* act) { return OffsetDot<BlockQ5_1>(n, w, act); }

// --- Q4_K / Q5_K ---

// Sub-blocks 2j (low nibbles) and 2j+1 (high nibbles) of a Q4_K/Q5_K
// super-block as bytes in [0, 31]; hbits (Q5_K's qh) is null for Q4_K.
template <bool kFiveBit>
APPLIANCE_AVX2 inline void QK4Values(const uint8_t* qs, __m256i hbits, int j, __m256i* lo, __m256i* hi) {
  const __m256i bits = Load32(qs + 32 * j);
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  *lo = _mm256_and_si256(bits, m4);
  *hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
  if constexpr (kFiveBit) {
    // Bit s of qh[l] is bit 4 of element 32s + l.
    const __m256i b0 = _mm256_set1_epi8(static_cast<char>(1u << (2 * j)));
    const __m256i b1 = _mm256_set1_epi8(static_cast<char>(1u << (2 * j + 1)));
    const __m256i sixteen = _mm256_set1_epi8(16);
    *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, b0), b0), sixteen));
    *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, b1), b1), sixteen));
  }
}

template <typename Block>
APPLIANCE_AVX2 void QK4ToFloat(const void* src, float* dst, int64_t n) {
  constexpr bool kFiveBit = std::is_same_v<Block, BlockQ5_K>;
  const Block* x = static_cast<const Block*>(src);
  uint8_t sc[8], m[8];
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float d = HalfAt(x[b].d);
    const float dmin = HalfAt(x[b].dmin);
    UnpackScalesMinsK4(x[b].scales, sc, m);
    __m256i hbits = _mm256_setzero_si256();
    if constexpr (kFiveBit) hbits = Load32(x[b].qh);
    float* out = dst + b * kQKK;
    for (int j = 0; j < 4; ++j) {
      __m256i lo, hi;
      QK4Values<kFiveBit>(x[b].qs, hbits, j, &lo, &hi);
      Store32<Offset::kSub>(lo, d * static_cast<float>(sc[2 * j]), dmin * static_cast<float>(m[2 * j]), out + 64 * j);
      Store32<Offset::kSub>(hi, d * static_cast<float>(sc[2 * j + 1]), dmin * static_cast<float>(m[2 * j + 1]),
                            out + 64 * j + 32);
    }
  }
}

template <typename Block>
APPLIANCE_AVX2 float QK4Dot(int64_t n, const void* w, const void* act) {
  constexpr bool kFiveBit = std::is_same_v<Block, BlockQ5_K>;
  const Block* x = static_cast<const Block*>(w);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(act);
  uint8_t sc[8];
  __m256 acc = _mm256_setzero_ps();
  __m128 acc_m = _mm_setzero_ps();
  for (int64_t b = 0; b < n / kQKK; ++b) {
    PrefetchAhead<sizeof(Block)>(x + b);
    const ScalesMinsK4 u = UnpackScalesMinsK4(x[b].scales);
    std::memcpy(sc, &u.scales, 8);
    // Mins: sum_s m[s] * (bsums[2s] + bsums[2s+1]), as 4 int32 lanes.
    const __m256i bsums = Load32(y[b].bsums);
    const __m128i pair_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256(bsums, 1));
    const __m128i mins =
        _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(u.mins))), pair_sums);
    acc_m = _mm_fmadd_ps(_mm_set1_ps(HalfAt(x[b].dmin) * y[b].d), _mm_cvtepi32_ps(mins), acc_m);
    __m256i hbits = _mm256_setzero_si256();
    if constexpr (kFiveBit) hbits = Load32(x[b].qh);
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      __m256i lo, hi;
      QK4Values<kFiveBit>(x[b].qs, hbits, j, &lo, &hi);
      const __m256i pl = _mm256_maddubs_epi16(lo, Load32(y[b].qs + 64 * j));
      const __m256i ph = _mm256_maddubs_epi16(hi, Load32(y[b].qs + 64 * j + 32));
      sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, _mm256_set1_epi16(sc[2 * j])));
      sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, _mm256_set1_epi16(sc[2 * j + 1])));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfAt(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
  }
  __m128 m4 = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
  m4 = _mm_add_ss(m4, _mm_movehdup_ps(m4));
  return Hsum(acc) - _mm_cvtss_f32(m4);
}

// --- Q6_K ---

// The four 32-element rows k of half h of a Q6_K super-block as bytes in [0, 63].
APPLIANCE_AVX2 inline void Q6KValues(const BlockQ6_K& x, int h, __m256i q[4]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const __m256i l0 = Load32(x.ql + 64 * h);
  const __m256i l1 = Load32(x.ql + 64 * h + 32);
  const __m256i hb = Load32(x.qh + 32 * h);
  q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
  q[1] =
      _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
}

APPLIANCE_AVX2 void Q6_KToFloat(const void* src, float* dst, int64_t n) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(src);
  const __m256i m32 = _mm256_set1_epi8(32);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float d = HalfAt(x[b].d);
    for (int h = 0; h < 2; ++h) {
      __m256i q[4];
      Q6KValues(x[b], h, q);
      for (int k = 0; k < 4; ++k) {
        const __m256i v = _mm256_sub_epi8(q[k], m32);
        const int g = 8 * h + 2 * k;  // groups g (first 16 elements) and g + 1
        float* out = dst + b * kQKK + 128 * h + 32 * k;
        Store16<Offset::kNone>(_mm256_castsi256_si128(v), _mm256_set1_ps(d * static_cast<float>(x[b].scales[g])), zero,
                               out);
        Store16<Offset::kNone>(_mm256_extracti128_si256(v, 1),
                               _mm256_set1_ps(d * static_cast<float>(x[b].scales[g + 1])), zero, out + 16);
      }
    }
  }
}

// Byte shuffles that spread the int8 scales of groups 2i (to bytes 0-7) and
// 2i + 1 (bytes 8-15): the scales of one 32-element row of maddubs output.
alignas(16) constexpr uint8_t kQ6ScalePairs[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},
    {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};

// sum_i sc[g(i)] * (q_i - 32) * y_i = sum_i sc * q_i * y_i - 32 * sum_g sc[g] * bsums[g]:
// the products use the unsigned 6-bit q (maddubs), the offset comes from
// Q8_K's group sums in one multiply-add.
APPLIANCE_AVX2 float Q6_KDot(int64_t n, const void* w, const void* act) {
  const BlockQ6_K* x = static_cast<const BlockQ6_K*>(w);
  const BlockQ8_K* y = static_cast<const BlockQ8_K*>(act);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / kQKK; ++b) {
    PrefetchAhead<sizeof(BlockQ6_K)>(x + b);
    const __m128i scales = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x[b].scales));
    const __m256i offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), Load32(y[b].bsums));
    __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5));
    for (int h = 0; h < 2; ++h) {
      __m256i q[4];
      Q6KValues(x[b], h, q);
      for (int k = 0; k < 4; ++k) {
        const __m256i p = _mm256_maddubs_epi16(q[k], Load32(y[b].qs + 128 * h + 32 * k));
        const __m128i pair =
            _mm_shuffle_epi8(scales, _mm_load_si128(reinterpret_cast<const __m128i*>(kQ6ScalePairs[4 * h + k])));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_cvtepi8_epi16(pair)));
      }
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfAt(x[b].d) * y[b].d), _mm256_cvtepi32_ps(sumi), acc);
  }
  return Hsum(acc);
}

}  // namespace

// Q8_K (activation-only) stays portable: quantizing one activation row
// is cheap next to the matrix-vector product, and sharing the quantizer keeps
// both ISAs' activations bit-identical.
const TypeKernels* Avx2QuantKernels(TensorType type) {
  static const TypeKernels kQ4_0 =
      WithDot<Q4_0Dot>(TensorType::kQ4_0, TensorType::kQ8_0, Q4_0ToFloat, nullptr, kAvx2SgemmMinRows);
  static const TypeKernels kQ4_1 =
      WithDot<Q4_1Dot>(TensorType::kQ4_1, TensorType::kQ8_0, Q4_1ToFloat, nullptr, kAvx2SgemmMinRows);
  static const TypeKernels kQ5_0 =
      WithDot<Q5_0Dot>(TensorType::kQ5_0, TensorType::kQ8_0, Q5_0ToFloat, nullptr, kAvx2SgemmMinRows);
  static const TypeKernels kQ5_1 =
      WithDot<Q5_1Dot>(TensorType::kQ5_1, TensorType::kQ8_0, Q5_1ToFloat, nullptr, kAvx2SgemmMinRows);
  static const TypeKernels kQ4_K = WithDot<QK4Dot<BlockQ4_K>>(TensorType::kQ4_K, TensorType::kQ8_K,
                                                              QK4ToFloat<BlockQ4_K>, nullptr, kAvx2SgemmMinRows);
  static const TypeKernels kQ5_K = WithDot<QK4Dot<BlockQ5_K>>(TensorType::kQ5_K, TensorType::kQ8_K,
                                                              QK4ToFloat<BlockQ5_K>, nullptr, kAvx2SgemmMinRows);
  static const TypeKernels kQ6_K =
      WithDot<Q6_KDot>(TensorType::kQ6_K, TensorType::kQ8_K, Q6_KToFloat, nullptr, kAvx2SgemmMinRows);
  switch (type) {
    case TensorType::kQ4_0: return &kQ4_0;
    case TensorType::kQ4_1: return &kQ4_1;
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
