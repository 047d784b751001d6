// The GGUF tensor encodings written down a second time, for tests only and
// independently of runtime/kernels: packers that lay out a block from its
// fields, decoders that compute each element straight from the format
// definition (ggml's block_q4_0 ... block_q6_K, ggml-common.h), and simple
// quantizers for writing test models. Nothing here calls the engine.
//
// Block definitions (x = decoded value, q = stored integer, all little-endian):
//   f16/bf16  IEEE half / the upper 16 bits of an IEEE float
//   q8_0  34 B / 32: d f16, qs[32] int8                   x = d q
//   q4_0  18 B / 32: d f16, qs[16]                        x = d (q - 8)
//   q4_1  20 B / 32: d f16, m f16, qs[16]                 x = d q + m
//   q5_0  22 B / 32: d f16, qh u32, qs[16]                x = d (q - 16)
//   q5_1  24 B / 32: d f16, m f16, qh u32, qs[16]         x = d q + m
//         element j < 16: low nibble of qs[j]; j >= 16: high nibble of qs[j-16];
//         5-bit types: bit 4 of element j is bit j of qh
//   q4_K 144 B / 256: d f16, dmin f16, scales[12], qs[128]
//   q5_K 176 B / 256: d f16, dmin f16, scales[12], qh[32], qs[128]
//         8 sub-blocks s of 32, 6-bit sc[s] and m[s]:  x = d sc[s] q - dmin m[s]
//         scales[12]: s < 4: sc = scales[s] & 63, m = scales[s+4] & 63;
//                     s >= 4: sc = (scales[s+4] & 15) | (scales[s-4] >> 6) << 4,
//                             m  = (scales[s+4] >> 4) | (scales[s] >> 6) << 4
//         element 32 s + l: nibble of qs[32 (s/2) + l], low for even s, high for odd;
//         q5_K: bit 4 is bit s of qh[l]
//   q6_K 210 B / 256: ql[128], qh[64], scales[16] int8, d f16
//         x = d scales[i/16] (q - 32); element i = 128 h + 32 k + l:
//         low 4 bits: ql[64 h + l + 32 (k&1)] (low nibble k < 2, high k >= 2),
//         high 2 bits: (qh[32 h + l] >> 2k) & 3
#pragma once

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace appliance::runtime::testing {

// ggml type ids.
enum : uint32_t {
  kTypeF32 = 0,
  kTypeF16 = 1,
  kTypeQ4_0 = 2,
  kTypeQ4_1 = 3,
  kTypeQ5_0 = 6,
  kTypeQ5_1 = 7,
  kTypeQ8_0 = 8,
  kTypeQ4_K = 12,
  kTypeQ5_K = 13,
  kTypeQ6_K = 14,
  kTypeBF16 = 30,
};

struct QuantFormat {
  uint32_t type;
  const char* name;
  int64_t block;  // elements per block
  size_t bytes;   // bytes per block
};

inline const QuantFormat& Format(uint32_t type) {
  static const QuantFormat kFormats[] = {
      {kTypeF32, "f32", 1, 4},       {kTypeF16, "f16", 1, 2},       {kTypeBF16, "bf16", 1, 2},
      {kTypeQ8_0, "q8_0", 32, 34},   {kTypeQ4_0, "q4_0", 32, 18},   {kTypeQ4_1, "q4_1", 32, 20},
      {kTypeQ5_0, "q5_0", 32, 22},   {kTypeQ5_1, "q5_1", 32, 24},   {kTypeQ4_K, "q4_K", 256, 144},
      {kTypeQ5_K, "q5_K", 256, 176}, {kTypeQ6_K, "q6_K", 256, 210},
  };
  for (const QuantFormat& f : kFormats) {
    if (f.type == type) return f;
  }
  throw std::invalid_argument("quant_ref: no format for type " + std::to_string(type));
}

// A small deterministic generator (SplitMix64) for test data.
class TestRng {
 public:
  explicit TestRng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }        // [0, 1)
  float Symmetric(float a) { return static_cast<float>((Uniform() * 2 - 1) * a); }  // [-a, a)

 private:
  uint64_t state_;
};

// --- scalar encodings ---

// IEEE binary16 -> double, by the definition (sign, 5-bit exponent bias 15, 10-bit fraction).
inline double HalfValue(uint16_t h) {
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  const int e = (h >> 10) & 31;
  const int f = h & 1023;
  if (e == 0) return sign * std::ldexp(f, -24);
  if (e == 31) return f == 0 ? sign * INFINITY : NAN;
  return sign * std::ldexp(1024 + f, e - 25);
}

