// AVX-512 kernels (F, BW, VL, DQ and VNNI, as on Ice Lake and Sapphire
// Rapids Xeons): the quantized dot products of Q4_0, Q8_0, Q4_K, Q5_K and
// Q6_K as register tiles of one weight row against up to kMaxTileX activation
// rows, and the two activation quantizers. As in kernels_avx2.cpp every
// function carries its own target attribute and the dispatcher hands them out
// only after CPUID said yes; the other types use the AVX2 table.
//
// Tiles: a weight block is unpacked once (nibbles, high bits, scales) and then
// multiplied with the matching block of every activation row of the tile, so
// concurrent decodes (several rows) and prefill (many) read and unpack each
// weight block once per tile instead of once per row. Every activation row has
// its own accumulators and sees the same sequence of operations whatever the
// tile's width, so vec_dot (a 1-row tile) and gemm give bit-identical results.
//
// Integer arithmetic (K-quants): vpdpbusd multiplies unsigned weight bytes
// with signed activation bytes and sums four products per int32 lane (at most
// 4 * 63 * 127, an int16); two pieces' lanes are packed to int16 and meet
// their sub-blocks' scales in one vpdpwssd (int16 pairs times int16 scales,
// accumulated in int32). That is one multiply instruction per 64 products
// and activation row plus one per 128 for the scales, where maddubs followed
// by vpdpwssd took two per 64. Q8_0/Q8_K activations are never -128. The *_0
// types (one float scale per 32 elements) use 256-bit vectors and vpdpbusd
// on |w| and sign-moved activations, like the AVX2 kernels' maddubs trick.
//
// The quantizers compute exactly what the portable ones do (same operations
// per element, same rounding), so activations are identical on every path.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <utility>

#include "runtime/kernels/internal.h"

// GCC 12's AVX-512 intrinsics build their "undefined" vectors from a
// self-initialized variable, which -Wuninitialized reports wherever they are
// inlined (GCC bug 105593, fixed in GCC 13); there is nothing uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define APPLIANCE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

namespace appliance::runtime::kernels::internal {
namespace {

// Activation rows per tile: each needs two registers (int32 sums of the
// current block, float accumulator) next to the unpacked weight block.
constexpr int kMaxTileX = 8;
// Weight rows per panel (in bytes): the panel stays in L1 while the groups
// of kMaxTileX activation rows pass it.
constexpr size_t kPanelBytes = 16 << 10;

APPLIANCE_AVX512 inline float F16(const uint8_t* p) { return _cvtsh_ss(LoadU16(p)); }

APPLIANCE_AVX512 inline float Hsum(__m512 v) { return _mm512_reduce_add_ps(v); }
APPLIANCE_AVX512 inline float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

APPLIANCE_AVX512 inline __m512i Load64(const void* p) { return _mm512_loadu_si512(p); }
APPLIANCE_AVX512 inline __m256i Load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
// The same 32 bytes in both halves of a 512-bit register.
APPLIANCE_AVX512 inline __m512i Broadcast32(const void* p) { return _mm512_broadcast_i64x4(Load32(p)); }
// A 512-bit vector of int16: `lo` in the lower 16 lanes, `hi` in the upper 16.
APPLIANCE_AVX512 inline __m512i Halves16(short lo, short hi) {
  return _mm512_inserti64x4(_mm512_set1_epi16(lo), _mm256_set1_epi16(hi), 1);
}

// --- Q4_K / Q5_K ---

// vpermw indices spreading scales over two pieces' packed sums: vpackssdw
// interleaves the pieces per 128-bit chunk c, int16 lanes 8c..8c+3 holding
// the first piece's int32 lanes 4c..4c+3, lanes 8c+4..8c+7 the second's.
// Lane l of a piece sums elements 4l..4l+3, so its scale is that of
// sub-block l / 8 (Q4_K/Q5_K: 32 elements per scale) or group l / 4 (Q6_K: 16).
template <int kLanesPerScale>
constexpr std::array<short, 32> PackedScaleIndex(int first_piece) {
  constexpr int kScalesPerPiece = 16 / kLanesPerScale;
  std::array<short, 32> index{};
  for (int k = 0; k < 32; ++k) {
    const int piece = first_piece + (k % 8 < 4 ? 0 : 1);
    const int lane = 4 * (k / 8);  // the chunk's first int32 lane
    index[static_cast<size_t>(k)] = static_cast<short>(kScalesPerPiece * piece + lane / kLanesPerScale);
  }
  return index;
}
alignas(64) constexpr std::array<short, 32> kPackedScales01 = PackedScaleIndex<8>(0);
alignas(64) constexpr std::array<short, 32> kPackedScales23 = PackedScaleIndex<8>(2);
alignas(64) constexpr std::array<short, 32> kQ6PackedScales01 = PackedScaleIndex<4>(0);
alignas(64) constexpr std::array<short, 32> kQ6PackedScales23 = PackedScaleIndex<4>(2);

// sum plus the scaled products of a K-quant block's four 64-element pieces
// q[0..3] (unsigned weights) with the activations qs[0..256): vpdpbusd per
// piece, pieces (0, 1) and (2, 3) packed to int16, each pair times its
// scales (vpermw of PackedScaleIndex) in one vpdpwssd. Exact in int32.
APPLIANCE_AVX512 inline __m512i ScaledPieceSums(__m512i sum, const __m512i (&q)[4], const int8_t* qs, __m512i scale01,
                                                __m512i scale23) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i s01 =
      _mm512_packs_epi32(_mm512_dpbusd_epi32(zero, q[0], Load64(qs)), _mm512_dpbusd_epi32(zero, q[1], Load64(qs + 64)));
  const __m512i s23 = _mm512_packs_epi32(_mm512_dpbusd_epi32(zero, q[2], Load64(qs + 128)),
                                         _mm512_dpbusd_epi32(zero, q[3], Load64(qs + 192)));
  return _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sum, s01, scale01), s23, scale23);
}

