// Tables the ISA-specific files export to the dispatcher (kernels.cpp), and
// the block layouts of the quantized types they share.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "runtime/kernels/kernels.h"

namespace appliance::runtime::kernels::internal {

// Q8_0 as ggml stores it: per 32 elements an F16 scale d and 32 int8 q,
// value = d * q. 34 bytes, no padding; read the scale with memcpy because a
// block needs not be 2-byte aligned.
constexpr int64_t kQ8Block = 32;
constexpr size_t kQ8BlockBytes = 34;

// ---------------------------------------------------------------------------
// Block layouts (ggml's block_q4_0 ... block_q8_K, bit for bit). Weight blocks
// live in the file mapping at any offset the GGUF alignment allows, so every
// multi-byte field of a weight block is a byte array read with LoadU16 (the
// structs have alignment 1 and may overlay any address). Only Q8_K, which
// exists solely in the engine's own aligned activation buffers, has typed
// fields. "q" below is the stored integer, "x" the value it encodes.
// ---------------------------------------------------------------------------

constexpr int64_t kQK = 32;    // elements per block of the *_0 / *_1 types
constexpr int64_t kQKK = 256;  // elements per super-block of the K types

// Decoding one sequence streams each weight once from DRAM, and the hardware
// prefetchers alone left a core at about half of what a plain summing loop
// reads; so the quantized dot products prefetch, into L2, the bytes
// kPrefetchBytes past the block they are about to multiply. Rows are
// contiguous, so "ahead" runs on into the next rows of a thread's range.
// Measured on a 1B Q4_K_M model (AVX-512): decode went from 0.51 to ~0.92 of
// the bandwidth ceiling; L2 (T1) beat L1 (T0), 8 KiB beat 4 and 16.
inline constexpr uintptr_t kPrefetchBytes = 8192;
template <size_t kBlockBytes>
inline void PrefetchAhead(const void* block) {
  // An address, not a pointer: it may lie past the end of the matrix, and a
  // prefetch of it is harmless.
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(block) + kPrefetchBytes;
  for (uintptr_t line = 0; line < kBlockBytes; line += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(ahead + line), 0, 2);
  }
}

// x[j] = d * (q[j] - 8); q[j] (j < 16) is the low nibble of qs[j], q[j + 16] its high nibble.
struct BlockQ4_0 {
  uint8_t d[2];  // F16
  uint8_t qs[16];
};
// x[j] = d * q[j] + m; nibbles as Q4_0.
struct BlockQ4_1 {
  uint8_t d[2];  // F16
  uint8_t m[2];  // F16
  uint8_t qs[16];
};
// x[j] = d * (q[j] - 16), q 5-bit: low 4 bits as Q4_0, bit 4 = bit j of the
// little-endian u32 qh.
struct BlockQ5_0 {
  uint8_t d[2];  // F16
  uint8_t qh[4];
  uint8_t qs[16];
};
// x[j] = d * q[j] + m, q 5-bit as Q5_0.
struct BlockQ5_1 {
  uint8_t d[2];  // F16
  uint8_t m[2];  // F16
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ8_0 {
  uint8_t d[2];  // F16
  int8_t qs[32];
};
// 256 elements in 8 sub-blocks of 32, each with a 6-bit scale sc and 6-bit
// min m packed into scales[12] (see UnpackScalesMinsK4):
// x = d * sc[s] * q - dmin * m[s]. Sub-blocks 2i and 2i+1 share qs[32i..32i+32):
// sub-block 2i the low nibbles, 2i+1 the high nibbles.
struct BlockQ4_K {
  uint8_t d[2];     // F16, super-block scale of the scales
  uint8_t dmin[2];  // F16, super-block scale of the mins
  uint8_t scales[12];
  uint8_t qs[128];
};
// As Q4_K with a fifth bit: element 32s + l takes bit s of qh[l] as bit 4.
struct BlockQ5_K {
  uint8_t d[2];
  uint8_t dmin[2];
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// 256 elements in 16 groups of 16 with int8 scales: x = d * scales[g] * (q - 32),
// q 6-bit. Per half h (128 elements, ql + 64h, qh + 32h), element 32k + l
// (k < 4, l < 32) has low 4 bits from ql[l + 32 * (k & 1)] (low nibble for
// k < 2, high for k >= 2) and high 2 bits (qh[l] >> 2k) & 3.
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint8_t d[2];  // F16
};
// Activations for the K types: x = d * q, q in [-127, 127]; bsums[g] is the
// sum of q over group g of 16 (the K-type dot products fold the mins with it).
struct BlockQ8_K {
  float d;
  int8_t qs[256];
  int16_t bsums[16];
};

static_assert(sizeof(BlockQ4_0) == 18 && alignof(BlockQ4_0) == 1);
static_assert(sizeof(BlockQ4_1) == 20 && alignof(BlockQ4_1) == 1);
static_assert(sizeof(BlockQ5_0) == 22 && alignof(BlockQ5_0) == 1);
static_assert(sizeof(BlockQ5_1) == 24 && alignof(BlockQ5_1) == 1);
static_assert(sizeof(BlockQ8_0) == 34 && alignof(BlockQ8_0) == 1);
static_assert(sizeof(BlockQ4_K) == 144 && alignof(BlockQ4_K) == 1);
static_assert(sizeof(BlockQ5_K) == 176 && alignof(BlockQ5_K) == 1);
static_assert(sizeof(BlockQ6_K) == 210 && alignof(BlockQ6_K) == 1);
static_assert(sizeof(BlockQ8_K) == 292);

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The 6-bit scales and mins of a Q4_K/Q5_K super-block (ggml's
// get_scale_min_k4): sub-blocks 0-3 keep theirs in the low 6 bits of bytes
// 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 have their low 4 bits in the
// nibbles of bytes 8-11 and their high 2 bits in the top bits of bytes 0-7.
// Unpacked four bytes at a time with 32-bit masks (bytes stay in their lanes)
// into two words, byte s of each being sub-block s's value: the SIMD kernels
// move them straight into a vector register (through memory, two 4-byte
// stores read back as 8 bytes would stall store forwarding).
static_assert(std::endian::native == std::endian::little, "block fields are read as little-endian words");
struct ScalesMinsK4 {
  uint64_t scales;
  uint64_t mins;
};
inline ScalesMinsK4 UnpackScalesMinsK4(const uint8_t* q) {
  uint32_t u[3];
  std::memcpy(u, q, 12);
  const uint32_t sc_lo = u[0] & 0x3f3f3f3fu;
  const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
  const uint32_t m_lo = u[1] & 0x3f3f3f3fu;
  const uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
  return {sc_lo | static_cast<uint64_t>(sc_hi) << 32, m_lo | static_cast<uint64_t>(m_hi) << 32};
}
inline void UnpackScalesMinsK4(const uint8_t* q, uint8_t sc[8], uint8_t m[8]) {
  const ScalesMinsK4 u = UnpackScalesMinsK4(q);
  std::memcpy(sc, &u.scales, 8);
  std::memcpy(m, &u.mins, 8);
}

// round-half-even(v) (the FPU's default rounding, as ggml's x86 quantizers
// use) as an int8 clamped to [-127, 127]. For finite activations the clamp
// never changes the result: every quantizer's scale maps the block's largest
// magnitude to 127. It keeps a NaN or infinite activation (possible with a
// hostile model's weights) from being an undefined float-to-int conversion;
// NaN becomes 0.
inline int8_t RoundToInt8(float v) {
  if (v != v) return 0;
  v = v < -127.f ? -127.f : (v > 127.f ? 127.f : v);
  // Adding and subtracting 1.5 * 2^23 rounds to an integer in the FPU's
  // default mode, round-half-even (ggml's nearest_int), without a libm call.
  const float r = (v + 12582912.f) - 12582912.f;
  return static_cast<int8_t>(r);
}

struct HalfTable {
  HalfTable();
  float value[65536];  // value[h] = the half h as a float
};
extern const HalfTable kHalfTable;
inline float HalfToFloat(uint16_t h) { return kHalfTable.value[h]; }
inline float HalfAt(const uint8_t* p) { return kHalfTable.value[LoadU16(p)]; }
inline float BfloatToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// TypeKernels::gemm for a type without a tile kernel: vec_dot per output,
// weight row by weight row, so each row is fetched from memory once and read
// from L1 for the other activation rows.
template <float (*kDot)(int64_t, const void*, const void*)>
void GemmByDot(int64_t n, const void* w, size_t w_stride, int64_t rows, const void* x, size_t x_stride, int64_t nx,
               float* y, int64_t y_stride) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const uint8_t* xb = static_cast<const uint8_t*>(x);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < nx; ++j) {
      y[j * y_stride + i] = kDot(n, wb + static_cast<size_t>(i) * w_stride, xb + static_cast<size_t>(j) * x_stride);
    }
  }
}

