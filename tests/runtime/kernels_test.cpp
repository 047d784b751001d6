// Kernels: exact half/bfloat16 conversions, and every ISA path against the
// portable reference.
#include "runtime/kernels/kernels.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/blas.h"
#include "runtime/sampler.h"
#include "tests/runtime/quant_ref.h"

namespace appliance::runtime {
namespace {

using kernels::Isa;

TEST(Fp16, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = kernels::Fp16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(kernels::Fp16ToFp32(kernels::Fp32ToFp16(f))));
      continue;
    }
    EXPECT_EQ(kernels::Fp32ToFp16(f), h) << h;
  }
  EXPECT_EQ(kernels::Fp16ToFp32(0x3c00), 1.0f);
  EXPECT_EQ(kernels::Fp16ToFp32(0xc000), -2.0f);
  EXPECT_EQ(kernels::Fp16ToFp32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(kernels::Fp16ToFp32(0x7c00), INFINITY);
}

TEST(Fp16, RoundsToNearestEven) {
  // 1 + 2^-11 lies exactly between 1 and 1 + 2^-10: ties go to the even 1.0.
  EXPECT_EQ(kernels::Fp32ToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3 * 2^-11 lies between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
  EXPECT_EQ(kernels::Fp32ToFp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(kernels::Fp32ToFp16(70000.0f), 0x7c00);  // overflow to infinity
  EXPECT_EQ(kernels::Fp32ToFp16(std::ldexp(1.0f, -26)), 0x0000);
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(kernels::Fp32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(kernels::Bf16ToFp32(0x3f80), 1.0f);
  EXPECT_EQ(kernels::Fp32ToBf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(kernels::Fp32ToBf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie -> even
  EXPECT_EQ(kernels::Fp32ToBf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(kernels::Bf16ToFp32(kernels::Fp32ToBf16(NAN))));
}

std::vector<float> RandomFloats(size_t n, uint64_t seed, float scale) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.Uniform() * 2.0 - 1.0) * scale;
  return v;
}

class KernelsTest : public ::testing::TestWithParam<TensorType> {};

// Quantize -> dequantize stays within the type's precision (types the engine
// can quantize to), and the ISA paths agree with the portable reference on
// conversion and dot products (every weight type; those the engine only reads
// get their test rows from the test encoder in quant_ref.h).
TEST_P(KernelsTest, IsaPathsAgreeWithPortable) {
  const TensorType type = GetParam();
  const kernels::TypeKernels* ref = kernels::FindFor(type, Isa::kPortable);
  ASSERT_NE(ref, nullptr);
  const kernels::TypeKernels* vref = kernels::FindFor(ref->vec_dot_type, Isa::kPortable);
  const bool super_block = FindTensorType(static_cast<uint32_t>(type))->block_elems == 256;
  const std::vector<int64_t> sizes =
      super_block ? std::vector<int64_t>{256, 768, 2816} : std::vector<int64_t>{32, 64, 256, 800};
  for (int64_t n : sizes) {
    const std::vector<float> w = RandomFloats(static_cast<size_t>(n), 1, 2.0f);
    const std::vector<float> x = RandomFloats(static_cast<size_t>(n), 2, 1.0f);
    std::vector<uint8_t> wq(kernels::RowBytes(type, n)), xq(kernels::RowBytes(ref->vec_dot_type, n));
    if (ref->from_float != nullptr) {
      ref->from_float(w.data(), wq.data(), n);
    } else {
      wq = testing::Encode(static_cast<uint32_t>(type), w.data(), n);
      ASSERT_EQ(wq.size(), kernels::RowBytes(type, n));
    }
    vref->from_float(x.data(), xq.data(), n);
    std::vector<float> back(static_cast<size_t>(n));
    ref->to_float(wq.data(), back.data(), n);
    const float dot_ref = ref->vec_dot(n, wq.data(), xq.data());
    double mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      mag += std::fabs(static_cast<double>(back[static_cast<size_t>(i)]) * x[static_cast<size_t>(i)]);
    }
    if (ref->from_float != nullptr) {
      const double step = type == TensorType::kF32    ? 0
                          : type == TensorType::kF16  ? 1e-3
                          : type == TensorType::kBF16 ? 8e-3
                                                      : 2.0 / 127;
      double exact = 0;
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_NEAR(back[static_cast<size_t>(i)], w[static_cast<size_t>(i)], step * 2.0 + 1e-7);
        exact += static_cast<double>(back[static_cast<size_t>(i)]) * x[static_cast<size_t>(i)];
      }
      EXPECT_NEAR(dot_ref, exact, step * mag + 1e-4 * mag);
    }
    for (Isa isa : {Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
      const kernels::TypeKernels* k = kernels::FindFor(type, isa);
      if (k == nullptr) continue;  // CPU without this ISA
      SCOPED_TRACE(std::string(kernels::IsaName(isa)) + " n=" + std::to_string(n));
      std::vector<float> back_isa(static_cast<size_t>(n));
      k->to_float(wq.data(), back_isa.data(), n);
      EXPECT_EQ(back_isa, back);  // dequantization is exact on every path
      std::vector<uint8_t> xq_isa(xq.size());
      kernels::FindFor(k->vec_dot_type, isa)->from_float(x.data(), xq_isa.data(), n);
      EXPECT_EQ(xq_isa, xq);  // activation conversion too
      EXPECT_NEAR(k->vec_dot(n, wq.data(), xq.data()), dot_ref, 1e-5 * mag);
    }
  }
}

std::string TypeName(const ::testing::TestParamInfo<TensorType>& param) { return TensorTypeName(param.param); }

INSTANTIATE_TEST_SUITE_P(Types, KernelsTest,
                         ::testing::Values(TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0,
                                           TensorType::kQ4_0, TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1,
                                           TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K),
                         TypeName);

// Head sizes: the AVX2 special case (8), odd (13), AVX-512's register paths
// (16, 64, 128) and its fallback (144); key counts with and without a tail of
// a 16-key group.
TEST(Kernels, VecPrimitivesAgree) {
  for (const auto& [n, count] : {std::pair<int64_t, int64_t>{8, 37}, {13, 37}, {16, 16}, {64, 37}, {64, 1}, {128, 33}, {144, 20}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " count=" + std::to_string(count));
    const int64_t stride = n + 5;
    const std::vector<float> q = RandomFloats(static_cast<size_t>(n), 3, 1.0f);
    const std::vector<float> k = RandomFloats(static_cast<size_t>(count * stride), 4, 1.0f);
    const std::vector<float> probs = RandomFloats(static_cast<size_t>(count), 5, 1.0f);
    // Exact references in double.
    std::vector<double> dots(static_cast<size_t>(count)), acc(static_cast<size_t>(n), 0.25);
    for (int64_t t = 0; t < count; ++t) {
      for (int64_t i = 0; i < n; ++i) {
        dots[static_cast<size_t>(t)] += static_cast<double>(q[static_cast<size_t>(i)]) * k[static_cast<size_t>(t * stride + i)];
        acc[static_cast<size_t>(i)] += static_cast<double>(probs[static_cast<size_t>(t)]) * k[static_cast<size_t>(t * stride + i)];
      }
    }
    // The same rows stored as F16 (an F16 KV cache), against double sums of
    // the widened values.
    std::vector<uint16_t> k16(k.size());
    for (size_t i = 0; i < k.size(); ++i) k16[i] = kernels::Fp32ToFp16(k[i]);
    std::vector<double> dots16(static_cast<size_t>(count)), acc16(static_cast<size_t>(n), 0.25);
    for (int64_t t = 0; t < count; ++t) {
      for (int64_t i = 0; i < n; ++i) {
        const double kv = kernels::Fp16ToFp32(k16[static_cast<size_t>(t * stride + i)]);
        dots16[static_cast<size_t>(t)] += static_cast<double>(q[static_cast<size_t>(i)]) * kv;
        acc16[static_cast<size_t>(i)] += static_cast<double>(probs[static_cast<size_t>(t)]) * kv;
      }
    }
    for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
      const kernels::VecKernels* impl = kernels::VecFor(isa);
      if (impl == nullptr) continue;
      SCOPED_TRACE(kernels::IsaName(isa));
      std::vector<float> out16(static_cast<size_t>(count));
      impl->dot_rows_f16(n, q.data(), k16.data(), stride, count, out16.data());
      for (int64_t t = 0; t < count; ++t) EXPECT_NEAR(out16[static_cast<size_t>(t)], dots16[static_cast<size_t>(t)], 1e-5);
      std::vector<float> y16(static_cast<size_t>(n), 0.25f);
      impl->axpy_rows_f16(n, probs.data(), k16.data(), stride, count, y16.data());
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y16[static_cast<size_t>(i)], acc16[static_cast<size_t>(i)], 1e-5);
      EXPECT_NEAR(impl->dot_f32(n, q.data(), k.data()), dots[0], 1e-5);
      std::vector<float> out(static_cast<size_t>(count));
      impl->dot_rows_f32(n, q.data(), k.data(), stride, count, out.data());
      for (int64_t t = 0; t < count; ++t) EXPECT_NEAR(out[static_cast<size_t>(t)], dots[static_cast<size_t>(t)], 1e-5);
      std::vector<float> y(static_cast<size_t>(n), 0.25f);
      impl->axpy_rows_f32(n, probs.data(), k.data(), stride, count, y.data());
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[static_cast<size_t>(i)], acc[static_cast<size_t>(i)], 1e-5);
    }
  }
}

