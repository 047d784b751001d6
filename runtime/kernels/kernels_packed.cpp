// Packed Q4_K and Q6_K weights and their matrix products on AVX-512 VNNI
// and on AMX tiles.
//
// Why a second layout: the row-major GGUF layout makes a dot product reduce
// across one row, so every block ends in horizontal work, and the tile unit
// wants the opposite orientation. At load, each Q4_K and Q6_K matrix is
// rewritten once in groups of kPackRows (16) rows whose blocks are
// interleaved dword by dword: dword i of a packed block holds dword i of each
// of the 16 rows, so one 512-bit vector is 4 elements x 16 rows. The bits
// stay as they are (Q4_K's 6-bit scales too, unpacked in the kernels): Q4_K
// takes 2304 bytes per 16 rows x 256 elements, as the blocks do, Q6_K 3392
// against 3360. Decoding one token reads every byte once, so each byte more
// than the file's is time.
//
// Each type's products compute the same integers per block and then the same
// vector operations over the 16 weight rows (K::Finish), so every output is
// bit-identical whatever the batch, the path and the split into calls.
//  - Q4_K, the exact integer sum S of each 32-element sub-block:
//    - VNNI: vpdpbusd of 4 elements x 16 rows with one broadcast activation
//      dword, eight in a chain = S for 16 rows at once;
//    - AMX: tdpbsud with the weights as the B tile (16 rows x 64 elements,
//      the nibbles of one chunk split to bytes) and the activations as a
//      block-diagonal A tile (one row per activation row and sub-block, its
//      sub-block's bytes in place, zeros elsewhere): C[(n, sub-block)][m] = S.
//  - Q6_K, the block's whole scaled sum, exact in int32: VNNI as for Q4_K
//    with the sub-block scales applied in integers; AMX with the scales
//    multiplied into the weights (see Q6KTiles).
// The packed products differ from the row-major kernels in float rounding
// (those keep partial sums across a row), within the tests' tolerance.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/kernels/internal.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define APPLIANCE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define APPLIANCE_AMX \
  __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

namespace appliance::runtime::kernels::internal {
namespace {

constexpr int kRows = static_cast<int>(kPackRows);
constexpr int kChunks = 4;  // 64-element chunks per block

// --- packed layouts (one block of a 16-row group) ---

struct PackedQ4K {
  uint32_t qs[32][kRows];     // qs dword i of each row (nibbles as in the block)
  uint32_t scales[3][kRows];  // scales dword i of each row (the 6-bit fields as in the block)
  uint16_t d[kRows];          // F16
  uint16_t dmin[kRows];    // F16
};
static_assert(sizeof(PackedQ4K) % 64 == 0);

struct PackedQ6K {
  uint32_t ql[32][kRows];  // ql dword i of each row
  uint32_t qh[16][kRows];  // qh dword i of each row
  uint32_t sc[4][kRows];   // scales dword i of each row (4 int8)
  uint16_t d[kRows];       // F16
  uint16_t pad[kRows];
};
static_assert(sizeof(PackedQ6K) % 64 == 0);

// Per block, vectors over the 16 rows: the sub-blocks' scales (6-bit
// integers, as floats), the mins as int16 pairs (m_2j, m_2j+1), and the
// float scales.
struct alignas(64) Q4KScales {
  float scale[8][kRows];
  int32_t pairs[4][kRows];
  float d[kRows];
  float dmin[kRows];
};

// Per block, vectors over the 16 rows: the sub-blocks' scales (int8, as
// int32), the int16 pairs (32 sc_2j, 32 sc_2j+1) of the correction for the
// weights' offset of 32, and the float scale.
struct alignas(64) Q6KScales {
  int32_t scale[16][kRows];
  int32_t pairs[8][kRows];
  float d[kRows];
};

APPLIANCE_AVX512 inline __m512i ByteU(__m512i v, int byte) {
  return _mm512_and_si512(_mm512_srli_epi32(v, 8 * byte), _mm512_set1_epi32(0xff));
}
APPLIANCE_AVX512 inline __m512i ByteS(__m512i v, int byte) {
  return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * byte), 24);
}
// Two int32 vectors (values within int16) as int16 pairs (lo, hi) per lane.
APPLIANCE_AVX512 inline __m512i Pair16(__m512i lo, __m512i hi) {
  return _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xffff)), _mm512_slli_epi32(hi, 16));
}
APPLIANCE_AVX512 inline __m512i Load(const uint32_t* p) { return _mm512_load_si512(p); }
APPLIANCE_AVX512 inline __m512 LoadHalves(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}

// Int16 pairs (g[2j], g[2j + 1]) of an activation block's sums over groups
// g of its elements.
template <size_t kPairs>
void SumPairs(const int (&g)[2 * kPairs], std::array<int32_t, kPairs>& pairs) {
  for (size_t j = 0; j < kPairs; ++j) {
    pairs[j] = static_cast<int32_t>((static_cast<uint32_t>(g[2 * j]) & 0xffffu) | static_cast<uint32_t>(g[2 * j + 1]) << 16);
  }
}

// --- Q4_K ---

struct Q4K {
  using Block = BlockQ4_K;
  using Packed = PackedQ4K;
  using Scales = Q4KScales;
  using ActTerms = std::array<int32_t, 4>;
  using BlockSum = __m512;  // sum_s scale_s S_s of a block, 16 rows
  static constexpr int kSubPerChunk = 2;  // sub-blocks of 32 per chunk

