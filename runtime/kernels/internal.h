// Tables the ISA-specific files export to the dispatcher (kernels.cpp).
#pragma once

#include <bit>
#include <cstdint>

#include "runtime/kernels/kernels.h"

namespace appliance::runtime::kernels::internal {

// Q8_0 as ggml stores it: per 32 elements an F16 scale d and 32 int8 q,
// value = d * q. 34 bytes, no padding; read the scale with memcpy because a
// block needs not be 2-byte aligned.
constexpr int64_t kQ8Block = 32;
constexpr size_t kQ8BlockBytes = 34;

struct HalfTable {
  HalfTable();
  float value[65536];  // value[h] = the half h as a float
};
extern const HalfTable kHalfTable;
inline float HalfToFloat(uint16_t h) { return kHalfTable.value[h]; }
inline float BfloatToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// Returns the portable table for `type` or nullptr.
const TypeKernels* PortableKernels(TensorType type);
const VecKernels* PortableVec();

// Returns the AVX2 table for `type` or nullptr; only call when the CPU has it.
const TypeKernels* Avx2Kernels(TensorType type);
const VecKernels* Avx2Vec();

}  // namespace appliance::runtime::kernels::internal