// SwiGLU's activation against double precision, across the range where the
// sigmoid saturates either way, at 0, and for the non-finite inputs.
TEST(Kernels, SwiGluMatchesReference) {
  std::vector<float> gate = RandomFloats(203, 9, 12.0f);
  const std::vector<float> up = RandomFloats(203, 10, 2.0f);
  gate[0] = 0.0f;
  gate[1] = -0.0f;
  gate[2] = 95.0f;
  gate[3] = -95.0f;
  gate[4] = 1e-30f;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    const kernels::VecKernels* impl = kernels::VecFor(isa);
    if (impl == nullptr) continue;
    SCOPED_TRACE(kernels::IsaName(isa));
    std::vector<float> y = gate;
    impl->swiglu_f32(static_cast<int64_t>(y.size()), y.data(), up.data());
    for (size_t i = 0; i < y.size(); ++i) {
      const double g = gate[i];
      const double want = g / (1.0 + std::exp(-g)) * up[i];
      EXPECT_NEAR(y[i], want, 4e-7 * std::max(1.0, std::fabs(want))) << "g = " << g;
    }
    float special[16] = {INFINITY, -INFINITY, NAN};
    float ones[16];
    std::fill(ones, ones + 16, 1.0f);
    impl->swiglu_f32(16, special, ones);
    EXPECT_EQ(special[0], INFINITY);
    EXPECT_TRUE(std::isnan(special[1]));  // -inf * 0, as g / (1 + e^inf) = -inf / inf
    EXPECT_TRUE(std::isnan(special[2]));
  }
}

