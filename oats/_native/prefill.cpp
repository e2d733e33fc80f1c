// Prefill (many tokens) through a bitmask-format layer on AVX-512: y = x S^T + (x V^T) U^T (or y +=),
// declared in simd.h and called by oats_bitmask_prefill (bitmask.cpp).
//
// Prefill is compute-bound: every weight meets every token. The kernel works on token chunks of up to
// 128 (8 zmm registers of 16 tokens) with the inputs transposed: Xt (d_in x 128), one row of 128 tokens
// per input column. S is walked by its set bits: each nonzero value is broadcast and multiplied into the
// row's 8 accumulators with its column's row of Xt, so the work is proportional to the nonzeros (a dense
// layer does every column). The columns go in panels of 64 (one mask word; 64 rows of Xt = 32 KB, which
// stays in L1 while a block of 256 rows of S walks it); the block's partial sums (256 x 128 floats, in
// L2) are prefetched 8 rows ahead, with those rows' next values. Measured on one 14336 x 4096 layer at
// 50% density, 128 tokens, 2 threads (AMD EPYC Zen 5): 66% of the FMA peak on the nonzeros with 256-row
// blocks and the prefetch, 48% with 16-row blocks (their sums in L1, but each panel refetched from L2
// for every 16 rows; a panel that never changes gives 67%).
//
// The factors are dense rows walked the same way, two rows at a time sharing each loaded row of the
// panel: Zt = V Xt first (V's rows split over the threads, then a barrier), then each block of rows of
// S continues with its rows of U against Zt before its results are written. bf16 values and factors are
// widened as they are broadcast; accumulation and x are fp32. The tokens go in and the results out by
// 16 x 16 register transposes (scalar loops took 0.75 of the 0.96 ms of a 1024 x 4096 layer with no
// nonzeros).
//
// With AVX512_BF16 (isa avx512bf16) and bf16 values and factors, the pair kernel further down takes over:
// two nonzeros per vdpbf16ps, x in bf16.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "simd.h"

namespace oats_native {
namespace {

constexpr int64_t kPanel = 64;   // columns per panel: one 64-bit mask word
constexpr int64_t kBlock = 256;  // rows of S per block: each panel is used by all of them while in L1
constexpr int64_t kAhead = 8;    // rows ahead whose partial sums and values are prefetched
constexpr int64_t kPairBlock = 16;  // rows of a dense part per block (their partial sums stay in L1)
constexpr int64_t kPairPanel = kPanel;  // columns per panel of the bf16 pair kernel (16 KB of 128 tokens)

// The mask word of columns [64 kb, 64 kb + 64) of a row (fewer bytes in a last, partial panel).
inline uint64_t panel_mask(const uint8_t* mrow, int64_t kb, int64_t stride) {
  uint64_t m = 0;
  std::memcpy(&m, mrow + 8 * kb, static_cast<size_t>(std::min<int64_t>(8, stride - 8 * kb)));
  return m;
}

inline const void* dense_row_ptr(const void* a, int bf16, int64_t k, int64_t len) {
  return static_cast<const char*>(a) + k * len * (bf16 ? 2 : 4);
}

// A later row of a block on its way to L1: its partial sums (sum_bytes of them), its next values (two
// lines) and its mask word.
inline void prefetch_row(const float* sums, int64_t sum_bytes, const void* values_at, const uint8_t* mask_at) {
  const char* s = reinterpret_cast<const char*>(sums);
  for (int64_t line = 0; line < sum_bytes; line += 64) _mm_prefetch(s + line, _MM_HINT_T0);
  _mm_prefetch(static_cast<const char*>(values_at), _MM_HINT_T0);
  _mm_prefetch(static_cast<const char*>(values_at) + 64, _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(mask_at), _MM_HINT_T0);
}

// Reusable, 64-byte aligned scratch of at least n floats, in a buffer its thread keeps between calls.
float* scratch(std::vector<float>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n + 16) buf.resize(n + 16);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~static_cast<uintptr_t>(63));
}