// The 6-bit scales (bytes 0-7) and mins (bytes 8-15) of a Q4_K/Q5_K block,
// unpacked from its 12 bytes as UnpackScalesMinsK4 does, in vector registers
// (a dozen vector instructions instead of ~25 scalar ones and the moves).
//   sc[j] = q[j] & 63,                       m[j] = q[j + 4] & 63        (j < 4)
//   sc[j] = (q[j + 4] & 15) | (q[j - 4] >> 6) << 4,
//   m[j]  = (q[j + 4] >> 4) | (q[j] >> 6) << 4                           (j >= 4)
// `q` is read as 16 bytes; the 4 past the scales belong to the same block.
APPLIANCE_AVX512 inline __m128i ScalesMinsK4(const uint8_t* q) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  // Low bits: q[j] for sc j < 4, q[j + 4] everywhere else.
  const __m128i low_src = _mm_shuffle_epi8(v, _mm_set_epi8(11, 10, 9, 8, 7, 6, 5, 4, 11, 10, 9, 8, 3, 2, 1, 0));
  // The mins j >= 4 take the high nibble: shift their 32-bit lane down 4.
  const __m128i low = _mm_and_si128(_mm_srlv_epi32(low_src, _mm_set_epi32(4, 0, 0, 0)),
                                    _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
  // High bits (j >= 4): the top two bits of q[j - 4] (scales) and q[j] (mins), moved to bits 4-5.
  const __m128i high_src = _mm_shuffle_epi8(v, _mm_set_epi8(7, 6, 5, 4, -1, -1, -1, -1, 3, 2, 1, 0, -1, -1, -1, -1));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(high_src, 2), _mm_set1_epi8(0x30));
  return _mm_or_si128(low, high);
}

// A super-block in 4 pieces of 64 elements: piece p is sub-blocks 2p (the low
// nibbles of qs[32p, 32p + 32)) and 2p + 1 (their high nibbles), which is also
// the order of the activations qs[64p, 64p + 64).
template <typename Block>
struct QK4 {
  static constexpr bool kFiveBit = std::is_same_v<Block, BlockQ5_K>;
  static constexpr int64_t kBlockElems = kQKK;
  using W = Block;
  using X = BlockQ8_K;
  using Acc = __m512;