  static void Pack(const Block* const (&row)[kRows], Packed& out) {
    for (int m = 0; m < kRows; ++m) {
      const Block* b = row[m];
      if (b == nullptr) continue;  // past the matrix: stays zero
      for (int i = 0; i < 32; ++i) out.qs[i][m] = LoadU32(b->qs + 4 * i);
      for (int i = 0; i < 3; ++i) out.scales[i][m] = LoadU32(b->scales + 4 * i);
      out.d[m] = LoadU16(b->d);
      out.dmin[m] = LoadU16(b->dmin);
    }
  }

  // The 16 weight dwords of chunk j (elements 64j..64j+63) in element order:
  // sub-block 2j is the low nibbles of qs dwords 8j..8j+7, 2j + 1 the high.
  APPLIANCE_AVX512 static void Chunk(const Packed& p, int j, __m512i (&out)[16]) {
    PrefetchAhead<8 * sizeof p.qs[0]>(p.qs[8 * j]);
    const __m512i nibble = _mm512_set1_epi32(0x0f0f0f0f);
    for (int r = 0; r < 8; ++r) {
      const __m512i raw = Load(p.qs[8 * j + r]);
      out[r] = _mm512_and_si512(raw, nibble);
      out[8 + r] = _mm512_and_si512(_mm512_srli_epi32(raw, 4), nibble);
    }
  }

  APPLIANCE_AVX512 static void UnpackScales(const Packed& p, Scales& s) {
    PrefetchAhead<sizeof p.scales + sizeof p.d + sizeof p.dmin>(p.scales);
    // The 6-bit fields to bytes as UnpackScalesMinsK4 does, 16 rows at once:
    // v = (scales[0..4), scales[4..8), mins[0..4), mins[4..8)).
    const __m512i u0 = Load(p.scales[0]), u1 = Load(p.scales[1]), u2 = Load(p.scales[2]);
    const __m512i low6 = _mm512_set1_epi32(0x3f3f3f3f), low4 = _mm512_set1_epi32(0x0f0f0f0f);
    const __m512i top2 = _mm512_set1_epi32(0x30303030);
    const __m512i v[4] = {
        _mm512_and_si512(u0, low6),
        _mm512_or_si512(_mm512_and_si512(u2, low4), _mm512_and_si512(_mm512_srli_epi32(u0, 2), top2)),
        _mm512_and_si512(u1, low6),
        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), low4), _mm512_and_si512(_mm512_srli_epi32(u1, 2), top2)),
    };
    for (int k = 0; k < 8; ++k) _mm512_store_ps(s.scale[k], _mm512_cvtepi32_ps(ByteU(v[k / 4], k % 4)));
    // (m_2j, m_2j+1): bytes 2j and 2j + 1 of the mins.
    for (int j = 0; j < 4; ++j) {
      _mm512_store_si512(s.pairs[j], Pair16(ByteU(v[2 + j / 2], 2 * (j % 2)), ByteU(v[2 + j / 2], 2 * (j % 2) + 1)));
    }
    _mm512_store_ps(s.d, LoadHalves(p.d));
    _mm512_store_ps(s.dmin, LoadHalves(p.dmin));
  }

  // The correction's activation side: the sums of sub-blocks 2j and 2j + 1
  // (bsums[2s] + bsums[2s + 1], |sum| <= 32 * 127).
  static void ActSums(const BlockQ8_K& x, ActTerms& terms) {
    int sums[8];
    for (int s = 0; s < 8; ++s) sums[s] = x.bsums[2 * s] + x.bsums[2 * s + 1];
    SumPairs(sums, terms);
  }

  // t += scale_s S_s for sub-block s's integer sum S: a float FMA, one
  // uop, where vpmulld takes two on the busiest port. Every term is an exact
  // float (|S| <= 32 * 15 * 127, scale < 64: below 2^24); the sum of a block's
  // eight rounds the same way on every path, as each adds them in sub-block
  // order.
  APPLIANCE_AVX512 static __m512 AddScaled(__m512 t, __m512i sum, const Scales& s, int sub) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_load_ps(s.scale[sub]), t);
  }

  // acc += d dy T - dmin dy M, M = sum_s m_s (sub-block s's activation sum).
  APPLIANCE_AVX512 static __m512 Finish(const Scales& s, __m512 t, const ActTerms& xp, float dy, __m512 acc) {
    __m512i mins = _mm512_setzero_si512();
    for (int j = 0; j < 4; ++j) {
      mins = _mm512_dpwssd_epi32(mins, _mm512_load_si512(s.pairs[j]), _mm512_set1_epi32(xp[static_cast<size_t>(j)]));
    }
    const __m512 vdy = _mm512_set1_ps(dy);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_load_ps(s.d), vdy), t, acc);
    return _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_load_ps(s.dmin), vdy), _mm512_cvtepi32_ps(mins), acc);
  }
};

// --- Q6_K ---

