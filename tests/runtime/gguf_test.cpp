// GGUF parser: real files parse, every hostile field is refused with a
// message naming the field, and no truncation of a real file gets through.
#include "runtime/gguf.h"

#include <sys/mman.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include "base/fd.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "tests/runtime/gguf_builder.h"
#include "tests/runtime/test_util.h"

namespace appliance::runtime {
namespace {

using testing::GgufBuilder;
using ::testing::HasSubstr;

std::string ParseError(const std::vector<uint8_t>& bytes) {
  auto r = GgufFile::Parse(bytes);
  if (r.ok()) return "<parsed>";
  return r.status().message();
}

// A small well-formed file: two KVs and two tensors.
GgufBuilder Small() {
  GgufBuilder b;
  b.KvString("general.architecture", "llama").KvU32("test.n", 7);
  b.TensorF32("a", {4, 2}, std::vector<float>(8, 1.0f));
  b.TensorF32("b", {3}, {1, 2, 3});
  return b;
}

TEST(Gguf, ParsesStories260K) {
  const auto bytes = testing::ReadFile(testing::ModelPath("stories260K.gguf"));
  ASSERT_EQ(bytes.size(), 1185376u);
  auto f = GgufFile::Parse(bytes);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->kvs().size(), 19u);
  EXPECT_EQ(f->tensors().size(), 48u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->data_offset(), 14176u);
  const GgufTensorInfo* t = f->FindTensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->n_dims, 2u);
  EXPECT_EQ(t->ne[0], 64);
  EXPECT_EQ(t->ne[1], 512);
  EXPECT_EQ(t->type, TensorType::kF32);
  EXPECT_EQ(t->n_bytes, 64u * 512u * 4u);
  EXPECT_EQ(t->data, bytes.data() + 14176);
  std::string_view arch;
  ASSERT_TRUE(f->GetString("general.architecture", &arch, true).ok());
  EXPECT_EQ(arch, "llama");
  const GgufValue* tokens = f->Find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->strings.size(), 512u);
  EXPECT_EQ(tokens->strings[1], "<s>");
}

// Every model in shared/ parses and its last tensor ends exactly at (or
// within padding of) the end of the file: checks the block geometry table
// for f32, f16, bf16, q8_0, q4_0, q4_K, q5_K and q6_K against real files.
TEST(Gguf, ParsesEverySharedModelAndSizesAddUp) {
  for (const char* name : {"stories260K.gguf", "synth-d256-f32.gguf", "synth-d256-f16.gguf", "synth-d256-bf16.gguf",
                           "synth-d256-q8_0.gguf", "synth-d256-q4_0.gguf", "synth-d256-q4_k_m.gguf",
                           "synth-d256-q5_k_m.gguf", "synth-d256-q6_k.gguf", "bench-d768-q4_k_m.gguf"}) {
    SCOPED_TRACE(name);
    const auto bytes = testing::ReadFile(testing::ModelPath(name));
    auto f = GgufFile::Parse(bytes);
    ASSERT_TRUE(f.ok()) << f.status().message();
    uint64_t end = 0;
    for (const GgufTensorInfo& t : f->tensors()) end = std::max(end, t.file_offset + t.n_bytes);
    EXPECT_LE(end, bytes.size());
    EXPECT_GT(end + f->alignment(), bytes.size());
  }
}

