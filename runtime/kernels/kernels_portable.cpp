// Portable C++ kernels: the reference every ISA-specific path is tested
// against, and the fallback on CPUs without AVX2.
#include <cmath>
#include <cstring>

#include "runtime/kernels/internal.h"

namespace appliance::runtime::kernels::internal {
namespace {

// Eight independent partial sums: breaks the add dependency chain and gives
// the compiler room to vectorize without reassociating (no -ffast-math).
template <typename LoadW, typename LoadX>
float Dot8(int64_t n, LoadW w, LoadX x) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += w(i + j) * x(i + j);
  }
  float tail = 0;
  for (; i < n; ++i) tail += w(i) * x(i);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// --- F32 ---
void F32ToFloat(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }
void F32FromFloat(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }
float F32Dot(int64_t n, const void* w, const void* x) {
  const float* a = static_cast<const float*>(w);
  const float* b = static_cast<const float*>(x);
  return Dot8(n, [a](int64_t i) { return a[i]; }, [b](int64_t i) { return b[i]; });
}

// --- F16 --- (rows are read bytewise: a row needs not be 2-byte aligned)
void F16ToFloat(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(LoadU16(p + 2 * i));
}
void F16FromFloat(const float* src, void* dst, int64_t n) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = Fp32ToFp16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}
float F16Dot(int64_t n, const void* w, const void* x) {
  const uint8_t* a = static_cast<const uint8_t*>(w);
  const uint8_t* b = static_cast<const uint8_t*>(x);
  return Dot8(n, [a](int64_t i) { return HalfToFloat(LoadU16(a + 2 * i)); },
              [b](int64_t i) { return HalfToFloat(LoadU16(b + 2 * i)); });
}

// --- BF16 ---
void Bf16ToFloat(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = BfloatToFloat(LoadU16(p + 2 * i));
}
void Bf16FromFloat(const float* src, void* dst, int64_t n) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = Fp32ToBf16(src[i]);
    std::memcpy(p + 2 * i, &h, 2);
  }
}
float Bf16Dot(int64_t n, const void* w, const void* x) {
  const uint8_t* a = static_cast<const uint8_t*>(w);
  const uint8_t* b = static_cast<const uint8_t*>(x);
  return Dot8(n, [a](int64_t i) { return BfloatToFloat(LoadU16(a + 2 * i)); },
              [b](int64_t i) { return BfloatToFloat(LoadU16(b + 2 * i)); });
}

// --- Q8_0 ---
void Q8ToFloat(const void* src, float* dst, int64_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQ8Block; ++b, p += kQ8BlockBytes) {
    const float d = HalfToFloat(LoadU16(p));
    const int8_t* q = reinterpret_cast<const int8_t*>(p + 2);
    for (int64_t j = 0; j < kQ8Block; ++j) dst[b * kQ8Block + j] = d * static_cast<float>(q[j]);
  }
}

// Quantizes like ggml's x86 path (the one llama.cpp runs on these machines):
// d = max|x| / 127 stored as F16, q = round-half-even(x * 127 / max|x|).
void Q8FromFloat(const float* src, void* dst, int64_t n) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kQ8Block; ++b, p += kQ8BlockBytes) {
    const float* x = src + b * kQ8Block;
    float amax = 0;
    for (int64_t j = 0; j < kQ8Block; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const uint16_t d = Fp32ToFp16(amax / 127.f);
    std::memcpy(p, &d, 2);
    const float id = amax != 0.0f ? 127.f / amax : 0.0f;
    int8_t* q = reinterpret_cast<int8_t*>(p + 2);
    for (int64_t j = 0; j < kQ8Block; ++j) q[j] = RoundToInt8(x[j] * id);
  }
}

float Q8Dot(int64_t n, const void* w, const void* x) {
  const uint8_t* a = static_cast<const uint8_t*>(w);
  const uint8_t* b = static_cast<const uint8_t*>(x);
  float sum = 0;
  for (int64_t blk = 0; blk < n / kQ8Block; ++blk, a += kQ8BlockBytes, b += kQ8BlockBytes) {
    const int8_t* qa = reinterpret_cast<const int8_t*>(a + 2);
    const int8_t* qb = reinterpret_cast<const int8_t*>(b + 2);
    int32_t isum = 0;  // exact: 32 * 127 * 127 fits easily
    for (int64_t j = 0; j < kQ8Block; ++j) isum += static_cast<int32_t>(qa[j]) * static_cast<int32_t>(qb[j]);
    sum += static_cast<float>(isum) * (HalfToFloat(LoadU16(a)) * HalfToFloat(LoadU16(b)));
  }
  return sum;
}

const TypeKernels kF32 =
    WithDot<F32Dot>(TensorType::kF32, TensorType::kF32, F32ToFloat, F32FromFloat, kPortableSgemmMinRows);
const TypeKernels kF16 =
    WithDot<F16Dot>(TensorType::kF16, TensorType::kF16, F16ToFloat, F16FromFloat, kPortableSgemmMinRows);
const TypeKernels kBf16 =
    WithDot<Bf16Dot>(TensorType::kBF16, TensorType::kBF16, Bf16ToFloat, Bf16FromFloat, kPortableSgemmMinRows);
const TypeKernels kQ8 =
    WithDot<Q8Dot>(TensorType::kQ8_0, TensorType::kQ8_0, Q8ToFloat, Q8FromFloat, kPortableSgemmMinRows);

float VecDot(int64_t n, const float* a, const float* b) { return F32Dot(n, a, b); }

// A KV cache element as float: F32 as it is, F16 widened.
inline float Widen(float v) { return v; }
inline float Widen(uint16_t h) { return HalfToFloat(h); }

template <typename T>
void DotRows(int64_t n, const float* q, const T* k, int64_t stride, int64_t count, float* out) {
  for (int64_t t = 0; t < count; ++t) {
    const T* kt = k + t * stride;
    out[t] = Dot8(n, [q](int64_t i) { return q[i]; }, [kt](int64_t i) { return Widen(kt[i]); });
  }
}

template <typename T>
void AxpyRows(int64_t n, const float* p, const T* v, int64_t stride, int64_t count, float* out) {
  for (int64_t t = 0; t < count; ++t) {
    const T* vt = v + t * stride;
    for (int64_t i = 0; i < n; ++i) out[i] += p[t] * Widen(vt[i]);
  }
}

void SwiGlu(int64_t n, float* gate, const float* up) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void Softmax(int64_t n, float* x, float scale) {
  float max = -INFINITY;
  for (int64_t t = 0; t < n; ++t) {
    x[t] *= scale;
    max = std::fmax(max, x[t]);
  }
  double sum = 0;
  for (int64_t t = 0; t < n; ++t) {
    const float e = std::exp(x[t] - max);
    x[t] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t t = 0; t < n; ++t) x[t] *= inv;
}

const VecKernels kVec = {VecDot, DotRows<float>, AxpyRows<float>, DotRows<uint16_t>, AxpyRows<uint16_t>, SwiGlu, Softmax};

}  // namespace

const TypeKernels* PortableKernels(TensorType type) {
  switch (type) {
    case TensorType::kF32: return &kF32;
    case TensorType::kF16: return &kF16;
    case TensorType::kBF16: return &kBf16;
    case TensorType::kQ8_0: return &kQ8;
    default: return PortableQuantKernels(type);
  }
}

const VecKernels* PortableVec() { return &kVec; }

}  // namespace appliance::runtime::kernels::internal