// Chunk j (elements 64j..64j+63) of half h = j / 2: element 64j + 4i + k is
// the low (j even) or high (j odd) nibble of ql byte 4(16h + i) + k with bits
// 2r, 2r + 1 of qh byte 4(8h + i % 8) + k on top, r = 2 (j % 2) + i / 8.
// Weights are unsigned 0..63; the -32 is the correction 32 sum_s sc_s bsums_s.
//
// Unlike Q4_K, a block's sum is kept exact in int32 on every path
// (T = sum_s sc_s S_s, |T| <= 256 * 63 * 128 * 127 < 2^31), because the AMX
// path gets T whole from the tiles, with the scales multiplied into the
// weights, and never sees the S_s.
struct Q6K {
  using Block = BlockQ6_K;
  using Packed = PackedQ6K;
  using Scales = Q6KScales;
  using ActTerms = std::array<int32_t, 8>;
  using BlockSum = __m512i;
  static constexpr int kSubPerChunk = 4;  // sub-blocks of 16 per chunk

  static void Pack(const Block* const (&row)[kRows], Packed& out) {
    for (int m = 0; m < kRows; ++m) {
      const Block* b = row[m];
      if (b == nullptr) continue;  // past the matrix: stays zero
      for (int i = 0; i < 32; ++i) out.ql[i][m] = LoadU32(b->ql + 4 * i);
      for (int i = 0; i < 16; ++i) out.qh[i][m] = LoadU32(b->qh + 4 * i);
      for (int i = 0; i < 4; ++i) out.sc[i][m] = LoadU32(reinterpret_cast<const uint8_t*>(b->scales) + 4 * i);
      out.d[m] = LoadU16(b->d);
    }
  }

  APPLIANCE_AVX512 static void Chunk(const Packed& p, int j, __m512i (&out)[16]) {
    const int h = j / 2, odd = j % 2;
    // A quarter of the block per chunk: 53 prefetches at once stall on the
    // fill buffers.
    constexpr size_t kQuarter = (sizeof(Packed) / 4 + 63) / 64 * 64;
    PrefetchAhead<kQuarter>(reinterpret_cast<const uint8_t*>(&p) + kQuarter * static_cast<size_t>(j));
    const __m512i nibble = _mm512_set1_epi32(0x0f0f0f0f);
    const __m512i high = _mm512_set1_epi32(0x30303030);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      const __m512i ql = Load(p.ql[16 * h + i]);
      const __m512i lo = _mm512_and_si512(odd ? _mm512_srli_epi32(ql, 4) : ql, nibble);
      const __m512i qh = Load(p.qh[8 * h + i % 8]);
      // Bits 2r, 2r + 1 of each byte to bits 4, 5.
      const int r = 2 * odd + i / 8;
      const __m512i hi = r < 2 ? _mm512_slli_epi32(qh, 4 - 2 * r) : r > 2 ? _mm512_srli_epi32(qh, 2) : qh;
      out[i] = _mm512_ternarylogic_epi32(hi, high, lo, 0xEA);  // (hi & high) | lo
    }
  }

  APPLIANCE_AVX512 static void UnpackScales(const Packed& p, Scales& s) {
    for (int i = 0; i < 4; ++i) {
      const __m512i v = Load(p.sc[i]);
      for (int k = 0; k < 4; ++k) _mm512_store_si512(s.scale[4 * i + k], ByteS(v, k));
      // The correction's pairs (32 sc_4i, 32 sc_4i+2) and (32 sc_4i+1,
      // 32 sc_4i+3): each int16 half's low or high byte, sign-extended, times
      // 32 (|32 sc| <= 4096 fits int16).
      _mm512_store_si512(s.pairs[2 * i], _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 3));
      _mm512_store_si512(s.pairs[2 * i + 1], _mm512_srai_epi16(_mm512_and_si512(v, _mm512_set1_epi16(static_cast<short>(0xff00))), 3));
    }
    _mm512_store_ps(s.d, LoadHalves(p.d));
  }

  // The correction's activation side: group sums paired as the scales are.
  static void ActSums(const BlockQ8_K& x, ActTerms& terms) {
    int sums[16];
    for (int i = 0; i < 4; ++i) {
      sums[4 * i] = x.bsums[4 * i];
      sums[4 * i + 1] = x.bsums[4 * i + 2];
      sums[4 * i + 2] = x.bsums[4 * i + 1];
      sums[4 * i + 3] = x.bsums[4 * i + 3];
    }
    SumPairs(sums, terms);
  }

  // t += sc_s S_s, exact.
  APPLIANCE_AVX512 static __m512i AddScaled(__m512i t, __m512i sum, const Scales& s, int sub) {
    return _mm512_add_epi32(t, _mm512_mullo_epi32(sum, _mm512_load_si512(s.scale[sub])));
  }

  // acc += d dy (T - C), C = sum_s 32 sc_s bsums_s (exact in int32).
  APPLIANCE_AVX512 static __m512 Finish(const Scales& s, __m512i t, const ActTerms& xp, float dy, __m512 acc) {
    for (size_t j = 0; j < 8; ++j) {
      const __m512i pairs = _mm512_load_si512(s.pairs[j]);
      t = _mm512_sub_epi32(t, _mm512_madd_epi16(pairs, _mm512_set1_epi32(xp[j])));
    }
    return Accumulate(s, t, dy, acc);
  }

  // acc += d dy U for a block's exact sum U = sum_i sc_s(i) (q_i - 32) y_i.
  APPLIANCE_AVX512 static __m512 Accumulate(const Scales& s, __m512i u, float dy, __m512 acc) {
    return _mm512_fmadd_ps(_mm512_mul_ps(_mm512_load_ps(s.d), _mm512_set1_ps(dy)), _mm512_cvtepi32_ps(u), acc);
  }
};

