// Sparse matrix products on the bitmask format (compressed-tensors' "sparse-bitmask" layout), loaded
// through ctypes by oats/native.py (plain C ABI); used by oats/sparse_format.py and oats/speed/bitmask_engine.py.
//
// A (d_out x d_in) sparse matrix S is stored as
//   values      the nonzeros row by row (fp32, or bf16 as uint16), nnz of them;
//   bitmask     (d_out x ceil(d_in / 8)) bytes, bit j % 8 of byte j / 8 set where column j is kept
//               (numpy.packbits(..., bitorder="little"), one byte-aligned row per output);
//   row_offsets (d_out,) int64, the index in `values` of each row's first nonzero.
// One bit per weight plus the kept values: at density p the bytes per weight are 1/8 + 4p (fp32), so
// the format reads fewer bytes than dense whenever p < 0.97, whatever the pattern (N:M included).
//
// oats_bitmask_matmul: y (n x d_out) = x (n x d_in) S^T, or y += x S^T. One token on AVX-512 is decode
// (decode.cpp: each thread streams a contiguous range of rows, prefetched). More tokens: rows of S split
// over OpenMP threads; each row's mask word selects the lanes its next popcount values go to (AVX-512:
// one 16-bit mask word, a load and a masked expand per 16 columns; AVX2: 8 columns, a permutation from a
// 256-entry table), then one FMA per token of a group of up to 8 tokens, fp32 accumulation. The
// instruction set is chosen at run time (isa 0 = best available). Returns the ISA used (simd.h's Isa:
// 1 scalar, 2 AVX2, 3 AVX-512, 4 AVX-512 with VBMI2).
//
// oats_bitmask_prefill: many tokens through a sparse (+ low-rank) layer on AVX-512 (prefill.cpp: S walked
// by its set bits against L1-sized panels of the transposed tokens, the factors as dense rows).

//
// oats_bitmask_lowrank_decode: one token through a sparse + low-rank layer, y = S x + U (V x), in one
// OpenMP region: z = V x (r dense dot products, split over threads), then each row of S with its row of
// U (the dot U_i . z right after row i's sparse sum, so y is written once). V (r x d_in) and U (d_out x r)
// are dense row-major, fp32 or bf16. This keeps the factors' two dense gemvs on the kernels' own threads
// (a BLAS call after the kernel would meet OpenMP threads still spinning).
//
// oats_dense_matmul: y (n x d_out) = x W^T (or +=) for a dense W (d_out x d_in), fp32 or bf16: one token on
// AVX-512 streams W (decode.cpp), more tokens take a dot product per row and token.
//
// oats_bitmask_to_dense: rows [r0, r1) of S as a dense (r1 - r0) x d_in block, fp32 (or, with out_bf16 and
// bf16 values, bf16), by the same expands (for prefill, where a tile of rows is expanded then multiplied by
// a dense GEMM). Returns the ISA used.
#include "simd.h"

namespace oats_native {
namespace {

constexpr int kTokens = 8;  // tokens per register group

// Prefetch of the packed values a fixed distance ahead of p, in the batch kernels (a few tokens share
// each row's values; decode.cpp streams its rows with the Ahead cursor instead). Prefetches never
// fault, so reading ahead past the last row is harmless.
#ifndef OATS_PREFETCH_BYTES
#define OATS_PREFETCH_BYTES 512
#endif
inline void prefetch_values(const void* values, int bf16, int64_t p) {
  _mm_prefetch(static_cast<const char*>(values) + (p << (bf16 ? 1 : 2)) + OATS_PREFETCH_BYTES, _MM_HINT_T0);
}

// ---------------------------------------------------------------- scalar
void row_scalar(const void* values, int bf16, const uint8_t* mask, int64_t off, int64_t d_in, const float* x,
                int64_t n, float* y, int64_t d_out, int64_t i, int accumulate) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * d_in;
    float acc = 0.0f;
    int64_t p = off;
    for (int64_t j = 0; j < d_in; ++j) {
      if (mask[j >> 3] >> (j & 7) & 1) acc += value_at(values, bf16, p++) * xt[j];
    }
    float* out = y + t * d_out + i;
    *out = accumulate ? *out + acc : acc;
  }
}