// The calling thread's block of partial sums, at least n floats: one buffer per pool thread, shared by every
// chunk and kernel (a thread_local inside on_threads was one per instantiation: 68 of them).
float* thread_tile(int64_t n) {
  static thread_local std::vector<float> buf;
  return scratch(buf, n);
}

// One chunk of tokens on the threads: in(t, T) lays the tokens out for the kernel, then, with factors,
// zpass(t, T, k0, k1) computes rows [k0, k1) of Z = V X (V's rows split in pairs; called on every thread, so
// it may hold a barrier); a barrier after each. Then each thread takes its rows of S (equal bytes) in blocks
// of kBlock: rows(b0, b1, tile), tile being the thread's own scratch of kBlock x ld floats.
template <class In, class ZPass, class Rows>
void on_threads(const SparseLayer& L, int64_t ld, bool factors, int nthreads, In in, ZPass zpass, Rows rows) {
#pragma omp parallel num_threads(nthreads)
  {
    const int T = omp_get_num_threads(), t = omp_get_thread_num();
    in(t, T);
#pragma omp barrier
    if (factors) {
      const int64_t pairs = (L.r + 1) / 2, k0 = 2 * (pairs * t / T), k1 = std::min(L.r, 2 * (pairs * (t + 1) / T));
      zpass(t, T, k0, k1);
#pragma omp barrier
    }
    float* tile = thread_tile(kBlock * ld);
    const int64_t i0 = first_row(L, t, T), i1 = first_row(L, t + 1, T);
    for (int64_t b0 = i0; b0 < i1; b0 += kBlock) rows(b0, std::min(b0 + kBlock, i1), tile);
  }
}

// The 16 x 16 block of x (n x len, row-major) at tokens [t, t + 16) and columns [j, j + 16), transposed:
// col[c] = column j + c at those tokens, zero past nt tokens (counted from t0) and past len columns.
OATS_AVX512 inline void x_block(const float* x, int64_t len, int64_t t0, int64_t nt, int64_t t, int64_t j, __m512* col) {
  const __mmask16 k = j + 16 <= len ? static_cast<__mmask16>(0xFFFF)
                      : j >= len   ? static_cast<__mmask16>(0)
                                   : static_cast<__mmask16>((1u << (len - j)) - 1);
  __m512 rows[16];
  for (int r = 0; r < 16; ++r)
    rows[r] = t + r < nt ? _mm512_maskz_loadu_ps(k, x + (t0 + t + r) * len + j) : _mm512_setzero_ps();
  transpose16(rows, col);
}

// xt rows [j0, j1) (multiples of 16; ld = 16 NV floats per row, the tokens in order) = x[t0 .. t0 + nt)^T
// for x (n x len row-major); zero past nt tokens and len rows.
OATS_AVX512 void transpose_in_avx512(const float* x, int64_t len, int64_t t0, int64_t nt, int64_t ld, float* xt,
                                     int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j += 16)
    for (int64_t t = 0; t < ld; t += 16) {
      __m512 col[16];
      x_block(x, len, t0, nt, t, j, col);
      for (int c = 0; c < 16; ++c) _mm512_store_ps(xt + (j + c) * ld + t, col[c]);
    }
}

// Rows [b0, b0 + rows) of a block's results (tile: rows x ld floats, a row's tokens in order) into y (tokens
// t0 .. t0 + nt, d_out floats per token), written or added: 16 x 16 blocks transposed.
OATS_AVX512 void write_out_avx512(const float* tile, int64_t rows, int64_t ld, int64_t nt, float* y, int64_t t0,
                                  int64_t b0, int64_t d_out, int accumulate) {
  for (int64_t i = 0; i < rows; i += 16) {
    const __mmask16 k = i + 16 <= rows ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (rows - i)) - 1);
    for (int64_t t = 0; t < nt; t += 16) {
      __m512 in[16], out[16];  // tile rows past `rows` are scratch: read, never written out
      for (int r = 0; r < 16; ++r) in[r] = _mm512_load_ps(tile + (i + r) * ld + t);
      transpose16(in, out);
      for (int c = 0; c < 16 && t + c < nt; ++c) {
        float* o = y + (t0 + t + c) * d_out + b0 + i;
        _mm512_mask_storeu_ps(o, k, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(k, o), out[c]) : out[c]);
      }
    }
  }
}