// Softmax against a double-precision reference, including inputs whose
// exponentials underflow, for lengths that exercise the vector tails.
TEST(Kernels, SoftmaxMatchesReference) {
  for (int64_t n : {1, 7, 8, 9, 100}) {
    std::vector<float> x = RandomFloats(static_cast<size_t>(n), static_cast<uint64_t>(n), 30.0f);
    if (n > 2) x[1] = -1e4f;  // exp underflows to 0
    for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
      const kernels::VecKernels* impl = kernels::VecFor(isa);
      if (impl == nullptr) continue;
      SCOPED_TRACE(std::string(kernels::IsaName(isa)) + " n=" + std::to_string(n));
      std::vector<float> y = x;
      impl->softmax_f32(n, y.data(), 0.5f);
      double max = -1e300, sum = 0;
      for (float v : x) max = std::max(max, 0.5 * v);
      for (float v : x) sum += std::exp(0.5 * v - max);
      double total = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double want = std::exp(0.5 * x[static_cast<size_t>(i)] - max) / sum;
        EXPECT_NEAR(y[static_cast<size_t>(i)], want, 1e-6 + 1e-6 * want);
        total += y[static_cast<size_t>(i)];
      }
      EXPECT_NEAR(total, 1.0, 1e-5);
    }
  }
}

// OpenBLAS must not run its SSE3 fallback on a CPU with AVX2 (runtime/blas.h).
TEST(Blas, UsesVectorKernelsWhereTheCpuHasThem) {
  ConfigureBlas();
  if (!kernels::IsaAvailable(Isa::kAvx2) || std::getenv("OPENBLAS_CORETYPE") != nullptr) {
    GTEST_SKIP() << "no AVX2, or the core type was forced";
  }
  const std::string core = BlasCoreName();
  EXPECT_TRUE(core == "Haswell" || core == "SkylakeX" || core == "Cooperlake" || core == "SapphireRapids" ||
              core == "Zen")
      << core;
}

TEST(Kernels, OnlySupportedTypesHaveKernels) {
  for (TensorType t : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
                       TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ4_K, TensorType::kQ5_K,
                       TensorType::kQ6_K}) {
    EXPECT_NE(kernels::FindWeight(t), nullptr) << TensorTypeName(t);
  }
  // Activation-only types convert but cannot be weights.
  EXPECT_NE(kernels::Find(TensorType::kQ8_K), nullptr);
  EXPECT_EQ(kernels::FindWeight(TensorType::kQ8_K), nullptr);
  EXPECT_EQ(kernels::FindWeight(TensorType::kQ8_1), nullptr);
  for (TensorType t : {TensorType::kQ2_K, TensorType::kQ3_K, TensorType::kIQ2_XXS, TensorType::kIQ4_NL, TensorType::kI8,
                       TensorType::kF64, TensorType::kTQ1_0, TensorType::kMXFP4}) {
    EXPECT_EQ(kernels::Find(t), nullptr) << TensorTypeName(t);
  }
  EXPECT_EQ(kernels::SupportedWeightTypes(), "f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, q6_K, bf16");
  EXPECT_EQ(kernels::RowBytes(TensorType::kQ8_0, 64), 68u);
  EXPECT_EQ(kernels::RowBytes(TensorType::kQ6_K, 256), 210u);
  EXPECT_EQ(kernels::RowBytes(TensorType::kQ8_K, 512), 584u);
}

}  // namespace
}  // namespace appliance::runtime