// ---------------------------------------------------------------- AVX2
// Runtime value type over the shared pieces (simd.h).
OATS_AVX2 inline __m256 avx2_load8(const void* values, int bf16, int64_t p, int64_t end) {
  return bf16 ? avx2_values8<1, false>(values, p, end) : avx2_values8<0, false>(values, p, end);
}

OATS_AVX2 inline __m256 avx2_weights(const void* values, int bf16, unsigned m, int64_t p, int64_t end) {
  return bf16 ? avx2_chunk<1, false>(values, m, p, end) : avx2_chunk<0, false>(values, m, p, end);
}

// NT tokens (a compile-time count, so the accumulators stay in registers); one token uses two
// accumulators over alternate chunks so that consecutive FMAs do not wait on each other.
template <int NT>
__attribute__((target("avx2,fma"))) void rows_avx2(const void* values, int bf16, const uint8_t* mask, int64_t p,
                                                    int64_t end, int64_t d_in, const float* x, float* out,
                                                    int64_t out_stride, int accumulate) {
  constexpr int NA = NT == 1 ? 2 : NT;
  const int64_t full = d_in / 8, rem = d_in % 8;
  __m256 acc[NA];
  for (int t = 0; t < NA; ++t) acc[t] = _mm256_setzero_ps();
  int64_t c = 0;
  if (NT == 1) {  // two chunks per step, one accumulator each
    for (; c + 1 < full; c += 2) {
      const unsigned m0 = mask[c], m1 = mask[c + 1];
      const __m256 w0 = avx2_weights(values, bf16, m0, p, end);
      prefetch_values(values, bf16, p);
      p += __builtin_popcount(m0);
      const __m256 w1 = avx2_weights(values, bf16, m1, p, end);
      p += __builtin_popcount(m1);
      acc[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + c * 8), acc[0]);
      acc[NA - 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + c * 8 + 8), acc[NA - 1]);
    }
  }
  for (; c < full; ++c) {
    const unsigned m = mask[c];
    const __m256 w = avx2_weights(values, bf16, m, p, end);
    prefetch_values(values, bf16, p);
    p += __builtin_popcount(m);
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * d_in + c * 8), acc[t]);
  }
  if (rem) {
    const unsigned m = mask[full] & ((1u << rem) - 1);
    const __m256i on = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.lanes[m]));
    const __m256 w = avx2_weights(values, bf16, m, p, end);
    for (int t = 0; t < NT; ++t)  // masked load: only the lanes inside the row are read
      acc[t] = _mm256_fmadd_ps(w, _mm256_maskload_ps(x + t * d_in + full * 8, on), acc[t]);
  }
  if (NT == 1) acc[0] = _mm256_add_ps(acc[0], acc[NA - 1]);
  for (int t = 0; t < NT; ++t) {
    float* o = out + t * out_stride;
    const float v = avx2_sum(acc[t]);
    *o = accumulate ? *o + v : v;
  }
}

// ---------------------------------------------------------------- AVX-512
// NT tokens (compile-time: the accumulators stay in registers); one token uses two accumulators
// over alternate chunks so that consecutive FMAs do not wait on each other.
template <int NT>
OATS_AVX512 void rows_avx512(const void* values, int bf16, const uint8_t* mask, int64_t p, int64_t end, int64_t d_in,
                             const float* x, float* out, int64_t out_stride, int accumulate) {
  constexpr int NA = NT == 1 ? 2 : NT;
  const int64_t full = d_in / 16, rem = d_in % 16;
  __m512 acc[NA];
  for (int t = 0; t < NA; ++t) acc[t] = _mm512_setzero_ps();
  int64_t c = 0;
  if (NT == 1) {  // two chunks per step, one accumulator each
    for (; c + 1 < full; c += 2) {
      uint16_t m0, m1;
      std::memcpy(&m0, mask + 2 * c, 2);
      std::memcpy(&m1, mask + 2 * c + 2, 2);
      const __m512 w0 = avx512_expand(m0, avx512_load16(values, bf16, p, end), bf16);
      prefetch_values(values, bf16, p);
      p += __builtin_popcount(m0);
      const __m512 w1 = avx512_expand(m1, avx512_load16(values, bf16, p, end), bf16);
      p += __builtin_popcount(m1);
      acc[0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + 16 * c), acc[0]);
      acc[NA - 1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16 * c + 16), acc[NA - 1]);
    }
  }
  for (; c < full; ++c) {
    uint16_t m;
    std::memcpy(&m, mask + 2 * c, 2);
    const __m512 w = avx512_expand(m, avx512_load16(values, bf16, p, end), bf16);
    prefetch_values(values, bf16, p);
    p += __builtin_popcount(m);
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + t * d_in + 16 * c), acc[t]);
  }
  if (rem) {
    uint16_t m = mask[2 * full];
    if (rem > 8) m |= static_cast<uint16_t>(mask[2 * full + 1]) << 8;
    const __mmask16 lanes = static_cast<__mmask16>((1u << rem) - 1);
    const __m512 w = avx512_expand(m & lanes, avx512_load16(values, bf16, p, end), bf16);
    for (int t = 0; t < NT; ++t)
      acc[t] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(lanes, x + t * d_in + 16 * full), acc[t]);
  }
  if (NT == 1) acc[0] = _mm512_add_ps(acc[0], acc[NA - 1]);
  for (int t = 0; t < NT; ++t) {
    float* o = out + t * out_stride;
    const float v = _mm512_reduce_add_ps(acc[t]);
    *o = accumulate ? *o + v : v;
  }
}

