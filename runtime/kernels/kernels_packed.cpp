// Packed Q4_K weights and their matrix products on AVX-512 VNNI and on AMX
// tiles.
//
// Why a second layout: the row-major GGUF layout makes a dot product reduce
// across one row, so every block ends in horizontal work, and the tile unit
// wants the opposite orientation. At load, each Q4_K matrix is rewritten once
// in groups of kPackRows (16) rows whose blocks are interleaved dword by
// dword: dword i of a packed block holds qs dword i of each of the 16 rows, so
// one 512-bit vector is 8 elements (two nibbles each of 4 bytes) x 16 rows.
// The nibbles stay nibbles: 2368 bytes per 16 rows x 256 elements against
// the blocks' 2304.
//
// Both products compute, for weight row m and activation row n, the exact
// integer sum S of each 32-element sub-block, then per block the same vector
// operations over the 16 weight rows (Q4K::Finish), so every output is
// bit-identical whatever the batch, the path and the split into calls:
//  - VNNI: vpdpbusd of 4 elements x 16 rows with one broadcast activation
//    dword, eight in a chain = S for 16 rows at once;
//  - AMX: tdpbsud with the weights as the B tile (16 rows x 64 elements, the
//    nibbles of one chunk split to bytes) and the activations as a
//    block-diagonal A tile (one row per activation row and sub-block, its
//    sub-block's bytes in place, zeros elsewhere): C[(n, sub-block)][m] = S.
// The packed products differ from the row-major kernels in float rounding
// (those keep partial sums across a row), within the tests' tolerance.
//
// Q6_K was packed the same way (16 groups of 16, 6-bit values regrouped per
// chunk) and measured slower than its row-major tiles on both paths (16
// vpmulld per activation row and block): it stays row-major.
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <type_traits>
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
  uint32_t qs[32][kRows];  // qs dword i of each row (nibbles as in the block)
  uint32_t sm[4][kRows];   // dword i of (scales[0..8), mins[0..8)) unpacked to bytes
  uint16_t d[kRows];       // F16
  uint16_t dmin[kRows];    // F16
};
static_assert(sizeof(PackedQ4K) % 64 == 0);

// Per block, vectors over the 16 rows: the sub-blocks' scales (6-bit
// integers, as floats), the mins as int16 pairs (m_2j, m_2j+1), and the
// float scales.
struct alignas(64) BlockScales {
  float scale[8][kRows];
  int32_t pairs[4][kRows];
  float d[kRows];
  float dmin[kRows];
};

APPLIANCE_AVX512 inline __m512i ByteU(__m512i v, int byte) {
  return _mm512_and_si512(_mm512_srli_epi32(v, 8 * byte), _mm512_set1_epi32(0xff));
}
// Two int32 vectors (values within int16) as int16 pairs (lo, hi) per lane.
APPLIANCE_AVX512 inline __m512i Pair16(__m512i lo, __m512i hi) {
  return _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(0xffff)), _mm512_slli_epi32(hi, 16));
}
APPLIANCE_AVX512 inline __m512i Load(const uint32_t* p) { return _mm512_load_si512(p); }

// --- Q4_K ---

struct Q4K {
  using Block = BlockQ4_K;
  using Packed = PackedQ4K;
  static constexpr int kSubPerChunk = 2;  // sub-blocks of 32 per chunk

