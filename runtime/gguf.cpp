#include "runtime/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <string>

namespace appliance::runtime {

static_assert(std::endian::native == std::endian::little,
              "GGUF values are read by memcpy; a big-endian host would need byte swaps");

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32

// Size in bytes of a scalar value type; 0 for string/array/unknown.
uint64_t ScalarSize(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kU16:
    case GgufValueType::kI16:
      return 2;
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kF32:
      return 4;
    case GgufValueType::kU64:
    case GgufValueType::kI64:
    case GgufValueType::kF64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kF64); }

bool IsInteger(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8:
    case GgufValueType::kI8:
    case GgufValueType::kU16:
    case GgufValueType::kI16:
    case GgufValueType::kU32:
    case GgufValueType::kI32:
    case GgufValueType::kU64:
    case GgufValueType::kI64:
      return true;
    default:
      return false;
  }
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Reads an integer scalar of any GGUF integer type as (is_negative, magnitude)
// so u64 values above INT64_MAX and negative i64 values are both exact.
struct IntValue {
  bool negative = false;
  uint64_t magnitude = 0;
};

IntValue ReadInt(GgufValueType t, const uint8_t* p) {
  auto from_signed = [](int64_t v) {
    IntValue r;
    r.negative = v < 0;
    r.magnitude = v < 0 ? static_cast<uint64_t>(-(v + 1)) + 1 : static_cast<uint64_t>(v);
    return r;
  };
  switch (t) {
    case GgufValueType::kU8:
      return {false, Load<uint8_t>(p)};
    case GgufValueType::kU16:
      return {false, Load<uint16_t>(p)};
    case GgufValueType::kU32:
      return {false, Load<uint32_t>(p)};
    case GgufValueType::kU64:
      return {false, Load<uint64_t>(p)};
    case GgufValueType::kI8:
      return from_signed(Load<int8_t>(p));
    case GgufValueType::kI16:
      return from_signed(Load<int16_t>(p));
    case GgufValueType::kI32:
      return from_signed(Load<int32_t>(p));
    case GgufValueType::kI64:
      return from_signed(Load<int64_t>(p));
    default:
      return {};
  }
}

bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

std::string Quote(std::string_view s) {
  // Names come from the file: print at most 64 bytes, non-printables escaped,
  // so an error message cannot carry terminal control sequences.
  std::string out = "'";
  size_t n = std::min<size_t>(s.size(), 64);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (s.size() > n) out += "...";
  out += "'";
  return out;
}

}  // namespace

std::string GgufQuote(std::string_view s) { return Quote(s); }

const char* GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kU8: return "u8";
    case GgufValueType::kI8: return "i8";
    case GgufValueType::kU16: return "u16";
    case GgufValueType::kI16: return "i16";
    case GgufValueType::kU32: return "u32";
    case GgufValueType::kI32: return "i32";
    case GgufValueType::kF32: return "f32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kU64: return "u64";
    case GgufValueType::kI64: return "i64";
    case GgufValueType::kF64: return "f64";
  }
  return "unknown";
}

