#include "runtime/blas.h"

#include <cblas.h>
#include <cpuid.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

// Exported by DYNAMIC_ARCH builds of OpenBLAS (dynamic.c): quit forgets the
// selected kernel table, init selects one again (honouring OPENBLAS_CORETYPE).
// Weak, so a BLAS without them still links and the override is skipped.
extern "C" void gotoblas_dynamic_init(void) __attribute__((weak));
extern "C" void gotoblas_dynamic_quit(void) __attribute__((weak));
// Exported by threaded OpenBLAS builds (blas_server.c; its fork handler uses
// it): stops and joins the library's worker threads.
extern "C" int blas_thread_shutdown_(void) __attribute__((weak));

namespace appliance::runtime {
namespace {

// The OpenBLAS core the CPU (and the OS, which must save the wider register
// state) supports: "SkylakeX" for AVX-512 F/CD/BW/DQ/VL, "Haswell" for
// AVX2 + FMA, nullptr otherwise.
const char* BestCore() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return nullptr;
  const bool fma = (c & (1u << 12)) != 0, osxsave = (c & (1u << 27)) != 0, avx = (c & (1u << 28)) != 0;
  if (!fma || !osxsave || !avx) return nullptr;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0x6u) != 0x6u) return nullptr;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return nullptr;
  if ((b & (1u << 5)) == 0) return nullptr;  // AVX2
  const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);  // F DQ CD BW VL
  if ((b & avx512) == avx512 && (xcr0_lo & 0xe0u) == 0xe0u) return "SkylakeX";
  return "Haswell";
}

bool IsGenericCore(const char* name) {
  for (const char* generic : {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge"}) {
    if (std::strcmp(name, generic) == 0) return true;
  }
  return false;
}

}  // namespace

void ConfigureBlas() {
  static std::once_flag once;
  std::call_once(once, [] {
    openblas_set_num_threads(1);
    // The library started its worker threads while loading; they yield-spin
    // for ~0.1 s whenever idle, competing with our threads for the appliance's
    // two cores, and single-threaded BLAS never wakes them again.
    if (blas_thread_shutdown_ != nullptr) blas_thread_shutdown_();
    if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the operator chose
    if (gotoblas_dynamic_init == nullptr || gotoblas_dynamic_quit == nullptr) return;
    const char* best = BestCore();
    if (best == nullptr || !IsGenericCore(openblas_get_corename())) return;
    // Runs before any GEMM and before the engine starts threads; the variable
    // is removed again so the process environment stays as it was given.
    ::setenv("OPENBLAS_CORETYPE", best, 1);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    ::unsetenv("OPENBLAS_CORETYPE");
  });
}

std::string BlasCoreName() { return openblas_get_corename(); }

}  // namespace appliance::runtime