  static void Pack(const Block* const (&row)[kRows], Packed& out) {
    for (int m = 0; m < kRows; ++m) {
      const Block* b = row[m];
      if (b == nullptr) continue;  // past the matrix: stays zero
      for (int i = 0; i < 32; ++i) out.qs[i][m] = LoadU32(b->qs + 4 * i);
      const ScalesMinsK4 u = UnpackScalesMinsK4(b->scales);
      out.sm[0][m] = static_cast<uint32_t>(u.scales);
      out.sm[1][m] = static_cast<uint32_t>(u.scales >> 32);
      out.sm[2][m] = static_cast<uint32_t>(u.mins);
      out.sm[3][m] = static_cast<uint32_t>(u.mins >> 32);
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

  APPLIANCE_AVX512 static void Scales(const Packed& p, BlockScales& s) {
    PrefetchAhead<sizeof p.sm + sizeof p.d + sizeof p.dmin>(p.sm);
    __m512i v[4];
    for (int i = 0; i < 4; ++i) v[i] = Load(p.sm[i]);
    for (int k = 0; k < 8; ++k) _mm512_store_ps(s.scale[k], _mm512_cvtepi32_ps(ByteU(v[k / 4], k % 4)));
    // (m_2j, m_2j+1): bytes 2j and 2j + 1 of the mins.
    for (int j = 0; j < 4; ++j) {
      _mm512_store_si512(s.pairs[j], Pair16(ByteU(v[2 + j / 2], 2 * (j % 2)), ByteU(v[2 + j / 2], 2 * (j % 2) + 1)));
    }
    _mm512_store_ps(s.d, _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p.d))));
    _mm512_store_ps(s.dmin, _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p.dmin))));
  }

  // Int16 pairs (sum of sub-block 2j, of 2j + 1) for j < 4; a sub-block's sum
  // is bsums[2s] + bsums[2s + 1], |sum| <= 32 * 127.
  static void ActPairs(const BlockQ8_K& x, int32_t (&pairs)[4]) {
    for (int j = 0; j < 4; ++j) {
      const int lo = x.bsums[4 * j] + x.bsums[4 * j + 1];
      const int hi = x.bsums[4 * j + 2] + x.bsums[4 * j + 3];
      pairs[j] = static_cast<int32_t>((static_cast<uint32_t>(lo) & 0xffffu) | static_cast<uint32_t>(hi) << 16);
    }
  }

  // t += scale_s S_s for sub-block s's integer sum S: a float FMA, one
  // uop, where vpmulld takes two on the busiest port. Every term is an exact
  // float (|S| <= 32 * 15 * 127, scale < 64: below 2^24); the sum of a
  // block's eight rounds the same way on every path, as each adds them in
  // sub-block order.
  APPLIANCE_AVX512 static __m512 AddScaled(__m512 t, __m512i sum, const BlockScales& s, int sub) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_load_ps(s.scale[sub]), t);
  }

  // acc += d dy T - dmin dy M, M = sum_s m_s (sub-block s's activation sum).
  APPLIANCE_AVX512 static __m512 Finish(const BlockScales& s, __m512 t, const int32_t (&xp)[4], float dy,
                                        __m512 acc) {
    __m512i mins = _mm512_setzero_si512();
    for (int j = 0; j < 4; ++j) {
      mins = _mm512_dpwssd_epi32(mins, _mm512_load_si512(s.pairs[j]), _mm512_set1_epi32(xp[j]));
    }
    const __m512 vdy = _mm512_set1_ps(dy);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_load_ps(s.d), vdy), t, acc);
    return _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_load_ps(s.dmin), vdy), _mm512_cvtepi32_ps(mins), acc);
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

template <typename K>
APPLIANCE_AVX512 void GemmVnni(int64_t n, const void* w, int64_t rows, const void* x, size_t x_stride, int64_t nx,
                               float* y, int64_t y_stride) {
  constexpr int kSub = K::kSubPerChunk, kDwords = 16 / kSub;
  const int64_t nb = n / kQKK;
  const auto* packed = static_cast<const typename K::Packed*>(w);
  const auto* xb = static_cast<const uint8_t*>(x);
  for (int64_t g0 = 0; g0 < rows; g0 += kRows) {
    const __mmask16 group_mask = static_cast<__mmask16>((1u << std::min<int64_t>(kRows, rows - g0)) - 1);
    const typename K::Packed* group = packed + g0 / kRows * nb;
    for (int64_t n0 = 0; n0 < nx; n0 += kVnniActs) {
      const int count = static_cast<int>(std::min<int64_t>(kVnniActs, nx - n0));
      const BlockQ8_K* act[kVnniActs];
      for (int a = 0; a < count; ++a) act[a] = reinterpret_cast<const BlockQ8_K*>(xb + static_cast<size_t>(n0 + a) * x_stride);
      __m512 acc[kVnniActs];
      for (int a = 0; a < kVnniActs; ++a) acc[a] = _mm512_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const typename K::Packed& p = group[b];
        BlockScales s;
        K::Scales(p, s);
        __m512 t[kVnniActs];
        for (int a = 0; a < kVnniActs; ++a) t[a] = _mm512_setzero_ps();
        for (int j = 0; j < kChunks; ++j) {
          __m512i wq[16];
          K::Chunk(p, j, wq);
          for (int a = 0; a < count; ++a) {
            const int8_t* qs = act[a][b].qs + 64 * j;
            for (int q = 0; q < kSub; ++q) {
              __m512i sum = _mm512_setzero_si512();
              for (int i = 0; i < kDwords; ++i) {
                int32_t dw;
                std::memcpy(&dw, qs + 4 * (kDwords * q + i), 4);
                sum = _mm512_dpbusd_epi32(sum, wq[kDwords * q + i], _mm512_set1_epi32(dw));
              }
              t[a] = K::AddScaled(t[a], sum, s, kSub * j + q);
            }
          }
        }
        for (int a = 0; a < count; ++a) {
          int32_t xp[4];
          K::ActPairs(act[a][b], xp);
          acc[a] = K::Finish(s, t[a], xp, act[a][b].d, acc[a]);
        }
      }
      for (int a = 0; a < count; ++a) _mm512_mask_storeu_ps(y + (n0 + a) * y_stride + g0, group_mask, acc[a]);
    }
  }
}