// The same two without vectors (the AVX2 walk's; any row range).
void transpose_in_scalar(const float* x, int64_t len, int64_t t0, int64_t nt, int64_t ld, float* xt, int64_t j0,
                         int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    float* row = xt + j * ld;
    for (int64_t t = 0; t < ld; ++t) row[t] = j < len && t < nt ? x[(t0 + t) * len + j] : 0.0f;
  }
}

void write_out_scalar(const float* tile, int64_t rows, int64_t ld, int64_t nt, float* y, int64_t t0, int64_t b0,
                      int64_t d_out, int accumulate) {
  for (int64_t t = 0; t < nt; ++t) {
    float* out = y + (t0 + t) * d_out + b0;
    for (int64_t i = 0; i < rows; ++i) out[i] = accumulate ? out[i] + tile[i * ld + t] : tile[i * ld + t];
  }
}

// ---------------------------------------------------------------- the fp32 walk, once per instruction set
// prefill_walk.h holds the walk (sparse panels, dense rows, blocks, chunks); each namespace below compiles
// it for its vector type: 16 fp32 lanes (AVX-512) or 8 (AVX2: 16 registers, so the dense rows go one at a
// time, their panel rows read by the FMAs instead of held for a second row).
namespace avx512 {
struct Vec {
  using reg = __m512;
  static constexpr int kLanes = 16;
  static constexpr bool kRowPairs = true;
  OATS_AVX512 static reg zero() { return _mm512_setzero_ps(); }
  OATS_AVX512 static reg load(const float* p) { return _mm512_load_ps(p); }
  OATS_AVX512 static void store(float* p, reg v) { _mm512_store_ps(p, v); }
  OATS_AVX512 static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  template <int kBf16>
  OATS_AVX512 static reg broadcast(const void* values, int64_t p) {
    if (!kBf16) return _mm512_set1_ps(static_cast<const float*>(values)[p]);
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(values)[p]) << 16;
    return _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(bits)));
  }
  static constexpr auto transpose_in = transpose_in_avx512;  // column blocks of 16
  static constexpr auto write_out = write_out_avx512;
};
#define OATS_WALK OATS_AVX512
#include "prefill_walk.h"
#undef OATS_WALK
}  // namespace avx512

namespace avx2 {
struct Vec {
  using reg = __m256;
  static constexpr int kLanes = 8;
  static constexpr bool kRowPairs = false;
  OATS_AVX2 static reg zero() { return _mm256_setzero_ps(); }
  OATS_AVX2 static reg load(const float* p) { return _mm256_load_ps(p); }
  OATS_AVX2 static void store(float* p, reg v) { _mm256_store_ps(p, v); }
  OATS_AVX2 static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  template <int kBf16>
  OATS_AVX2 static reg broadcast(const void* values, int64_t p) {
    if (!kBf16) return _mm256_set1_ps(static_cast<const float*>(values)[p]);
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(values)[p]) << 16;
    return _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(bits)));
  }
  static constexpr auto transpose_in = transpose_in_scalar;
  static constexpr auto write_out = write_out_scalar;
};
#define OATS_WALK OATS_AVX2
#include "prefill_walk.h"
#undef OATS_WALK
}  // namespace avx2

