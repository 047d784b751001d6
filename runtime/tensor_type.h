// ggml tensor type ids as stored in GGUF files, and their storage geometry.
//
// The parser needs the geometry of every type ggml defines (to bound each
// tensor's byte range) even for types this runtime cannot compute with yet;
// which types have kernels is decided in runtime/kernels, not here.
#pragma once

#include <cstdint>
#include <string>

namespace appliance::runtime {

// Values are ggml's GGML_TYPE_* ids; they are part of the file format.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

struct TensorTypeInfo {
  TensorType type;
  const char* name;      // ggml's name, e.g. "q8_0"
  uint32_t block_elems;  // elements per block (1 for plain scalar types)
  uint32_t block_bytes;  // bytes per block
};

// The geometry of ggml type `id`, or nullptr when ggml defines no such type
// (ids 4, 5, 31-33 and 36-38 were removed from ggml and are refused too).
const TensorTypeInfo* FindTensorType(uint32_t id);

// "q8_0"; "type#<id>" for an id FindTensorType does not know.
std::string TensorTypeName(TensorType type);

}  // namespace appliance::runtime
