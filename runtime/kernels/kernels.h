// The compute kernels behind one interface: per weight type, how to turn a
// row into floats and how to take the dot product of a row with activations.
//
// As in ggml, each weight type names a `vec_dot_type`: activations are first
// converted to it (F16 weights meet F16-rounded activations, Q8_0 weights
// Q8_0-quantized ones) and the dot product runs on the pair. Matching ggml
// here is what makes our logits match llama.cpp's, and it is the shape the
// quantized SIMD kernels need (integer dot products on quantized blocks).
//
// Implementations: a portable C++ path, an x86 AVX2+FMA+F16C path, an
// AVX-512 (F, BW, VL, DQ, VNNI) path and an AMX (tile, int8) path for the
// K-quants, chosen at run time by CPUID. An ISA table without an entry for a
// type falls back to the next lower tier's.
// Adding a type or an ISA means filling one more table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "runtime/tensor_type.h"

namespace appliance::runtime::kernels {

// Weight types and their vec_dot_type (as ggml's type_traits_cpu, except
// q4_1/q5_1, see kernels_portable_quant.cpp):
//   f32 -> f32, f16 -> f16, bf16 -> bf16, q8_0 -> q8_0,
//   q4_0, q4_1, q5_0, q5_1 -> q8_0;  q4_K, q5_K, q6_K -> q8_K.
// q8_K is an activation-only type: to_float and from_float, no vec_dot.
struct TypeKernels {
  TensorType type;
  TensorType vec_dot_type;
  // Dequantizes n elements (n a multiple of the block size) to floats.
  void (*to_float)(const void* src, float* dst, int64_t n);
  // Converts n floats into this type; set for every type used as a
  // vec_dot_type, null for the weight-only types (q4_0 ... q6_K: the runtime
  // reads them, it never quantizes weights).
  void (*from_float)(const float* src, void* dst, int64_t n);
  // Returns sum_i w[i] * x[i] for w a row of `type` and x a row of
  // `vec_dot_type`; null for the activation-only types.
  float (*vec_dot)(int64_t n, const void* w, const void* x);
  // The same dot products for a tile of weight rows against activation rows:
  //   y[j * y_stride + i] = vec_dot(n, w + i * w_stride, x + j * x_stride)
  // for i < rows, j < nx, each result bit-identical to vec_dot's whatever the
  // tile's shape (so a product does not depend on how the caller splits its
  // work, nor on which other rows share the call). Null where vec_dot is.
  void (*gemm)(int64_t n, const void* w, size_t w_stride, int64_t rows, const void* x, size_t x_stride, int64_t nx,
               float* y, int64_t y_stride);
  // From this many activation rows on, dequantizing weight panels for sgemm
  // beats gemm (measured per ISA, see the tables); 0: gemm always wins (the
  // tiled integer kernels). Below it, results are the same for a row whether
  // it is multiplied alone or with others.
  int64_t sgemm_min_rows;