// ---------------------------------------------------------------- bf16 values and factors, vdpbf16ps
// With bf16 values, bf16 factors and AVX512_BF16, S is walked two nonzeros at a time: vdpbf16ps multiplies
// 16 pairs of bf16 and adds both products to 16 fp32 sums, twice the multiply-adds of an fp32 FMA per
// instruction and half the loads of x per nonzero. The tokens are held in bf16 (x rounded to bf16, as the
// dense bf16 GEMM it is measured against rounds them), 32 to a 64-byte row per input column; a row pair's
// nonzeros at columns j1 < j2 take their two values with one 32-bit broadcast (they are adjacent in the
// packed values) and interleave rows j1 and j2 with one unpack per 16 tokens. Within each 128-bit lane
// unpacklo takes words 0-3 and unpackhi words 4-7 of both rows, so the tokens are stored permuted
// (pair_pos) for the two sums to come out as tokens 0-15 and 16-31 in order. A panel's last odd nonzero
// pairs with a zero. The factors are dense rows walked by adjacent column pairs, two rows sharing each
// interleaved pair; Z = V X is rounded to bf16 before U (the dense bf16 path rounds it the same way).
// Consecutive pairs alternate between two sets of sums (one vdpbf16ps takes ~6.5 cycles before its sum can
// take the next; 8 sums in flight reach 5 G of them per second per core here, 16 reach 7.7 G).
// Measured on one 14336 x 4096 layer at 50% density, 128 tokens, 2 threads (AMD EPYC Zen 5): 18.6-19.0 ms,
// against 19.7-19.9 ms for PyTorch's dense bf16 GEMM of the same shape and 32-35 ms for the fp32 FMA walk
// above on the same bf16 values. Tried and not kept: 128 or 256-column panels (two or four mask words per
// row between the loads and stores of its sums; 32 or 64 KB of tokens): 1.1-1.3x slower; blocks of 32 or 64
// rows for the factors: slower; no prefetch of the partial sums: no faster.

#define OATS_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,popcnt")))

// The position within a group of 32 of token t (0..31): t < 16 where unpacklo puts lane t, else unpackhi's.
constexpr int pair_pos(int t) { return 8 * ((t & 15) >> 2) + 4 * (t >> 4) + (t & 3); }

// 32 tokens (lo: 0-15, hi: 16-31) rounded to bf16 and stored in the pair layout at dst (64 bytes): word
// pair_pos(t) takes token t, i.e. 4-token (64-bit) groups alternating between lo and hi.
OATS_BF16 inline void store_pairs(__m512 lo, __m512 hi, uint16_t* dst) {
  const __m512i a = _mm512_castsi256_si512(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(lo)));
  const __m512i b = _mm512_castsi256_si512(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(hi)));
  _mm512_store_si512(dst, _mm512_permutex2var_epi64(a, _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), b));
}

// Rows [j0, j1) (multiples of 16) of the bf16 pair layout (ld = 32 G words per row) of x[t0 .. t0 + nt)^T, x
// (n x len row-major); zero past nt tokens and len rows.
OATS_BF16 void x_to_pairs(const float* x, int64_t len, int64_t t0, int64_t nt, int64_t ld, uint16_t* dst, int64_t j0,
                          int64_t j1) {
  for (int64_t j = j0; j < j1; j += 16)
    for (int64_t t = 0; t < ld; t += 32) {
      __m512 lo[16], hi[16];
      x_block(x, len, t0, nt, t, j, lo);
      x_block(x, len, t0, nt, t + 16, j, hi);
      for (int c = 0; c < 16; ++c) store_pairs(lo[c], hi[c], dst + (j + c) * ld + t);
    }
}

// Rows [k0, k1) of the bf16 pair layout (ld words per row) of src (rows of ld floats, tokens in order);
// zero rows past len.
OATS_BF16 void rows_to_pairs(const float* src, int64_t len, int64_t ld, uint16_t* dst, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k)
    for (int64_t t = 0; t < ld; t += 32) {
      const bool in = k < len;
      store_pairs(in ? _mm512_load_ps(src + k * ld + t) : _mm512_setzero_ps(),
                  in ? _mm512_load_ps(src + k * ld + t + 16) : _mm512_setzero_ps(), dst + k * ld + t);
    }
}

