// One token (decode) through a bitmask-format layer on AVX-512 or AVX2: y = S x + U (V x) (or y +=),
// declared in simd.h and called by oats_bitmask_matmul / oats_bitmask_lowrank_decode (bitmask.cpp).
// The AVX-512 path is described here; the AVX2 path (its section below) walks the same way.
//
// Decode reads every weight once and does one multiply-add with it: it is limited by how fast the
// weights stream from memory. Each thread takes a contiguous range of rows (split so that every thread
// reads about the same bytes), so its values, its mask rows and its rows of U are three streams read
// front to back, each prefetched a fixed distance ahead. One row at a time: per 64 columns one 64-bit
// mask word, whose partial popcounts place four loads of the packed values, four expands (vexpandps, each
// into a freshly zeroed register: fresh_zero, simd.h) and four FMAs into four accumulators.
//
// bf16 values with VBMI2: two vpexpandw per 64 columns put the packed 16-bit values in their lanes,
// and each zmm of 32 is widened to fp32 by two unpacks with zero (bf16 << 16 is its fp32 value). The
// unpacks take 4 of every 8 columns, so x is read in that lane order (a permuted copy per call, 32 columns
// at a time; the tail of d_in % 32 columns stays in order). Without VBMI2: 16 columns at a time, widened
// and then permuted (avx512_expand). Accumulation is fp32 either way; x stays fp32.
//
// With factors: z = V x first (V's rows split over the threads, then a barrier), then each row's sparse
// sum plus U_i . z, written once. Each row's result is computed the same way whatever thread computes
// it, so the output has the same bits on any thread count.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <vector>

#include "simd.h"