// Row i of S against every token, in register groups of up to kTokens.
template <template <int> class Rows>
void row_all_tokens(const void* values, int bf16, const uint8_t* mask, int64_t off, int64_t end, int64_t d_in,
                    const float* x, int64_t n, float* y, int64_t d_out, int64_t i, int accumulate) {
  for (int64_t t0 = 0; t0 < n; t0 += kTokens) {
    const int64_t nt = n - t0 < kTokens ? n - t0 : kTokens;
    const float* xg = x + t0 * d_in;
    float* out = y + t0 * d_out + i;
    switch (nt) {
      case 1: Rows<1>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
      case 2: Rows<2>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
      case 3: Rows<3>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
      case 4: Rows<4>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
      case 5: Rows<5>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
      case 6: Rows<6>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
      case 7: Rows<7>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
      default: Rows<8>::run(values, bf16, mask, off, end, d_in, xg, out, d_out, accumulate); break;
    }
  }
}

template <int NT>
struct Avx512Rows {
  static void run(const void* values, int bf16, const uint8_t* mask, int64_t p, int64_t end, int64_t d_in,
                  const float* x, float* out, int64_t out_stride, int accumulate) {
    rows_avx512<NT>(values, bf16, mask, p, end, d_in, x, out, out_stride, accumulate);
  }
};

template <int NT>
struct Avx2Rows {
  static void run(const void* values, int bf16, const uint8_t* mask, int64_t p, int64_t end, int64_t d_in,
                  const float* x, float* out, int64_t out_stride, int accumulate) {
    rows_avx2<NT>(values, bf16, mask, p, end, d_in, x, out, out_stride, accumulate);
  }
};

// Row i of S (mask row mrow, first value at off) against n tokens on the given ISA path: y[t * d_out + i].
void row_on_isa(int isa, const void* values, int bf16, const uint8_t* mrow, int64_t off, int64_t nnz, int64_t d_in,
                const float* x, int64_t n, float* y, int64_t d_out, int64_t i, int accumulate) {
  if (isa >= kAvx512)
    row_all_tokens<Avx512Rows>(values, bf16, mrow, off, nnz, d_in, x, n, y, d_out, i, accumulate);
  else if (isa == kAvx2)
    row_all_tokens<Avx2Rows>(values, bf16, mrow, off, nnz, d_in, x, n, y, d_out, i, accumulate);
  else
    row_scalar(values, bf16, mrow, off, d_in, x, n, y, d_out, i, accumulate);
}