OATS_BF16 inline __m512bh pair_of(const uint16_t* a) {  // a[0] (low word) and a[1]
  uint32_t w;
  std::memcpy(&w, a, 4);
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(w)));
}
OATS_BF16 inline __m512bh single_of(const uint16_t* a) {  // a[0] and a zero
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(*a)));
}

// acc[2g], acc[2g + 1] (tokens 32 g .. 32 g + 31) += w.lo * row a + w.hi * row b, for G groups.
template <int G>
OATS_BF16 inline void dp_rows(__m512bh w, const uint16_t* a, const uint16_t* b, __m512* acc) {
  for (int g = 0; g < G; ++g) {
    __m512i ra = _mm512_load_si512(a + 32 * g), rb = _mm512_load_si512(b + 32 * g);
    // loaded once: the compiler would fold each load into both unpacks, loading the row twice (8% slower
    // on one 14336 x 4096 layer at 50% density)
    asm("" : "+v"(ra), "+v"(rb));
    acc[2 * g] = _mm512_dpbf16_ps(acc[2 * g], reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(ra, rb)), w);
    acc[2 * g + 1] = _mm512_dpbf16_ps(acc[2 * g + 1], reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(ra, rb)), w);
  }
}

// One row of S against one panel (rows of 32 G tokens, bf16) in pairs of nonzeros, alternating between two
// sets of sums (acc, then acc2, added at the end) so that consecutive pairs do not wait on each other.
template <int G>
OATS_BF16 inline void sparse_panel_pairs(const uint16_t* values, int64_t& p, uint64_t m, const uint16_t* xp,
                                         const uint16_t* zero_row, __m512* acc) {
  constexpr int64_t kLd = 32 * G;
  __m512 acc2[2 * G];
  for (int v = 0; v < 2 * G; ++v) acc2[v] = _mm512_setzero_ps();
  while (m) {
    const int64_t j1 = __builtin_ctzll(m);
    m &= m - 1;
    if (!m) {
      dp_rows<G>(single_of(values + p), xp + j1 * kLd, zero_row, acc);
      ++p;
      break;
    }
    const int64_t j2 = __builtin_ctzll(m);
    m &= m - 1;
    dp_rows<G>(pair_of(values + p), xp + j1 * kLd, xp + j2 * kLd, acc);
    p += 2;
    if (!m) break;
    const int64_t j3 = __builtin_ctzll(m);
    m &= m - 1;
    if (!m) {
      dp_rows<G>(single_of(values + p), xp + j3 * kLd, zero_row, acc2);
      ++p;
      break;
    }
    const int64_t j4 = __builtin_ctzll(m);
    m &= m - 1;
    dp_rows<G>(pair_of(values + p), xp + j3 * kLd, xp + j4 * kLd, acc2);
    p += 2;
  }
  for (int v = 0; v < 2 * G; ++v) acc[v] = _mm512_add_ps(acc[v], acc2[v]);
}