// The half nearest to v (ties away from zero; a test encoder needs no more),
// for |v| below the largest half.
inline uint16_t HalfBits(double v) {
  if (v == 0) return 0;
  const uint16_t sign = v < 0 ? 0x8000 : 0;
  if (std::fabs(v) < std::ldexp(1.0, -14)) {  // subnormal: f 2^-24
    return static_cast<uint16_t>(sign | std::min<long>(1023, std::lround(std::fabs(v) * std::ldexp(1.0, 24))));
  }
  int e = 0;
  const double m = std::frexp(std::fabs(v), &e);  // v = m 2^e, m in [0.5, 1)
  int biased = e - 1 + 15;
  long f = std::lround((m * 2 - 1) * 1024);
  if (f == 1024) {
    f = 0;
    ++biased;
  }
  if (biased > 30) throw std::invalid_argument("quant_ref: value beyond the half range");
  return static_cast<uint16_t>(sign | (biased << 10) | f);
}

inline double BfloatValue(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t BfloatBits(float v) {  // truncation: any bf16 is a valid test value
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<uint16_t>(bits >> 16);
}

inline void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// --- block fields -> bytes ---

// The 12 bytes holding eight 6-bit scales and mins of a q4_K/q5_K block.
inline void PackScales12(const int sc[8], const int m[8], uint8_t out[12]) {
  for (int s = 0; s < 4; ++s) {
    out[s] = static_cast<uint8_t>((sc[s] & 63) | ((sc[s + 4] >> 4) << 6));
    out[s + 4] = static_cast<uint8_t>((m[s] & 63) | ((m[s + 4] >> 4) << 6));
    out[s + 8] = static_cast<uint8_t>((sc[s + 4] & 15) | ((m[s + 4] & 15) << 4));
  }
}

// q[32] in [0, 15] (4-bit) or [0, 31] (5-bit) -> qs[16] (+ qh u32).
inline void PackNibbles32(const int q[32], uint8_t qs[16], uint8_t* qh /* 4 bytes or null */) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
    h |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    h |= static_cast<uint32_t>((q[j + 16] >> 4) & 1) << (j + 16);
  }
  if (qh != nullptr) {
    for (int b = 0; b < 4; ++b) qh[b] = static_cast<uint8_t>(h >> (8 * b));
  }
}

// q[256] in [0, 15] / [0, 31] -> qs[128] (+ qh[32]) of a q4_K / q5_K block.
inline void PackK4(const int q[256], uint8_t qs[128], uint8_t* qh /* 32 bytes or null */) {
  if (qh != nullptr) std::memset(qh, 0, 32);
  for (int s = 0; s < 8; ++s) {
    for (int l = 0; l < 32; ++l) {
      const int v = q[32 * s + l];
      uint8_t& byte = qs[32 * (s / 2) + l];
      if (s % 2 == 0) {
        byte = static_cast<uint8_t>((byte & 0xF0) | (v & 15));
      } else {
        byte = static_cast<uint8_t>((byte & 0x0F) | ((v & 15) << 4));
      }
      if (qh != nullptr) qh[l] = static_cast<uint8_t>(qh[l] | (((v >> 4) & 1) << s));
    }
  }
}

// q[256] in [0, 63] -> ql[128], qh[64] of a q6_K block.
inline void PackQ6(const int q[256], uint8_t ql[128], uint8_t qh[64]) {
  std::memset(ql, 0, 128);
  std::memset(qh, 0, 64);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, k = (i % 128) / 32, l = i % 32;
    uint8_t& low = ql[64 * h + l + 32 * (k & 1)];
    if (k < 2) {
      low = static_cast<uint8_t>(low | (q[i] & 15));
    } else {
      low = static_cast<uint8_t>(low | ((q[i] & 15) << 4));
    }
    qh[32 * h + l] = static_cast<uint8_t>(qh[32 * h + l] | (((q[i] >> 4) & 3) << (2 * k)));
  }
}

// --- bytes -> values, element by element from the definition ---

