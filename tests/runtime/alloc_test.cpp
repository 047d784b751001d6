// Decoding a token must not allocate: this binary replaces the global
// operator new/delete with counting versions (its own executable, so no other
// test is affected) and counts allocations around single-token Eval() calls
// and around multi-sequence decode steps (one token of each sequence).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "runtime/context.h"
#include "runtime/model.h"
#include "tests/runtime/test_util.h"

namespace {
std::atomic<long> g_allocations{0};

// Out of line, so the compiler does not pair an inlined free() with the
// new-expression at some call site and warn about a mismatch.
[[gnu::noinline]] void* RawAlloc(std::size_t n) { return std::malloc(n == 0 ? 1 : n); }
[[gnu::noinline]] void RawFree(void* p) { std::free(p); }
}  // namespace

void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = RawAlloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { RawFree(p); }
void operator delete[](void* p) noexcept { RawFree(p); }
void operator delete(void* p, std::size_t) noexcept { RawFree(p); }
void operator delete[](void* p, std::size_t) noexcept { RawFree(p); }
// The nothrow forms too (std::stable_sort's temporary buffer uses them): a
// sanitizer build would otherwise pair its own nothrow new with our free().
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return RawAlloc(n);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p, const std::nothrow_t&) noexcept { RawFree(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { RawFree(p); }

namespace appliance::runtime {
namespace {

TEST(Decode, AllocatesNothingPerToken) {
  for (const char* name :
       {"stories260K.gguf", "synth-d256-f16.gguf", "synth-d256-q8_0.gguf", "synth-d256-q4_k_m.gguf"}) {
    auto m = Model::LoadPath(testing::ModelPath(name));
    ASSERT_TRUE(m.ok()) << m.status().message();
    for (int threads : {1, 2}) {
      ContextOptions o;
      o.n_threads = threads;
      auto ctx = Context::Create(**m, o);
      ASSERT_TRUE(ctx.ok());
      const int32_t prompt[4] = {1, 403, 407, 261};
      ASSERT_TRUE((*ctx)->Eval(prompt, false).ok());
      const long before = g_allocations.load();
      for (int32_t t = 0; t < 64; ++t) {
        const int32_t one[1] = {static_cast<int32_t>(300 + t)};
        ASSERT_TRUE((*ctx)->Eval(one, false).ok());
      }
      EXPECT_EQ(g_allocations.load() - before, 0) << name << " threads " << threads;
    }
  }
}

TEST(Decode, AllocatesNothingPerMultiSequenceStep) {
  for (const char* name : {"stories260K.gguf", "synth-d256-q4_k_m.gguf"}) {
    auto m = Model::LoadPath(testing::ModelPath(name));
    ASSERT_TRUE(m.ok()) << m.status().message();
    ContextOptions o;
    o.n_threads = 2;
    o.n_seq = 8;
    auto ctx = Context::Create(**m, o);
    ASSERT_TRUE(ctx.ok()) << ctx.status().message();
    std::vector<BatchToken> batch;
    for (int32_t s = 0; s < 8; ++s) {
      for (int64_t p = 0; p < 3 + s; ++p) batch.push_back({static_cast<int32_t>(260 + s + p), s, p, p == 2 + s});
    }
    ASSERT_TRUE((*ctx)->Decode(batch).ok());
    batch.resize(8);
    const long before = g_allocations.load();
    for (int32_t t = 0; t < 32; ++t) {
      for (int32_t s = 0; s < 8; ++s) {
        batch[static_cast<size_t>(s)] = {static_cast<int32_t>(300 + t), s, (*ctx)->seq_len(s), true};
      }
      ASSERT_TRUE((*ctx)->Decode(batch).ok());
    }
    EXPECT_EQ(g_allocations.load() - before, 0) << name;
  }
}

}  // namespace
}  // namespace appliance::runtime