TEST(Gguf, RefusesEveryTruncationOfARealFile) {
  const auto full = testing::ReadFile(testing::ModelPath("stories260K.gguf"));
  auto f = GgufFile::Parse(full);
  ASSERT_TRUE(f.ok());
  const size_t header_end = f->data_offset();
  std::vector<size_t> cuts;
  for (size_t n = 0; n <= header_end; ++n) cuts.push_back(n);                // every byte of the header
  for (size_t n = header_end; n < full.size(); n += 997) cuts.push_back(n);  // through the data
  cuts.push_back(full.size() - 1);
  for (size_t n : cuts) {
    // An exact-size heap copy, so that AddressSanitizer sees any overread.
    const std::vector<uint8_t> prefix(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string err = ParseError(prefix);
    ASSERT_NE(err, "<parsed>") << "prefix of " << n << " bytes parsed";
    ASSERT_EQ(err.rfind("gguf: ", 0), 0u) << err;
    const bool known = err.find("truncated") != std::string::npos ||
                       err.find("left in the file") != std::string::npos ||
                       err.find("exceeds what the file can hold") != std::string::npos ||
                       err.find("ends past the file size") != std::string::npos ||
                       err.find("past the end") != std::string::npos;
    ASSERT_TRUE(known) << "prefix " << n << ": " << err;
  }
  // Specific places give specific messages.
  EXPECT_EQ(ParseError({}), "gguf: truncated: magic at offset 0 needs 4 bytes, only 0 left in the file");
  EXPECT_THAT(ParseError(std::vector<uint8_t>(full.begin(), full.begin() + 20)),
              HasSubstr("truncated: n_kv at offset 16 needs 8 bytes, only 4 left"));
  EXPECT_THAT(ParseError(std::vector<uint8_t>(full.begin(), full.end() - 1)),
              HasSubstr("tensor 'blk.4.ffn_norm.weight': data range [1185120, 1185376) ends past the file size 1185375"));
}

TEST(Gguf, RefusesBadMagicAndVersion) {
  auto bytes = Small().Build();
  bytes[0] = 'X';
  EXPECT_EQ(ParseError(bytes), "gguf: bad magic at offset 0: not a GGUF file");
  EXPECT_THAT(ParseError(Small().Version(1).Build()), HasSubstr("version 1 at offset 4 is not supported"));
  EXPECT_THAT(ParseError(Small().Version(0x03000000).Build()), HasSubstr("is not supported"));
  EXPECT_EQ(ParseError(Small().Version(2).Build()), "<parsed>");
}

TEST(Gguf, RefusesOversizeCounts) {
  const auto good = Small().Build();
  auto bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, 8, uint64_t{1} << 40);
  EXPECT_THAT(ParseError(bytes), HasSubstr("n_tensors 1099511627776 at offset 8 exceeds what the file can hold"));
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, 16, std::numeric_limits<uint64_t>::max());
  EXPECT_THAT(ParseError(bytes), HasSubstr("n_kv 18446744073709551615 at offset 16 exceeds what the file can hold"));
  // A count the file could hold by the minimum-size rule but that runs out of bytes.
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, 16, uint64_t{5});
  EXPECT_THAT(ParseError(bytes), HasSubstr("gguf: "));
}

TEST(Gguf, RefusesOversizeStringLengths) {
  GgufBuilder::Layout lay;
  const auto good = Small().Build(&lay);
  auto bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, lay.kvs[0].key_length_at, uint64_t{1} << 62);
  EXPECT_THAT(ParseError(bytes), HasSubstr("kv[0] key length 4611686018427387904 at offset 24 exceeds the limit of 1024"));
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, lay.kvs[0].key_length_at, uint64_t{1000});
  EXPECT_THAT(ParseError(bytes), HasSubstr("kv[0] key length 1000 at offset 24 exceeds the"));
  EXPECT_THAT(ParseError(bytes), HasSubstr("bytes left in the file"));
  bytes = good;  // the string value of general.architecture
  GgufBuilder::Patch<uint64_t>(bytes, lay.kvs[0].value_at, std::numeric_limits<uint64_t>::max());
  EXPECT_THAT(ParseError(bytes), HasSubstr("key 'general.architecture' length 18446744073709551615 at offset " +
                                           std::to_string(lay.kvs[0].value_at) + " exceeds the"));
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, lay.tensors[0].name_length_at, uint64_t{64});
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor[0] name length 64 at offset " +
                                           std::to_string(lay.tensors[0].name_length_at) + " exceeds the limit of 63"));
}