// Batch sizes from which sgemm on dequantized panels beats GemmByDot (CPU
// time per multiply-add, Q4_K/Q6_K rows of 768 and 2048 on a Sapphire Rapids
// core): the portable dot products run at ~0.3 GMAC/s, far below sgemm even
// for 2 rows; AVX2's quantized ones at ~31 GMAC/s, sgemm at ~29 for 8 rows,
// ~35 from 16 on. The float types need no dequantization beyond a widening
// and stay on sgemm from 2 rows, as before the integer route existed.
constexpr int64_t kPortableSgemmMinRows = 2;
constexpr int64_t kAvx2SgemmMinRows = 16;
constexpr int64_t kFloatSgemmMinRows = 2;

// The table of a weight type whose gemm is kDot in a loop.
template <float (*kDot)(int64_t, const void*, const void*)>
constexpr TypeKernels WithDot(TensorType type, TensorType vec_dot_type, void (*to_float)(const void*, float*, int64_t),
                              void (*from_float)(const float*, void*, int64_t), int64_t sgemm_min_rows) {
  return {type, vec_dot_type, to_float, from_float, kDot, GemmByDot<kDot>, sgemm_min_rows};
}

// Returns the portable table for `type` or nullptr.
const TypeKernels* PortableKernels(TensorType type);
const VecKernels* PortableVec();
// The quantized types beyond Q8_0 (kernels_portable_quant.cpp).
const TypeKernels* PortableQuantKernels(TensorType type);

// Returns the AVX2 table for `type` or nullptr; only call when the CPU has it.
const TypeKernels* Avx2Kernels(TensorType type);
const VecKernels* Avx2Vec();
const TypeKernels* Avx2QuantKernels(TensorType type);

// Returns the AVX-512 table for `type` or nullptr (the caller falls back to
// AVX2's); only call when the CPU has it.
const TypeKernels* Avx512Kernels(TensorType type);
const VecKernels* Avx512Vec();

// Returns the table of `type` with the packed layout (Q4_K, Q6_K) or nullptr:
// AVX-512's plus packed products on VNNI, or with `amx` on AMX tiles (only
// when the CPU has AMX and the process may use it).
const TypeKernels* PackedKernels(TensorType type, bool amx);

}  // namespace appliance::runtime::kernels::internal
