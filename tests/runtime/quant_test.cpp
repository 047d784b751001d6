// Block layouts of every weight type against values worked out here from the
// format definition (tests/runtime/quant_ref.h, which shares no code with the
// engine): hand-built blocks with known scales and quants, random blocks of
// every bit pattern, the activation quantizers, and the integer dot products.
// Every check runs on the portable kernels and on every ISA tier the CPU has.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/kernels/kernels.h"
#include "tests/runtime/quant_ref.h"

namespace appliance::runtime {
namespace {

using kernels::Isa;
using namespace testing;  // NOLINT: the quant_ref helpers

std::vector<Isa> Isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512, Isa::kAmx}) {
    if (kernels::IsaAvailable(isa)) out.push_back(isa);
  }
  return out;
}

TensorType T(uint32_t id) { return static_cast<TensorType>(id); }

// The engine's dequantization of `bytes` (n elements of `type`) on `isa`.
std::vector<float> EngineDecode(uint32_t type, const std::vector<uint8_t>& bytes, int64_t n, Isa isa) {
  const kernels::TypeKernels* k = kernels::FindFor(T(type), isa);
  EXPECT_NE(k, nullptr) << Format(type).name;
  std::vector<float> out(static_cast<size_t>(n), NAN);
  if (k != nullptr) k->to_float(bytes.data(), out.data(), n);
  return out;
}

// Checks the engine's floats against expected values computed in double. The
// engine multiplies in float (e.g. (d * sc) * q - dmin * m), so allow a few
// float roundings relative to the terms' size.
void ExpectDecodes(uint32_t type, const std::vector<uint8_t>& bytes, const std::vector<double>& want, double scale) {
  for (Isa isa : Isas()) {
    SCOPED_TRACE(std::string(Format(type).name) + " on " + kernels::IsaName(isa));
    const std::vector<float> got = EngineDecode(type, bytes, static_cast<int64_t>(want.size()), isa);
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 4e-7 * scale) << "element " << i;
    }
  }
}

// --- hand-built blocks: fields chosen here, bytes written by hand or by the
//     format's packing rule, expected values from the fields ---

TEST(QuantLayout, F16AndBf16Literals) {
  // 1.0, -2.0, 65504 (largest half), 2^-24 (smallest subnormal), 0.333251953125.
  const std::vector<uint8_t> f16 = {0x00, 0x3C, 0x00, 0xC0, 0xFF, 0x7B, 0x01, 0x00, 0x55, 0x35};
  ExpectDecodes(kTypeF16, f16, {1.0, -2.0, 65504.0, std::ldexp(1.0, -24), 0.333251953125}, 1.0);
  // bf16: 1.0, -5.0, 3.140625, 2^-126.
  const std::vector<uint8_t> bf16 = {0x80, 0x3F, 0xA0, 0xC0, 0x49, 0x40, 0x80, 0x00};
  ExpectDecodes(kTypeBF16, bf16, {1.0, -5.0, 3.140625, std::ldexp(1.0, -126)}, 1.0);
}

TEST(QuantLayout, Q8_0HandBuilt) {
  std::vector<uint8_t> b = {0x00, 0x24};  // d = 2^-6 (half 0x2400)
  std::vector<double> want;
  for (int j = 0; j < 32; ++j) {
    const int q = j * 8 - 128;  // -128 .. 120
    b.push_back(static_cast<uint8_t>(static_cast<int8_t>(q)));
    want.push_back(q / 64.0);
  }
  ExpectDecodes(kTypeQ8_0, b, want, 2.0);
}

TEST(QuantLayout, Q4_0HandBuilt) {
  // d = 0.5; byte j holds element j (low nibble, value j) and element j + 16
  // (high nibble, value 15 - j).
  std::vector<uint8_t> b = {0x00, 0x38};
  std::vector<double> want(32);
  for (int j = 0; j < 16; ++j) {
    b.push_back(static_cast<uint8_t>(j | ((15 - j) << 4)));
    want[static_cast<size_t>(j)] = 0.5 * (j - 8);
    want[static_cast<size_t>(j + 16)] = 0.5 * ((15 - j) - 8);
  }
  ExpectDecodes(kTypeQ4_0, b, want, 4.0);
}

