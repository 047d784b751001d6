// A pure parser of GGUF v2/v3 files (the container llama.cpp writes).
//
// Parse() takes the bytes of the whole file (normally a MappedFile) and checks
// everything before anything else looks at it: every count, length, dimension
// and offset in a model file is hostile input. The result refers into those
// bytes (string_views, tensor data pointers): the bytes must outlive it.
//
// Layout (all little-endian):
//   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv   x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
//   padding to `general.alignment` (default 32) | tensor data
// A string is u64 length + bytes; an array is u32 element type + u64 count +
// elements. Tensor offsets are relative to the start of the data section.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "runtime/tensor_type.h"

namespace appliance::runtime {

enum class GgufValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

const char* GgufValueTypeName(GgufValueType type);

// A string from a file made safe for an error message: in single quotes, at
// most 64 bytes (then "..."), non-printable bytes and quotes as \xNN, so a
// message cannot carry terminal control sequences.
std::string GgufQuote(std::string_view s);

// One metadata value. Scalars keep their raw little-endian bytes; use the
// typed getters of GgufFile, which convert and range-check.
struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  std::span<const uint8_t> raw;  // scalar: its bytes; array of scalars: all elements
  std::string_view str;          // kString
  GgufValueType elem_type = GgufValueType::kU8;  // kArray: element type (never kArray)
  uint64_t count = 0;                            // kArray: number of elements
  std::vector<std::string_view> strings;         // kArray of kString: the elements
};

struct GgufKv {
  std::string_view key;
  GgufValue value;
  uint64_t offset = 0;  // file offset of the key, for error messages
};

struct GgufTensorInfo {
  std::string_view name;
  uint32_t n_dims = 0;
  std::array<int64_t, 4> ne = {1, 1, 1, 1};  // ne[0] is the row length (innermost)
  TensorType type = TensorType::kF32;
  uint64_t offset = 0;       // relative to the data section, as stored
  uint64_t file_offset = 0;  // absolute offset of the first byte
  uint64_t n_bytes = 0;
  int64_t n_elements = 0;
  const uint8_t* data = nullptr;  // into the parsed bytes
};

class GgufFile {
 public:
  // Limits on what a file may declare. They only bound memory before the
  // remaining-bytes checks (which are the real bound) can apply.
  static constexpr uint64_t kMaxTensors = 1u << 20;
  static constexpr uint64_t kMaxKvs = 1u << 20;
  static constexpr uint64_t kMaxKeyLength = 1024;
  static constexpr uint64_t kMaxTensorNameLength = 63;  // ggml's GGML_MAX_NAME - 1
  static constexpr uint32_t kMaxDims = 4;
  static constexpr uint64_t kDefaultAlignment = 32;

  static StatusOr<GgufFile> Parse(std::span<const uint8_t> bytes);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  const std::vector<GgufKv>& kvs() const { return kvs_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  const GgufValue* Find(std::string_view key) const;
  const GgufTensorInfo* FindTensor(std::string_view name) const;

  // Typed getters. A missing key leaves *out untouched and is an error only
  // when `required`. A present key of an incompatible type, or an integer that
  // does not fit *out, is always an error naming the key. Integers of any GGUF
  // integer type are accepted when the value fits; floats accept F32 and F64.
  Status GetString(std::string_view key, std::string_view* out, bool required) const;
  Status GetUint32(std::string_view key, uint32_t* out, bool required) const;
  Status GetFloat(std::string_view key, float* out, bool required) const;
  Status GetBool(std::string_view key, bool* out, bool required) const;

  // Element `i` (< count) of an array of integers / floats, converted like the
  // scalar getters; used for tokenizer arrays after their type was checked.
  static int64_t ArrayInt(const GgufValue& array, uint64_t i);
  static float ArrayFloat(const GgufValue& array, uint64_t i);

 private:
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKv> kvs_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string_view, size_t> kv_index_;
  std::unordered_map<std::string_view, size_t> tensor_index_;

  friend class GgufParser;
};

}  // namespace appliance::runtime