// Sequential reader over the file with bounds checks; every failure names the
// field being read and the offset it starts at.
class GgufParser {
 public:
  explicit GgufParser(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  StatusOr<GgufFile> Run();

 private:
  uint64_t remaining() const { return bytes_.size() - pos_; }

  Status Truncated(std::string_view field, uint64_t need) const {
    return Status::Error("gguf: truncated: " + std::string(field) + " at offset " + std::to_string(pos_) +
                         " needs " + std::to_string(need) + " bytes, only " + std::to_string(remaining()) +
                         " left in the file");
  }

  Status Take(std::string_view field, uint64_t n, const uint8_t** out) {
    if (n > remaining()) return Truncated(field, n);
    *out = bytes_.data() + pos_;
    pos_ += n;
    return Status::Ok();
  }

  template <typename T>
  Status Read(std::string_view field, T* out) {
    const uint8_t* p = nullptr;
    RETURN_IF_ERROR(Take(field, sizeof(T), &p));
    *out = Load<T>(p);
    return Status::Ok();
  }

  Status ReadString(std::string_view field, uint64_t max_len, std::string_view* out) {
    const uint64_t at = pos_;
    uint64_t len = 0;
    RETURN_IF_ERROR(Read(std::string(field) + " length", &len));
    if (len > max_len) {
      return Status::Error("gguf: " + std::string(field) + " length " + std::to_string(len) + " at offset " +
                           std::to_string(at) + " exceeds the limit of " + std::to_string(max_len) + " bytes");
    }
    if (len > remaining()) {
      return Status::Error("gguf: " + std::string(field) + " length " + std::to_string(len) + " at offset " +
                           std::to_string(at) + " exceeds the " + std::to_string(remaining()) +
                           " bytes left in the file");
    }
    const uint8_t* p = nullptr;
    RETURN_IF_ERROR(Take(field, len, &p));
    *out = std::string_view(reinterpret_cast<const char*>(p), len);
    return Status::Ok();
  }

  Status ReadValue(const std::string& field, GgufValueType type, GgufValue* out);
  Status ReadTensorInfo(uint64_t index, GgufTensorInfo* info);

  std::span<const uint8_t> bytes_;
  uint64_t pos_ = 0;
  GgufFile file_;
};

Status GgufParser::ReadValue(const std::string& field, GgufValueType type, GgufValue* out) {
  out->type = type;
  const uint64_t at = pos_;
  switch (type) {
    case GgufValueType::kString:
      return ReadString(field, std::numeric_limits<uint64_t>::max(), &out->str);
    case GgufValueType::kArray: {
      uint32_t elem = 0;
      RETURN_IF_ERROR(Read(field + " element type", &elem));
      if (!KnownValueType(elem)) {
        return Status::Error("gguf: " + field + ": unknown array element type " + std::to_string(elem) +
                             " at offset " + std::to_string(at));
      }
      out->elem_type = static_cast<GgufValueType>(elem);
      if (out->elem_type == GgufValueType::kArray) {
        // ggml refuses nested arrays too; nothing in the llama format uses them.
        return Status::Error("gguf: " + field + ": nested arrays are not supported (offset " +
                             std::to_string(at) + ")");
      }
      const uint64_t count_at = pos_;
      RETURN_IF_ERROR(Read(field + " array length", &out->count));
      // Every element takes at least `min_size` bytes (a string at least its
      // u64 length), so the remaining bytes bound the count before any
      // allocation proportional to it.
      const uint64_t min_size = out->elem_type == GgufValueType::kString ? 8 : ScalarSize(out->elem_type);
      if (out->count > remaining() / min_size) {
        return Status::Error("gguf: " + field + ": array length " + std::to_string(out->count) + " at offset " +
                             std::to_string(count_at) + " needs at least " + std::to_string(min_size) +
                             " bytes per element, only " + std::to_string(remaining()) + " bytes left in the file");
      }
      if (out->elem_type == GgufValueType::kString) {
        out->strings.reserve(out->count);
        for (uint64_t i = 0; i < out->count; ++i) {
          std::string_view s;
          RETURN_IF_ERROR(ReadString(field + "[" + std::to_string(i) + "]", std::numeric_limits<uint64_t>::max(), &s));
          out->strings.push_back(s);
        }
        return Status::Ok();
      }
      const uint8_t* p = nullptr;
      RETURN_IF_ERROR(Take(field + " array data", out->count * min_size, &p));
      out->raw = std::span<const uint8_t>(p, out->count * min_size);
      if (out->elem_type == GgufValueType::kBool) {
        for (uint64_t i = 0; i < out->count; ++i) {
          if (p[i] > 1) {
            return Status::Error("gguf: " + field + "[" + std::to_string(i) + "]: bool value " +
                                 std::to_string(p[i]) + " at offset " + std::to_string(count_at + 8 + i) +
                                 " is neither 0 nor 1");
          }
        }
      }
      return Status::Ok();
    }
    default: {
      const uint64_t size = ScalarSize(type);
      const uint8_t* p = nullptr;
      RETURN_IF_ERROR(Take(field, size, &p));
      out->raw = std::span<const uint8_t>(p, size);
      if (type == GgufValueType::kBool && p[0] > 1) {
        return Status::Error("gguf: " + field + ": bool value " + std::to_string(p[0]) + " at offset " +
                             std::to_string(at) + " is neither 0 nor 1");
      }
      return Status::Ok();
    }
  }
}

Status GgufParser::ReadTensorInfo(uint64_t index, GgufTensorInfo* info) {
  const std::string field = "tensor[" + std::to_string(index) + "]";
  const uint64_t name_at = pos_;
  RETURN_IF_ERROR(ReadString(field + " name", GgufFile::kMaxTensorNameLength, &info->name));
  if (info->name.empty()) {
    return Status::Error("gguf: " + field + " at offset " + std::to_string(name_at) + " has an empty name");
  }
  const std::string who = "gguf: tensor " + Quote(info->name);

  const uint64_t dims_at = pos_;
  RETURN_IF_ERROR(Read(field + " n_dims", &info->n_dims));
  if (info->n_dims == 0 || info->n_dims > GgufFile::kMaxDims) {
    return Status::Error(who + ": n_dims " + std::to_string(info->n_dims) + " at offset " + std::to_string(dims_at) +
                         " is outside [1, " + std::to_string(GgufFile::kMaxDims) + "]");
  }
  uint64_t n_elements = 1;
  for (uint32_t d = 0; d < info->n_dims; ++d) {
    const uint64_t dim_at = pos_;
    uint64_t ne = 0;
    RETURN_IF_ERROR(Read(field + " ne[" + std::to_string(d) + "]", &ne));
    if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Status::Error(who + ": ne[" + std::to_string(d) + "] = " + std::to_string(ne) + " at offset " +
                           std::to_string(dim_at) + " is outside [1, 2^63)");
    }
    if (!CheckedMul(n_elements, ne, &n_elements) ||
        n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Status::Error(who + ": element count overflows at ne[" + std::to_string(d) + "] (offset " +
                           std::to_string(dim_at) + ")");
    }
    info->ne[d] = static_cast<int64_t>(ne);
  }
  info->n_elements = static_cast<int64_t>(n_elements);