TEST(QuantLayout, Q4_1HandBuilt) {
  // d = 0.25, m = -1.5 (half 0xBE00); nibbles as Q4_0.
  std::vector<uint8_t> b = {0x00, 0x34, 0x00, 0xBE};
  std::vector<double> want(32);
  for (int j = 0; j < 16; ++j) {
    b.push_back(static_cast<uint8_t>(((3 * j) & 15) | ((j ^ 5) << 4)));
    want[static_cast<size_t>(j)] = 0.25 * ((3 * j) & 15) - 1.5;
    want[static_cast<size_t>(j + 16)] = 0.25 * (j ^ 5) - 1.5;
  }
  ExpectDecodes(kTypeQ4_1, b, want, 4.0);
}

TEST(QuantLayout, Q5_0AndQ5_1HandBuilt) {
  // qh = 0xA5A5F00F: bit j of it is bit 4 of element j.
  const uint32_t qh = 0xA5A5F00Fu;
  const uint8_t qh_bytes[4] = {0x0F, 0xF0, 0xA5, 0xA5};
  for (uint32_t type : {kTypeQ5_0, kTypeQ5_1}) {
    std::vector<uint8_t> b = {0x00, 0x30};                   // d = 0.125
    if (type == kTypeQ5_1) b.insert(b.end(), {0x00, 0x3C});  // m = 1.0
    b.insert(b.end(), qh_bytes, qh_bytes + 4);
    std::vector<double> want(32);
    for (int j = 0; j < 16; ++j) {
      const int lo = (5 * j + 1) & 15, hi = (15 - j);
      b.push_back(static_cast<uint8_t>(lo | (hi << 4)));
      const int q0 = lo | static_cast<int>(((qh >> j) & 1u) << 4);
      const int q1 = hi | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      want[static_cast<size_t>(j)] = type == kTypeQ5_0 ? 0.125 * (q0 - 16) : 0.125 * q0 + 1.0;
      want[static_cast<size_t>(j + 16)] = type == kTypeQ5_0 ? 0.125 * (q1 - 16) : 0.125 * q1 + 1.0;
    }
    ExpectDecodes(type, b, want, 8.0);
  }
}

// The 12-byte scale/min packing of the K types, spelled out for one block:
// bytes 0-3: sc[0..3] | (sc[4..7] >> 4) << 6;  bytes 4-7: m[0..3] | (m[4..7] >> 4) << 6;
// bytes 8-11: (sc[4..7] & 15) | (m[4..7] & 15) << 4.
TEST(QuantLayout, KScalePackingLiteral) {
  const int sc[8] = {1, 2, 63, 40, 17, 33, 48, 5};
  const int m[8] = {0, 7, 63, 1, 60, 2, 19, 31};
  uint8_t packed[12];
  PackScales12(sc, m, packed);
  const uint8_t want[12] = {
      static_cast<uint8_t>(1 | (1 << 6)),  static_cast<uint8_t>(2 | (2 << 6)),   // sc4 = 17 -> high 1; sc5 = 33 -> 2
      static_cast<uint8_t>(63 | (3 << 6)), static_cast<uint8_t>(40 | (0 << 6)),  // sc6 = 48 -> 3; sc7 = 5 -> 0
      static_cast<uint8_t>(0 | (3 << 6)),  static_cast<uint8_t>(7 | (0 << 6)),   // m4 = 60 -> 3; m5 = 2 -> 0
      static_cast<uint8_t>(63 | (1 << 6)), static_cast<uint8_t>(1 | (1 << 6)),   // m6 = 19 -> 1; m7 = 31 -> 1
      static_cast<uint8_t>(1 | (12 << 4)), static_cast<uint8_t>(1 | (2 << 4)),   // 17 & 15, 60 & 15; 33 & 15, 2 & 15
      static_cast<uint8_t>(0 | (3 << 4)),  static_cast<uint8_t>(5 | (15 << 4)),  // 48 & 15, 19 & 15; 5, 31 & 15
  };
  for (int i = 0; i < 12; ++i) EXPECT_EQ(packed[i], want[i]) << i;
}