  // Optional (Q4_K and Q6_K from the AVX-512 tier on): a second layout of a
  // whole matrix, rows in groups of kPackRows with each group's blocks
  // interleaved across its rows (kernels_packed.cpp), and products on it.
  // The runtime packs a model's matrices once at load. Null: no such layout.
  // Bytes of the packed form of rows x cols.
  size_t (*packed_bytes)(int64_t rows, int64_t cols) = nullptr;
  // Writes the packed form of rows x cols (row r at w + r * w_stride) to out
  // (packed_bytes of it, 64-byte aligned).
  void (*pack)(const void* w, size_t w_stride, int64_t rows, int64_t cols, void* out) = nullptr;
  // y[j * y_stride + i] = the product of row i of the packed rows starting at
  // `w` (a group boundary: packed + group * packed_bytes(kPackRows, n)) with
  // activation row j, for i < rows, j < nx. Each result is bit-identical
  // whatever nx and however the rows are split into calls, on every tier
  // that has it (VNNI and AMX compute the same integers and float steps).
  void (*gemm_packed)(int64_t n, const void* w, int64_t rows, const void* x, size_t x_stride, int64_t nx, float* y,
                      int64_t y_stride) = nullptr;
};

// Rows per group of the packed layout.
inline constexpr int64_t kPackRows = 16;

// Float vector primitives used by the forward pass (attention).
struct VecKernels {
  float (*dot_f32)(int64_t n, const float* a, const float* b);
  // out[t] = dot(q, k + t * stride) for t in [0, count): attention scores
  // of one query against `count` cached keys.
  void (*dot_rows_f32)(int64_t n, const float* q, const float* k, int64_t stride, int64_t count, float* out);
  // out[i] += sum_t p[t] * v[t * stride + i]: the probability-weighted sum of
  // `count` cached values.
  void (*axpy_rows_f32)(int64_t n, const float* p, const float* v, int64_t stride, int64_t count, float* out);
  // The same two over a KV cache stored as F16 (ContextOptions::kv_type):
  // each key or value is widened to float, products and sums stay F32.
  void (*dot_rows_f16)(int64_t n, const float* q, const uint16_t* k, int64_t stride, int64_t count, float* out);
  void (*axpy_rows_f16)(int64_t n, const float* p, const uint16_t* v, int64_t stride, int64_t count, float* out);
  // In place: gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + e^-g)
  // (the SwiGLU feed-forward's activation).
  void (*swiglu_f32)(int64_t n, float* gate, const float* up);
  // In place: x = softmax(x * scale), as ggml computes it: scale, subtract
  // the max, exponentiate, sum in double, multiply by 1/sum.
  void (*softmax_f32)(int64_t n, float* x, float scale);
};

// Tiers in increasing order; a CPU that has a tier has every lower one.
enum class Isa { kPortable, kAvx2, kAvx512, kAmx };

// The ISA the dispatcher picked for this CPU: kAmx when on top of kAvx512 the
// CPU has AMX-TILE and AMX-INT8 and the kernel granted this process the tile
// state (arch_prctl ARCH_REQ_XCOMP_PERM, asked for once, here); kAvx512 when
// AVX-512 F, BW, VL, DQ and VNNI are present (with AVX2) and the OS saves ZMM
// state, else kAvx2 when AVX2, FMA and F16C are present and the OS saves YMM
// state.
Isa ActiveIsa();
// Whether this CPU can run `isa`'s kernels.
bool IsaAvailable(Isa isa);
const char* IsaName(Isa isa);

// Tests run the whole engine on a lower tier's kernels through this (an ISA
// the CPU lacks means portable); nullopt restores the CPU's choice. Not for
// use while a forward pass runs.
void OverrideIsaForTesting(std::optional<Isa> isa);
// The ISA Find() and Vec() use: the override, else ActiveIsa().
Isa CurrentIsa();

// Kernels of `type` for the current ISA (or an explicit one, for tests);
// nullptr when the type has no kernels (yet) or the ISA is not available.
const TypeKernels* Find(TensorType type);
const TypeKernels* FindFor(TensorType type, Isa isa);
// Kernels of `type` when a weight matrix may have it (it has a vec_dot);
// nullptr otherwise, including for the activation-only q8_K.
const TypeKernels* FindWeight(TensorType type);
// The weight types, for messages: "f32, f16, bf16, q8_0, q4_0, ...".
std::string SupportedWeightTypes();
const VecKernels& Vec();
const VecKernels* VecFor(Isa isa);

// Bytes of one row of n elements of `type` (n a multiple of the block size).
size_t RowBytes(TensorType type, int64_t n);

// IEEE half and bfloat16 conversions, round-to-nearest-even like ggml/F16C.
float Fp16ToFp32(uint16_t h);
uint16_t Fp32ToFp16(float f);
float Bf16ToFp32(uint16_t h);
uint16_t Fp32ToBf16(float f);

}  // namespace appliance::runtime::kernels