  const uint64_t type_at = pos_;
  uint32_t type_id = 0;
  RETURN_IF_ERROR(Read(field + " type", &type_id));
  const TensorTypeInfo* type = FindTensorType(type_id);
  if (type == nullptr) {
    return Status::Error(who + ": unknown tensor type id " + std::to_string(type_id) + " at offset " +
                         std::to_string(type_at));
  }
  info->type = type->type;
  if (static_cast<uint64_t>(info->ne[0]) % type->block_elems != 0) {
    return Status::Error(who + ": row length ne[0] = " + std::to_string(info->ne[0]) +
                         " is not a multiple of the " + type->name + " block size " +
                         std::to_string(type->block_elems));
  }
  // bytes = ne0/block * block_bytes * ne1 * ne2 * ne3, overflow-checked.
  uint64_t n_bytes = static_cast<uint64_t>(info->ne[0]) / type->block_elems;
  bool ok = CheckedMul(n_bytes, type->block_bytes, &n_bytes);
  for (uint32_t d = 1; d < 4 && ok; ++d) ok = CheckedMul(n_bytes, static_cast<uint64_t>(info->ne[d]), &n_bytes);
  if (!ok) return Status::Error(who + ": byte size overflows");
  info->n_bytes = n_bytes;

  RETURN_IF_ERROR(Read(field + " data offset", &info->offset));
  return Status::Ok();
}