inline std::vector<double> Decode(uint32_t type, const uint8_t* p, int64_t n) {
  const QuantFormat& f = Format(type);
  if (n % f.block != 0) throw std::invalid_argument("quant_ref: n is not a whole number of blocks");
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* b = p + static_cast<size_t>(i / f.block) * f.bytes;
    const int j = static_cast<int>(i % f.block);
    double x = 0;
    switch (type) {
      case kTypeF32: {
        float v;
        std::memcpy(&v, p + 4 * i, 4);
        x = v;
        break;
      }
      case kTypeF16:
        x = HalfValue(GetU16(p + 2 * i));
        break;
      case kTypeBF16:
        x = BfloatValue(GetU16(p + 2 * i));
        break;
      case kTypeQ8_0:
        x = HalfValue(GetU16(b)) * static_cast<int8_t>(b[2 + j]);
        break;
      case kTypeQ4_0:
      case kTypeQ4_1:
      case kTypeQ5_0:
      case kTypeQ5_1: {
        const bool has_m = type == kTypeQ4_1 || type == kTypeQ5_1;
        const bool five = type == kTypeQ5_0 || type == kTypeQ5_1;
        const uint8_t* qs = b + 2 + (has_m ? 2 : 0) + (five ? 4 : 0);
        int q = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
        if (five) q |= static_cast<int>((GetU32(b + 2 + (has_m ? 2 : 0)) >> j) & 1) << 4;
        const double d = HalfValue(GetU16(b));
        if (has_m) {
          x = d * q + HalfValue(GetU16(b + 2));
        } else {
          x = d * (q - (five ? 16 : 8));
        }
        break;
      }
      case kTypeQ4_K:
      case kTypeQ5_K: {
        const bool five = type == kTypeQ5_K;
        const uint8_t* sc12 = b + 4;
        const uint8_t* qh = b + 16;
        const uint8_t* qs = b + 16 + (five ? 32 : 0);
        const int s = j / 32, l = j % 32;
        int sc, m;
        if (s < 4) {
          sc = sc12[s] & 63;
          m = sc12[s + 4] & 63;
        } else {
          sc = (sc12[s + 4] & 15) | ((sc12[s - 4] >> 6) << 4);
          m = (sc12[s + 4] >> 4) | ((sc12[s] >> 6) << 4);
        }
        const uint8_t byte = qs[32 * (s / 2) + l];
        int q = s % 2 == 0 ? (byte & 15) : (byte >> 4);
        if (five) q |= ((qh[l] >> s) & 1) << 4;
        x = HalfValue(GetU16(b)) * sc * q - HalfValue(GetU16(b + 2)) * m;
        break;
      }
      case kTypeQ6_K: {
        const uint8_t* ql = b;
        const uint8_t* qh = b + 128;
        const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
        const int h = j / 128, k = (j % 128) / 32, l = j % 32;
        const uint8_t low = ql[64 * h + l + 32 * (k & 1)];
        const int q = (k < 2 ? (low & 15) : (low >> 4)) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
        x = HalfValue(GetU16(b + 208)) * scales[j / 16] * (q - 32);
        break;
      }
      default:
        throw std::invalid_argument("quant_ref: cannot decode type " + std::to_string(type));
    }
    out[static_cast<size_t>(i)] = x;
  }
  return out;
}

// --- values -> bytes: simple (not optimal) quantizers for test models ---

inline int Clamp(long v, int lo, int hi) { return static_cast<int>(std::min<long>(hi, std::max<long>(lo, v))); }
// round(a / d), 0 for a zero step (an all-zero block).
inline long Steps(double a, double d) { return d == 0 ? 0 : std::lround(a / d); }