template <typename K>
size_t PackedBytes(int64_t rows, int64_t cols) {
  return static_cast<size_t>((rows + kRows - 1) / kRows) * static_cast<size_t>(cols / kQKK) * sizeof(typename K::Packed);
}

template <typename K>
void PackMatrix(const void* w, size_t w_stride, int64_t rows, int64_t cols, void* out) {
  const int64_t nb = cols / kQKK;
  auto* packed = static_cast<typename K::Packed*>(out);
  const auto* wb = static_cast<const uint8_t*>(w);
  for (int64_t g0 = 0; g0 < rows; g0 += kRows) {
    for (int64_t b = 0; b < nb; ++b) {
      const typename K::Block* row[kRows];
      for (int m = 0; m < kRows; ++m) {
        row[m] = g0 + m < rows
                     ? reinterpret_cast<const typename K::Block*>(wb + static_cast<size_t>(g0 + m) * w_stride) + b
                     : nullptr;
      }
      typename K::Packed& p = packed[g0 / kRows * nb + b];
      std::memset(&p, 0, sizeof p);
      K::Pack(row, p);
    }
  }
}

// --- AVX-512 VNNI ---

// Activation rows per pass: their T accumulators stay in registers next to
// the chunk's 16 weight vectors.
constexpr int kVnniActs = 8;

// One 16-row group (nb packed blocks) times kActs activation rows x + a
// x_stride, to y + a y_stride (the rows of `mask`). The row count is a
// template argument so the accumulators are registers, not a stack array.
template <typename K, int kActs>
APPLIANCE_AVX512 void VnniPass(const typename K::Packed* group, int64_t nb, const uint8_t* x, size_t x_stride,
                               float* y, int64_t y_stride, __mmask16 mask) {
  constexpr int kSub = K::kSubPerChunk, kDwords = 16 / kSub;
  const BlockQ8_K* act[kActs];
#pragma GCC unroll 8
  for (int a = 0; a < kActs; ++a) act[a] = reinterpret_cast<const BlockQ8_K*>(x + static_cast<size_t>(a) * x_stride);
  __m512 acc[kActs] = {};
#pragma GCC unroll 8
  for (int a = 0; a < kActs; ++a) acc[a] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const typename K::Packed& p = group[b];
    typename K::Scales s;
    K::UnpackScales(p, s);
    typename K::BlockSum t[kActs];
#pragma GCC unroll 8
    for (int a = 0; a < kActs; ++a) t[a] = typename K::BlockSum{};
#pragma GCC unroll 4
    for (int j = 0; j < kChunks; ++j) {
      __m512i wq[16];
      K::Chunk(p, j, wq);
#pragma GCC unroll 8
      for (int a = 0; a < kActs; ++a) {
        const int8_t* qs = act[a][b].qs + 64 * j;
#pragma GCC unroll 4
        for (int q = 0; q < kSub; ++q) {
          __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 8
          for (int i = 0; i < kDwords; ++i) {
            int32_t dw;
            std::memcpy(&dw, qs + 4 * (kDwords * q + i), 4);
            sum = _mm512_dpbusd_epi32(sum, wq[kDwords * q + i], _mm512_set1_epi32(dw));
          }
          t[a] = K::AddScaled(t[a], sum, s, kSub * j + q);
        }
      }
    }
#pragma GCC unroll 8
    for (int a = 0; a < kActs; ++a) {
      typename K::ActTerms xp;
      K::ActSums(act[a][b], xp);
      acc[a] = K::Finish(s, t[a], xp, act[a][b].d, acc[a]);
    }
  }
#pragma GCC unroll 8
  for (int a = 0; a < kActs; ++a) _mm512_mask_storeu_ps(y + a * y_stride, mask, acc[a]);
}

template <typename K>
using VnniPassFn = void (*)(const typename K::Packed*, int64_t, const uint8_t*, size_t, float*, int64_t, __mmask16);

template <typename K, int... A>
constexpr std::array<VnniPassFn<K>, sizeof...(A)> MakeVnniPasses(std::integer_sequence<int, A...>) {
  return {VnniPass<K, A + 1>...};
}

template <typename K>
APPLIANCE_AVX512 void GemmVnni(int64_t n, const void* w, int64_t rows, const void* x, size_t x_stride, int64_t nx,
                               float* y, int64_t y_stride) {
  static constexpr std::array<VnniPassFn<K>, kVnniActs> kPasses =
      MakeVnniPasses<K>(std::make_integer_sequence<int, kVnniActs>());
  const int64_t nb = n / kQKK;
  const auto* packed = static_cast<const typename K::Packed*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  for (int64_t g0 = 0; g0 < rows; g0 += kRows) {
    const __mmask16 group_mask = static_cast<__mmask16>((1u << std::min<int64_t>(kRows, rows - g0)) - 1);
    for (int64_t n0 = 0; n0 < nx; n0 += kVnniActs) {
      const size_t count = static_cast<size_t>(std::min<int64_t>(kVnniActs, nx - n0));
      kPasses[count - 1](packed + g0 / kRows * nb, nb, xb + static_cast<size_t>(n0) * x_stride, x_stride,
                         y + n0 * y_stride + g0, y_stride, group_mask);
    }
  }
}

