// Shared pieces of the bitmask kernels (bitmask.cpp: the C entry points, batches, prefill, expansion;
// decode.cpp: one token on AVX-512 and AVX2): value access, the instruction-set paths, the AVX-512 loads and
// expands, the prefetch distances of the streamed rows.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace oats_native {

// The instruction-set paths (oats/native.py's ISAS): scalar, AVX2 + FMA, AVX-512 (F, BW, VL, DQ),
// AVX-512 with VBMI2 (vpexpandw: bf16 values expanded as 16-bit words, before they are widened), and that
// with AVX512_BF16 (vdpbf16ps: the prefill of bf16 layers, prefill.cpp).
enum Isa { kScalar = 1, kAvx2 = 2, kAvx512 = 3, kAvx512Vbmi2 = 4, kAvx512Bf16 = 5 };

inline int best_isa() {
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512 && __builtin_cpu_supports("avx512vbmi2"))
    return __builtin_cpu_supports("avx512bf16") ? kAvx512Bf16 : kAvx512Vbmi2;
  if (avx512) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
  return kScalar;
}

// The path to run: the one asked for (0 = the best), capped at what this CPU has.
inline int pick_isa(int isa) {
  const int best = best_isa();
  return isa <= 0 || isa > best ? best : isa;
}

inline float value_at(const void* values, int bf16, int64_t p) {
  if (!bf16) return static_cast<const float*>(values)[p];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(values)[p]) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Avx2Tables {
  int32_t perm[256][8];   // lane l takes packed value perm[m][l] (its rank among the set bits below it)
  int32_t lanes[256][8];  // -1 where bit l of m is set
  // bf16 values, a byte shuffle (vpshufb) of 8 packed values in each 128-bit half: lane l's two high bytes
  // take packed value perm[m][l]'s two bytes where bit l of m is set; every other byte is zeroed (0x80).
  int8_t words[256][32];
  // bf16 values into bf16 rows: a byte shuffle placing packed word perm[m][l] at word l, zero elsewhere.
  int8_t row_words[256][16];
  Avx2Tables() {
    for (int m = 0; m < 256; ++m) {
      int r = 0;
      for (int l = 0; l < 8; ++l) {
        const bool on = m >> l & 1;
        perm[m][l] = on ? r : 0;
        lanes[m][l] = on ? -1 : 0;
        words[m][4 * l] = words[m][4 * l + 1] = static_cast<int8_t>(0x80);
        words[m][4 * l + 2] = on ? static_cast<int8_t>(2 * r) : static_cast<int8_t>(0x80);
        words[m][4 * l + 3] = on ? static_cast<int8_t>(2 * r + 1) : static_cast<int8_t>(0x80);
        row_words[m][2 * l] = words[m][4 * l + 2];
        row_words[m][2 * l + 1] = words[m][4 * l + 3];
        r += on;
      }
    }
  }
};
inline const Avx2Tables kAvx2Tables;

#define OATS_AVX2 __attribute__((target("avx2,fma,popcnt")))
#define OATS_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,popcnt")))
#define OATS_VBMI2 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx2,fma,popcnt")))

// The values at p .. min(p + 16, end) - 1, zeros after. Nothing is read at or past the end: a masked
// load with an empty mask at an address past the allocation costs a fault-suppression assist on AMD
// (measured: one token through a 4096 x 4096 layer with no nonzeros, 30 ms before, 1.0 ms after).
OATS_AVX512 inline __m512 avx512_load16(const void* values, int bf16, int64_t p, int64_t end) {
  if (p >= end) return _mm512_setzero_ps();
  const __mmask16 k = p + 16 <= end ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (end - p)) - 1);
  if (!bf16) return _mm512_maskz_loadu_ps(k, static_cast<const float*>(values) + p);
  const __m256i h = _mm256_maskz_loadu_epi16(k, static_cast<const uint16_t*>(values) + p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// 16 values from p on, with no bound check: only where p + 16 <= the array's end is known.
OATS_AVX512 inline __m512 avx512_load16_inside(const void* values, int bf16, int64_t p) {
  if (!bf16) return _mm512_loadu_ps(static_cast<const float*>(values) + p);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(values) + p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// ---------------------------------------------------------------- AVX2 pieces (no expand instruction)
// 8 bf16 values (their 16-bit words) from p on; zeros at and past end unless kInside (nothing is read there).
template <bool kInside>
OATS_AVX2 inline __m128i avx2_words8(const uint16_t* values, int64_t p, int64_t end) {
  if (kInside || p + 8 <= end) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(values + p));
  alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t q = p; q < end && q < p + 8; ++q) buf[q - p] = values[q];
  return _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
}