  template <int G>
  APPLIANCE_AVX512 static void Dot(const W& w, const X* const (&x)[G], Acc (&acc)[G]) {
    const __m128i u = ScalesMinsK4(w.scales);
    const __m512i sc16 = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(u));
    // m[s] in int16 lanes 2s and 2s + 1, to meet Q8_K's bsums[2s] and bsums[2s + 1].
    const __m256i m16 = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(u, _mm_set_epi8(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8)));
    __m512i hbits = _mm512_setzero_si512();
    if constexpr (kFiveBit) hbits = Broadcast32(w.qh);
    // The four pieces' weights, low nibbles in the lower half, high nibbles
    // (shifted down 4) in the upper.
    __m512i q[4];
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) {
      q[p] = _mm512_and_si512(_mm512_srlv_epi16(Broadcast32(w.qs + 32 * p), Halves16(0, 4)), _mm512_set1_epi8(0x0F));
      if constexpr (kFiveBit) {
        // Bit s of qh[l] is bit 4 of element 32s + l: bit 2p for the lower half, 2p + 1 for the upper.
        const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8(static_cast<char>(1u << (2 * p))),
                                               _mm256_set1_epi8(static_cast<char>(1u << (2 * p + 1))), 1);
        q[p] = _mm512_mask_add_epi8(q[p], _mm512_test_epi8_mask(hbits, bit), q[p], _mm512_set1_epi8(16));
      }
    }
    // vpdpbusd sums four products per int32 lane: lanes 0-7 of piece p are
    // sub-block 2p, lanes 8-15 sub-block 2p + 1 (|sum| <= 4 * 31 * 127, an
    // int16). Two pieces' sums packed to int16 meet their sub-blocks' scales
    // in one vpdpwssd; vpackssdw interleaves the pieces per 128-bit chunk c:
    // int16 lanes 8c..8c+3 are piece a's lanes 4c..4c+3, 8c+4..8c+7 piece b's.
    const __m512i scale01 = _mm512_permutexvar_epi16(_mm512_load_si512(kPackedScales01.data()), sc16);
    const __m512i scale23 = _mm512_permutexvar_epi16(_mm512_load_si512(kPackedScales23.data()), sc16);
    __m512i sumi[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) sumi[g] = ScaledPieceSums(_mm512_setzero_si512(), q, x[g]->qs, scale01, scale23);
    // sum = d dy sum_s sc_s sum(q qy) - dmin dy sum_s m_s sum(qy) as one
    // vector: the scaled sums folded to 8 int32 lanes (exact) in the lower
    // half, the mins term's 8 lanes in the upper, times [d | -dmin] dy. One
    // conversion and one FMA per activation row and block instead of two each.
    const __m512 d_dmin = _mm512_insertf32x8(_mm512_set1_ps(F16(w.d)), _mm256_set1_ps(-F16(w.dmin)), 1);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const __m256i mins = _mm256_madd_epi16(Load32(x[g]->bsums), m16);
      const __m256i sums =
          _mm256_add_epi32(_mm512_castsi512_si256(sumi[g]), _mm512_extracti64x4_epi64(sumi[g], 1));
      const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(sums), mins, 1);
      acc[g] = _mm512_fmadd_ps(_mm512_mul_ps(d_dmin, _mm512_set1_ps(x[g]->d)), _mm512_cvtepi32_ps(both), acc[g]);
    }
  }
};

// --- Q6_K ---

// Half h of a super-block (128 elements) in 2 pieces of 64: rows 0 and 1
// (low nibbles of ql[64h, 64h + 64) with bits 0-1 and 2-3 of qh[32h + l]),
// then rows 2 and 3 (high nibbles, bits 4-5 and 6-7): again the order of the
// activations. q is unsigned 6-bit; the -32 comes from Q8_K's group sums.
struct Q6K {
  static constexpr int64_t kBlockElems = kQKK;
  using W = BlockQ6_K;
  using X = BlockQ8_K;
  using Acc = __m512;