// --- AMX ---

// The order of an AMX product's work, shared by the types. Per 16-row group
// g and activation chunk c: Begin, then per block b the tile products
// (Tiles) and their accumulation (Accumulate), then End. A block's weights
// are unpacked (Prepare) into a slot once and reused by every chunk, and
// always one unit ahead: block b + 1's unpacking runs between block b's tile
// products and their accumulation, so the tiles work while the vector units
// unpack, and a tile load never waits on stores made just before it. With one
// chunk (decode: up to 8 or 16 activation rows) the next unit may be the next
// group's first block, in the other of two slots; with several, the group's
// blocks have a slot each, and the next group's first block is unpacked
// during the last chunk's last block, into the other set of slots (with
// one block per row, this group's is still to be accumulated).
template <typename Ops>
APPLIANCE_AMX void RunTileSchedule(Ops& ops, int64_t groups, int64_t nb, int64_t chunks) {
  auto slot = [&](int64_t g, int64_t b) { return static_cast<size_t>(chunks == 1 ? (g * nb + b) % 2 : g % 2 * nb + b); };
  ops.Prepare(0, 0, slot(0, 0));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t c = 0; c < chunks; ++c) {
      ops.Begin(c);
      for (int64_t b = 0; b < nb; ++b) {
        ops.Tiles(c, b, slot(g, b));
        if (b + 1 < nb && c == 0) {
          ops.Prepare(g, b + 1, slot(g, b + 1));
        } else if (b + 1 == nb && c + 1 == chunks && g + 1 < groups) {
          ops.Prepare(g + 1, 0, slot(g + 1, 0));
        }
        ops.Accumulate(c, b, slot(g, b));
      }
      ops.End(g, c);
    }
  }
}

// Slots RunTileSchedule uses.
inline size_t TileSlots(int64_t nb, int64_t chunks) { return static_cast<size_t>(chunks == 1 ? 2 : 2 * nb); }

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles first_b..7 hold B (16 rows: the weights), the others A and C with
// `rows` rows; all rows are 64 bytes.
APPLIANCE_AMX void LoadTileConfig(int rows, int first_b) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(t >= first_b ? 16 : rows);
    cfg.colsb[t] = 64;
  }
  // Not _tile_loadconfig: GCC 12's names only the first 8 bytes as its memory
  // operand, so the stores of the rows and colsb could be dropped as dead.
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

// A tiles of one block for up to 16 / kSub activation rows, and per row
// the correction terms and dy Finish takes.
template <typename K>
struct alignas(64) ActBlock {
  static constexpr int kActs = 16 / K::kSubPerChunk;
  uint8_t a[kChunks][16][64];
  typename K::ActTerms terms[kActs];
  float d[kActs];
};

// One block of a 16-row group ready for the tiles: B tiles (natural bytes of
// each chunk) and the scales.
template <typename K>
struct alignas(64) WeightBlock {
  uint32_t b[kChunks][16][kRows];
  typename K::Scales scales;
};

// C tiles of one block as stored: [chunk][activation row x sub-block][weight row].
struct alignas(64) BlockSums {
  int32_t s[kChunks][16][kRows];
};

template <typename K>
struct AmxScratch {
  std::vector<ActBlock<K>> acts;
  std::vector<WeightBlock<K>> weights;
  BlockSums sums;
};

// A thread's scratch of type T (the pool's workers run products
// concurrently); it grows to the largest call once, so steady-state decoding
// allocates nothing. A function-local static, not a thread_local variable
// template: GCC 12 never destroys an instance of the latter (at -O2, in an
// anonymous namespace), which LeakSanitizer reports at every worker's exit.
template <typename T>
T& ThreadScratch() {
  static thread_local T scratch;
  return scratch;
}

template <typename K>
APPLIANCE_AMX void PackActs(const uint8_t* x, size_t x_stride, int count, int64_t b, ActBlock<K>& out) {
  constexpr int kSub = K::kSubPerChunk;
  for (int a = 0; a < count; ++a) {
    const BlockQ8_K& xb = reinterpret_cast<const BlockQ8_K*>(x + static_cast<size_t>(a) * x_stride)[b];
    for (int j = 0; j < kChunks; ++j) {
      const __m512i v = _mm512_loadu_si512(xb.qs + 64 * j);
      for (int q = 0; q < kSub; ++q) {
        const __mmask64 part = (~0ull >> (64 - 64 / kSub)) << (64 / kSub * q);
        _mm512_store_si512(out.a[j][kSub * a + q], _mm512_maskz_mov_epi8(part, v));
      }
    }
    K::ActSums(xb, out.terms[a]);
    out.d[a] = xb.d;
  }
}

// C tile j = A tile (chunk j) x B tile (chunk j), for j < 4, stored to `c`.
// Written out: a tile register is an immediate of the instruction, so the
// four chunks cannot be a loop; A and B alternate between two registers each
// so the next chunk's loads overlap the previous product.
template <typename K>
APPLIANCE_AMX void Multiply(const WeightBlock<K>& w, const ActBlock<K>& x, BlockSums& c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, x.a[0], 64);
  _tile_loadd(6, w.b[0], 64);
  _tile_dpbsud(0, 4, 6);
  _tile_loadd(5, x.a[1], 64);
  _tile_loadd(7, w.b[1], 64);
  _tile_dpbsud(1, 5, 7);
  _tile_loadd(4, x.a[2], 64);
  _tile_loadd(6, w.b[2], 64);
  _tile_dpbsud(2, 4, 6);
  _tile_loadd(5, x.a[3], 64);
  _tile_loadd(7, w.b[3], 64);
  _tile_dpbsud(3, 5, 7);
  _tile_stored(0, c.s[0], 64);
  _tile_stored(1, c.s[1], 64);
  _tile_stored(2, c.s[2], 64);
  _tile_stored(3, c.s[3], 64);
}

