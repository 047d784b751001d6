// Writes the seed corpus of gguf_fuzzer and empties its working corpus:
//   gguf_fuzz_seeds SEED_DIR CORPUS_DIR
// Seeds: the header (metadata and tensor infos, up to where tensor data
// starts, at most kMaxSeed bytes) of every model in ../shared/models, and
// whole small models from the project's test-model writer in every
// architecture and tensor type, so the fuzzer starts from inputs that reach
// the loader and the kernels rather than only the parser.
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "runtime/gguf.h"
#include "tests/runtime/model_writer.h"
#include "tests/runtime/test_util.h"

namespace {

using namespace appliance::runtime;
namespace fs = std::filesystem;

constexpr size_t kMaxSeed = 256 * 1024;  // the fuzz test's -max_len

bool WriteFile(const fs::path& path, const std::vector<uint8_t>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

std::vector<testing::ModelSpec> Specs() {
  using testing::ModelSpec;
  std::vector<ModelSpec> out;
  ModelSpec llama;
  llama.n_embd = 16;
  llama.n_head = 2;
  llama.n_head_kv = 1;
  llama.n_ff = 32;
  llama.n_layer = 1;
  out.push_back(llama);
  llama.tied_output = true;
  llama.type = testing::kTypeF16;
  llama.rope_scaling_type = "linear";
  llama.rope_scaling_factor = 2.0f;
  out.push_back(llama);
  llama.type = testing::kTypeBF16;
  llama.qkv_bias = llama.o_bias = true;
  out.push_back(llama);

  ModelSpec qwen2;
  qwen2.arch = "qwen2";
  qwen2.n_embd = 64;
  qwen2.n_head = 2;
  qwen2.n_head_kv = 1;
  qwen2.n_ff = 64;
  qwen2.n_layer = 1;
  qwen2.qkv_bias = true;
  qwen2.types = {{"attn_q.weight", testing::kTypeQ4_0},   {"attn_k.weight", testing::kTypeQ4_1},
                 {"attn_v.weight", testing::kTypeQ5_0},   {"attn_output.weight", testing::kTypeQ5_1},
                 {"ffn_gate.weight", testing::kTypeQ8_0}, {"token_embd.weight", testing::kTypeQ8_0}};
  out.push_back(qwen2);

  ModelSpec qwen3;
  qwen3.arch = "qwen3";
  qwen3.n_embd = 256;
  qwen3.n_head = 2;
  qwen3.n_head_kv = 1;
  qwen3.key_length = 64;
  qwen3.value_length = 32;
  qwen3.n_ff = 256;
  qwen3.n_layer = 1;
  qwen3.qk_norm = true;
  qwen3.type = testing::kTypeQ4_K;
  qwen3.tied_output = true;
  qwen3.types = {{"attn_v.weight", testing::kTypeQ6_K},
                 {"ffn_down.weight", testing::kTypeQ5_K},
                 {"attn_output.weight", testing::kTypeQ5_0}};
  out.push_back(qwen3);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: gguf_fuzz_seeds SEED_DIR CORPUS_DIR\n");
    return 2;
  }
  const fs::path seeds = argv[1], corpus = argv[2];
  std::error_code ec;
  fs::remove_all(seeds, ec);
  fs::remove_all(corpus, ec);
  if (!fs::create_directories(seeds, ec) || !fs::create_directories(corpus, ec)) {
    std::fprintf(stderr, "error: cannot create %s or %s: %s\n", seeds.c_str(), corpus.c_str(), ec.message().c_str());
    return 1;
  }
  int written = 0;
  for (const char* name :
       {"stories260K", "synth-d256-f32", "synth-d256-f16", "synth-d256-bf16", "synth-d256-q8_0", "synth-d256-q4_0",
        "synth-d256-q4_k_m", "synth-d256-q5_k_m", "synth-d256-q6_k", "bench-d768-q4_k_m"}) {
    const std::vector<uint8_t> bytes = testing::ReadFile(testing::ModelPath(std::string(name) + ".gguf"));
    auto f = GgufFile::Parse(bytes);
    if (!f.ok()) {
      std::fprintf(stderr, "error: %s: %s\n", name, f.status().message().c_str());
      return 1;
    }
    const size_t n = std::min<size_t>({bytes.size(), f->data_offset(), kMaxSeed});
    if (!WriteFile(seeds / (std::string(name) + ".header"),
                   std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)))) {
      std::fprintf(stderr, "error: cannot write a seed for %s\n", name);
      return 1;
    }
    ++written;
  }
  int i = 0;
  for (const testing::ModelSpec& spec : Specs()) {
    const testing::TestModel m = testing::WriteModel(spec);
    if (m.bytes.size() > kMaxSeed ||
        !WriteFile(seeds / ("model-" + std::to_string(i++) + "-" + spec.arch + ".gguf"), m.bytes)) {
      std::fprintf(stderr, "error: model seed %d (%zu bytes) not written\n", i, m.bytes.size());
      return 1;
    }
    ++written;
  }
  std::printf("gguf_fuzz_seeds: %d seeds in %s\n", written, seeds.c_str());
  return 0;
}
