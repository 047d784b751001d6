// OpenBLAS setup for the engine, done once per process before the first GEMM.
#pragma once

#include <string>

namespace appliance::runtime {

// 1. BLAS runs single-threaded: the engine calls it from its own thread pool,
//    one weight panel per task, so OpenBLAS threads would only oversubscribe;
//    the threads OpenBLAS started while loading are stopped.
// 2. OpenBLAS (0.3.21 in Debian 12) picks its kernels by CPU model and falls
//    back to its SSE3 "Prescott" kernels on CPUs newer than its release, such
//    as the family 6 model 207 Xeons these appliances run on: 3.5x slower GEMM
//    (measured 30 vs 100 GFLOP/s). The core type can only be forced through
//    OPENBLAS_CORETYPE, which the library reads while loading, before main().
//    So when it chose a pre-AVX2 core on a CPU with AVX2 or AVX-512 and no
//    OPENBLAS_CORETYPE was given, its dynamic-arch selection is re-run with
//    the right core (Haswell or SkylakeX kernels, chosen from CPUID here).
//    Skipped when the library is not a DYNAMIC_ARCH OpenBLAS.
void ConfigureBlas();

// OpenBLAS's kernel set, e.g. "SkylakeX" (after ConfigureBlas).
std::string BlasCoreName();

}  // namespace appliance::runtime