// acc[a] (a < count) += the products (Multiply's sums) of block w with
// activation rows a of x.
template <typename K, int kActs>
APPLIANCE_AMX void Accumulate(const WeightBlock<K>& w, const ActBlock<K>& x, int count, const BlockSums& sums,
                              __m512 (&acc)[kActs]) {
  constexpr int kSub = K::kSubPerChunk;
  for (int a = 0; a < count; ++a) {
    __m512 t = _mm512_setzero_ps();
    for (int j = 0; j < kChunks; ++j) {
      for (int q = 0; q < kSub; ++q) t = K::AddScaled(t, _mm512_load_si512(sums.s[j][kSub * a + q]), w.scales, kSub * j + q);
    }
    acc[a] = K::Finish(w.scales, t, x.terms[a], x.d[a], acc[a]);
  }
}

// One block of a group unpacked for the B tiles.
template <typename K>
APPLIANCE_AMX void PrepareBlock(const typename K::Packed& p, WeightBlock<K>& out) {
#pragma GCC unroll 4
  for (int j = 0; j < kChunks; ++j) {
    __m512i wq[16];
    K::Chunk(p, j, wq);
    for (int i = 0; i < 16; ++i) _mm512_store_si512(out.b[j][i], wq[i]);
  }
  K::UnpackScales(p, out.scales);
}

template <typename K>
struct TileOps {
  static constexpr int kSub = K::kSubPerChunk;
  static constexpr int kActs = 16 / kSub;  // activation rows per A tile
  const typename K::Packed* packed;
  int64_t nb, nx, rows;
  float* y;
  int64_t y_stride;
  AmxScratch<K>& scratch;
  int count = 0, configured = 0;
  __m512 acc[kActs] = {};

  APPLIANCE_AMX void Prepare(int64_t g, int64_t b, size_t slot) {
    PrepareBlock<K>(packed[g * nb + b], scratch.weights[slot]);
  }
  APPLIANCE_AMX void Begin(int64_t c) {
    count = static_cast<int>(std::min<int64_t>(kActs, nx - c * kActs));
    if (count != configured) {
      LoadTileConfig(kSub * count, 6);  // 0-3: C of chunks 0-3; 4, 5: A; 6, 7: B
      configured = count;
    }
    for (int a = 0; a < kActs; ++a) acc[a] = _mm512_setzero_ps();
  }
  APPLIANCE_AMX void Tiles(int64_t c, int64_t b, size_t slot) {
    Multiply(scratch.weights[slot], scratch.acts[static_cast<size_t>(c * nb + b)], scratch.sums);
  }
  APPLIANCE_AMX void Accumulate(int64_t c, int64_t b, size_t slot) {
    internal::Accumulate<K>(scratch.weights[slot], scratch.acts[static_cast<size_t>(c * nb + b)], count, scratch.sums,
                            acc);
  }
  APPLIANCE_AMX void End(int64_t g, int64_t c) {
    const int64_t g0 = g * kRows;
    const __mmask16 group_mask = static_cast<__mmask16>((1u << std::min<int64_t>(kRows, rows - g0)) - 1);
    for (int a = 0; a < count; ++a) _mm512_mask_storeu_ps(y + (c * kActs + a) * y_stride + g0, group_mask, acc[a]);
  }
};

template <typename K>
APPLIANCE_AMX void GemmAmx(int64_t n, const void* w, int64_t rows, const void* x, size_t x_stride, int64_t nx,
                           float* y, int64_t y_stride) {
  // One activation row gains nothing from the tiles (16 rows x 64 elements
  // per tdpbsud, most of them zero) and VNNI gives the same bits.
  if (nx == 1) return GemmVnni<K>(n, w, rows, x, x_stride, nx, y, y_stride);
  using Ops = TileOps<K>;
  const int64_t nb = n / kQKK;
  const int64_t chunks = (nx + Ops::kActs - 1) / Ops::kActs;
  AmxScratch<K>& scratch = ThreadScratch<AmxScratch<K>>();
  if (scratch.acts.size() < static_cast<size_t>(chunks * nb)) scratch.acts.resize(static_cast<size_t>(chunks * nb));
  if (scratch.weights.size() < TileSlots(nb, chunks)) scratch.weights.resize(TileSlots(nb, chunks));
  const auto* xb = static_cast<const uint8_t*>(x);
  for (int64_t c = 0; c < chunks; ++c) {
    const int count = static_cast<int>(std::min<int64_t>(Ops::kActs, nx - c * Ops::kActs));
    for (int64_t b = 0; b < nb; ++b) {
      PackActs<K>(xb + static_cast<size_t>(c * Ops::kActs) * x_stride, x_stride, count, b,
                  scratch.acts[static_cast<size_t>(c * nb + b)]);
    }
  }
  Ops ops{static_cast<const typename K::Packed*>(w), nb, nx, rows, y, y_stride, scratch};
  RunTileSchedule(ops, (rows + kRows - 1) / kRows, nb, chunks);
  _tile_release();
}