  template <int G>
  APPLIANCE_AVX512 static void Dot(const W& w, const X* const (&x)[G], Acc (&acc)[G]) {
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales)));
    const __m512i sc16 = _mm512_castsi256_si512(sc);
    // sum_g sc_g sum_{i in g} (q_i - 32) y_i = sum_i sc q y - sum_g (32 sc_g) bsums_g;
    // |32 sc_g| <= 4096 fits int16.
    const __m512i offset = _mm512_zextsi256_si512(_mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc, 5)));
    __m512i sumi[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g)
      sumi[g] = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(Load32(x[g]->bsums)), offset);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m2 = _mm512_set1_epi8(0x30);
    __m512i q[4];  // pieces 2h and 2h + 1 from half h
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i lo = Load64(w.ql + 64 * h);
      const __m512i hi = Broadcast32(w.qh + 32 * h);
      q[2 * h] = _mm512_or_si512(_mm512_and_si512(lo, m4), _mm512_and_si512(_mm512_sllv_epi16(hi, Halves16(4, 2)), m2));
      q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(lo, 4), m4),
                                     _mm512_and_si512(_mm512_srlv_epi16(hi, Halves16(0, 2)), m2));
    }
    // As in QK4: four products per int32 lane (|sum| <= 4 * 63 * 127, an
    // int16), two pieces packed, then their groups' scales in one vpdpwssd.
    // Lane group c (lanes 4c..4c+3) of piece p is scale group 4p + c.
    const __m512i scale01 = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6PackedScales01.data()), sc16);
    const __m512i scale23 = _mm512_permutexvar_epi16(_mm512_load_si512(kQ6PackedScales23.data()), sc16);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) sumi[g] = ScaledPieceSums(sumi[g], q, x[g]->qs, scale01, scale23);
    const __m512 d = _mm512_set1_ps(F16(w.d));
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      acc[g] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x[g]->d)), _mm512_cvtepi32_ps(sumi[g]), acc[g]);
    }
  }
};

// --- Q4_0 / Q8_0 against Q8_0 ---

// The 32 signed weights of a block, in element order.
APPLIANCE_AVX512 inline __m256i SignedValues(const BlockQ4_0& b) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}
APPLIANCE_AVX512 inline __m256i SignedValues(const BlockQ8_0& b) { return Load32(b.qs); }

// vpdpbusd on |w| (unsigned; 128 for a Q8_0 weight of -128) and the
// activations with w's sign moved onto them.
template <typename Block>
struct Q32 {
  static constexpr int64_t kBlockElems = kQK;
  using W = Block;
  using X = BlockQ8_0;
  using Acc = __m256;

  template <int G>
  APPLIANCE_AVX512 static void Dot(const W& w, const X* const (&x)[G], Acc (&acc)[G]) {
    const __m256i q = SignedValues(w);
    const __m256i abs_q = _mm256_sign_epi8(q, q);
    const __m256 d = _mm256_set1_ps(F16(w.d));
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), abs_q, _mm256_sign_epi8(Load32(x[g]->qs), q));
      acc[g] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(F16(x[g]->d))), _mm256_cvtepi32_ps(p), acc[g]);
    }
  }
};

// --- tiles ---

// One weight row (nb blocks) against G activation rows x + g * x_stride:
// y[g * y_stride] for g < G.
template <typename K, int G>
APPLIANCE_AVX512 void Tile(int64_t nb, const typename K::W* w, const uint8_t* x, size_t x_stride, float* y,
                           int64_t y_stride) {
  using X = typename K::X;
  typename K::Acc acc[G] = {};
  const X* rows[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) rows[g] = reinterpret_cast<const X*>(x + static_cast<size_t>(g) * x_stride);
  for (int64_t b = 0; b < nb; ++b) {
    PrefetchAhead<sizeof(typename K::W)>(w + b);
    const X* xb[G];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) xb[g] = rows[g] + b;
    K::template Dot<G>(w[b], xb, acc);
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) y[g * y_stride] = Hsum(acc[g]);
}

template <typename K>
using TileFn = void (*)(int64_t, const typename K::W*, const uint8_t*, size_t, float*, int64_t);

template <typename K, int... G>
constexpr std::array<TileFn<K>, sizeof...(G)> MakeTiles(std::integer_sequence<int, G...>) {
  return {Tile<K, G + 1>...};
}

