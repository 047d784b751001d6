// Builds GGUF files in memory for tests, recording where each field landed
// so that tests can corrupt exactly one of them.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace appliance::runtime::testing {

class GgufBuilder {
 public:
  // GGUF value type ids.
  enum : uint32_t { kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64 };

  struct KvLayout {
    std::string key;
    size_t key_length_at = 0;  // u64 key length
    size_t type_at = 0;        // u32 value type
    size_t value_at = 0;       // first byte of the value
  };
  struct TensorLayout {
    size_t name_length_at = 0;
    size_t n_dims_at = 0;
    size_t dims_at = 0;  // ne[0]; ne[i] at dims_at + 8 * i
    size_t type_at = 0;
    size_t offset_at = 0;  // u64 data offset
  };
  struct Layout {
    std::vector<KvLayout> kvs;
    std::vector<TensorLayout> tensors;
    size_t data_at = 0;
  };

  GgufBuilder& Version(uint32_t v) {
    version_ = v;
    return *this;
  }
  GgufBuilder& Alignment(uint32_t a) {
    alignment_ = a;
    return KvU32("general.alignment", a);
  }

  GgufBuilder& KvU32(const std::string& key, uint32_t v) { return Kv(key, kU32, Pod(v)); }
  GgufBuilder& KvI32(const std::string& key, int32_t v) { return Kv(key, kI32, Pod(v)); }
  GgufBuilder& KvF32(const std::string& key, float v) { return Kv(key, kF32, Pod(v)); }
  GgufBuilder& KvBool(const std::string& key, bool v) { return Kv(key, kBool, {static_cast<uint8_t>(v ? 1 : 0)}); }
  GgufBuilder& KvString(const std::string& key, const std::string& v) { return Kv(key, kString, Str(v)); }
  GgufBuilder& KvStringArray(const std::string& key, const std::vector<std::string>& v) {
    return Kv(key, kArray, StringArray(v));
  }
  GgufBuilder& KvF32Array(const std::string& key, const std::vector<float>& v) {
    return Kv(key, kArray, PodArray(kF32, v));
  }
  GgufBuilder& KvI32Array(const std::string& key, const std::vector<int32_t>& v) {
    return Kv(key, kArray, PodArray(kI32, v));
  }
  // Encoded array values (element type, u64 count, elements), for Kv().
  static std::vector<uint8_t> StringArray(const std::vector<std::string>& v) {
    std::vector<uint8_t> b = Pod(uint32_t{kString});
    Append(b, Pod(static_cast<uint64_t>(v.size())));
    for (const std::string& s : v) Append(b, Str(s));
    return b;
  }
  template <typename T>
  static std::vector<uint8_t> PodArray(uint32_t elem_type, const std::vector<T>& v) {
    std::vector<uint8_t> b = Pod(elem_type);
    Append(b, Pod(static_cast<uint64_t>(v.size())));
    for (const T& x : v) Append(b, Pod(x));
    return b;
  }
  // Any value, given as its raw encoding.
  GgufBuilder& Kv(const std::string& key, uint32_t type, std::vector<uint8_t> value) {
    kvs_.push_back({key, type, std::move(value)});
    return *this;
  }

  // A tensor with explicit data bytes (placed at the next aligned offset).
  GgufBuilder& Tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, std::vector<uint8_t> data) {
    tensors_.push_back({name, std::move(dims), type, std::move(data)});
    return *this;
  }
  // An F32 tensor.
  GgufBuilder& TensorF32(const std::string& name, std::vector<uint64_t> dims, const std::vector<float>& values) {
    std::vector<uint8_t> data(values.size() * 4);
    std::memcpy(data.data(), values.data(), data.size());
    return Tensor(name, std::move(dims), 0, std::move(data));
  }

  std::vector<uint8_t> Build(Layout* layout = nullptr) const {
    Layout lay;
    std::vector<uint8_t> out;
    Append(out, Pod(uint32_t{0x46554747}));
    Append(out, Pod(version_));
    Append(out, Pod(static_cast<uint64_t>(tensors_.size())));
    Append(out, Pod(static_cast<uint64_t>(kvs_.size())));
    for (const KvEntry& kv : kvs_) {
      KvLayout k;
      k.key = kv.key;
      k.key_length_at = out.size();
      Append(out, Str(kv.key));
      k.type_at = out.size();
      Append(out, Pod(kv.type));
      k.value_at = out.size();
      Append(out, kv.value);
      lay.kvs.push_back(k);
    }
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const TensorEntry& t : tensors_) {
      TensorLayout tl;
      tl.name_length_at = out.size();
      Append(out, Str(t.name));
      tl.n_dims_at = out.size();
      Append(out, Pod(static_cast<uint32_t>(t.dims.size())));
      tl.dims_at = out.size();
      for (uint64_t d : t.dims) Append(out, Pod(d));
      tl.type_at = out.size();
      Append(out, Pod(t.type));
      tl.offset_at = out.size();
      Append(out, Pod(offset));
      offsets.push_back(offset);
      offset += (t.data.size() + alignment_ - 1) / alignment_ * alignment_;
      lay.tensors.push_back(tl);
    }
    out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, 0);
    lay.data_at = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out.resize(lay.data_at + offsets[i], 0);
      Append(out, tensors_[i].data);
    }
    if (layout != nullptr) *layout = lay;
    return out;
  }

  template <typename T>
  static std::vector<uint8_t> Pod(T v) {
    std::vector<uint8_t> b(sizeof(T));
    std::memcpy(b.data(), &v, sizeof(T));
    return b;
  }
  static std::vector<uint8_t> Str(const std::string& s) {
    std::vector<uint8_t> b = Pod(static_cast<uint64_t>(s.size()));
    b.insert(b.end(), s.begin(), s.end());
    return b;
  }
  static void Append(std::vector<uint8_t>& out, const std::vector<uint8_t>& b) { out.insert(out.end(), b.begin(), b.end()); }

  // Overwrites a little-endian value at `at`.
  template <typename T>
  static void Patch(std::vector<uint8_t>& bytes, size_t at, T v) {
    std::memcpy(bytes.data() + at, &v, sizeof(T));
  }

 private:
  struct KvEntry {
    std::string key;
    uint32_t type;
    std::vector<uint8_t> value;
  };
  struct TensorEntry {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> data;
  };
  uint32_t version_ = 3;
  uint32_t alignment_ = 32;
  std::vector<KvEntry> kvs_;
  std::vector<TensorEntry> tensors_;
};

}  // namespace appliance::runtime::testing