namespace oats_native {
namespace {

// --------------------------------------------------------------- x where every 64-byte load stays in one line
// n floats, 64-byte aligned. The rows read x 16 lanes at a time from multiples of 16 columns: from an
// aligned copy each load touches one cache line; a load across two lines costs two (std::vector gives
// 16 bytes' alignment). One token, rows at 22.5% density in cache (AMD EPYC Zen 5): fp32 0.92 -> 0.67 ns,
// bf16 0.54 -> 0.41 ns per 16 columns.
struct AlignedFloats {
  explicit AlignedFloats(int64_t n)
      : data(n > 0 ? static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>((n * 4 + 63) / 64 * 64))) : nullptr) {
    if (n > 0 && data == nullptr) throw std::bad_alloc();
  }
  ~AlignedFloats() { std::free(data); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  float* data;
};

// x itself where it is 64-byte aligned, else its aligned copy in buf (of at least n floats).
inline const float* aligned_x(const float* x, int64_t n, AlignedFloats& buf) {
  if (reinterpret_cast<uintptr_t>(x) % 64 == 0) return x;
  std::memcpy(buf.data, x, static_cast<size_t>(n) * sizeof(float));
  return buf.data;
}

// --------------------------------------------------------------- loads that may stop at the array's end
template <bool kInside>
OATS_AVX512 inline __m512 load16(const void* values, int bf16, int64_t p, int64_t end) {
  return kInside ? avx512_load16_inside(values, bf16, p) : avx512_load16(values, bf16, p, end);
}

// 32 bf16 values from p on (zeros at and past end unless kInside).
template <bool kInside>
OATS_VBMI2 inline __m512i load32_bf16(const uint16_t* values, int64_t p, int64_t end) {
  if (kInside) return _mm512_loadu_si512(values + p);
  if (p >= end) return _mm512_setzero_si512();
  const int64_t n = end - p >= 32 ? 32 : end - p;
  return _mm512_maskz_loadu_epi16(static_cast<__mmask32>(n == 32 ? 0xFFFFFFFFu : (1u << n) - 1), values + p);
}

// vpexpandw into a freshly zeroed register (fresh_zero, simd.h).
OATS_VBMI2 inline __m512i expand_words(__mmask32 m, __m512i v) {
  return _mm512_mask_expand_epi16(_mm512_castps_si512(fresh_zero()), m, v);
}

// The mask bits of columns [c, c + count) of a row (count <= 32, c a multiple of 8), low bit first.
inline uint32_t mask_bits(const uint8_t* mrow, int64_t c, int64_t count) {
  uint32_t m = 0;
  for (int64_t b = 0; b * 8 < count; ++b) m |= static_cast<uint32_t>(mrow[c / 8 + b]) << (8 * b);
  return count == 32 ? m : m & ((1u << count) - 1);
}

// --------------------------------------------------------------- one row of S
// fp32 values (vexpandps), or bf16 values without VBMI2 (widen, then the table permute); x in order.
template <int kBf16, bool kInside>
OATS_AVX512 float sparse_row(const void* values, const uint8_t* mrow, int64_t p, int64_t end, int64_t d_in,
                             const float* x) {
  const int vb = kBf16 ? 2 : 4;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const int64_t words = d_in / 64;
  for (int64_t w = 0; w < words; ++w) {
    const uint8_t* mw = mrow + 8 * w;
    uint64_t m;
    std::memcpy(&m, mw, 8);
    const int64_t p1 = p + _mm_popcnt_u64(m & 0xFFFFull), p2 = p + _mm_popcnt_u64(m & 0xFFFFFFFFull),
                  p3 = p + _mm_popcnt_u64(m & 0xFFFFFFFFFFFFull);
    ahead(values, vb, p), ahead(values, vb, p2);  // (4 per word, one per chunk: no faster)
    if ((w & 7) == 0) _mm_prefetch(reinterpret_cast<const char*>(mw) + kMaskAhead, _MM_HINT_T0);
    const float* xw = x + 64 * w;
    const uint16_t k0 = static_cast<uint16_t>(m), k1 = static_cast<uint16_t>(m >> 16), k2 = static_cast<uint16_t>(m >> 32),
                   k3 = static_cast<uint16_t>(m >> 48);
    a0 = _mm512_fmadd_ps(avx512_expand(k0, load16<kInside>(values, kBf16, p, end), kBf16), _mm512_loadu_ps(xw), a0);
    a1 = _mm512_fmadd_ps(avx512_expand(k1, load16<kInside>(values, kBf16, p1, end), kBf16), _mm512_loadu_ps(xw + 16), a1);
    a2 = _mm512_fmadd_ps(avx512_expand(k2, load16<kInside>(values, kBf16, p2, end), kBf16), _mm512_loadu_ps(xw + 32), a2);
    a3 = _mm512_fmadd_ps(avx512_expand(k3, load16<kInside>(values, kBf16, p3, end), kBf16), _mm512_loadu_ps(xw + 48), a3);
    p += _mm_popcnt_u64(m);
  }
  const int64_t full = d_in / 16;
  for (int64_t c = 4 * words; c < full; ++c) {
    uint16_t m;
    std::memcpy(&m, mrow + 2 * c, 2);
    a0 = _mm512_fmadd_ps(avx512_expand(m, load16<kInside>(values, kBf16, p, end), kBf16), _mm512_loadu_ps(x + 16 * c),
                         a0);
    p += __builtin_popcount(m);
  }
  if (const int64_t rem = d_in % 16) {
    const __mmask16 lanes = static_cast<__mmask16>((1u << rem) - 1);
    const uint16_t m = static_cast<uint16_t>(mask_bits(mrow, 16 * full, rem));
    a1 = _mm512_fmadd_ps(avx512_expand(m, load16<kInside>(values, kBf16, p, end), kBf16),
                         _mm512_maskz_loadu_ps(lanes, x + 16 * full), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// bf16 values with VBMI2: 32 columns per vpexpandw, widened by unpacks; xp is x in unpack order.
template <bool kInside>
OATS_VBMI2 float sparse_row_bf16(const uint16_t* values, const uint8_t* mrow, int64_t p, int64_t end, int64_t d_in,
                                 const float* xp) {
  const __m512i zero = _mm512_setzero_si512();
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const int64_t words = d_in / 64;
  for (int64_t w = 0; w < words; ++w) {
    uint64_t m;
    std::memcpy(&m, mrow + 8 * w, 8);
    const int64_t p1 = p + _mm_popcnt_u64(m & 0xFFFFFFFFull);
    ahead(values, 2, p), ahead(values, 2, p1);
    if ((w & 7) == 0) _mm_prefetch(reinterpret_cast<const char*>(mrow + 8 * w) + kMaskAhead, _MM_HINT_T0);
    const __m512i e0 = expand_words(static_cast<__mmask32>(m), load32_bf16<kInside>(values, p, end));
    const __m512i e1 = expand_words(static_cast<__mmask32>(m >> 32), load32_bf16<kInside>(values, p1, end));
    const float* xw = xp + 64 * w;
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, e0)), _mm512_loadu_ps(xw), a0);
    a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, e0)), _mm512_loadu_ps(xw + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, e1)), _mm512_loadu_ps(xw + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, e1)), _mm512_loadu_ps(xw + 48), a3);
    p += _mm_popcnt_u64(m);
  }
  int64_t c = 64 * words;
  if (d_in - c >= 32) {  // one more whole group of 32 (still in unpack order)
    const uint32_t m = mask_bits(mrow, c, 32);
    const __m512i e = expand_words(m, load32_bf16<kInside>(values, p, end));
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, e)), _mm512_loadu_ps(xp + c), a0);
    a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, e)), _mm512_loadu_ps(xp + c + 16), a1);
    p += __builtin_popcount(m);
    c += 32;
  }
  if (const int64_t rem = d_in - c) {  // fewer than 32 columns, in order
    const uint32_t m = mask_bits(mrow, c, rem);
    const __m512i e = expand_words(m, load32_bf16<kInside>(values, p, end));
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(e)), 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(e, 1)), 16));
    const __mmask16 lanes_lo = static_cast<__mmask16>(rem >= 16 ? 0xFFFF : (1u << rem) - 1);
    a2 = _mm512_fmadd_ps(lo, _mm512_maskz_loadu_ps(lanes_lo, xp + c), a2);
    if (rem > 16)
      a3 = _mm512_fmadd_ps(hi, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (rem - 16)) - 1), xp + c + 16), a3);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// x in the lane order of the bf16 unpacks: in each whole group of 32 columns, first the 16 that