TEST(QuantLayout, Q4_KAndQ5_KHandBuilt) {
  const int sc[8] = {1, 2, 63, 40, 17, 33, 48, 5};
  const int m[8] = {0, 7, 63, 1, 60, 2, 19, 31};
  const double d = 0.0078125, dmin = 0.00390625;  // 2^-7, 2^-8: halves 0x2000, 0x1C00
  for (uint32_t type : {kTypeQ4_K, kTypeQ5_K}) {
    const bool five = type == kTypeQ5_K;
    int q[256];
    for (int i = 0; i < 256; ++i) q[i] = five ? (i * 7 + i / 32) % 32 : (i * 7 + i / 32) % 16;
    std::vector<uint8_t> b(five ? 176 : 144, 0);
    PutU16(b.data(), 0x2000);
    PutU16(b.data() + 2, 0x1C00);
    PackScales12(sc, m, b.data() + 4);
    PackK4(q, b.data() + 16 + (five ? 32 : 0), five ? b.data() + 16 : nullptr);
    std::vector<double> want(256);
    for (int i = 0; i < 256; ++i) want[static_cast<size_t>(i)] = d * sc[i / 32] * q[i] - dmin * m[i / 32];
    ExpectDecodes(type, b, want, 16.0);
  }
}

TEST(QuantLayout, Q6_KHandBuilt) {
  const int8_t scales[16] = {1, -1, 127, -128, 5, 64, -7, 33, 2, -2, 90, -90, 11, 0, 17, -31};
  int q[256];
  for (int i = 0; i < 256; ++i) q[i] = (i * 5 + i / 16) % 64;
  std::vector<uint8_t> b(210, 0);
  PackQ6(q, b.data(), b.data() + 128);
  std::memcpy(b.data() + 192, scales, 16);
  PutU16(b.data() + 208, 0x1800);  // d = 2^-9
  std::vector<double> want(256);
  for (int i = 0; i < 256; ++i) want[static_cast<size_t>(i)] = std::ldexp(1.0, -9) * scales[i / 16] * (q[i] - 32);
  ExpectDecodes(kTypeQ6_K, b, want, 8.0);
  // One element by hand: element 200 is in half 1, row k = (200 - 128) / 32 = 2,
  // l = 8: low nibble is the high nibble of ql[64 + 8], high bits (qh[32 + 8] >> 4) & 3.
  EXPECT_EQ(((b[72] >> 4) | (((b[128 + 40] >> 4) & 3) << 4)), q[200]);
}

// --- random blocks: every bit pattern of quants and scales ---

// Random bytes for n elements of `type`, with every F16 scale field set to a
// normal half of moderate size so the values stay finite.
std::vector<uint8_t> RandomBlocks(uint32_t type, int64_t n, TestRng& rng) {
  const QuantFormat& f = Format(type);
  std::vector<uint8_t> out(static_cast<size_t>(n / f.block) * f.bytes);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng.Next());
  if (type == kTypeF16 || type == kTypeBF16) {  // finite values only
    for (int64_t i = 0; i < n; ++i) {
      const float v = rng.Symmetric(2.0f);
      PutU16(out.data() + 2 * i, type == kTypeF16 ? HalfBits(v) : BfloatBits(v));
    }
  }
  auto half = [&rng](double lo, double hi) { return HalfBits(lo + (hi - lo) * rng.Uniform()); };
  for (size_t at = 0; at < out.size(); at += f.bytes) {
    uint8_t* b = out.data() + at;
    switch (type) {
      case kTypeQ8_0:
      case kTypeQ4_0:
      case kTypeQ5_0:
        PutU16(b, half(1e-3, 0.1));
        break;
      case kTypeQ4_1:
      case kTypeQ5_1:
        PutU16(b, half(1e-3, 0.1));
        PutU16(b + 2, half(-1.0, 1.0));
        break;
      case kTypeQ4_K:
      case kTypeQ5_K:
        PutU16(b, half(1e-4, 1e-2));
        PutU16(b + 2, half(1e-4, 1e-2));
        break;
      case kTypeQ6_K:
        PutU16(b + 208, half(1e-4, 1e-2));
        break;
      default:
        break;
    }
  }
  return out;
}

class QuantTypes : public ::testing::TestWithParam<uint32_t> {};

TEST_P(QuantTypes, RandomBlocksDecodeAsDefined) {
  const uint32_t type = GetParam();
  TestRng rng(7 + type);
  const int64_t n = 1024;
  const std::vector<uint8_t> bytes = RandomBlocks(type, n, rng);
  const std::vector<double> want = Decode(type, bytes.data(), n);
  double scale = 1e-30;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  ExpectDecodes(type, bytes, want, scale);
}