// Q6_K on the tiles. A block's sum U for 16 weight rows x 16 activation rows
// comes whole out of two accumulating C tiles: the weights are multiplied by
// their sub-block's scale, offset included (w = (q - 32) sc, an int16), and
// split into bytes, lo = w & 255 (unsigned, tdpbsud) and hi = w >> 8 (signed,
// tdpbssd), so U = 256 C_hi + C_lo, the same integer as VNNI's T - C; the A
// tiles are the activations themselves (rows x_stride apart). Per block:
// eight tile products and two stores, against sixteen sub-block sums and the
// correction per activation row on the other paths.
struct alignas(64) Q6KTiles {
  uint32_t lo[kChunks][16][kRows];
  uint32_t hi[kChunks][16][kRows];
  Q6KScales scales;
};

struct alignas(64) Q6KSums {
  int32_t lo[16][kRows];
  int32_t hi[16][kRows];
};

struct Q6KAmxScratch {
  std::vector<Q6KTiles> weights;
  Q6KSums sums;
};

// Activation rows per A tile, and the fewest for which the tiles beat VNNI
// (which gives the same bits): below it the weight preparation, paid once
// per 16-row group, costs more than VNNI's work per activation row.
constexpr int kQ6KTileActs = 16;
constexpr int64_t kQ6KMinTileActs = 4;

APPLIANCE_AMX void PrepareQ6KTiles(const PackedQ6K& p, Q6KTiles& out) {
  Q6K::UnpackScales(p, out.scales);
  __m512i scales[4];
  for (int j = 0; j < 4; ++j) scales[j] = Load(p.sc[j]);
  // vpshufb indexes bytes within 128-bit lanes: dword m of a lane starts at byte 4m.
  const __m512i dword_base = _mm512_set4_epi32(0x000c000c, 0x00080008, 0x00040004, 0);
  const __m512i low_byte = _mm512_set1_epi16(0x00ff);
  const __m512i high_byte = _mm512_set1_epi16(static_cast<short>(0xff00));
#pragma GCC unroll 4
  for (int j = 0; j < kChunks; ++j) {
    __m512i q[16];
    Q6K::Chunk(p, j, q);
#pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      // Sub-block 4j + s's scale, byte s of each row's scales dword j, as
      // bytes (sc, 0) and (0, sc) per int16 for vpmaddubsw to pick the even
      // and the odd elements, and 32 sc per int16 for the offset.
      const __m512i pick = _mm512_add_epi32(dword_base, _mm512_set1_epi32(static_cast<int>(0x80008000u | s << 16 | s)));
      const __m512i even_sc = _mm512_shuffle_epi8(scales[j], pick);
      const __m512i odd_sc = _mm512_slli_epi16(even_sc, 8);
      const __m512i offset = _mm512_srai_epi16(odd_sc, 3);
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m512i v = q[4 * s + k];
        const __m512i even = _mm512_sub_epi16(_mm512_maddubs_epi16(v, even_sc), offset);
        const __m512i odd = _mm512_sub_epi16(_mm512_maddubs_epi16(v, odd_sc), offset);
        // Bytes in element order: lo = (even & 0xff) | odd << 8, hi = even >> 8 | (odd & 0xff00).
        _mm512_store_si512(out.lo[j][4 * s + k],
                           _mm512_ternarylogic_epi32(even, low_byte, _mm512_slli_epi16(odd, 8), 0xEA));
        _mm512_store_si512(out.hi[j][4 * s + k],
                           _mm512_ternarylogic_epi32(odd, high_byte, _mm512_srli_epi16(even, 8), 0xEA));
      }
    }
  }
}

// C_lo, C_hi (tiles 0, 1) of block b: A tiles 2, 3 from the activations, B
// tiles 4-7 from w, alternating so the next chunk's loads overlap a product.
APPLIANCE_AMX void MultiplyQ6K(const Q6KTiles& w, const int8_t* x, size_t x_stride, Q6KSums& c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_loadd(2, x, x_stride);
  _tile_loadd(4, w.lo[0], 64);
  _tile_loadd(5, w.hi[0], 64);
  _tile_dpbsud(0, 2, 4);
  _tile_dpbssd(1, 2, 5);
  _tile_loadd(3, x + 64, x_stride);
  _tile_loadd(6, w.lo[1], 64);
  _tile_loadd(7, w.hi[1], 64);
  _tile_dpbsud(0, 3, 6);
  _tile_dpbssd(1, 3, 7);
  _tile_loadd(2, x + 128, x_stride);
  _tile_loadd(4, w.lo[2], 64);
  _tile_loadd(5, w.hi[2], 64);
  _tile_dpbsud(0, 2, 4);
  _tile_dpbssd(1, 2, 5);
  _tile_loadd(3, x + 192, x_stride);
  _tile_loadd(6, w.lo[3], 64);
  _tile_loadd(7, w.hi[3], 64);
  _tile_dpbsud(0, 3, 6);
  _tile_dpbssd(1, 3, 7);
  _tile_stored(0, c.lo, 64);
  _tile_stored(1, c.hi, 64);
}