// _mm512_unpacklo_epi16 widens (columns 0-3, 8-11, 16-19, 24-27 of the group), then the 16 of
// unpackhi; the last len % 32 columns as they are.
void unpack_order(const float* x, int64_t len, float* out) {
  const int64_t groups = len / 32;
  for (int64_t g = 0; g < groups; ++g)
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 4; ++l)
        for (int e = 0; e < 4; ++e) out[32 * g + 16 * h + 4 * l + e] = x[32 * g + 8 * l + 4 * h + e];
  for (int64_t j = 32 * groups; j < len; ++j) out[j] = x[j];
}

// --------------------------------------------------------------- dense rows (factors, dense layers)
// a . x over len columns, the lines of a prefetched kAhead bytes ahead.
template <int64_t kAhead>
OATS_AVX512 float dense_dot_f32(const float* a, const float* x, int64_t len) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 64 <= len; j += 64) {
    for (int q = 0; q < 64; q += 16) _mm_prefetch(reinterpret_cast<const char*>(a + j + q) + kAhead, _MM_HINT_T0);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(x + j), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 16), _mm512_loadu_ps(x + j + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 32), _mm512_loadu_ps(x + j + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + j + 48), _mm512_loadu_ps(x + j + 48), a3);
  }
  for (; j < len; j += 16) {
    const __mmask16 lanes = static_cast<__mmask16>(len - j >= 16 ? 0xFFFF : (1u << (len - j)) - 1);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, a + j), _mm512_maskz_loadu_ps(lanes, x + j), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// a (bf16) . x with xp = x in unpack order (unpack_order): 32 columns per load, two unpacks.