StatusOr<GgufFile> GgufParser::Run() {
  uint32_t magic = 0;
  RETURN_IF_ERROR(Read("magic", &magic));
  if (magic != kGgufMagic) {
    return Status::Error("gguf: bad magic at offset 0: not a GGUF file");
  }
  RETURN_IF_ERROR(Read("version", &file_.version_));
  if (file_.version_ != 2 && file_.version_ != 3) {
    return Status::Error("gguf: version " + std::to_string(file_.version_) +
                         " at offset 4 is not supported (only 2 and 3; big-endian files are refused)");
  }
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
  RETURN_IF_ERROR(Read("n_tensors", &n_tensors));
  RETURN_IF_ERROR(Read("n_kv", &n_kv));
  // A tensor info takes at least 32 bytes (u64 name length + 1 name byte
  // rounded down, u32 n_dims, one u64 dim, u32 type, u64 offset); a KV at
  // least 13 (u64 key length, u32 type, 1 value byte). Both counts are bounded
  // by what the file could hold before anything is reserved.
  constexpr uint64_t kMinTensorInfo = 8 + 1 + 4 + 8 + 4 + 8;
  constexpr uint64_t kMinKv = 8 + 4 + 1;
  if (n_tensors > GgufFile::kMaxTensors || n_tensors > remaining() / kMinTensorInfo) {
    return Status::Error("gguf: n_tensors " + std::to_string(n_tensors) +
                         " at offset 8 exceeds what the file can hold (limit " +
                         std::to_string(std::min<uint64_t>(GgufFile::kMaxTensors, remaining() / kMinTensorInfo)) + ")");
  }
  if (n_kv > GgufFile::kMaxKvs || n_kv > remaining() / kMinKv) {
    return Status::Error("gguf: n_kv " + std::to_string(n_kv) + " at offset 16 exceeds what the file can hold (limit " +
                         std::to_string(std::min<uint64_t>(GgufFile::kMaxKvs, remaining() / kMinKv)) + ")");
  }

  file_.kvs_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKv kv;
    kv.offset = pos_;
    const std::string field = "kv[" + std::to_string(i) + "]";
    RETURN_IF_ERROR(ReadString(field + " key", GgufFile::kMaxKeyLength, &kv.key));
    if (kv.key.empty()) {
      return Status::Error("gguf: " + field + " at offset " + std::to_string(kv.offset) + " has an empty key");
    }
    const uint64_t type_at = pos_;
    uint32_t type = 0;
    RETURN_IF_ERROR(Read(field + " value type", &type));
    if (!KnownValueType(type)) {
      return Status::Error("gguf: key " + Quote(kv.key) + ": unknown value type " + std::to_string(type) +
                           " at offset " + std::to_string(type_at));
    }
    RETURN_IF_ERROR(ReadValue("key " + Quote(kv.key), static_cast<GgufValueType>(type), &kv.value));
    if (!file_.kv_index_.emplace(kv.key, file_.kvs_.size()).second) {
      return Status::Error("gguf: duplicate key " + Quote(kv.key) + " at offset " + std::to_string(kv.offset));
    }
    file_.kvs_.push_back(std::move(kv));
  }

  if (const GgufValue* align = file_.Find("general.alignment")) {
    if (align->type != GgufValueType::kU32) {
      return Status::Error(std::string("gguf: general.alignment has type ") + GgufValueTypeName(align->type) +
                           ", expected u32");
    }
    const uint32_t a = Load<uint32_t>(align->raw.data());
    if (a == 0 || !std::has_single_bit(a)) {
      return Status::Error("gguf: general.alignment " + std::to_string(a) + " is not a power of two");
    }
    file_.alignment_ = a;
  }

  file_.tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo info;
    const uint64_t info_at = pos_;
    RETURN_IF_ERROR(ReadTensorInfo(i, &info));
    if (!file_.tensor_index_.emplace(info.name, file_.tensors_.size()).second) {
      return Status::Error("gguf: duplicate tensor " + Quote(info.name) + " at offset " + std::to_string(info_at));
    }
    file_.tensors_.push_back(info);
  }

  // The data section starts at the next multiple of the alignment.
  uint64_t data_offset = 0;
  if (!CheckedAdd(pos_, file_.alignment_ - 1, &data_offset)) return Status::Error("gguf: data offset overflows");
  data_offset -= data_offset % file_.alignment_;
  if (n_tensors > 0 && data_offset > bytes_.size()) {
    return Status::Error("gguf: data section at offset " + std::to_string(data_offset) + " starts past the end of the " +
                         std::to_string(bytes_.size()) + "-byte file");
  }
  file_.data_offset_ = data_offset;

  for (GgufTensorInfo& t : file_.tensors_) {
    const std::string who = "gguf: tensor " + Quote(t.name);
    if (t.offset % file_.alignment_ != 0) {
      return Status::Error(who + ": data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                           std::to_string(file_.alignment_));
    }
    uint64_t begin = 0;
    uint64_t end = 0;
    if (!CheckedAdd(data_offset, t.offset, &begin) || !CheckedAdd(begin, t.n_bytes, &end)) {
      return Status::Error(who + ": data offset " + std::to_string(t.offset) + " + size " + std::to_string(t.n_bytes) +
                           " overflows");
    }
    if (end > bytes_.size()) {
      return Status::Error(who + ": data range [" + std::to_string(begin) + ", " + std::to_string(end) +
                           ") ends past the file size " + std::to_string(bytes_.size()));
    }
    t.file_offset = begin;
    t.data = bytes_.data() + begin;
  }

  // Tensors must not share bytes: an overlap is never produced by a writer and
  // would let one tensor's contents be read as another type.
  std::vector<const GgufTensorInfo*> by_offset;
  by_offset.reserve(file_.tensors_.size());
  for (const GgufTensorInfo& t : file_.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->file_offset < b->file_offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo* prev = by_offset[i - 1];
    if (by_offset[i]->file_offset < prev->file_offset + prev->n_bytes) {
      return Status::Error("gguf: tensor " + Quote(by_offset[i]->name) + " at offset " +
                           std::to_string(by_offset[i]->file_offset) + " overlaps tensor " + Quote(prev->name));
    }
  }
  return std::move(file_);
}