TEST(Gguf, RefusesOversizeArrayLengths) {
  GgufBuilder b;
  b.KvStringArray("tokens", {"a", "b", "c"}).KvF32Array("scores", {1, 2, 3});
  GgufBuilder::Layout lay;
  const auto good = b.Build(&lay);
  ASSERT_EQ(ParseError(good), "<parsed>");
  auto bytes = good;
  const size_t count_at = lay.kvs[0].value_at + 4;
  GgufBuilder::Patch<uint64_t>(bytes, count_at, uint64_t{1} << 60);
  EXPECT_THAT(ParseError(bytes), HasSubstr("key 'tokens': array length 1152921504606846976 at offset " +
                                           std::to_string(count_at) + " needs at least 8 bytes per element"));
  bytes = good;
  const size_t count2_at = lay.kvs[1].value_at + 4;
  GgufBuilder::Patch<uint64_t>(bytes, count2_at, uint64_t{1000});  // more f32 than bytes remain
  EXPECT_THAT(ParseError(bytes), HasSubstr("key 'scores': array length 1000 at offset " + std::to_string(count2_at) +
                                           " needs at least 4 bytes per element"));
  // Nested arrays and unknown element types.
  bytes = good;
  GgufBuilder::Patch<uint32_t>(bytes, lay.kvs[1].value_at, uint32_t{9});
  EXPECT_THAT(ParseError(bytes), HasSubstr("key 'scores': nested arrays are not supported"));
  bytes = good;
  GgufBuilder::Patch<uint32_t>(bytes, lay.kvs[1].value_at, uint32_t{13});
  EXPECT_THAT(ParseError(bytes), HasSubstr("key 'scores': unknown array element type 13"));
}

TEST(Gguf, RefusesBadValues) {
  GgufBuilder::Layout lay;
  auto bytes = Small().Build(&lay);
  GgufBuilder::Patch<uint32_t>(bytes, lay.kvs[1].type_at, uint32_t{77});
  EXPECT_THAT(ParseError(bytes), HasSubstr("key 'test.n': unknown value type 77 at offset " +
                                           std::to_string(lay.kvs[1].type_at)));
  GgufBuilder b;
  b.KvBool("flag", true);
  bytes = b.Build(&lay);
  bytes[lay.kvs[0].value_at] = 2;
  EXPECT_THAT(ParseError(bytes), HasSubstr("key 'flag': bool value 2 at offset"));
  GgufBuilder dup;
  dup.KvU32("k", 1).KvU32("k", 2);
  EXPECT_THAT(ParseError(dup.Build()), HasSubstr("duplicate key 'k'"));
  GgufBuilder align;
  align.KvU32("general.alignment", 24);
  EXPECT_THAT(ParseError(align.Build()), HasSubstr("general.alignment 24 is not a power of two"));
  GgufBuilder align_type;
  align_type.KvString("general.alignment", "32");
  EXPECT_THAT(ParseError(align_type.Build()), HasSubstr("general.alignment has type string, expected u32"));
  GgufBuilder empty_key;
  empty_key.KvU32("", 1);
  EXPECT_THAT(ParseError(empty_key.Build()), HasSubstr("kv[0] at offset 24 has an empty key"));
}

