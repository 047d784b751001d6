// x86 AVX2 + FMA + F16C kernels. Each function carries its own target
// attribute instead of compiling the file with -mavx2: nothing else in this
// translation unit (inline library code the linker might pick for the whole
// program) is built for AVX2, so the binary still runs on older CPUs and the
// dispatcher only hands these out after CPUID said yes.
#include <immintrin.h>

#include <cmath>
#include <cstring>

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

APPLIANCE_AVX2 inline __m256 LoadF16x8(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

APPLIANCE_AVX2 inline __m256 LoadBf16x8(const uint8_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

APPLIANCE_AVX2 inline float F16Scale(const uint8_t* p) { return _cvtsh_ss(LoadU16(p)); }

// Four 8-lane accumulators (32 elements per step) hide the FMA latency.
template <typename LoadA, typename LoadB>
APPLIANCE_AVX2 inline __m256 Dot32(int64_t n32, LoadA load_a, LoadB load_b) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  for (int64_t i = 0; i < n32; i += 32) {
    acc0 = _mm256_fmadd_ps(load_a(i), load_b(i), acc0);
    acc1 = _mm256_fmadd_ps(load_a(i + 8), load_b(i + 8), acc1);
    acc2 = _mm256_fmadd_ps(load_a(i + 16), load_b(i + 16), acc2);
    acc3 = _mm256_fmadd_ps(load_a(i + 24), load_b(i + 24), acc3);
  }
  return _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
}

APPLIANCE_AVX2 float F32Dot(int64_t n, const void* w, const void* x) {
  const float* a = static_cast<const float*>(w);
  const float* b = static_cast<const float*>(x);
  const int64_t n32 = n & ~int64_t{31};
  auto la = [a](int64_t i) APPLIANCE_AVX2 { return _mm256_loadu_ps(a + i); };
  auto lb = [b](int64_t i) APPLIANCE_AVX2 { return _mm256_loadu_ps(b + i); };
  __m256 acc = Dot32(n32, la, lb);
  int64_t i = n32;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(la(i), lb(i), acc);
  float sum = Hsum(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

APPLIANCE_AVX2 float F16Dot(int64_t n, const void* w, const void* x) {
  const uint8_t* a = static_cast<const uint8_t*>(w);
  const uint8_t* b = static_cast<const uint8_t*>(x);
  const int64_t n32 = n & ~int64_t{31};
  auto la = [a](int64_t i) APPLIANCE_AVX2 { return LoadF16x8(a + 2 * i); };
  auto lb = [b](int64_t i) APPLIANCE_AVX2 { return LoadF16x8(b + 2 * i); };
  __m256 acc = Dot32(n32, la, lb);
  int64_t i = n32;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(la(i), lb(i), acc);
  float sum = Hsum(acc);
  for (; i < n; ++i) sum += Fp16ToFp32(LoadU16(a + 2 * i)) * Fp16ToFp32(LoadU16(b + 2 * i));
  return sum;
}

APPLIANCE_AVX2 float Bf16Dot(int64_t n, const void* w, const void* x) {
  const uint8_t* a = static_cast<const uint8_t*>(w);
  const uint8_t* b = static_cast<const uint8_t*>(x);
  const int64_t n32 = n & ~int64_t{31};
  auto la = [a](int64_t i) APPLIANCE_AVX2 { return LoadBf16x8(a + 2 * i); };
  auto lb = [b](int64_t i) APPLIANCE_AVX2 { return LoadBf16x8(b + 2 * i); };
  __m256 acc = Dot32(n32, la, lb);
  int64_t i = n32;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(la(i), lb(i), acc);
  float sum = Hsum(acc);
  for (; i < n; ++i) sum += Bf16ToFp32(LoadU16(a + 2 * i)) * Bf16ToFp32(LoadU16(b + 2 * i));
  return sum;
}

APPLIANCE_AVX2 void F16ToFloat(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, LoadF16x8(p + 2 * i));
  for (; i < n; ++i) dst[i] = Fp16ToFp32(LoadU16(p + 2 * i));
}

APPLIANCE_AVX2 void F16FromFloat(const float* src, void* dst, int64_t n) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 2 * i), h);
  }
  for (; i < n; ++i) {
    const uint16_t h = Fp32ToFp16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}

APPLIANCE_AVX2 void Bf16ToFloat(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, LoadBf16x8(p + 2 * i));
  for (; i < n; ++i) dst[i] = Bf16ToFp32(LoadU16(p + 2 * i));
}