// Encodes n values (n a multiple of the block size) as `type`. The encoding
// is valid but makes no attempt at ggml's error-minimizing scale search.
inline std::vector<uint8_t> Encode(uint32_t type, const float* x, int64_t n) {
  const QuantFormat& f = Format(type);
  if (n % f.block != 0) throw std::invalid_argument("quant_ref: n is not a whole number of blocks");
  std::vector<uint8_t> out(static_cast<size_t>(n / f.block) * f.bytes, 0);
  for (int64_t bi = 0; bi < n / f.block; ++bi) {
    const float* v = x + bi * f.block;
    uint8_t* b = out.data() + static_cast<size_t>(bi) * f.bytes;
    double amax = 0, lo = 0, hi = 0;
    for (int64_t j = 0; j < f.block; ++j) {
      amax = std::max(amax, std::fabs(static_cast<double>(v[j])));
      lo = j == 0 ? v[j] : std::min<double>(lo, v[j]);
      hi = j == 0 ? v[j] : std::max<double>(hi, v[j]);
    }
    switch (type) {
      case kTypeF32:
        std::memcpy(b, v, 4);
        break;
      case kTypeF16:
        PutU16(b, HalfBits(v[0]));
        break;
      case kTypeBF16:
        PutU16(b, BfloatBits(v[0]));
        break;
      case kTypeQ8_0: {
        const uint16_t dh = HalfBits(amax / 127);
        const double d = HalfValue(dh);
        PutU16(b, dh);
        for (int j = 0; j < 32; ++j)
          b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(Clamp(Steps(v[j], d), -127, 127)));
        break;
      }
      case kTypeQ4_0:
      case kTypeQ5_0: {
        const bool five = type == kTypeQ5_0;
        const int half = five ? 16 : 8;
        const uint16_t dh = HalfBits(amax / (half - 1));
        const double d = HalfValue(dh);
        int q[32];
        for (int j = 0; j < 32; ++j) q[j] = Clamp(Steps(v[j], d) + half, 0, 2 * half - 1);
        PutU16(b, dh);
        PackNibbles32(q, b + 2 + (five ? 4 : 0), five ? b + 2 : nullptr);
        break;
      }
      case kTypeQ4_1:
      case kTypeQ5_1: {
        const bool five = type == kTypeQ5_1;
        const int top = five ? 31 : 15;
        const uint16_t dh = HalfBits((hi - lo) / top);
        const uint16_t mh = HalfBits(lo);
        const double d = HalfValue(dh), m = HalfValue(mh);
        int q[32];
        for (int j = 0; j < 32; ++j) q[j] = Clamp(Steps(v[j] - m, d), 0, top);
        PutU16(b, dh);
        PutU16(b + 2, mh);
        PackNibbles32(q, b + 4 + (five ? 4 : 0), five ? b + 4 : nullptr);
        break;
      }
      case kTypeQ4_K:
      case kTypeQ5_K: {
        const bool five = type == kTypeQ5_K;
        const int top = five ? 31 : 15;
        // Per sub-block: offset -min (>= 0) and step (max - min) / top.
        double step[8], off[8], max_step = 0, max_off = 0;
        for (int s = 0; s < 8; ++s) {
          double smin = 0, smax = 0;
          for (int l = 0; l < 32; ++l) {
            smin = std::min<double>(smin, v[32 * s + l]);
            smax = std::max<double>(smax, v[32 * s + l]);
          }
          step[s] = (smax - smin) / top;
          off[s] = -smin;
          max_step = std::max(max_step, step[s]);
          max_off = std::max(max_off, off[s]);
        }
        const uint16_t dh = HalfBits(max_step / 63), mh = HalfBits(max_off > 0 ? max_off / 63 : 0);
        const double d = HalfValue(dh), dmin = HalfValue(mh);
        int sc[8], m[8], q[256];
        for (int s = 0; s < 8; ++s) {
          sc[s] = Clamp(Steps(step[s], d), 1, 63);
          m[s] = Clamp(Steps(off[s], dmin), 0, 63);
          for (int l = 0; l < 32; ++l) {
            q[32 * s + l] = Clamp(Steps(v[32 * s + l] + dmin * m[s], d * sc[s]), 0, top);
          }
        }
        PutU16(b, dh);
        PutU16(b + 2, mh);
        PackScales12(sc, m, b + 4);
        PackK4(q, b + 16 + (five ? 32 : 0), five ? b + 16 : nullptr);
        break;
      }
      case kTypeQ6_K: {
        double gscale[16], max_scale = 0;
        for (int g = 0; g < 16; ++g) {
          double gmax = 0;
          for (int l = 0; l < 16; ++l) gmax = std::max(gmax, std::fabs(static_cast<double>(v[16 * g + l])));
          gscale[g] = gmax / 31;
          max_scale = std::max(max_scale, gscale[g]);
        }
        const uint16_t dh = HalfBits(max_scale / 127);
        const double d = HalfValue(dh);
        int q[256];
        for (int g = 0; g < 16; ++g) {
          const int sc = Clamp(Steps(gscale[g], d), 1, 127);
          b[192 + g] = static_cast<uint8_t>(static_cast<int8_t>(sc));
          for (int l = 0; l < 16; ++l) q[16 * g + l] = Clamp(Steps(v[16 * g + l], d * sc), -32, 31) + 32;
        }
        PackQ6(q, b, b + 128);
        PutU16(b + 208, dh);
        break;
      }
      default:
        throw std::invalid_argument("quant_ref: cannot encode type " + std::to_string(type));
    }
  }
  return out;
}

}  // namespace appliance::runtime::testing