// The engine's activation quantizers, read back with this file's own
// understanding of Q8_0 (d f16, qs[32]) and Q8_K (d f32, qs[256] int8,
// bsums[16] int16: 292 bytes).
struct Q8Row {
  std::vector<double> x;  // the values the quantized row stands for
  std::vector<int> q;
  std::vector<double> d;  // per block
};

Q8Row ReadQ8(TensorType type, const std::vector<uint8_t>& bytes, int64_t n) {
  Q8Row r;
  const bool k = type == TensorType::kQ8_K;
  const int64_t block = k ? 256 : 32;
  const size_t block_bytes = k ? 292 : 34;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* b = bytes.data() + static_cast<size_t>(i / block) * block_bytes;
    double d;
    int q;
    if (k) {
      float df;
      std::memcpy(&df, b, 4);
      d = df;
      q = static_cast<int8_t>(b[4 + i % block]);
    } else {
      d = HalfValue(GetU16(b));
      q = static_cast<int8_t>(b[2 + i % block]);
    }
    if (i % block == 0) r.d.push_back(d);
    r.q.push_back(q);
    r.x.push_back(d * q);
  }
  return r;
}

TEST(QuantActivations, QuantizersFollowTheirDefinitions) {
  TestRng rng(99);
  const int64_t n = 512;
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = static_cast<float>(rng.Uniform() * 4 - 2);
  // Elements 256-479 zero: all-zero Q8_0 blocks quantize to zeros.
  for (int i = 256; i < 480; ++i) x[static_cast<size_t>(i)] = 0.0f;
  for (TensorType type : {TensorType::kQ8_0, TensorType::kQ8_K}) {
    SCOPED_TRACE(TensorTypeName(type));
    const kernels::TypeKernels* k = kernels::Find(type);
    ASSERT_NE(k, nullptr);
    if (type != TensorType::kQ8_0) {
      EXPECT_EQ(k->vec_dot, nullptr);  // activation-only
    }
    ASSERT_NE(k->from_float, nullptr);
    std::vector<uint8_t> bytes(kernels::RowBytes(type, n));
    k->from_float(x.data(), bytes.data(), n);
    const Q8Row r = ReadQ8(type, bytes, n);
    const int64_t block = type == TensorType::kQ8_K ? 256 : 32;
    for (int64_t b = 0; b < n / block; ++b) {
      double amax = 0;
      int qmax = 0;
      for (int64_t i = b * block; i < (b + 1) * block; ++i) {
        amax = std::max(amax, std::fabs(static_cast<double>(x[static_cast<size_t>(i)])));
        qmax = std::max(qmax, std::abs(r.q[static_cast<size_t>(i)]));
        EXPECT_LE(std::abs(r.q[static_cast<size_t>(i)]), 127);
      }
      if (amax == 0) {
        EXPECT_EQ(qmax, 0);
        continue;
      }
      EXPECT_EQ(qmax, 127);  // the largest magnitude maps to the end of the range
      // Each value within half a step of its quantized value (plus the F16
      // rounding of Q8_0's d: relative 2^-11 of amax).
      const double step = std::fabs(r.d[static_cast<size_t>(b)]);
      for (int64_t i = b * block; i < (b + 1) * block; ++i) {
        EXPECT_NEAR(r.x[static_cast<size_t>(i)], x[static_cast<size_t>(i)], step * 0.5001 + amax * 1e-3);
      }
    }
    if (type == TensorType::kQ8_K) {  // bsums: sums of q over groups of 16
      for (int64_t b = 0; b < n / 256; ++b) {
        for (int g = 0; g < 16; ++g) {
          int sum = 0;
          for (int l = 0; l < 16; ++l) sum += r.q[static_cast<size_t>(b * 256 + g * 16 + l)];
          int16_t stored;
          std::memcpy(&stored, bytes.data() + static_cast<size_t>(b) * 292 + 260 + 2 * g, 2);
          EXPECT_EQ(stored, sum) << "block " << b << " group " << g;
        }
      }
    }
  }
}