template <typename K>
APPLIANCE_AVX512 void Gemm(int64_t n, const void* w, size_t w_stride, int64_t rows, const void* x, size_t x_stride,
                           int64_t nx, float* y, int64_t y_stride) {
  static constexpr std::array<TileFn<K>, kMaxTileX> kTiles = MakeTiles<K>(std::make_integer_sequence<int, kMaxTileX>());
  const int64_t nb = n / K::kBlockElems;
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  const uint8_t* xb = static_cast<const uint8_t*>(x);
  const int64_t panel = std::max<int64_t>(1, static_cast<int64_t>(kPanelBytes / std::max<size_t>(w_stride, 1)));
  for (int64_t r0 = 0; r0 < rows; r0 += panel) {
    const int64_t r1 = std::min(rows, r0 + panel);
    for (int64_t j0 = 0; j0 < nx; j0 += kMaxTileX) {
      const TileFn<K> tile = kTiles[static_cast<size_t>(std::min<int64_t>(kMaxTileX, nx - j0) - 1)];
      for (int64_t i = r0; i < r1; ++i) {
        tile(nb, reinterpret_cast<const typename K::W*>(wb + static_cast<size_t>(i) * w_stride),
             xb + static_cast<size_t>(j0) * x_stride, x_stride, y + j0 * y_stride + i, y_stride);
      }
    }
  }
}

template <typename K>
APPLIANCE_AVX512 float VecDot(int64_t n, const void* w, const void* x) {
  float y = 0;
  Tile<K, 1>(n / K::kBlockElems, static_cast<const typename K::W*>(w), static_cast<const uint8_t*>(x), 0, &y, 0);
  return y;
}

// --- activation quantizers ---

// RoundToInt8 on 16 lanes: NaN -> 0, clamp to [-127, 127], round half to even.
APPLIANCE_AVX512 inline __m512i RoundToInt(__m512 v) {
  v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
  v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.f)), _mm512_set1_ps(127.f));
  return _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// max |x| over 16-float vectors; a NaN lane leaves the maximum alone (vmaxps
// returns its second operand when either is NaN), as std::fmax and the
// portable `>` comparison skip NaN.
APPLIANCE_AVX512 inline __m512 MaxAbs(__m512 v, __m512 max) { return _mm512_max_ps(_mm512_abs_ps(v), max); }

APPLIANCE_AVX512 void Q8_KFromFloat(const float* src, void* dst, int64_t n) {
  BlockQ8_K* y = static_cast<BlockQ8_K*>(dst);
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const float* x = src + b * kQKK;
    __m512 vmax = _mm512_setzero_ps();
    for (int i = 0; i < 16; ++i) vmax = MaxAbs(_mm512_loadu_ps(x + 16 * i), vmax);
    const float amax = _mm512_reduce_max_ps(vmax);
    if (amax == 0.0f) {
      y[b].d = 0;
      std::memset(y[b].qs, 0, sizeof y[b].qs);
      std::memset(y[b].bsums, 0, sizeof y[b].bsums);
      continue;
    }
    // The first element of that magnitude, with its sign (ggml's choice).
    float max = amax;
    for (int i = 0; i < 16; ++i) {
      const __mmask16 hit =
          _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * i)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
      if (hit != 0) {
        max = x[16 * i + __builtin_ctz(hit)];
        break;
      }
    }
    const float iscale = -127.f / max;
    // A group of 16 is one vector: its sum is Q8_K's bsums entry.
    for (int i = 0; i < 16; ++i) {
      const __m512i q = RoundToInt(_mm512_mul_ps(_mm512_set1_ps(iscale), _mm512_loadu_ps(x + 16 * i)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16 * i), _mm512_cvtepi32_epi8(q));
      y[b].bsums[i] = static_cast<int16_t>(_mm512_reduce_add_epi32(q));
    }
    y[b].d = 1 / iscale;
  }
}

APPLIANCE_AVX512 void Q8_0FromFloat(const float* src, void* dst, int64_t n) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kQ8Block; ++b, p += kQ8BlockBytes) {
    const __m512 x0 = _mm512_loadu_ps(src + b * kQ8Block);
    const __m512 x1 = _mm512_loadu_ps(src + b * kQ8Block + 16);
    const float amax = _mm512_reduce_max_ps(MaxAbs(x1, MaxAbs(x0, _mm512_setzero_ps())));
    const uint16_t d = Fp32ToFp16(amax / 127.f);
    std::memcpy(p, &d, 2);
    const __m512 id = _mm512_set1_ps(amax != 0.0f ? 127.f / amax : 0.0f);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 2), _mm512_cvtepi32_epi8(RoundToInt(_mm512_mul_ps(x0, id))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p + 18), _mm512_cvtepi32_epi8(RoundToInt(_mm512_mul_ps(x1, id))));
  }
}