// kInside: the row's values end 16 or more before the array's end (whole loads stay inside it).
template <bool kInside, int kBf16>
OATS_AVX512 void expand_row_avx512(const void* values, const uint8_t* mask, int64_t p, int64_t end, int64_t d_in,
                                   float* o) {
  const int64_t full = d_in / 16, rem = d_in % 16;
  for (int64_t c = 0; c < full; ++c) {
    uint16_t m;
    std::memcpy(&m, mask + 2 * c, 2);
    ahead(values, kBf16 ? 2 : 4, p);  // rows streamed from memory (tile + GEMM): the sources prefetched
    if ((c & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(mask + 2 * c) + kMaskAhead, _MM_HINT_T0);
    const __m512 v = kInside ? avx512_load16_inside(values, kBf16, p) : avx512_load16(values, kBf16, p, end);
    _mm512_storeu_ps(o + 16 * c, avx512_expand(m, v, kBf16));
    p += __builtin_popcount(m);
  }
  if (rem) {
    uint16_t m = mask[2 * full];
    if (rem > 8) m |= static_cast<uint16_t>(mask[2 * full + 1]) << 8;
    const __mmask16 lanes = static_cast<__mmask16>((1u << rem) - 1);
    _mm512_mask_storeu_ps(o + 16 * full, lanes, avx512_expand(m & lanes, avx512_load16(values, kBf16, p, end), kBf16));
  }
}

__attribute__((target("avx2,fma"))) void expand_row_avx2(const void* values, int bf16, const uint8_t* mask, int64_t p,
                                                          int64_t end, int64_t d_in, float* o) {
  const int64_t full = d_in / 8;
  for (int64_t c = 0; c < full; ++c) {
    const unsigned m = mask[c];
    const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.perm[m]));
    const __m256 on = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2Tables.lanes[m])));
    _mm256_storeu_ps(o + 8 * c, _mm256_and_ps(_mm256_permutevar8x32_ps(avx2_load8(values, bf16, p, end), idx), on));
    p += __builtin_popcount(m);
  }
  for (int64_t j = full * 8; j < d_in; ++j) o[j] = (mask[j >> 3] >> (j & 7) & 1) ? value_at(values, bf16, p++) : 0.0f;
}

// Row of bf16 values into a bf16 row (the 16-bit words copied, no widening): vpexpandw per 32 columns.
// kInside: the row's values end 32 or more before the array's end, so whole 64-byte loads stay inside it.
template <bool kInside>
OATS_VBMI2 void expand_row_words_vbmi2(const uint16_t* values, const uint8_t* mask, int64_t p, int64_t end, int64_t d_in,
                                       uint16_t* o) {
  const __m512i zero = _mm512_castps_si512(fresh_zero());
  int64_t c = 0;
  for (; c + 32 <= d_in; c += 32) {
    uint32_t m;
    std::memcpy(&m, mask + c / 8, 4);
    ahead(values, 2, p);
    if ((c & 511) == 0) _mm_prefetch(reinterpret_cast<const char*>(mask + c / 8) + kMaskAhead, _MM_HINT_T0);
    const int64_t avail = end - p >= 32 ? 32 : (end > p ? end - p : 0);
    const __m512i v = kInside ? _mm512_loadu_si512(values + p)
                              : _mm512_maskz_loadu_epi16(static_cast<__mmask32>(avail == 32 ? ~0u : (1u << avail) - 1),
                                                         values + p);
    _mm512_storeu_si512(o + c, _mm512_mask_expand_epi16(zero, m, v));
    p += __builtin_popcount(m);
  }
  for (; c < d_in; ++c) o[c] = (mask[c >> 3] >> (c & 7) & 1) ? values[p++] : 0;
}

void expand_row_words_scalar(const uint16_t* values, const uint8_t* mask, int64_t p, int64_t d_in, uint16_t* o) {
  for (int64_t j = 0; j < d_in; ++j) o[j] = (mask[j >> 3] >> (j & 7) & 1) ? values[p++] : 0;
}

// The same on AVX2 (and AVX-512 without VBMI2): per 8 columns one byte shuffle of 8 packed words from a
// table row (kAvx2Tables.row_words); the last d_in % 8 columns, and rows ending within 8 values of the
// array's end, word by word.
OATS_AVX2 void expand_row_words_avx2(const uint16_t* values, const uint8_t* mask, int64_t p, int64_t end,
                                     int64_t d_in, uint16_t* o) {
  int64_t c = 0;
  for (; c + 8 <= d_in && p + 8 <= end; c += 8) {
    const unsigned m = mask[c / 8];
    if ((c & 255) == 0) ahead(values, 2, p);
    const __m128i shuffle = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kAvx2Tables.row_words[m]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c),
                     _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(values + p)), shuffle));
    p += __builtin_popcount(m);
  }
  for (; c < d_in; ++c) o[c] = (mask[c >> 3] >> (c & 7) & 1) ? values[p++] : 0;
}

// Dense dot products a . x over len entries (a fp32 or bf16), for the low-rank factors.
float dot_scalar(const void* a, int bf16, const float* x, int64_t len) {
  float acc = 0.0f;
  for (int64_t j = 0; j < len; ++j) acc += value_at(a, bf16, j) * x[j];
  return acc;
}