APPLIANCE_AVX2 void Q8ToFloat(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQ8Block; ++b, p += kQ8BlockBytes) {
    const __m256 d = _mm256_set1_ps(F16Scale(p));
    for (int j = 0; j < 32; j += 8) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 2 + j));
      const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
      _mm256_storeu_ps(dst + b * kQ8Block + j, _mm256_mul_ps(d, q));
    }
  }
}

// Sum of 32 int8 products per block as 8 int32 lanes, via the maddubs trick:
// |a| (unsigned) times b with a's sign moved onto b. Exact as long as b is
// never -128, which holds because activations are quantized to [-127, 127].
APPLIANCE_AVX2 float Q8Dot(int64_t n, const void* w, const void* x) {
  const uint8_t* a = static_cast<const uint8_t*>(w);
  const uint8_t* b = static_cast<const uint8_t*>(x);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t blk = 0; blk < n / kQ8Block; ++blk, a += kQ8BlockBytes, b += kQ8BlockBytes) {
    PrefetchAhead<kQ8BlockBytes>(a);
    const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 2));
    const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    const __m256i abs_a = _mm256_sign_epi8(qa, qa);
    const __m256i signed_b = _mm256_sign_epi8(qb, qa);
    const __m256i pairs = _mm256_maddubs_epi16(abs_a, signed_b);
    const __m256 sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
    const __m256 d = _mm256_set1_ps(F16Scale(a) * F16Scale(b));
    acc = _mm256_fmadd_ps(d, sums, acc);
  }
  return Hsum(acc);
}

APPLIANCE_AVX2 float VecDot(int64_t n, const float* a, const float* b) { return F32Dot(n, a, b); }

// Eight KV cache elements as floats: F32 as they are, F16 widened.
APPLIANCE_AVX2 inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
APPLIANCE_AVX2 inline __m256 Load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
APPLIANCE_AVX2 inline float Widen(float v) { return v; }
APPLIANCE_AVX2 inline float Widen(uint16_t h) { return _cvtsh_ss(h); }

template <typename T>
APPLIANCE_AVX2 void DotRows(int64_t n, const float* q, const T* k, int64_t stride, int64_t count, float* out) {
  if (n == 8) {  // small heads (stories260K): one multiply and a horizontal sum per key
    const __m256 vq = _mm256_loadu_ps(q);
    for (int64_t t = 0; t < count; ++t) out[t] = Hsum(_mm256_mul_ps(vq, Load8(k + t * stride)));
    return;
  }
  const int64_t n32 = n & ~int64_t{31};
  auto lq = [q](int64_t i) APPLIANCE_AVX2 { return _mm256_loadu_ps(q + i); };
  for (int64_t t = 0; t < count; ++t) {
    const T* kt = k + t * stride;
    auto lk = [kt](int64_t i) APPLIANCE_AVX2 { return Load8(kt + i); };
    // As F32Dot: 32 at a time, then 8, then the scalar tail.
    __m256 acc = Dot32(n32, lq, lk);
    int64_t i = n32;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(lq(i), lk(i), acc);
    float sum = Hsum(acc);
    for (; i < n; ++i) sum += q[i] * Widen(kt[i]);
    out[t] = sum;
  }
}

// Columns in blocks kept in registers while the rows stream past: 64 at a
// time (a head of 64 in one pass, eight independent FMA chains instead of
// one chain per 8 columns), then 8 at a time. Each output's sum runs over the
// rows in order either way.
template <typename T>
APPLIANCE_AVX2 void AxpyRows(int64_t n, const float* p, const T* v, int64_t stride, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_loadu_ps(out + i + 8 * j);
    for (int64_t t = 0; t < count; ++t) {
      const __m256 pt = _mm256_set1_ps(p[t]);
      const T* vt = v + t * stride + i;
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(pt, Load8(vt + 8 * j), acc[j]);
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + i + 8 * j, acc[j]);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 acc = _mm256_loadu_ps(out + i);
    for (int64_t t = 0; t < count; ++t) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), Load8(v + t * stride + i), acc);
    _mm256_storeu_ps(out + i, acc);
  }
  for (; i < n; ++i) {
    float acc = out[i];
    for (int64_t t = 0; t < count; ++t) acc += p[t] * Widen(v[t * stride + i]);
    out[i] = acc;
  }
}