TEST(Gguf, RefusesBadDimensions) {
  GgufBuilder::Layout lay;
  const auto good = Small().Build(&lay);
  const auto& t0 = lay.tensors[0];
  auto bytes = good;
  GgufBuilder::Patch<uint32_t>(bytes, t0.n_dims_at, uint32_t{5});
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'a': n_dims 5 at offset " + std::to_string(t0.n_dims_at) +
                                           " is outside [1, 4]"));
  bytes = good;
  GgufBuilder::Patch<uint32_t>(bytes, t0.n_dims_at, uint32_t{0});
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'a': n_dims 0"));
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, t0.dims_at + 8, uint64_t{0});
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'a': ne[1] = 0 at offset " + std::to_string(t0.dims_at + 8) +
                                           " is outside [1, 2^63)"));
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, t0.dims_at, uint64_t{1} << 63);
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'a': ne[0] = 9223372036854775808"));
  bytes = good;  // 2^32 * 2^32 elements overflows int64
  GgufBuilder::Patch<uint64_t>(bytes, t0.dims_at, uint64_t{1} << 32);
  GgufBuilder::Patch<uint64_t>(bytes, t0.dims_at + 8, uint64_t{1} << 32);
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'a': element count overflows at ne[1]"));
  bytes = good;  // 2^31 * 2^31 elements fit, 2^62 f32 bytes do not
  GgufBuilder::Patch<uint64_t>(bytes, t0.dims_at, uint64_t{1} << 31);
  GgufBuilder::Patch<uint64_t>(bytes, t0.dims_at + 8, uint64_t{1} << 31);
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'a': byte size overflows"));
  bytes = good;  // large but representable: caught by the range check
  GgufBuilder::Patch<uint64_t>(bytes, t0.dims_at + 8, uint64_t{1} << 20);
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'a': data range"));
  EXPECT_THAT(ParseError(bytes), HasSubstr("ends past the file size"));
}

TEST(Gguf, RefusesUnknownTypesNamingTheTensor) {
  GgufBuilder::Layout lay;
  const auto good = Small().Build(&lay);
  for (uint32_t id : {4u, 5u, 31u, 36u, 40u, 99u, 0xffffffffu}) {
    auto bytes = good;
    GgufBuilder::Patch<uint32_t>(bytes, lay.tensors[1].type_at, id);
    EXPECT_THAT(ParseError(bytes), HasSubstr("gguf: tensor 'b': unknown tensor type id " + std::to_string(id) +
                                             " at offset " + std::to_string(lay.tensors[1].type_at)));
  }
  // A known block type whose row length is not a whole number of blocks.
  auto bytes = good;
  GgufBuilder::Patch<uint32_t>(bytes, lay.tensors[1].type_at, uint32_t{8});  // q8_0, ne[0] = 3
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'b': row length ne[0] = 3 is not a multiple of the q8_0 block size 32"));
}

TEST(Gguf, RefusesBadDataOffsets) {
  GgufBuilder::Layout lay;
  const auto good = Small().Build(&lay);
  auto bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, lay.tensors[1].offset_at, uint64_t{1} << 20);
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'b': data range [" + std::to_string(lay.data_at + (1 << 20)) + ", " +
                                           std::to_string(lay.data_at + (1 << 20) + 12) + ") ends past the file size " +
                                           std::to_string(good.size())));
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, lay.tensors[1].offset_at, uint64_t{36});
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'b': data offset 36 is not a multiple of the alignment 32"));
  bytes = good;
  GgufBuilder::Patch<uint64_t>(bytes, lay.tensors[1].offset_at, std::numeric_limits<uint64_t>::max() - 31);
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'b': data offset 18446744073709551584 + size 12 overflows"));
  bytes = good;  // b placed on top of a
  GgufBuilder::Patch<uint64_t>(bytes, lay.tensors[1].offset_at, uint64_t{0});
  EXPECT_THAT(ParseError(bytes), HasSubstr("overlaps tensor"));
  GgufBuilder dup;
  dup.TensorF32("x", {1}, {1}).TensorF32("x", {1}, {2});
  EXPECT_THAT(ParseError(dup.Build()), HasSubstr("duplicate tensor 'x'"));
}

TEST(Gguf, NamesAreEscapedInErrors) {
  GgufBuilder b;
  b.TensorF32("bad\x1b[2J", {1}, {1});
  GgufBuilder::Layout lay;
  auto bytes = b.Build(&lay);
  GgufBuilder::Patch<uint32_t>(bytes, lay.tensors[0].type_at, uint32_t{99});
  EXPECT_THAT(ParseError(bytes), HasSubstr("tensor 'bad\\x1b[2J'"));
}