// --- AMX ---

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C of chunks 0-3; 4, 5: A; 6, 7: B (16 rows: the weights). A and
// C have `rows` rows (activation rows x sub-blocks per chunk); all rows are
// 64 bytes.
APPLIANCE_AMX void LoadTileConfig(int rows) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(t >= 6 ? 16 : rows);
    cfg.colsb[t] = 64;
  }
  // Not _tile_loadconfig: GCC 12's names only the first 8 bytes as its memory
  // operand, so the stores of the rows and colsb could be dropped as dead.
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

// A tiles of one block for up to 16 / kSub activation rows, and per row
// the pairs and dy Finish takes.
struct alignas(64) ActBlock {
  uint8_t a[kChunks][16][64];
  int32_t pairs[8][4];
  float d[8];
};

// One block of a 16-row group ready for the tiles: B tiles (natural bytes of
// each chunk) and the scales.
struct alignas(64) WeightBlock {
  uint32_t b[kChunks][16][kRows];
  BlockScales scales;
};

// C tiles of one block as stored: [chunk][activation row x sub-block][weight row].
struct alignas(64) BlockSums {
  int32_t s[kChunks][16][kRows];
};

struct AmxScratch {
  std::vector<ActBlock> acts;
  std::vector<WeightBlock> weights;
  BlockSums sums;
};
// Per thread (the pool's workers run products concurrently); grows to the
// largest call once, so steady-state decoding allocates nothing.
thread_local AmxScratch t_amx;

template <typename K>
APPLIANCE_AMX void PackActs(const uint8_t* x, size_t x_stride, int count, int64_t b, ActBlock& out) {
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
    K::ActPairs(xb, out.pairs[a]);
    out.d[a] = xb.d;
  }
}