// out (rows [i0, i1), 32 G floats each) = (or +=, with add) A rows [i0, i1) (bf16, len columns) against src
// (the bf16 token layout of len_pad >= len rows, zero past len), the rows in pairs sharing each loaded pair
// of src rows.
template <int G>
OATS_BF16 void dense_rows_pairs(const uint16_t* A, int64_t i0, int64_t i1, int64_t len, const uint16_t* src, float* out,
                                bool add) {
  constexpr int64_t kLd = 32 * G;
  for (int64_t b0 = i0; b0 < i1; b0 += kPairBlock) {
    const int64_t b1 = std::min(b0 + kPairBlock, i1);
    for (int64_t k0 = 0; k0 < len; k0 += kPanel) {
      const bool first = k0 == 0 && !add;
      const int64_t k1 = std::min(k0 + kPanel, len);
      for (int64_t i = b0; i < b1; i += 2) {
        const bool two = i + 1 < b1;
        float* o0 = out + (i - i0) * kLd;
        float* o1 = o0 + kLd;
        __m512 acc0[2 * G], acc1[2 * G];
        for (int v = 0; v < 2 * G; ++v) {
          acc0[v] = first ? _mm512_setzero_ps() : _mm512_load_ps(o0 + 16 * v);
          acc1[v] = first || !two ? _mm512_setzero_ps() : _mm512_load_ps(o1 + 16 * v);
        }
        const uint16_t* a0 = A + i * len;
        const uint16_t* a1 = two ? a0 + len : a0;
        for (int64_t k = k0; k < k1; k += 2) {  // src row k1 (past len) is zero: a single pairs with it
          const bool single = k + 1 >= len;
          const __m512bh w0 = single ? single_of(a0 + k) : pair_of(a0 + k);
          const __m512bh w1 = single ? single_of(a1 + k) : pair_of(a1 + k);
          const uint16_t* ra = src + k * kLd;
          for (int g = 0; g < G; ++g) {
            __m512i xa = _mm512_load_si512(ra + 32 * g), xb = _mm512_load_si512(ra + kLd + 32 * g);
            asm("" : "+v"(xa), "+v"(xb));  // loaded once (as in dp_rows)
            const __m512bh lo = reinterpret_cast<__m512bh>(_mm512_unpacklo_epi16(xa, xb));
            const __m512bh hi = reinterpret_cast<__m512bh>(_mm512_unpackhi_epi16(xa, xb));
            acc0[2 * g] = _mm512_dpbf16_ps(acc0[2 * g], lo, w0);
            acc0[2 * g + 1] = _mm512_dpbf16_ps(acc0[2 * g + 1], hi, w0);
            acc1[2 * g] = _mm512_dpbf16_ps(acc1[2 * g], lo, w1);
            acc1[2 * g + 1] = _mm512_dpbf16_ps(acc1[2 * g + 1], hi, w1);
          }
        }
        for (int v = 0; v < 2 * G; ++v) {
          _mm512_store_ps(o0 + 16 * v, acc0[v]);
          if (two) _mm512_store_ps(o1 + 16 * v, acc1[v]);
        }
      }
    }
  }
}

// Rows [b0, b1) of S (at most kBlock), plus U's rows against zb, into tile (rows x 32 G floats).
template <int G>
OATS_BF16 void block_pairs(const SparseLayer& L, int64_t b0, int64_t b1, const uint16_t* xb, const uint16_t* zb,
                           float* tile) {
  constexpr int64_t kLd = 32 * G;
  const int64_t stride = (L.d_in + 7) / 8, panels = (L.d_in + kPairPanel - 1) / kPairPanel;
  const uint16_t* values = static_cast<const uint16_t*>(L.values);
  const uint16_t* zero_row = xb + panels * kPairPanel * kLd;  // zero rows past the padded columns
  int64_t p[kBlock];
  for (int64_t i = b0; i < b1; ++i) p[i - b0] = L.row_offsets[i];
  for (int64_t kb = 0; kb < panels; ++kb) {
    const uint16_t* xp = xb + kb * kPairPanel * kLd;
    for (int64_t i = b0; i < b1; ++i) {
      if (i + kAhead < b1)
        prefetch_row(tile + (i + kAhead - b0) * kLd, kLd * 4, values + p[i + kAhead - b0],
                     L.bitmask + (i + kAhead) * stride + 8 * kb);
      float* o = tile + (i - b0) * kLd;
      __m512 acc[2 * G];
      for (int v = 0; v < 2 * G; ++v) acc[v] = kb ? _mm512_load_ps(o + 16 * v) : _mm512_setzero_ps();
      sparse_panel_pairs<G>(values, p[i - b0], panel_mask(L.bitmask + i * stride, kb, stride), xp, zero_row, acc);
      for (int v = 0; v < 2 * G; ++v) _mm512_store_ps(o + 16 * v, acc[v]);
    }
  }
  if (zb != nullptr) dense_rows_pairs<G>(static_cast<const uint16_t*>(L.U), b0, b1, L.r, zb, tile, true);
}