// Seeded random corruption of the header region (counts, lengths, types,
// dims, offsets, vocab): parsing and then loading the model must end in a
// result or a clean error, never a crash (run under ASan/UBSan too).
TEST(Gguf, SurvivesRandomCorruption) {
  const auto full = testing::ReadFile(testing::ModelPath("stories260K.gguf"));
  ASSERT_GT(full.size(), 14176u) << "stories260K.gguf missing or short";
  Rng rng(2024);
  int parsed = 0, loaded = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> bytes = full;
    const int flips = 1 + static_cast<int>(rng.Next() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng.Next() % 14176;  // the header
      switch (rng.Next() % 3) {
        case 0: bytes[at] = static_cast<uint8_t>(rng.Next()); break;
        case 1: bytes[at] ^= static_cast<uint8_t>(1u << (rng.Next() % 8)); break;
        default: bytes[at] = 0xff; break;
      }
    }
    auto g = GgufFile::Parse(bytes);
    if (!g.ok()) {
      ASSERT_EQ(g.status().message().rfind("gguf: ", 0), 0u) << g.status().message();
      continue;
    }
    ++parsed;
    UniqueFd fd(::memfd_create("m", MFD_CLOEXEC));
    ASSERT_EQ(::write(fd.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    auto file = MappedFile::FromFd(fd.get(), "m");
    ASSERT_TRUE(file.ok());
    auto m = Model::Load(std::move(*file), "m");
    if (!m.ok()) continue;
    ++loaded;
    auto ids = (*m)->tokenizer().Encode("Once upon a time", true);
    if (!ids.ok()) continue;
    auto ctx = Context::Create(**m, {});
    if (ctx.ok()) (void)(*ctx)->Eval(*ids, false);
  }
  std::printf("[corruption] 3000 corrupted headers: %d parsed, %d loaded as models\n", parsed, loaded);
  EXPECT_GT(parsed, 0);  // the mutations are not all trivially fatal
}

TEST(Gguf, TypedGetters) {
  GgufBuilder b;
  b.Kv("u8", GgufBuilder::kU8, {200}).KvI32("neg", -1).KvI32("pos", 5).KvF32("f", 1.5f).KvString("s", "x");
  b.Kv("big", GgufBuilder::kU64, GgufBuilder::Pod(uint64_t{1} << 40)).KvBool("yes", true);
  const auto bytes = b.Build();
  auto f = GgufFile::Parse(bytes);
  ASSERT_TRUE(f.ok()) << f.status().message();
  uint32_t u = 0;
  EXPECT_TRUE(f->GetUint32("u8", &u, true).ok());
  EXPECT_EQ(u, 200u);
  EXPECT_TRUE(f->GetUint32("pos", &u, true).ok());
  EXPECT_EQ(u, 5u);
  EXPECT_EQ(f->GetUint32("neg", &u, true).message(), "gguf: key 'neg' = -1 does not fit in u32");
  EXPECT_EQ(f->GetUint32("big", &u, true).message(), "gguf: key 'big' = 1099511627776 does not fit in u32");
  EXPECT_EQ(f->GetUint32("s", &u, true).message(), "gguf: key 's' has type string, expected an integer");
  EXPECT_EQ(f->GetUint32("missing", &u, true).message(), "gguf: required key 'missing' is missing");
  u = 42;
  EXPECT_TRUE(f->GetUint32("missing", &u, false).ok());
  EXPECT_EQ(u, 42u);
  float x = 0;
  EXPECT_TRUE(f->GetFloat("f", &x, true).ok());
  EXPECT_EQ(x, 1.5f);
  EXPECT_EQ(f->GetFloat("s", &x, true).message(), "gguf: key 's' has type string, expected f32");
  bool yes = false;
  EXPECT_TRUE(f->GetBool("yes", &yes, true).ok());
  EXPECT_TRUE(yes);
}

}  // namespace
}  // namespace appliance::runtime