template <int64_t kAhead>
OATS_AVX512 float dense_dot_bf16(const uint16_t* a, const float* xp, int64_t len) {
  const __m512i zero = _mm512_setzero_si512();
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 64 <= len; j += 64) {
    for (int q = 0; q < 64; q += 32) _mm_prefetch(reinterpret_cast<const char*>(a + j + q) + kAhead, _MM_HINT_T0);
    const __m512i v0 = _mm512_loadu_si512(a + j), v1 = _mm512_loadu_si512(a + j + 32);
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v0)), _mm512_loadu_ps(xp + j), a0);
    a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v0)), _mm512_loadu_ps(xp + j + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v1)), _mm512_loadu_ps(xp + j + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v1)), _mm512_loadu_ps(xp + j + 48), a3);
  }
  if (len - j >= 32) {
    const __m512i v = _mm512_loadu_si512(a + j);
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v)), _mm512_loadu_ps(xp + j), a0);
    a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v)), _mm512_loadu_ps(xp + j + 16), a1);
    j += 32;
  }
  for (; j < len; j += 16) {  // the tail, in order
    const __mmask16 lanes = static_cast<__mmask16>(len - j >= 16 ? 0xFFFF : (1u << (len - j)) - 1);
    const __m512 w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, a + j)), 16));
    a2 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(lanes, xp + j), a2);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Row k of a dense (rows x len) matrix, fp32 or bf16, against x (fp32: in order; bf16: unpack order).
template <int64_t kAhead = kFactorsAhead>
OATS_AVX512 inline float dense_row(const void* a, int bf16, int64_t k, int64_t len, const float* x) {
  return bf16 ? dense_dot_bf16<kAhead>(static_cast<const uint16_t*>(a) + k * len, x, len)
              : dense_dot_f32<kAhead>(static_cast<const float*>(a) + k * len, x, len);
}

// Row i's sparse sum, x as the row reads it (unpack order for bf16 values on VBMI2, else in order); rows
// whose values end 32 or more before the array's end load without checks.
OATS_AVX512 float sparse_row_any(const SparseLayer& L, int isa, int64_t i, const float* x) {
  const int64_t stride = (L.d_in + 7) / 8, p = L.row_offsets[i];
  const uint8_t* mrow = L.bitmask + i * stride;
  const bool inside = (i + 1 < L.d_out ? L.row_offsets[i + 1] : L.nnz) + 32 <= L.nnz;
  if (L.bf16 && isa >= kAvx512Vbmi2) {
    const auto* v = static_cast<const uint16_t*>(L.values);
    return inside ? sparse_row_bf16<true>(v, mrow, p, L.nnz, L.d_in, x)
                  : sparse_row_bf16<false>(v, mrow, p, L.nnz, L.d_in, x);
  }
  if (L.bf16)
    return inside ? sparse_row<1, true>(L.values, mrow, p, L.nnz, L.d_in, x)
                  : sparse_row<1, false>(L.values, mrow, p, L.nnz, L.d_in, x);
  return inside ? sparse_row<0, true>(L.values, mrow, p, L.nnz, L.d_in, x)
                : sparse_row<0, false>(L.values, mrow, p, L.nnz, L.d_in, x);
}