// Four accumulators: independent FMA chains while the next lines of a arrive from memory.
OATS_AVX512 float dot_avx512(const void* a, int bf16, const float* x, int64_t len) {
  __m512 acc[4];
  for (int k = 0; k < 4; ++k) acc[k] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 64 <= len; j += 64) {
    for (int q = 0; q < 64; q += bf16 ? 32 : 16) prefetch_values(a, bf16, j + q);  // each line of the 64 values
    for (int k = 0; k < 4; ++k)
      acc[k] = _mm512_fmadd_ps(avx512_load16(a, bf16, j + 16 * k, len), _mm512_loadu_ps(x + j + 16 * k), acc[k]);
  }
  for (; j < len; j += 16) {
    const __mmask16 lanes = static_cast<__mmask16>(len - j >= 16 ? 0xFFFF : (1u << (len - j)) - 1);
    acc[0] = _mm512_fmadd_ps(avx512_load16(a, bf16, j, len), _mm512_maskz_loadu_ps(lanes, x + j), acc[0]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

float dot(int isa, const void* a, int bf16, const float* x, int64_t len) {
  if (isa >= kAvx512) return dot_avx512(a, bf16, x, len);
  if (isa == kAvx2) return dense_dot_avx2(a, bf16, x, len);
  return dot_scalar(a, bf16, x, len);
}

inline const void* row_ptr(const void* base, int bf16, int64_t row, int64_t len) {
  return static_cast<const char*>(base) + row * len * (bf16 ? 2 : 4);
}

}  // namespace
}  // namespace oats_native

using namespace oats_native;

extern "C" {

int oats_best_isa() { return best_isa(); }

int oats_bitmask_matmul(const void* values, int bf16, const uint8_t* bitmask, const int64_t* row_offsets,
                        int64_t nnz, int64_t d_out, int64_t d_in, const float* x, int64_t n, float* y, int accumulate,
                        int isa, int nthreads) {
  isa = pick_isa(isa);
  if (n == 1 && isa >= kAvx2) {  // decode (decode.cpp)
    const SparseLayer L{values, bf16, bitmask, row_offsets, nnz, d_out, d_in};
    if (isa >= kAvx512) decode_one_token_avx512(L, isa, x, y, accumulate, nullptr, nthreads);
    else decode_one_token_avx2(L, x, y, accumulate, nullptr, nthreads);
    return isa;
  }
  const int64_t stride = (d_in + 7) / 8;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t i = 0; i < d_out; ++i)
    row_on_isa(isa, values, bf16, bitmask + i * stride, row_offsets[i], nnz, d_in, x, n, y, d_out, i, accumulate);
  return isa;
}

// y (d_out) = S x + U (V x) (or += with accumulate) for one token x (d_in): see the file's header.
// V: (r x d_in), U: (d_out x r), dense row-major, fp32 or bf16 (factors_bf16); z: scratch of r floats.
int oats_bitmask_lowrank_decode(const void* values, int bf16, const uint8_t* bitmask, const int64_t* row_offsets,
                                int64_t nnz, int64_t d_out, int64_t d_in, const float* x, float* y, int accumulate,
                                const void* V, const void* U, int factors_bf16, int64_t r, float* z, int isa,
                                int nthreads) {
  isa = pick_isa(isa);
  if (isa >= kAvx2) {  // decode.cpp
    const SparseLayer L{values, bf16, bitmask, row_offsets, nnz, d_out, d_in, U, V, factors_bf16, r};
    if (isa >= kAvx512) decode_one_token_avx512(L, isa, x, y, accumulate, z, nthreads);
    else decode_one_token_avx2(L, x, y, accumulate, z, nthreads);
    return isa;
  }
  const int64_t stride = (d_in + 7) / 8;
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp for schedule(static)
    for (int64_t k = 0; k < r; ++k) z[k] = dot(isa, row_ptr(V, factors_bf16, k, d_in), factors_bf16, x, d_in);
    // the implicit barrier: z is complete before any row reads it
#pragma omp for schedule(static)
    for (int64_t i = 0; i < d_out; ++i) {
      float s;
      row_on_isa(isa, values, bf16, bitmask + i * stride, row_offsets[i], nnz, d_in, x, 1, &s, 1, 0, 0);
      const float v = s + dot(isa, row_ptr(U, factors_bf16, i, r), factors_bf16, z, r);
      y[i] = accumulate ? y[i] + v : v;
    }
  }
  return isa;
}

