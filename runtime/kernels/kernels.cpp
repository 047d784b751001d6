#include "runtime/kernels/kernels.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cstring>

#include "runtime/kernels/internal.h"

namespace appliance::runtime::kernels {
namespace {

unsigned Xcr0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return lo;
}

bool CpuHasAvx2Fma16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return false;
  const bool fma = (c & (1u << 12)) != 0;
  const bool osxsave = (c & (1u << 27)) != 0;
  const bool avx = (c & (1u << 28)) != 0;
  const bool f16c = (c & (1u << 29)) != 0;
  if (!fma || !osxsave || !avx || !f16c) return false;
  // The OS must save XMM and YMM state across context switches (XCR0 bits 1, 2).
  if ((Xcr0() & 0x6u) != 0x6u) return false;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
  return (b & (1u << 5)) != 0;  // AVX2
}

// On top of AVX2: AVX-512 F, DQ, BW, VL (leaf 7 EBX bits 16, 17, 30, 31) and
// VNNI (ECX bit 11), and the OS saving the opmask and all 32 ZMM registers
// (XCR0 bits 5, 6, 7) besides XMM and YMM.
bool CpuHasAvx512Vnni() {
  if (!CpuHasAvx2Fma16c()) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
  const unsigned ebx_bits = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
  if ((b & ebx_bits) != ebx_bits || (c & (1u << 11)) == 0) return false;
  return (Xcr0() & 0xe6u) == 0xe6u;
}

// On top of AVX-512 VNNI: AMX-TILE and AMX-INT8 (leaf 7 EDX bits 24, 25) and
// the OS managing the tile state (XCR0 bits 17, 18). Linux gives a process the
// 8 KiB tile state only once it asks (the signal frames grow with it), so the
// one permission request lives here: the kernels use the tiles only after it
// succeeded. The sandbox's seccomp policy admits arch_prctl.
bool CpuHasAmxInt8() {
  if (!CpuHasAvx512Vnni()) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return false;
  if ((d & (1u << 24)) == 0 || (d & (1u << 25)) == 0) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  constexpr long kArchReqXcompPerm = 0x1023;  // asm/prctl.h
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

Isa Detect() {
  if (CpuHasAmxInt8()) return Isa::kAmx;
  if (CpuHasAvx512Vnni()) return Isa::kAvx512;
  return CpuHasAvx2Fma16c() ? Isa::kAvx2 : Isa::kPortable;
}

}  // namespace

Isa ActiveIsa() {
  static const Isa isa = Detect();
  return isa;
}

bool IsaAvailable(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(ActiveIsa()); }

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kPortable: break;
  }
  return "portable";
}

const TypeKernels* FindFor(TensorType type, Isa isa) {
  if (!IsaAvailable(isa)) return nullptr;
  const TypeKernels* k = nullptr;
  if (isa >= Isa::kAvx512) k = internal::PackedKernels(type, isa == Isa::kAmx);
  if (k == nullptr && isa >= Isa::kAvx512) k = internal::Avx512Kernels(type);
  if (k == nullptr && isa != Isa::kPortable) k = internal::Avx2Kernels(type);
  return k != nullptr ? k : internal::PortableKernels(type);
}

namespace {
std::atomic<int> g_isa_override{-1};
}  // namespace

void OverrideIsaForTesting(std::optional<Isa> isa) {
  if (isa && !IsaAvailable(*isa)) isa = Isa::kPortable;
  g_isa_override.store(isa ? static_cast<int>(*isa) : -1, std::memory_order_relaxed);
}

Isa CurrentIsa() {
  const int o = g_isa_override.load(std::memory_order_relaxed);
  return o >= 0 ? static_cast<Isa>(o) : ActiveIsa();
}

const TypeKernels* Find(TensorType type) { return FindFor(type, CurrentIsa()); }

const TypeKernels* FindWeight(TensorType type) {
  const TypeKernels* k = Find(type);
  return k != nullptr && k->vec_dot != nullptr ? k : nullptr;
}

std::string SupportedWeightTypes() {
  std::string out;
  for (uint32_t id = 0; id < 64; ++id) {
    const TensorTypeInfo* info = FindTensorType(id);
    if (info == nullptr || internal::PortableKernels(info->type) == nullptr ||
        internal::PortableKernels(info->type)->vec_dot == nullptr) {
      continue;
    }
    if (!out.empty()) out += ", ";
    out += info->name;
  }
  return out;
}

// AVX-512 has its own attention rows (dot and axpy: with 8 concurrent jobs
// they were an eighth of a decode step); the other primitives are AVX2's on
// both tiers.
const VecKernels* VecFor(Isa isa) {
  if (!IsaAvailable(isa)) return nullptr;
  switch (isa) {
    case Isa::kPortable: return internal::PortableVec();
    case Isa::kAvx2: return internal::Avx2Vec();
    case Isa::kAvx512:
    case Isa::kAmx: return internal::Avx512Vec();
  }
  return nullptr;
}

const VecKernels& Vec() { return *VecFor(CurrentIsa()); }

size_t RowBytes(TensorType type, int64_t n) {
  const TensorTypeInfo* info = FindTensorType(static_cast<uint32_t>(type));
  return static_cast<size_t>(n) / info->block_elems * info->block_bytes;
}

namespace {

float Fp16ToFp32Slow(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    const float v = static_cast<float>(mant) * 0x1.0p-24f;
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) | sign);
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

}  // namespace

// All 65536 halves, 256 KiB, filled during static initialization (no kernel
// runs before main): the portable kernels convert every weight and activation
// element, and a lookup is much cheaper than the bit fiddling.
namespace internal {
const HalfTable kHalfTable;
HalfTable::HalfTable() {
  for (uint32_t h = 0; h < 65536; ++h) value[h] = Fp16ToFp32Slow(static_cast<uint16_t>(h));
}
}  // namespace internal

float Fp16ToFp32(uint16_t h) { return internal::kHalfTable.value[h]; }

uint16_t Fp32ToFp16(float f) {
  // Round-to-nearest-even through float arithmetic (the method of the FP16
  // library that ggml's portable path uses): scaling up then down makes the
  // FPU round at the half-precision mantissa boundary. Needs IEEE semantics
  // (no -ffast-math), which the build guarantees.
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  float base = (__builtin_fabsf(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = std::bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = std::bit_cast<uint32_t>(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007c00u;
  const uint32_t mantissa_bits = bits & 0x00000fffu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

float Bf16ToFp32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t Fp32ToBf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 64u);  // quiet NaN
  return static_cast<uint16_t>((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

}  // namespace appliance::runtime::kernels