// Non-finite activations (a hostile model can produce them) must quantize to
// something, without undefined float-to-int conversions (UBSan checks).
TEST(QuantActivations, NonFiniteInputsStayDefined) {
  std::vector<float> x(256, 1.0f);
  x[3] = NAN;
  x[40] = INFINITY;
  x[41] = -INFINITY;
  std::vector<float> all_nan(256, NAN), inf(256, 0.5f);
  inf[17] = -INFINITY;
  for (TensorType type : {TensorType::kQ8_0, TensorType::kQ8_K}) {
    for (const std::vector<float>* in : {&x, &all_nan, &inf}) {
      // Every ISA's quantizer produces the portable bytes.
      std::vector<uint8_t> want(kernels::RowBytes(type, 256));
      kernels::FindFor(type, Isa::kPortable)->from_float(in->data(), want.data(), 256);
      for (Isa isa : Isas()) {
        std::vector<uint8_t> bytes(want.size());
        kernels::FindFor(type, isa)->from_float(in->data(), bytes.data(), 256);
        EXPECT_EQ(bytes, want) << TensorTypeName(type) << " on " << kernels::IsaName(isa);
      }
    }
  }
}

// vec_dot(w, quantize(x)) equals sum_i w_i x'_i, where w_i is the weight as
// defined and x'_i the value the quantized activation stands for, up to float
// accumulation.
TEST_P(QuantTypes, DotProductsMatchTheDefinition) {
  const uint32_t type = GetParam();
  for (int64_t n : {256, 1024, 2816}) {
    TestRng rng(1000 + static_cast<uint64_t>(n) + type);
    const std::vector<uint8_t> w = RandomBlocks(type, n, rng);
    const std::vector<double> wv = Decode(type, w.data(), n);
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = static_cast<float>(rng.Uniform() * 2 - 1);
    for (Isa isa : Isas()) {
      SCOPED_TRACE(std::string(Format(type).name) + " n=" + std::to_string(n) + " " + kernels::IsaName(isa));
      const kernels::TypeKernels* k = kernels::FindFor(T(type), isa);
      ASSERT_NE(k, nullptr);
      ASSERT_NE(k->vec_dot, nullptr);
      const kernels::TypeKernels* act = kernels::FindFor(k->vec_dot_type, isa);
      std::vector<uint8_t> xq(kernels::RowBytes(k->vec_dot_type, n));
      act->from_float(x.data(), xq.data(), n);
      std::vector<double> xv;
      if (k->vec_dot_type == TensorType::kF32) {
        xv.assign(x.begin(), x.end());
      } else if (k->vec_dot_type == TensorType::kF16 || k->vec_dot_type == TensorType::kBF16) {
        xv = Decode(static_cast<uint32_t>(k->vec_dot_type), xq.data(), n);
      } else {
        xv = ReadQ8(k->vec_dot_type, xq, n).x;
      }
      double want = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) {
        want += wv[static_cast<size_t>(i)] * xv[static_cast<size_t>(i)];
        mag += std::fabs(wv[static_cast<size_t>(i)] * xv[static_cast<size_t>(i)]);
      }
      double tol = 1e-5 * mag;  // float accumulation over up to 2816 products
      EXPECT_NEAR(k->vec_dot(n, w.data(), xq.data()), want, tol);
    }
  }
}

// Weight rows sit in the file mapping wherever the GGUF alignment puts them,
// even at odd addresses (general.alignment 1): kernels must read them
// bytewise. Copies at every offset 1..7 of a buffer decode and multiply as
// the aligned row does (UBSan's alignment check runs in the sanitizer build).
TEST_P(QuantTypes, UnalignedRowsWork) {
  const uint32_t type = GetParam();
  TestRng rng(31 + type);
  const int64_t n = 512;
  const std::vector<uint8_t> row = RandomBlocks(type, n, rng);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = rng.Symmetric(1.0f);
  for (Isa isa : Isas()) {
    const kernels::TypeKernels* k = kernels::FindFor(T(type), isa);
    std::vector<uint8_t> xq(kernels::RowBytes(k->vec_dot_type, n));
    kernels::FindFor(k->vec_dot_type, isa)->from_float(x.data(), xq.data(), n);
    std::vector<float> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
    k->to_float(row.data(), want.data(), n);
    const float dot = k->vec_dot(n, row.data(), xq.data());
    for (size_t offset = 1; offset < 8; ++offset) {
      std::vector<uint8_t> buf(row.size() + offset);
      std::memcpy(buf.data() + offset, row.data(), row.size());
      k->to_float(buf.data() + offset, got.data(), n);
      EXPECT_EQ(got, want) << Format(type).name << " offset " << offset;
      EXPECT_EQ(k->vec_dot(n, buf.data() + offset, xq.data()), dot) << Format(type).name << " offset " << offset;
    }
  }
}