// 8 values from p on, bf16 widened; zeros at and past end unless kInside (nothing is read there).
template <int kBf16, bool kInside>
OATS_AVX2 inline __m256 avx2_values8(const void* values, int64_t p, int64_t end) {
  if (kBf16) {
    const __m128i h = avx2_words8<kInside>(static_cast<const uint16_t*>(values), p, end);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  if (kInside || p + 8 <= end) return _mm256_loadu_ps(static_cast<const float*>(values) + p);
  alignas(32) float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t q = p; q < end && q < p + 8; ++q) buf[q - p] = static_cast<const float*>(values)[q];
  return _mm256_load_ps(buf);
}

// The weights of 8 columns (mask byte m): the packed values at p permuted into their lanes, zero elsewhere.
// bf16: the 8 packed words copied to both 128-bit halves, then one byte shuffle puts each in the high half
// of its lane (its fp32 value) and zeroes the rest (3 instructions instead of widen, permute, and).
template <int kBf16, bool kInside>
OATS_AVX2 inline __m256 avx2_chunk(const void* values, unsigned m, int64_t p, int64_t end) {
  if (kBf16) {
    const __m128i packed = avx2_words8<kInside>(static_cast<const uint16_t*>(values), p, end);
    const __m256i shuffle = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.words[m]));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(packed), shuffle));
  }
  const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.perm[m]));
  const __m256 on = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.lanes[m])));
  return _mm256_and_ps(_mm256_permutevar8x32_ps(avx2_values8<kBf16, kInside>(values, p, end), idx), on);
}

OATS_AVX2 inline float avx2_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// A zeroed register the compiler cannot fold away. vexpandps / vpexpandw / vpermps write their destination
// as if merging on AMD Zen 4 and 5, zero-masked or not: the result waits on the register's previous value,
// so a loop that reuses one register serialises its expands (measured here: 6 cycles per 16 columns
// instead of 2.5). Merging into a register just zeroed (a dependency-breaking idiom) removes the wait.
OATS_AVX512 inline __m512 fresh_zero() {
  __m512 z = _mm512_setzero_ps();
  asm("" : "+v"(z));  // opaque to the compiler, so it keeps the zeroing instead of using {z} masking
  return z;
}

// Lane l of the result takes v's lane rank(l) (the set bits of m below l) where bit l of m is set, 0
// elsewhere: vexpandps for fp32 values; for (widened) bf16 values the same as one permute with an index
// built from two 8-bit table rows, measured 1.21-1.43x faster than vexpandps for bf16 on a Zen 4 EPYC
// (the path for AVX-512 CPUs without VBMI2; with it, bf16 values are expanded before widening).
OATS_AVX512 inline __m512 avx512_expand(uint16_t m, __m512 v, int bf16) {
  if (!bf16) {
    // register form: with the load folded in (vexpandps zmm{k}, m512) it takes 1.2 cycles instead of 0.5
    // on Zen 5 (measured), so the loaded vector is kept opaque to stop the compiler from folding it
    asm("" : "+v"(v));
    return _mm512_mask_expand_ps(fresh_zero(), m, v);
  }
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.perm[m & 0xFF]));
  const __m256i hi = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.perm[m >> 8])),
                                      _mm256_set1_epi32(__builtin_popcount(m & 0xFF)));
  return _mm512_mask_permutexvar_ps(fresh_zero(), m, _mm512_inserti32x8(_mm512_castsi256_si512(lo), hi, 1), v);
}

