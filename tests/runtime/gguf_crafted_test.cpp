// Crafted hostile GGUF files through the whole loader (parser, model binder,
// tokenizer; a model that loads also evaluates a few tokens): truncations,
// huge counts and lengths, n_dims > 4, bad and unsupported type ids, offsets
// past the end or misaligned, wrong-typed tokenizer arrays, hostile
// hyperparameters. Every one must end in a clean error naming the problem,
// never a crash; the ASan/UBSan build runs this file too.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "base/fd.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "tests/runtime/model_writer.h"

namespace appliance::runtime {
namespace {

using testing::GgufBuilder;
using ::testing::HasSubstr;
using testing::ModelSpec;
using ::testing::StartsWith;
using testing::TestModel;

// Loads through a memfd (the --model-fd path); a model that loads must also
// run: 3 tokens batched, then 1 decoded.
std::string LoadError(const std::vector<uint8_t>& bytes) {
  UniqueFd fd(::memfd_create("crafted", MFD_CLOEXEC));
  if (!fd.valid() || ::write(fd.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    return "<test setup failed>";
  }
  auto file = MappedFile::FromFd(fd.get(), "crafted");
  if (!file.ok()) return file.status().message();
  auto m = Model::Load(std::move(*file), "crafted");
  if (!m.ok()) return m.status().message();
  ContextOptions o;
  o.n_ctx = 8;
  auto ctx = Context::Create(**m, o);
  if (!ctx.ok()) return "crafted: " + ctx.status().message();
  const int32_t three[3] = {1, 2, 3};
  if (Status s = (*ctx)->Eval(three, true); !s.ok()) return "crafted: " + s.message();
  const int32_t one[1] = {4};
  if (Status s = (*ctx)->Eval(one, false); !s.ok()) return "crafted: " + s.message();
  return "<loaded>";
}

// A small qwen3 model mixing Q4_K, Q6_K, Q5_0 and F32: every code path of the
// loader, and fast enough to load thousands of variants.
ModelSpec Base() {
  ModelSpec s;
  s.arch = "qwen3";
  s.n_embd = 256;
  s.n_head = 2;
  s.n_head_kv = 1;
  s.key_length = 64;
  s.value_length = 32;
  s.n_ff = 256;
  s.n_layer = 1;
  s.qk_norm = true;
  s.types = {{"token_embd.weight", testing::kTypeQ4_K},
             {"attn_q.weight", testing::kTypeQ6_K},
             {"attn_output.weight", testing::kTypeQ5_0},
             {"ffn_down.weight", testing::kTypeQ8_0}};
  return s;
}

TEST(CraftedGguf, BaseModelLoads) { EXPECT_EQ(LoadError(testing::WriteModel(Base()).bytes), "<loaded>"); }

TEST(CraftedGguf, EveryTruncationIsRefused) {
  const TestModel m = testing::WriteModel(Base());
  const size_t header = m.layout.data_at;
  std::vector<size_t> cuts;
  for (size_t n = 0; n <= header; n += (n < 4096 ? 1 : 7)) cuts.push_back(n);
  for (size_t n = header; n < m.bytes.size(); n += 1013) cuts.push_back(n);
  cuts.push_back(m.bytes.size() - 1);
  for (size_t n : cuts) {
    const std::vector<uint8_t> prefix(m.bytes.begin(), m.bytes.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string err = LoadError(prefix);
    ASSERT_THAT(err, StartsWith("crafted: gguf: ")) << "prefix of " << n << " bytes";
  }
}

// Patches one little-endian field of a valid file and returns the load error.
template <typename T>
std::string Patched(const TestModel& m, size_t at, T value) {
  std::vector<uint8_t> bytes = m.bytes;
  GgufBuilder::Patch<T>(bytes, at, value);
  return LoadError(bytes);
}

size_t KvAt(const TestModel& m, const std::string& key) {
  for (const auto& kv : m.layout.kvs) {
    if (kv.key == key) return kv.value_at;
  }
  ADD_FAILURE() << "no key " << key;
  return 0;
}

TEST(CraftedGguf, HugeCountsAndLengths) {
  const TestModel m = testing::WriteModel(Base());
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  EXPECT_THAT(Patched<uint64_t>(m, 8, uint64_t{1} << 63),
              HasSubstr("n_tensors 9223372036854775808 at offset 8 exceeds"));
  EXPECT_THAT(Patched<uint64_t>(m, 16, kMax), HasSubstr("n_kv 18446744073709551615 at offset 16 exceeds"));
  EXPECT_THAT(Patched<uint64_t>(m, 16, uint64_t{1} << 20), HasSubstr("crafted: gguf: "));
  // The vocabulary array's count, a string's length, a key's length, a tensor name's length.
  const size_t tokens = KvAt(m, "tokenizer.ggml.tokens");
  EXPECT_THAT(Patched<uint64_t>(m, tokens + 4, kMax),
              HasSubstr("key 'tokenizer.ggml.tokens': array length 18446744073709551615"));
  EXPECT_THAT(Patched<uint64_t>(m, tokens + 4, uint64_t{1} << 40), HasSubstr("needs at least 8 bytes per element"));
  EXPECT_THAT(Patched<uint64_t>(m, tokens + 12, kMax - 3), HasSubstr("key 'tokenizer.ggml.tokens'[0] length"));
  EXPECT_THAT(Patched<uint64_t>(m, KvAt(m, "general.name"), kMax),
              HasSubstr("key 'general.name' length 18446744073709551615"));
  EXPECT_THAT(Patched<uint64_t>(m, m.layout.kvs[3].key_length_at, uint64_t{1} << 33),
              HasSubstr("exceeds the limit of 1024"));
  EXPECT_THAT(Patched<uint64_t>(m, m.layout.tensors[2].name_length_at, kMax),
              HasSubstr("name length 18446744073709551615"));
  // Scores with more elements than the file has bytes for.
  EXPECT_THAT(Patched<uint64_t>(m, KvAt(m, "tokenizer.ggml.scores") + 4, uint64_t{1} << 62),
              HasSubstr("key 'tokenizer.ggml.scores': array length 4611686018427387904"));
}

TEST(CraftedGguf, BadDimensions) {
  const TestModel m = testing::WriteModel(Base());
  const auto& q = m.tensor("blk.0.attn_q.weight");
  for (uint32_t n_dims : {0u, 5u, 64u, 0xFFFFFFFFu}) {
    EXPECT_THAT(Patched<uint32_t>(m, q.n_dims_at, n_dims),
                HasSubstr("tensor 'blk.0.attn_q.weight': n_dims " + std::to_string(n_dims) + " at offset"));
  }
  EXPECT_THAT(Patched<uint64_t>(m, q.dims_at, 0), HasSubstr("ne[0] = 0"));
  EXPECT_THAT(Patched<uint64_t>(m, q.dims_at + 8, uint64_t{1} << 62), HasSubstr("tensor 'blk.0.attn_q.weight': "));
  EXPECT_THAT(Patched<uint64_t>(m, q.dims_at, 255),
              HasSubstr("row length ne[0] = 255 is not a multiple of the q6_K block size 256"));
  // A shape the parser accepts but the architecture does not: rows of 512 where 256 belong.
  const auto& norm = m.tensor("blk.0.attn_norm.weight");
  EXPECT_THAT(Patched<uint64_t>(m, norm.dims_at, 128),
              HasSubstr("tensor 'blk.0.attn_norm.weight' has shape [128], expected [256]"));
}

TEST(CraftedGguf, BadAndUnsupportedTypeIds) {
  const TestModel m = testing::WriteModel(Base());
  const auto& up = m.tensor("blk.0.ffn_up.weight");  // F32, 256 x 256: 1 KiB per row
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 40u, 1000u, 0xFFFFFFFFu}) {
    EXPECT_THAT(Patched<uint32_t>(m, up.type_at, id),
                HasSubstr("tensor 'blk.0.ffn_up.weight': unknown tensor type id " + std::to_string(id)));
  }
  // Types ggml defines and the parser can bound, but with no kernels here:
  // refused by name, with the list of what is supported. (Each is no larger
  // than f32 per element, so the tensor's bytes stay inside its slot.)
  for (uint32_t id : {9u, 10u, 11u, 15u, 16u, 17u, 18u, 19u, 20u, 21u, 22u, 23u, 24u, 25u, 26u, 29u, 34u, 35u, 39u}) {
    const std::string err = Patched<uint32_t>(m, up.type_at, id);
    EXPECT_THAT(err, HasSubstr("tensor 'blk.0.ffn_up.weight' has type " + TensorTypeName(static_cast<TensorType>(id)) +
                               ", which this runtime does not support"))
        << id;
    EXPECT_THAT(err, HasSubstr("(supported: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, q6_K, bf16)"));
  }
  // A norm must be f32 even when the type is otherwise supported.
  EXPECT_THAT(Patched<uint32_t>(m, m.tensor("blk.0.ffn_norm.weight").type_at, uint32_t{1}),
              HasSubstr("tensor 'blk.0.ffn_norm.weight' has type f16, expected f32"));
}

TEST(CraftedGguf, OffsetsPastTheEndOrMisaligned) {
  const TestModel m = testing::WriteModel(Base());
  const auto& t = m.tensor("output.weight");
  const uint64_t data_size = m.bytes.size() - m.layout.data_at;
  EXPECT_THAT(Patched<uint64_t>(m, t.offset_at, data_size), HasSubstr("tensor 'output.weight': data range ["));
  EXPECT_THAT(Patched<uint64_t>(m, t.offset_at, data_size), HasSubstr("ends past the file size"));
  EXPECT_THAT(Patched<uint64_t>(m, t.offset_at, std::numeric_limits<uint64_t>::max() - 31), HasSubstr("overflows"));
  EXPECT_THAT(Patched<uint64_t>(m, t.offset_at, 1), HasSubstr("data offset 1 is not a multiple of the alignment 32"));
  EXPECT_THAT(Patched<uint64_t>(m, t.offset_at, 0), HasSubstr("overlaps tensor"));
  // general.alignment: not a power of two, wrong type; a smaller alignment
  // moves the data section so tensor offsets no longer fit.
  ModelSpec s = Base();
  s.raw_kvs["general.alignment"] = {GgufBuilder::kU32, GgufBuilder::Pod(uint32_t{48})};
  EXPECT_THAT(LoadError(testing::WriteModel(s).bytes), HasSubstr("general.alignment 48 is not a power of two"));
  s.raw_kvs["general.alignment"] = {GgufBuilder::kU64, GgufBuilder::Pod(uint64_t{32})};
  EXPECT_THAT(LoadError(testing::WriteModel(s).bytes), HasSubstr("general.alignment has type u64, expected u32"));
  s.raw_kvs["general.alignment"] = {GgufBuilder::kU32, GgufBuilder::Pod(uint32_t{1u << 31})};
  EXPECT_THAT(LoadError(testing::WriteModel(s).bytes), StartsWith("crafted: gguf: "));
}

TEST(CraftedGguf, WrongTypedTokenizerArrays) {
  struct Case {
    const char* key;
    uint32_t type;
    std::vector<uint8_t> value;
  };
  const std::vector<std::string> two = {"a", "b"};
  const std::vector<Case> cases = {
      {"tokenizer.ggml.tokens", GgufBuilder::kArray,
       GgufBuilder::PodArray(GgufBuilder::kI32, std::vector<int32_t>(260, 7))},
      {"tokenizer.ggml.tokens", GgufBuilder::kString, GgufBuilder::Str("not an array")},
      {"tokenizer.ggml.tokens", GgufBuilder::kArray, GgufBuilder::StringArray({})},
      {"tokenizer.ggml.scores", GgufBuilder::kArray, GgufBuilder::StringArray(two)},
      {"tokenizer.ggml.scores", GgufBuilder::kArray,
       GgufBuilder::PodArray(GgufBuilder::kF32, std::vector<float>(259, 0))},
      {"tokenizer.ggml.scores", GgufBuilder::kF32, GgufBuilder::Pod(1.0f)},
      {"tokenizer.ggml.token_type", GgufBuilder::kArray,
       GgufBuilder::PodArray(GgufBuilder::kF32, std::vector<float>(260, 1))},
      {"tokenizer.ggml.token_type", GgufBuilder::kArray,
       GgufBuilder::PodArray(GgufBuilder::kI32, std::vector<int32_t>(261, 1))},
      {"tokenizer.ggml.token_type", GgufBuilder::kArray,
       GgufBuilder::PodArray(GgufBuilder::kI32, std::vector<int32_t>(260, 99))},
      {"tokenizer.ggml.model", GgufBuilder::kU32, GgufBuilder::Pod(uint32_t{1})},
  };
  for (const Case& c : cases) {
    ModelSpec s = Base();
    s.raw_kvs[c.key] = {c.type, c.value};
    const std::string err = LoadError(testing::WriteModel(s).bytes);
    EXPECT_THAT(err, StartsWith("crafted: ")) << c.key;
    EXPECT_THAT(err, HasSubstr("tokenizer")) << c.key;
    EXPECT_NE(err, "<loaded>") << c.key;
  }
  ModelSpec s = Base();
  s.omit_kvs = {"tokenizer.ggml.tokens"};
  EXPECT_THAT(LoadError(testing::WriteModel(s).bytes), HasSubstr("tokenizer.ggml.tokens"));
}

TEST(CraftedGguf, HostileHyperparameters) {
  struct Case {
    const char* key;
    uint32_t type;
    std::vector<uint8_t> value;
    const char* error;
  };
  auto u32 = [](uint32_t v) { return GgufBuilder::Pod(v); };
  auto f32 = [](float v) { return GgufBuilder::Pod(v); };
  const std::vector<Case> cases = {
      {"qwen3.block_count", GgufBuilder::kU32, u32(1u << 30), "qwen3.block_count = 1073741824 is outside [1, 1024]"},
      {"qwen3.block_count", GgufBuilder::kI32, GgufBuilder::Pod(int32_t{-1}),
       "key 'qwen3.block_count' = -1 does not fit in u32"},
      {"qwen3.block_count", GgufBuilder::kU64, GgufBuilder::Pod(uint64_t{1} << 40), "does not fit in u32"},
      {"qwen3.embedding_length", GgufBuilder::kU32, u32(0), "qwen3.embedding_length = 0 is outside [1, 65536]"},
      {"qwen3.attention.head_count", GgufBuilder::kU32, u32(0), "qwen3.attention.head_count = 0 is outside"},
      {"qwen3.attention.head_count_kv", GgufBuilder::kU32, u32(4),
       "qwen3.attention.head_count_kv = 4 is outside [1, 2]"},
      {"qwen3.feed_forward_length", GgufBuilder::kU32, u32(0xFFFFFFFFu),
       "qwen3.feed_forward_length = 4294967295 is outside"},
      {"qwen3.context_length", GgufBuilder::kU32, u32(0), "qwen3.context_length = 0 is outside"},
      {"qwen3.attention.key_length", GgufBuilder::kU32, u32(0), "qwen3.attention.key_length = 0 is outside [1, 1024]"},
      {"qwen3.attention.value_length", GgufBuilder::kU32, u32(1u << 31),
       "qwen3.attention.value_length = 2147483648 is outside"},
      {"qwen3.attention.key_length", GgufBuilder::kString, GgufBuilder::Str("64"),
       "key 'qwen3.attention.key_length' has type string"},
      {"qwen3.rope.dimension_count", GgufBuilder::kU32, u32(7), "qwen3.rope.dimension_count 7 must be even"},
      {"qwen3.attention.layer_norm_rms_epsilon", GgufBuilder::kF32, f32(NAN), "layer_norm_rms_epsilon"},
      {"qwen3.attention.layer_norm_rms_epsilon", GgufBuilder::kF32, f32(-1.0f), "is outside (0, 1)"},
      {"qwen3.rope.freq_base", GgufBuilder::kF32, f32(INFINITY), "qwen3.rope.freq_base inf must be finite and > 1"},
      {"qwen3.rope.scaling.factor", GgufBuilder::kF32, f32(NAN), "qwen3.rope.scaling.factor nan is outside"},
      {"qwen3.rope.scaling.factor", GgufBuilder::kF32, f32(1e30f), "is outside [1e-3, 1e3]"},
      {"qwen3.rope.scaling.type", GgufBuilder::kString, GgufBuilder::Str("longrope"), "'longrope' is not supported"},
      {"qwen3.expert_count", GgufBuilder::kU32, u32(8), "mixture-of-experts models (qwen3.expert_count)"},
      {"general.architecture", GgufBuilder::kString, GgufBuilder::Str("llama\x1b[2J"),
       "architecture 'llama\\x1b[2J' is not supported"},
      {"general.architecture", GgufBuilder::kU32, u32(1), "key 'general.architecture' has type u32, expected string"},
  };
  for (const Case& c : cases) {
    ModelSpec s = Base();
    s.raw_kvs[c.key] = {c.type, c.value};
    EXPECT_THAT(LoadError(testing::WriteModel(s).bytes), HasSubstr(c.error)) << c.key;
  }
  for (const char* key :
       {"qwen3.embedding_length", "qwen3.block_count", "qwen3.attention.head_count", "qwen3.feed_forward_length",
        "qwen3.context_length", "qwen3.attention.layer_norm_rms_epsilon", "general.architecture"}) {
    ModelSpec s = Base();
    s.omit_kvs = {key};
    EXPECT_THAT(LoadError(testing::WriteModel(s).bytes),
                HasSubstr("required key '" + std::string(key) + "' is missing"));
  }
}

// Random corruption of every region of a small quantized model (header,
// metadata, tensor infos, tensor data): each variant ends in a clean error or
// a model that runs; non-finite weights must not turn into undefined
// behaviour either (UBSan build).
TEST(CraftedGguf, SurvivesRandomCorruption) {
  ModelSpec spec = Base();
  spec.n_embd = 256;
  const TestModel m = testing::WriteModel(spec);
  testing::TestRng rng(4242);
  int loaded = 0;
  for (int iter = 0; iter < 600; ++iter) {
    std::vector<uint8_t> bytes = m.bytes;
    const int flips = 1 + static_cast<int>(rng.Next() % 8);
    for (int f = 0; f < flips; ++f) {
      // Half of the flips in the header (dense with counts and offsets).
      const size_t region = (rng.Next() % 2 == 0) ? m.layout.data_at : bytes.size();
      const size_t at = rng.Next() % region;
      bytes[at] = (rng.Next() % 2 == 0) ? static_cast<uint8_t>(rng.Next()) : static_cast<uint8_t>(bytes[at] ^ 0x80);
    }
    const std::string err = LoadError(bytes);
    if (err == "<loaded>") {
      ++loaded;
    } else {
      ASSERT_THAT(err, StartsWith("crafted: ")) << iter;
    }
  }
  std::printf("[crafted] 600 corrupted models: %d loaded and ran\n", loaded);
  EXPECT_GT(loaded, 0);  // corruption of weight bytes alone still loads
}

}  // namespace
}  // namespace appliance::runtime