// gemm against vec_dot on every ISA, bit for bit (NaN results too): odd
// weight row counts, activation row counts 1..16 (every tile width and
// remainder) and 37 (several full tiles), an output stride wider than the
// tile. This is what
// makes results independent of how MatMulEngine splits rows among threads
// and of which other sequences share a batch.
TEST_P(QuantTypes, GemmMatchesVecDotBitForBit) {
  const uint32_t type = GetParam();
  const int64_t n = 512, max_rows = 33, max_x = 37;
  TestRng rng(300 + type);
  std::vector<uint8_t> w = RandomBlocks(type, n * max_rows, rng);
  const size_t w_stride = w.size() / max_rows;
  // The last rows are random bytes throughout, scales included (NaN and
  // infinite ones: a hostile file's), which must stay defined behaviour.
  for (size_t i = w_stride * 30; i < w.size(); ++i) w[i] = static_cast<uint8_t>(rng.Next());
  std::vector<float> x(static_cast<size_t>(n * max_x));
  for (float& v : x) v = rng.Symmetric(1.0f);
  for (Isa isa : Isas()) {
    const kernels::TypeKernels* k = kernels::FindFor(T(type), isa);
    const size_t x_stride = kernels::RowBytes(k->vec_dot_type, n);
    std::vector<uint8_t> xq(x_stride * max_x);
    for (int64_t j = 0; j < max_x; ++j) {
      kernels::FindFor(k->vec_dot_type, isa)->from_float(x.data() + j * n, xq.data() + j * x_stride, n);
    }
    for (int64_t rows : {1, 3, 7, 33}) {
      for (int64_t nx = 1; nx <= max_x; nx = nx < 16 ? nx + 1 : max_x + 1) {
        SCOPED_TRACE(std::string(Format(type).name) + " " + kernels::IsaName(isa) + " rows=" + std::to_string(rows) +
                     " nx=" + std::to_string(nx));
        const int64_t y_stride = rows + 3;
        std::vector<float> y(static_cast<size_t>(nx * y_stride), -1.0f);
        k->gemm(n, w.data(), w_stride, rows, xq.data(), x_stride, nx, y.data(), y_stride);
        for (int64_t j = 0; j < nx; ++j) {
          for (int64_t i = 0; i < rows; ++i) {
            const float want = k->vec_dot(n, w.data() + i * w_stride, xq.data() + j * x_stride);
            ASSERT_EQ(std::bit_cast<uint32_t>(y[static_cast<size_t>(j * y_stride + i)]), std::bit_cast<uint32_t>(want))
                << "row " << i << " activation " << j;
          }
        }
      }
    }
  }
}

std::string FormatName(const ::testing::TestParamInfo<uint32_t>& p) { return Format(p.param).name; }

INSTANTIATE_TEST_SUITE_P(Types, QuantTypes,
                         ::testing::Values(kTypeF16, kTypeBF16, kTypeQ8_0, kTypeQ4_0, kTypeQ4_1, kTypeQ5_0, kTypeQ5_1,
                                           kTypeQ4_K, kTypeQ5_K, kTypeQ6_K),
                         FormatName);

// The test quantizer (used to write test models) round-trips within a step.
TEST(QuantRef, EncoderRoundTrips) {
  TestRng rng(5);
  std::vector<float> x(512);
  for (float& v : x) v = static_cast<float>(rng.Uniform() * 0.2 - 0.1);
  for (uint32_t type : {kTypeQ8_0, kTypeQ4_0, kTypeQ4_1, kTypeQ5_0, kTypeQ5_1, kTypeQ4_K, kTypeQ5_K, kTypeQ6_K}) {
    const std::vector<double> back = Decode(type, Encode(type, x.data(), 512).data(), 512);
    const double tol = type == kTypeQ8_0                                               ? 0.001
                       : (type == kTypeQ4_0 || type == kTypeQ4_1 || type == kTypeQ4_K) ? 0.02
                                                                                       : 0.01;
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(back[i], x[i], tol) << Format(type).name << " " << i;
  }
}

}  // namespace
}  // namespace appliance::runtime