StatusOr<GgufFile> GgufFile::Parse(std::span<const uint8_t> bytes) { return GgufParser(bytes).Run(); }

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second].value;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

Status WrongType(std::string_view key, GgufValueType got, std::string_view want) {
  return Status::Error("gguf: key '" + std::string(key) + "' has type " + GgufValueTypeName(got) + ", expected " +
                       std::string(want));
}

Status Missing(std::string_view key) { return Status::Error("gguf: required key '" + std::string(key) + "' is missing"); }

}  // namespace

Status GgufFile::GetString(std::string_view key, std::string_view* out, bool required) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return required ? Missing(key) : Status::Ok();
  if (v->type != GgufValueType::kString) return WrongType(key, v->type, "string");
  *out = v->str;
  return Status::Ok();
}

Status GgufFile::GetUint32(std::string_view key, uint32_t* out, bool required) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return required ? Missing(key) : Status::Ok();
  if (!IsInteger(v->type)) return WrongType(key, v->type, "an integer");
  const IntValue iv = ReadInt(v->type, v->raw.data());
  if (iv.negative || iv.magnitude > std::numeric_limits<uint32_t>::max()) {
    return Status::Error("gguf: key '" + std::string(key) + "' = " + (iv.negative ? "-" : "") +
                         std::to_string(iv.magnitude) + " does not fit in u32");
  }
  *out = static_cast<uint32_t>(iv.magnitude);
  return Status::Ok();
}

Status GgufFile::GetFloat(std::string_view key, float* out, bool required) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return required ? Missing(key) : Status::Ok();
  if (v->type == GgufValueType::kF32) {
    *out = Load<float>(v->raw.data());
  } else if (v->type == GgufValueType::kF64) {
    *out = static_cast<float>(Load<double>(v->raw.data()));
  } else {
    return WrongType(key, v->type, "f32");
  }
  return Status::Ok();
}

Status GgufFile::GetBool(std::string_view key, bool* out, bool required) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return required ? Missing(key) : Status::Ok();
  if (v->type != GgufValueType::kBool) return WrongType(key, v->type, "bool");
  *out = v->raw[0] != 0;
  return Status::Ok();
}

int64_t GgufFile::ArrayInt(const GgufValue& array, uint64_t i) {
  const uint64_t size = ScalarSize(array.elem_type);
  const IntValue iv = ReadInt(array.elem_type, array.raw.data() + i * size);
  if (iv.magnitude > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return iv.negative ? std::numeric_limits<int64_t>::min() : std::numeric_limits<int64_t>::max();
  }
  const int64_t m = static_cast<int64_t>(iv.magnitude);
  return iv.negative ? -m : m;
}

float GgufFile::ArrayFloat(const GgufValue& array, uint64_t i) {
  if (array.elem_type == GgufValueType::kF32) return Load<float>(array.raw.data() + i * 4);
  if (array.elem_type == GgufValueType::kF64) return static_cast<float>(Load<double>(array.raw.data() + i * 8));
  return static_cast<float>(ArrayInt(array, i));
}

}  // namespace appliance::runtime