// out[c] = column c of the 16 x 16 block whose rows are in[0..15] (in and out may not alias): 64 shuffles
// (pairs of floats, then of doubles, then two rounds of 128-bit lanes).
OATS_AVX512 inline void transpose16(const __m512* in, __m512* out) {
  __m512 t[16], u[16];
  for (int k = 0; k < 8; ++k) {  // t[2k] lane L: rows 2k, 2k+1 at columns 4L, 4L+1; t[2k+1]: 4L+2, 4L+3
    t[2 * k] = _mm512_unpacklo_ps(in[2 * k], in[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(in[2 * k], in[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {  // u[4k+m] lane L: column 4L+m of rows 4k .. 4k+3
    const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * k + 1]), d = _mm512_castps_pd(t[4 * k + 3]);
    u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int m = 0; m < 4; ++m) {  // column 4L+m: lane L of u[m], u[4+m], u[8+m], u[12+m]
    const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44), v1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const __m512 w0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE), w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    out[m] = _mm512_shuffle_f32x4(v0, v1, 0x88);
    out[4 + m] = _mm512_shuffle_f32x4(v0, v1, 0xDD);
    out[8 + m] = _mm512_shuffle_f32x4(w0, w1, 0x88);
    out[12 + m] = _mm512_shuffle_f32x4(w0, w1, 0xDD);
  }
}

// Prefetch distances (bytes ahead of the current position) of the value, mask and factor streams. One
// token through a 14336 x 4096 layer at 60% density (fp32, 2 threads, AMD EPYC Zen 5): 2048 -> 4096
// bytes ahead took the values stream from 40 to 44 GB/s (8192: the same), against 46 GB/s for a dense
// gemv of the same layer.
#ifndef OATS_DECODE_PREFETCH
#define OATS_DECODE_PREFETCH 4096
#endif
constexpr int64_t kValuesAhead = OATS_DECODE_PREFETCH;
constexpr int64_t kMaskAhead = 512;
constexpr int64_t kFactorsAhead = 2048;

// Prefetch of the stream of `values` (vb bytes each) kValuesAhead bytes past position p. The loops call it at
// fixed points, with no branch on how far the position moved (a loop over "lines not yet requested"
// mispredicts its exit whenever a word's values span a varying number of lines): decode at the first and
// third chunk of each 64-column word (lines the hardware prefetcher has not already asked for are rare),
// the expansions to dense rows (bitmask.cpp) at every chunk.
inline void ahead(const void* values, int vb, int64_t p) {
  _mm_prefetch(static_cast<const char*>(values) + p * vb + kValuesAhead, _MM_HINT_T0);
}

// One layer for the decode and prefill kernels: S in the bitmask format, optionally with the factors U (d_out x r)
// and V (r x d_in), dense row-major, fp32 or bf16 (factors_bf16).
struct SparseLayer {
  const void* values;
  int bf16;
  const uint8_t* bitmask;
  const int64_t* row_offsets;
  int64_t nnz, d_out, d_in;
  const void* U = nullptr;
  const void* V = nullptr;
  int factors_bf16 = 0;
  int64_t r = 0;
};

// The first row of thread t of T: rows split so that each thread reads about the same bytes (its
// values, mask rows and rows of U), found by bisection on the row offsets.
inline int64_t first_row(const SparseLayer& L, int t, int T) {
  if (t <= 0) return 0;
  if (t >= T) return L.d_out;
  const double vb = L.bf16 ? 2 : 4, per_row = static_cast<double>((L.d_in + 7) / 8) + L.r * (L.factors_bf16 ? 2 : 4);
  auto cost = [&](int64_t i) { return (i < L.d_out ? L.row_offsets[i] : L.nnz) * vb + i * per_row; };
  const double target = cost(L.d_out) * t / T;
  int64_t lo = 0, hi = L.d_out;  // the first row i with cost(i) >= target
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cost(mid) < target) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// y = S x (+ U (V x)), or y += with accumulate, for one token x (d_in) on AVX-512 (isa kAvx512 or
// kAvx512Vbmi2); z: scratch of r floats. decode.cpp.
void decode_one_token_avx512(const SparseLayer& layer, int isa, const float* x, float* y, int accumulate, float* z,
                             int nthreads);

// The same on AVX2 + FMA (8-column chunks placed by table permutations). decode.cpp.
void decode_one_token_avx2(const SparseLayer& layer, const float* x, float* y, int accumulate, float* z, int nthreads);

// a . x over len entries, a fp32 or bf16 (widened), on AVX2 + FMA, a's lines prefetched. decode.cpp.
float dense_dot_avx2(const void* a, int bf16, const float* x, int64_t len);

// y = W x (or y += W x) for one token x on AVX-512, W dense row-major (d_out x d_in), fp32 or bf16: each
// thread streams its rows, prefetched (the dense engine the sparse ones are measured against). decode.cpp.
void dense_one_token_avx512(const void* W, int bf16, int64_t d_out, int64_t d_in, const float* x, float* y,
                            int accumulate, int nthreads);

// y (n x d_out) = x S^T (+ (x V^T) U^T), or y +=, for n tokens x (n x d_in) on AVX-512 (isa kAvx512 or
// above) or AVX2 + FMA. prefill.cpp.
void prefill_avx512(const SparseLayer& layer, int isa, const float* x, int64_t n, float* y, int accumulate, int nthreads);
void prefill_avx2(const SparseLayer& layer, const float* x, int64_t n, float* y, int accumulate, int nthreads);

}  // namespace oats_native