// --------------------------------------------------------------- AVX2 (no expand instruction)
// The same walk on 8-column chunks: per 64-column word, eight positions from partial popcounts (no chain
// through the position), eight loads of packed values placed into their lanes by a permutation from a
// table row (kAvx2Tables, simd.h) and zeroed elsewhere, four accumulators; bf16 values placed and widened
// by one byte shuffle (avx2_chunk). x in order.
template <int kBf16, bool kInside>
OATS_AVX2 float sparse_row_avx2(const void* values, const uint8_t* mrow, int64_t p, int64_t end, int64_t d_in,
                                const float* x) {
  const int vb = kBf16 ? 2 : 4;
  __m256 a[4];
  for (auto& v : a) v = _mm256_setzero_ps();
  const int64_t words = d_in / 64;
  for (int64_t w = 0; w < words; ++w) {
    uint64_t m;
    std::memcpy(&m, mrow + 8 * w, 8);
    int64_t q[8];
    q[0] = p;
    for (int k = 1; k < 8; ++k) q[k] = p + _mm_popcnt_u64(m & ((1ull << (8 * k)) - 1));
    ahead(values, vb, q[0]), ahead(values, vb, q[4]);
    if ((w & 7) == 0) _mm_prefetch(reinterpret_cast<const char*>(mrow + 8 * w) + kMaskAhead, _MM_HINT_T0);
    const float* xw = x + 64 * w;
    for (int k = 0; k < 8; ++k)
      a[k & 3] = _mm256_fmadd_ps(avx2_chunk<kBf16, kInside>(values, (m >> (8 * k)) & 0xFF, q[k], end),
                                 _mm256_loadu_ps(xw + 8 * k), a[k & 3]);
    p += _mm_popcnt_u64(m);
  }
  const int64_t full = d_in / 8;
  for (int64_t c = 8 * words; c < full; ++c) {
    a[0] = _mm256_fmadd_ps(avx2_chunk<kBf16, kInside>(values, mrow[c], p, end), _mm256_loadu_ps(x + 8 * c), a[0]);
    p += __builtin_popcount(mrow[c]);
  }
  if (const int64_t rem = d_in % 8) {  // x's lanes past the row are not read
    const unsigned inside_row = (1u << rem) - 1;
    const __m256i lanes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.lanes[inside_row]));
    a[1] = _mm256_fmadd_ps(avx2_chunk<kBf16, kInside>(values, mrow[full] & inside_row, p, end),
                           _mm256_maskload_ps(x + 8 * full, lanes), a[1]);
  }
  return avx2_sum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

OATS_AVX2 float sparse_row_avx2_any(const SparseLayer& L, int64_t i, const float* x) {
  const int64_t stride = (L.d_in + 7) / 8, p = L.row_offsets[i];
  const uint8_t* mrow = L.bitmask + i * stride;
  const bool inside = (i + 1 < L.d_out ? L.row_offsets[i + 1] : L.nnz) + 32 <= L.nnz;
  if (L.bf16)
    return inside ? sparse_row_avx2<1, true>(L.values, mrow, p, L.nnz, L.d_in, x)
                  : sparse_row_avx2<1, false>(L.values, mrow, p, L.nnz, L.d_in, x);
  return inside ? sparse_row_avx2<0, true>(L.values, mrow, p, L.nnz, L.d_in, x)
                : sparse_row_avx2<0, false>(L.values, mrow, p, L.nnz, L.d_in, x);
}

// --------------------------------------------------------------- one token, either path
// What differs between the paths: how a row of S and a dense row are read, and whether bf16 rows read x
// in unpack order (AVX-512: bf16 values on VBMI2 and bf16 factors; AVX2: never).
struct Avx512Path {
  int isa;
  bool sparse_lane_order(const SparseLayer& L) const { return L.bf16 && isa >= kAvx512Vbmi2; }
  bool dense_lane_order(int bf16) const { return bf16; }
  float sparse(const SparseLayer& L, int64_t i, const float* x) const { return sparse_row_any(L, isa, i, x); }
  float dense(const void* a, int bf16, int64_t k, int64_t len, const float* x) const {
    return dense_row(a, bf16, k, len, x);
  }
};

struct Avx2Path {
  bool sparse_lane_order(const SparseLayer&) const { return false; }
  bool dense_lane_order(int) const { return false; }
  float sparse(const SparseLayer& L, int64_t i, const float* x) const { return sparse_row_avx2_any(L, i, x); }
  float dense(const void* a, int bf16, int64_t k, int64_t len, const float* x) const {
    return dense_dot_avx2(static_cast<const char*>(a) + k * len * (bf16 ? 2 : 4), bf16, x, len);
  }
};