// C tile j = A tile (chunk j) x B tile (chunk j), for j < 4, stored to `c`.
// Written out: a tile register is an immediate of the instruction, so the
// four chunks cannot be a loop; A and B alternate between two registers each
// so the next chunk's loads overlap the previous product.
APPLIANCE_AMX void Multiply(const WeightBlock& w, const ActBlock& x, BlockSums& c) {
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

// acc[a] (a < count) += the products of block w with activation rows a of x.
template <typename K, int kActs>
APPLIANCE_AMX void MultiplyAccumulate(const WeightBlock& w, const ActBlock& x, int count, BlockSums& sums,
                                      __m512 (&acc)[kActs]) {
  constexpr int kSub = K::kSubPerChunk;
  Multiply(w, x, sums);
  for (int a = 0; a < count; ++a) {
    __m512 t = _mm512_setzero_ps();
    for (int j = 0; j < kChunks; ++j) {
      for (int q = 0; q < kSub; ++q) t = K::AddScaled(t, _mm512_load_si512(sums.s[j][kSub * a + q]), w.scales, kSub * j + q);
    }
    acc[a] = K::Finish(w.scales, t, x.pairs[a], x.d[a], acc[a]);
  }
}

template <typename K>
APPLIANCE_AMX void GemmAmx(int64_t n, const void* w, int64_t rows, const void* x, size_t x_stride, int64_t nx,
                           float* y, int64_t y_stride) {
  // One activation row gains nothing from the tiles (16 rows x 64 elements
  // per tdpbsud, most of them zero) and VNNI gives the same bits.
  if (nx == 1) return GemmVnni<K>(n, w, rows, x, x_stride, nx, y, y_stride);
  constexpr int kSub = K::kSubPerChunk;
  constexpr int kActs = 16 / kSub;  // activation rows per A tile
  const int64_t nb = n / kQKK;
  const int64_t chunks = (nx + kActs - 1) / kActs;
  AmxScratch& scratch = t_amx;
  if (scratch.acts.size() < static_cast<size_t>(chunks * nb)) scratch.acts.resize(static_cast<size_t>(chunks * nb));
  const size_t weight_slots = static_cast<size_t>(chunks == 1 ? std::min<int64_t>(nb, 2) : nb);
  if (scratch.weights.size() < weight_slots) scratch.weights.resize(weight_slots);
  const auto* xb = static_cast<const uint8_t*>(x);
  for (int64_t c = 0; c < chunks; ++c) {
    const int count = static_cast<int>(std::min<int64_t>(kActs, nx - c * kActs));
    for (int64_t b = 0; b < nb; ++b) {
      PackActs<K>(xb + static_cast<size_t>(c * kActs) * x_stride, x_stride, count, b,
                  scratch.acts[static_cast<size_t>(c * nb + b)]);
    }
  }
  const auto* packed = static_cast<const typename K::Packed*>(w);
  int configured = 0;
  for (int64_t g0 = 0; g0 < rows; g0 += kRows) {
    const __mmask16 group_mask = static_cast<__mmask16>((1u << std::min<int64_t>(kRows, rows - g0)) - 1);
    const typename K::Packed* group = packed + g0 / kRows * nb;
    for (int64_t c = 0; c < chunks; ++c) {
      const int count = static_cast<int>(std::min<int64_t>(kActs, nx - c * kActs));
      if (count != configured) {
        LoadTileConfig(kSub * count);
        configured = count;
      }
      __m512 acc[kActs];
      for (int a = 0; a < kActs; ++a) acc[a] = _mm512_setzero_ps();
      // One chunk: two unpacked blocks in turn keep the scratch in L1.
      auto slot = [&](int64_t b) { return static_cast<size_t>(chunks == 1 ? b % 2 : b); };
      auto multiply_block = [&](int64_t b) {
        MultiplyAccumulate<K>(scratch.weights[slot(b)], scratch.acts[static_cast<size_t>(c * nb + b)], count,
                              scratch.sums, acc);
      };
      if (c == 0) {
        // The group's blocks are unpacked for all chunks; with the first,
        // block b's tiles run after block b + 1 is unpacked, so the tile loads
        // do not wait on the stores just made.
        for (int64_t b = 0; b < nb; ++b) {
          WeightBlock& wk = scratch.weights[slot(b)];
          for (int j = 0; j < kChunks; ++j) {
            __m512i wq[16];
            K::Chunk(group[b], j, wq);
            for (int i = 0; i < 16; ++i) _mm512_store_si512(wk.b[j][i], wq[i]);
          }
          K::Scales(group[b], wk.scales);
          if (b > 0) multiply_block(b - 1);
        }
        multiply_block(nb - 1);
      } else {
        for (int64_t b = 0; b < nb; ++b) multiply_block(b);
      }
      for (int a = 0; a < count; ++a) _mm512_mask_storeu_ps(y + (c * kActs + a) * y_stride + g0, group_mask, acc[a]);
    }
  }
  if (configured != 0) _tile_release();
}

}  // namespace

// The tables: Avx512Kernels' with the packed layout added.
const TypeKernels* PackedKernels(TensorType type, bool amx) {
  auto with = [](TensorType t, auto k, bool tiles) {
    using K = decltype(k);
    TypeKernels table = *Avx512Kernels(t);
    table.packed_bytes = PackedBytes<K>;
    table.pack = PackMatrix<K>;
    table.gemm_packed = tiles ? GemmAmx<K> : GemmVnni<K>;
    return table;
  };
  static const TypeKernels kQ4_K = with(TensorType::kQ4_K, Q4K{}, false);
  static const TypeKernels kQ4_KAmx = with(TensorType::kQ4_K, Q4K{}, true);
  switch (type) {
    case TensorType::kQ4_K: return amx ? &kQ4_KAmx : &kQ4_K;
    default: return nullptr;
  }
}

}  // namespace appliance::runtime::kernels::internal