// acc[a] (a < count) += the block's sums (MultiplyQ6K's) with activation
// rows x + a x_stride (the block's).
APPLIANCE_AMX void AccumulateQ6K(const Q6KScales& scales, const BlockQ8_K* x, size_t x_stride, int count,
                                 const Q6KSums& sums, __m512 (&acc)[kQ6KTileActs]) {
  const auto* xb = reinterpret_cast<const uint8_t*>(x);
  for (int a = 0; a < count; ++a) {
    const __m512i u =
        _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(sums.hi[a]), 8), _mm512_load_si512(sums.lo[a]));
    const float dy = reinterpret_cast<const BlockQ8_K*>(xb + static_cast<size_t>(a) * x_stride)->d;
    acc[a] = Q6K::Accumulate(scales, u, dy, acc[a]);
  }
}

struct Q6KTileOps {
  const PackedQ6K* packed;
  int64_t nb, nx, rows;
  const uint8_t* x;
  size_t x_stride;
  float* y;
  int64_t y_stride;
  Q6KAmxScratch& scratch;
  int count = 0, configured = 0;
  __m512 acc[kQ6KTileActs] = {};

  const BlockQ8_K* Act(int64_t a, int64_t b) const {
    return reinterpret_cast<const BlockQ8_K*>(x + static_cast<size_t>(a) * x_stride) + b;
  }
  APPLIANCE_AMX void Prepare(int64_t g, int64_t b, size_t slot) {
    PrepareQ6KTiles(packed[g * nb + b], scratch.weights[slot]);
  }
  APPLIANCE_AMX void Begin(int64_t c) {
    count = static_cast<int>(std::min<int64_t>(kQ6KTileActs, nx - c * kQ6KTileActs));
    if (count != configured) {
      LoadTileConfig(count, 4);  // 0, 1: C; 2, 3: A; 4-7: B
      configured = count;
    }
    for (int a = 0; a < kQ6KTileActs; ++a) acc[a] = _mm512_setzero_ps();
  }
  APPLIANCE_AMX void Tiles(int64_t c, int64_t b, size_t slot) {
    MultiplyQ6K(scratch.weights[slot], Act(c * kQ6KTileActs, b)->qs, x_stride, scratch.sums);
  }
  APPLIANCE_AMX void Accumulate(int64_t c, int64_t b, size_t slot) {
    AccumulateQ6K(scratch.weights[slot].scales, Act(c * kQ6KTileActs, b), x_stride, count, scratch.sums, acc);
  }
  APPLIANCE_AMX void End(int64_t g, int64_t c) {
    const int64_t g0 = g * kRows;
    const __mmask16 group_mask = static_cast<__mmask16>((1u << std::min<int64_t>(kRows, rows - g0)) - 1);
    for (int a = 0; a < count; ++a) {
      _mm512_mask_storeu_ps(y + (c * kQ6KTileActs + a) * y_stride + g0, group_mask, acc[a]);
    }
  }
};

APPLIANCE_AMX void GemmAmxQ6K(int64_t n, const void* w, int64_t rows, const void* x, size_t x_stride, int64_t nx,
                              float* y, int64_t y_stride) {
  if (nx < kQ6KMinTileActs) return GemmVnni<Q6K>(n, w, rows, x, x_stride, nx, y, y_stride);
  const int64_t nb = n / kQKK;
  const int64_t chunks = (nx + kQ6KTileActs - 1) / kQ6KTileActs;
  Q6KAmxScratch& scratch = ThreadScratch<Q6KAmxScratch>();
  if (scratch.weights.size() < TileSlots(nb, chunks)) scratch.weights.resize(TileSlots(nb, chunks));
  Q6KTileOps ops{static_cast<const PackedQ6K*>(w), nb, nx, rows, static_cast<const uint8_t*>(x), x_stride, y, y_stride,
                 scratch};
  RunTileSchedule(ops, (rows + kRows - 1) / kRows, nb, chunks);
  _tile_release();
}

}  // namespace

// The tables: Avx512Kernels' with the packed layout added.
const TypeKernels* PackedKernels(TensorType type, bool amx) {
  auto with = [](TensorType t, auto k, bool tiles) {
    using K = decltype(k);
    TypeKernels table = *Avx512Kernels(t);
    table.packed_bytes = PackedBytes<K>;
    table.pack = PackMatrix<K>;
    if constexpr (std::is_same_v<K, Q6K>) {
      table.gemm_packed = tiles ? GemmAmxQ6K : GemmVnni<K>;
    } else {
      table.gemm_packed = tiles ? GemmAmx<K> : GemmVnni<K>;
    }
    return table;
  };
  static const TypeKernels kQ4_K = with(TensorType::kQ4_K, Q4K{}, false);
  static const TypeKernels kQ4_KAmx = with(TensorType::kQ4_K, Q4K{}, true);
  static const TypeKernels kQ6_K = with(TensorType::kQ6_K, Q6K{}, false);
  static const TypeKernels kQ6_KAmx = with(TensorType::kQ6_K, Q6K{}, true);
  switch (type) {
    case TensorType::kQ4_K: return amx ? &kQ4_KAmx : &kQ4_K;
    case TensorType::kQ6_K: return amx ? &kQ6_KAmx : &kQ6_K;
    default: return nullptr;
  }
}

}  // namespace appliance::runtime::kernels::internal