// y (n x d_out) = x S^T + (x V^T) U^T (factors optional: r = 0), or +=, for n tokens on AVX-512 or AVX2
// (prefill.cpp). Returns the ISA used, or 0 (nothing computed) where the path asked for (isa as elsewhere:
// 0 = the best) or the CPU has neither.
int oats_bitmask_prefill(const void* values, int bf16, const uint8_t* bitmask, const int64_t* row_offsets, int64_t nnz,
                         int64_t d_out, int64_t d_in, const float* x, int64_t n, float* y, int accumulate, const void* V,
                         const void* U, int factors_bf16, int64_t r, int isa, int nthreads) {
  isa = pick_isa(isa);
  if (isa < kAvx2) return 0;
  const SparseLayer L{values, bf16, bitmask, row_offsets, nnz, d_out, d_in, U, V, factors_bf16, r};
  if (isa >= kAvx512)
    prefill_avx512(L, isa, x, n, y, accumulate, nthreads);
  else
    prefill_avx2(L, x, n, y, accumulate, nthreads);
  return isa;
}

int oats_dense_matmul(const void* W, int bf16, int64_t d_out, int64_t d_in, const float* x, int64_t n, float* y,
                      int accumulate, int isa, int nthreads) {
  isa = pick_isa(isa);
  if (n == 1 && isa >= kAvx512) {
    dense_one_token_avx512(W, bf16, d_out, d_in, x, y, accumulate, nthreads);
    return isa;
  }
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t i = 0; i < d_out; ++i)
    for (int64_t t = 0; t < n; ++t) {
      const float v = dot(isa, row_ptr(W, bf16, i, d_in), bf16, x + t * d_in, d_in);
      float* o = y + t * d_out + i;
      *o = accumulate ? *o + v : v;
    }
  return isa;
}

int oats_bitmask_to_dense(const void* values, int bf16, const uint8_t* bitmask, const int64_t* row_offsets,
                          int64_t nnz, int64_t r0, int64_t r1, int64_t d_in, void* out_rows, int out_bf16, int isa,
                          int nthreads) {
  isa = pick_isa(isa);
  const int64_t stride = (d_in + 7) / 8;
  if (out_bf16) {  // bf16 values into bf16 rows
    if (!bf16) return 0;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = r0; i < r1; ++i) {
      uint16_t* o = static_cast<uint16_t*>(out_rows) + (i - r0) * d_in;
      const auto* v = static_cast<const uint16_t*>(values);
      const bool inside = (i + 1 < r1 ? row_offsets[i + 1] : nnz) + 32 <= nnz;
      if (isa >= kAvx512Vbmi2 && inside) expand_row_words_vbmi2<true>(v, bitmask + i * stride, row_offsets[i], nnz, d_in, o);
      else if (isa >= kAvx512Vbmi2) expand_row_words_vbmi2<false>(v, bitmask + i * stride, row_offsets[i], nnz, d_in, o);
      else if (isa >= kAvx2) expand_row_words_avx2(v, bitmask + i * stride, row_offsets[i], nnz, d_in, o);
      else expand_row_words_scalar(v, bitmask + i * stride, row_offsets[i], d_in, o);
    }
    return isa;
  }
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t i = r0; i < r1; ++i) {
    const uint8_t* mrow = bitmask + i * stride;
    float* o = static_cast<float*>(out_rows) + (i - r0) * d_in;
    int64_t p = row_offsets[i];
    if (isa >= kAvx512) {
      const bool inside = (i + 1 < r1 ? row_offsets[i + 1] : nnz) + 16 <= nnz;
      if (bf16) (inside ? expand_row_avx512<true, 1> : expand_row_avx512<false, 1>)(values, mrow, p, nnz, d_in, o);
      else (inside ? expand_row_avx512<true, 0> : expand_row_avx512<false, 0>)(values, mrow, p, nnz, d_in, o);
    } else if (isa == kAvx2) {
      expand_row_avx2(values, bf16, mrow, p, nnz, d_in, o);
    } else {
      for (int64_t j = 0; j < d_in; ++j) o[j] = (mrow[j >> 3] >> (j & 7) & 1) ? value_at(values, bf16, p++) : 0.0f;
    }
  }
  return isa;
}

}  // extern "C"