template <int G>
void chunk_pairs(const SparseLayer& L, const float* x, int64_t t0, int64_t nt, float* y, int accumulate, uint16_t* xb,
                 float* zt, uint16_t* zb, int nthreads) {
  constexpr int64_t kLd = 32 * G;
  const bool factors = L.r > 0 && L.U != nullptr && L.V != nullptr;
  const int64_t d_in_rows = (L.d_in + kPairPanel - 1) / kPairPanel * kPairPanel + 16;  // + a block of zero rows
  const int64_t r_pad = (L.r + kPanel - 1) / kPanel * kPanel;
  on_threads(
      L, kLd, factors, nthreads,
      [&](int t, int T) {
        const int64_t units = d_in_rows / 16;  // column blocks of 16, split over the threads
        x_to_pairs(x, L.d_in, t0, nt, kLd, xb, 16 * (units * t / T), 16 * (units * (t + 1) / T));
      },
      [&](int t, int T, int64_t k0, int64_t k1) {  // fp32 sums, then Z in bf16
        if (k0 < k1) dense_rows_pairs<G>(static_cast<const uint16_t*>(L.V), k0, k1, L.d_in, xb, zt + k0 * kLd, false);
#pragma omp barrier
        rows_to_pairs(zt, L.r, kLd, zb, r_pad * t / T, r_pad * (t + 1) / T);
      },
      [&](int64_t b0, int64_t b1, float* tile) {
        block_pairs<G>(L, b0, b1, xb, factors ? zb : nullptr, tile);
        write_out_avx512(tile, b1 - b0, kLd, nt, y, t0, b0, L.d_out, accumulate);
      });
}

void prefill_pairs(const SparseLayer& L, const float* x, int64_t n, float* y, int accumulate, int nthreads) {
  constexpr int kMaxGroups = 4;  // 128 tokens per chunk
  static thread_local std::vector<float> xb_buf, zt_buf, zb_buf;
  const int64_t d_in_rows = (L.d_in + kPairPanel - 1) / kPairPanel * kPairPanel + 16, r_pad = (L.r + kPanel - 1) / kPanel * kPanel + 1;
  uint16_t* xb = reinterpret_cast<uint16_t*>(scratch(xb_buf, d_in_rows * 16 * kMaxGroups));
  float* zt = scratch(zt_buf, std::max<int64_t>(L.r, 1) * 32 * kMaxGroups);
  uint16_t* zb = reinterpret_cast<uint16_t*>(scratch(zb_buf, r_pad * 16 * kMaxGroups));
  for (int64_t t0 = 0; t0 < n; t0 += 32 * kMaxGroups) {
    const int64_t nt = std::min<int64_t>(n - t0, 32 * kMaxGroups);
    switch ((nt + 31) / 32) {
      case 1: chunk_pairs<1>(L, x, t0, nt, y, accumulate, xb, zt, zb, nthreads); break;
      case 2: chunk_pairs<2>(L, x, t0, nt, y, accumulate, xb, zt, zb, nthreads); break;
      case 3: chunk_pairs<3>(L, x, t0, nt, y, accumulate, xb, zt, zb, nthreads); break;
      default: chunk_pairs<4>(L, x, t0, nt, y, accumulate, xb, zt, zb, nthreads); break;
    }
  }
}

}  // namespace

void prefill_avx512(const SparseLayer& L, int isa, const float* x, int64_t n, float* y, int accumulate, int nthreads) {
  if (isa >= kAvx512Bf16 && L.bf16 && (L.r == 0 || L.factors_bf16)) return prefill_pairs(L, x, n, y, accumulate, nthreads);
  avx512::walk(L, x, n, y, accumulate, nthreads);
}

void prefill_avx2(const SparseLayer& L, const float* x, int64_t n, float* y, int accumulate, int nthreads) {
  avx2::walk(L, x, n, y, accumulate, nthreads);
}

}  // namespace oats_native