// --- attention primitives (VecKernels) ---

// Sixteen KV cache elements as floats: F32 as they are, F16 widened.
APPLIANCE_AVX512 inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
APPLIANCE_AVX512 inline __m512 Load16(const uint16_t* p) { return _mm512_cvtph_ps(Load32(p)); }

// Heads of 16, 32, 64 or 128 elements are kept in registers (q, or the
// output's partial sums); other sizes take the AVX2 kernels.

// r[j] = the sum of a[j]'s 16 lanes, for j < 16: a transposing tree of
// unpack/shuffle + add (45 instructions for 16 sums, against ~6 per
// horizontal sum). Each sum sees only its own lanes, in an order that does
// not depend on the other vectors, so a key's score is the same in a full
// group of 16 and in the tail.
APPLIANCE_AVX512 inline __m512 SumEach16(const __m512 (&a)[16]) {
  __m512 b[8];  // per 128-bit lane: keys (2i, 2i + 1, 2i, 2i + 1)
  for (int i = 0; i < 8; ++i) {
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  }
  __m512 c[4];  // per 128-bit lane: keys 4i..4i+3
  for (int i = 0; i < 4; ++i) {
    const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
    const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
    c[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  __m512 d[2];  // 128-bit lanes: keys 8i..8i+3 twice, then 8i+4..8i+7 twice
  for (int i = 0; i < 2; ++i) {
    d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Scores of 16 keys at a time: per key one FMA chain over the head's kNv
// vectors, then SumEach16. The tail group's missing keys are zero vectors.
template <int kNv, typename T>
APPLIANCE_AVX512 void DotRowsN(const float* q, const T* k, int64_t stride, int64_t count, float* out) {
  __m512 vq[kNv];
  for (int c = 0; c < kNv; ++c) vq[c] = _mm512_loadu_ps(q + 16 * c);
  for (int64_t t0 = 0; t0 < count; t0 += 16) {
    const int keys = static_cast<int>(std::min<int64_t>(16, count - t0));
    __m512 acc[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      acc[j] = _mm512_setzero_ps();
      const T* kt = k + (t0 + std::min(j, keys - 1)) * stride;  // in bounds; unused when j >= keys
#pragma GCC unroll 8
      for (int c = 0; c < kNv; ++c) acc[j] = _mm512_fmadd_ps(vq[c], Load16(kt + 16 * c), acc[j]);
    }
    _mm512_mask_storeu_ps(out + t0, static_cast<__mmask16>((1u << keys) - 1), SumEach16(acc));
  }
}

template <typename T>
APPLIANCE_AVX512 void DotRows(int64_t n, const float* q, const T* k, int64_t stride, int64_t count, float* out) {
  switch (n) {
    case 16: return DotRowsN<1>(q, k, stride, count, out);
    case 32: return DotRowsN<2>(q, k, stride, count, out);
    case 64: return DotRowsN<4>(q, k, stride, count, out);
    case 128: return DotRowsN<8>(q, k, stride, count, out);
    default: break;
  }
  const VecKernels& avx2 = *Avx2Vec();
  if constexpr (std::is_same_v<T, float>) {
    avx2.dot_rows_f32(n, q, k, stride, count, out);
  } else {
    avx2.dot_rows_f16(n, q, k, stride, count, out);
  }
}

// out += sum_t p[t] v[t]: the head's kNv vectors in registers, two FMA
// chains per vector (even and odd keys, added at the end) so that the adds
// of consecutive keys overlap.
template <int kNv, typename T>
APPLIANCE_AVX512 void AxpyRowsN(const float* p, const T* v, int64_t stride, int64_t count, float* out) {
  __m512 even[kNv], odd[kNv];
  for (int c = 0; c < kNv; ++c) {
    even[c] = _mm512_loadu_ps(out + 16 * c);
    odd[c] = _mm512_setzero_ps();
  }
  int64_t t = 0;
  for (; t + 2 <= count; t += 2) {
    const __m512 p0 = _mm512_set1_ps(p[t]), p1 = _mm512_set1_ps(p[t + 1]);
    const T* v0 = v + t * stride;
    const T* v1 = v0 + stride;
#pragma GCC unroll 8
    for (int c = 0; c < kNv; ++c) {
      even[c] = _mm512_fmadd_ps(p0, Load16(v0 + 16 * c), even[c]);
      odd[c] = _mm512_fmadd_ps(p1, Load16(v1 + 16 * c), odd[c]);
    }
  }
  if (t < count) {
    const __m512 p0 = _mm512_set1_ps(p[t]);
    for (int c = 0; c < kNv; ++c) even[c] = _mm512_fmadd_ps(p0, Load16(v + t * stride + 16 * c), even[c]);
  }
  for (int c = 0; c < kNv; ++c) _mm512_storeu_ps(out + 16 * c, _mm512_add_ps(even[c], odd[c]));
}

template <typename T>
APPLIANCE_AVX512 void AxpyRows(int64_t n, const float* p, const T* v, int64_t stride, int64_t count, float* out) {
  switch (n) {
    case 16: return AxpyRowsN<1>(p, v, stride, count, out);
    case 32: return AxpyRowsN<2>(p, v, stride, count, out);
    case 64: return AxpyRowsN<4>(p, v, stride, count, out);
    case 128: return AxpyRowsN<8>(p, v, stride, count, out);
    default: break;
  }
  const VecKernels& avx2 = *Avx2Vec();
  if constexpr (std::is_same_v<T, float>) {
    avx2.axpy_rows_f32(n, p, v, stride, count, out);
  } else {
    avx2.axpy_rows_f16(n, p, v, stride, count, out);
  }
}

template <typename K>
TypeKernels Tiled(TensorType type, TensorType vec_dot_type, void (*from_float)(const float*, void*, int64_t)) {
  return {type, vec_dot_type, Avx2Kernels(type)->to_float, from_float, VecDot<K>, Gemm<K>, 0};
}

}  // namespace

// Dequantization (to_float) stays AVX2's: it only serves the float paths, and
// sharing it keeps the dequantized floats identical on both tiers.
const TypeKernels* Avx512Kernels(TensorType type) {
  static const TypeKernels kQ8_K = {TensorType::kQ8_K,
                                    TensorType::kQ8_K,
                                    PortableKernels(TensorType::kQ8_K)->to_float,
                                    Q8_KFromFloat,
                                    nullptr,
                                    nullptr,
                                    false};
  static const TypeKernels kQ8_0 = Tiled<Q32<BlockQ8_0>>(TensorType::kQ8_0, TensorType::kQ8_0, Q8_0FromFloat);
  static const TypeKernels kQ4_0 = Tiled<Q32<BlockQ4_0>>(TensorType::kQ4_0, TensorType::kQ8_0, nullptr);
  static const TypeKernels kQ4_K = Tiled<QK4<BlockQ4_K>>(TensorType::kQ4_K, TensorType::kQ8_K, nullptr);
  static const TypeKernels kQ5_K = Tiled<QK4<BlockQ5_K>>(TensorType::kQ5_K, TensorType::kQ8_K, nullptr);
  static const TypeKernels kQ6_K = Tiled<Q6K>(TensorType::kQ6_K, TensorType::kQ8_K, nullptr);
  switch (type) {
    case TensorType::kQ8_K: return &kQ8_K;
    case TensorType::kQ8_0: return &kQ8_0;
    case TensorType::kQ4_0: return &kQ4_0;
    case TensorType::kQ4_K: return &kQ4_K;
    case TensorType::kQ5_K: return &kQ5_K;
    case TensorType::kQ6_K: return &kQ6_K;
    default: return nullptr;
  }
}

// Attention's dot and axpy rows on 512-bit vectors; the rest is AVX2's.
const VecKernels* Avx512Vec() {
  static const VecKernels kVec = [] {
    VecKernels v = *Avx2Vec();
    v.dot_rows_f32 = DotRows<float>;
    v.axpy_rows_f32 = AxpyRows<float>;
    v.dot_rows_f16 = DotRows<uint16_t>;
    v.axpy_rows_f16 = AxpyRows<uint16_t>;
    return v;
  }();
  return &kVec;
}

}  // namespace appliance::runtime::kernels::internal