// y = S x (+ U (V x)): z = V x first (V's rows split over the threads, then a barrier), then each thread's
// byte-balanced range of rows, each row's sparse sum plus U_i . z written once.
template <class Path>
void one_token(const SparseLayer& L, const Path& path, const float* x, float* y, int accumulate, float* z,
               int nthreads) {
  const bool factors = L.r > 0 && L.U != nullptr && L.V != nullptr;
  const int fb = L.factors_bf16;
  const bool sparse_lo = path.sparse_lane_order(L), dense_lo = factors && path.dense_lane_order(fb);
  AlignedFloats xp(sparse_lo || dense_lo ? L.d_in : 0), zp(dense_lo ? L.r : 0), xa(L.d_in);
  if (sparse_lo || dense_lo) unpack_order(x, L.d_in, xp.data);
  const float* xin = aligned_x(x, L.d_in, xa);  // x in order
  const float* xs = sparse_lo ? xp.data : xin;  // what the sparse rows read
  const float* xv = dense_lo ? xp.data : xin;   // what V's rows read
  const float* zu = dense_lo ? zp.data : z;     // what U's rows read
#pragma omp parallel num_threads(nthreads)
  {
    const int T = omp_get_num_threads(), t = omp_get_thread_num();
    if (factors) {
      const int64_t k0 = L.r * t / T, k1 = L.r * (t + 1) / T;
      for (int64_t k = k0; k < k1; ++k) z[k] = path.dense(L.V, fb, k, L.d_in, xv);
#pragma omp barrier
      if (dense_lo) {
#pragma omp single
        unpack_order(z, L.r, zp.data);  // (the end of single is a barrier)
      }
    }
    const int64_t i0 = first_row(L, t, T), i1 = first_row(L, t + 1, T);
    for (int64_t i = i0; i < i1; ++i) {
      float v = path.sparse(L, i, xs);
      if (factors) v += path.dense(L.U, fb, i, L.r, zu);
      y[i] = accumulate ? y[i] + v : v;
    }
  }
}

}  // namespace

void dense_one_token_avx512(const void* W, int bf16, int64_t d_out, int64_t d_in, const float* x, float* y,
                            int accumulate, int nthreads) {
  AlignedFloats xp(d_in);
  if (bf16) unpack_order(x, d_in, xp.data);
  const float* xs = bf16 ? xp.data : aligned_x(x, d_in, xp);
#pragma omp parallel num_threads(nthreads)
  {
    const int T = omp_get_num_threads(), t = omp_get_thread_num();
    for (int64_t i = d_out * t / T; i < d_out * (t + 1) / T; ++i) {
      const float v = dense_row<kValuesAhead>(W, bf16, i, d_in, xs);
      y[i] = accumulate ? y[i] + v : v;
    }
  }
}

void decode_one_token_avx512(const SparseLayer& L, int isa, const float* x, float* y, int accumulate, float* z,
                             int nthreads) {
  one_token(L, Avx512Path{isa}, x, y, accumulate, z, nthreads);
}

void decode_one_token_avx2(const SparseLayer& L, const float* x, float* y, int accumulate, float* z, int nthreads) {
  one_token(L, Avx2Path{}, x, y, accumulate, z, nthreads);
}

// Four accumulators, the lines of a prefetched as in dense_dot_f32; a bf16 row widened as loaded.
OATS_AVX2 float dense_dot_avx2(const void* a, int bf16, const float* x, int64_t len) {
  __m256 acc[4];
  for (auto& v : acc) v = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= len; j += 32) {
    for (int q = 0; q < 32; q += bf16 ? 32 : 16)
      _mm_prefetch(static_cast<const char*>(a) + (j + q) * (bf16 ? 2 : 4) + kFactorsAhead, _MM_HINT_T0);
    for (int k = 0; k < 4; ++k)
      acc[k] = _mm256_fmadd_ps(bf16 ? avx2_values8<1, true>(a, j + 8 * k, len) : avx2_values8<0, true>(a, j + 8 * k, len),
                               _mm256_loadu_ps(x + j + 8 * k), acc[k]);
  }
  float sum = avx2_sum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; j < len; ++j) sum += value_at(a, bf16, j) * x[j];
  return sum;
}

}  // namespace oats_native