// e^x for x <= 0 (softmax arguments after subtracting the max), within ~2 ulp
// of expf: x = k ln2 + r with |r| <= ln2/2 (ln2 split in two for exactness),
// e^r by the classic Cephes degree-6 polynomial, 2^k through the exponent
// bits. Below -87.3 the result would be subnormal; it is flushed to 0.
APPLIANCE_AVX2 inline __m256 ExpNonPositive(__m256 x) {
  const __m256 min_arg = _mm256_set1_ps(-87.3f);
  const __m256 underflow = _mm256_cmp_ps(x, min_arg, _CMP_LT_OQ);
  x = _mm256_max_ps(x, min_arg);
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 r2 = _mm256_mul_ps(r, r);
  const __m256 er = _mm256_add_ps(_mm256_fmadd_ps(poly, r2, r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(er, _mm256_castsi256_ps(bits));
  return _mm256_andnot_ps(underflow, result);
}

// silu(g) = g * sigmoid(g), the sigmoid from e = e^-|g| (an argument <= 0):
// 1 / (1 + e) for g >= 0, e / (1 + e) for g < 0, which cannot overflow as
// 1 + e^-g does. Within a few ulp of the portable g / (1 + expf(-g)); the
// feed-forward's activation ran single-threaded through expf for ~2% of a
// decode step.
APPLIANCE_AVX2 void SwiGlu(int64_t n, float* gate, const float* up) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = ExpNonPositive(_mm256_or_ps(g, _mm256_set1_ps(-0.0f)));
    const __m256 sigmoid = _mm256_div_ps(_mm256_blendv_ps(one, e, g), _mm256_add_ps(one, e));  // e where g < 0
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

APPLIANCE_AVX2 void Softmax(int64_t n, float* x, float scale) {
  const __m256 vs = _mm256_set1_ps(scale);
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
    _mm256_storeu_ps(x + i, v);
    vmax = _mm256_max_ps(vmax, v);
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float max = _mm_cvtss_f32(m4);
  for (; i < n; ++i) {
    x[i] *= scale;
    max = x[i] > max ? x[i] : max;
  }
  const __m256 vm = _mm256_set1_ps(max);
  __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  double lanes[4];
  _mm256_storeu_pd(lanes, _mm256_add_pd(sum_lo, sum_hi));
  double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  if (i < n) {
    // The last n - i (< 8) in one vector: the exponential is per lane, so
    // each value is what it would be alone.
    const int64_t rest = n - i;
    float tail[8] = {};
    for (int64_t j = 0; j < rest; ++j) tail[j] = x[i + j] - max;
    _mm256_storeu_ps(tail, ExpNonPositive(_mm256_loadu_ps(tail)));
    for (int64_t j = 0; j < rest; ++j) {
      x[i + j] = tail[j];
      sum += tail[j];
    }
  }
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
  i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  const float inv1 = static_cast<float>(1.0 / sum);
  for (; i < n; ++i) x[i] *= inv1;
}

}  // namespace

const TypeKernels* Avx2Kernels(TensorType type) {
  // from_float of BF16 and Q8_0 stay portable: they run once per activation
  // row, and sharing them keeps both ISAs' quantized activations identical.
  static const TypeKernels kF32 =
      WithDot<F32Dot>(TensorType::kF32, TensorType::kF32, PortableKernels(TensorType::kF32)->to_float,
                      PortableKernels(TensorType::kF32)->from_float, kFloatSgemmMinRows);
  static const TypeKernels kF16 =
      WithDot<F16Dot>(TensorType::kF16, TensorType::kF16, F16ToFloat, F16FromFloat, kFloatSgemmMinRows);
  static const TypeKernels kBf16 = WithDot<Bf16Dot>(TensorType::kBF16, TensorType::kBF16, Bf16ToFloat,
                                                    PortableKernels(TensorType::kBF16)->from_float, kFloatSgemmMinRows);
  static const TypeKernels kQ8 = WithDot<Q8Dot>(TensorType::kQ8_0, TensorType::kQ8_0, Q8ToFloat,
                                                PortableKernels(TensorType::kQ8_0)->from_float, kAvx2SgemmMinRows);
  switch (type) {
    case TensorType::kF32: return &kF32;
    case TensorType::kF16: return &kF16;
    case TensorType::kBF16: return &kBf16;
    case TensorType::kQ8_0: return &kQ8;
    default: return Avx2QuantKernels(type);
  }
}

const VecKernels* Avx2Vec() {
  static const VecKernels kVec = {VecDot,           DotRows<float>, AxpyRows<float>, DotRows<uint16_t>,
                                  AxpyRows<uint16_t>, SwiGlu,         Softmax};
  return &kVec;
}

}  // namespace appliance::runtime::kernels::internal
