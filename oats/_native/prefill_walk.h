// The fp32 prefill walk of prefill.cpp (see its header), written once for any vector width: prefill.cpp
// includes this file in one namespace per instruction set, after defining there
//   OATS_WALK  the target attribute of the functions below (OATS_AVX512, OATS_AVX2),
//   Vec        the vector type and its operations: reg, kLanes (fp32 lanes), kRowPairs (dense rows two at a
//              time, sharing each loaded panel row: needs 3 NV registers), zero, load, store, fmadd,
//              broadcast<kBf16>, and transpose_in / write_out (tokens in, results out).
// No include guard: it is meant to be compiled more than once.

constexpr int kMaxVectors = 8;  // vectors of tokens per chunk: 128 tokens on AVX-512, 64 on AVX2
using reg = Vec::reg;

// One row of S against one panel: acc[0..NV) += sum over the set bits j of m of value * xp[j].
template <int NV, int kBf16>
OATS_WALK inline void sparse_panel(const void* values, int64_t& p, uint64_t m, const float* xp, reg* acc) {
  constexpr int64_t kLd = Vec::kLanes * NV;
  while (m) {
    const int64_t j = __builtin_ctzll(m);
    m &= m - 1;
    const reg w = Vec::broadcast<kBf16>(values, p++);
    const float* xr = xp + j * kLd;
    for (int v = 0; v < NV; ++v) acc[v] = Vec::fmadd(w, Vec::load(xr + Vec::kLanes * v), acc[v]);
  }
}

// Dense rows a0 (and a1 unless null) over columns [k0, k0 + kc) against a panel (kc rows of NV vectors):
// with two rows, each loaded row of the panel feeds both rows' accumulators.
template <int NV, int kBf16>
OATS_WALK inline void dense_panel(const void* a0, const void* a1, int64_t k0, int64_t kc, const float* xp, reg* acc0,
                                  reg* acc1) {
  constexpr int64_t kLd = Vec::kLanes * NV;
  for (int64_t j = 0; j < kc; ++j) {
    const float* xr = xp + j * kLd;
    const reg w0 = Vec::broadcast<kBf16>(a0, k0 + j);
    if (a1 == nullptr) {
      for (int v = 0; v < NV; ++v) acc0[v] = Vec::fmadd(w0, Vec::load(xr + Vec::kLanes * v), acc0[v]);
      continue;
    }
    reg xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = Vec::load(xr + Vec::kLanes * v);
    for (int v = 0; v < NV; ++v) acc0[v] = Vec::fmadd(w0, xv[v], acc0[v]);
    const reg w1 = Vec::broadcast<kBf16>(a1, k0 + j);
    for (int v = 0; v < NV; ++v) acc1[v] = Vec::fmadd(w1, xv[v], acc1[v]);
  }
}

// out (rows [i0, i1) x NV vectors, row-major) = (or +=, with add) A rows [i0, i1) (dense, len columns)
// against src (len x NV vectors): blocks of kPairBlock rows walk the panels of src in turn (a panel stays in
// L1 while the block's rows use it; their partial sums stay in out).
template <int NV, int kBf16>
OATS_WALK void dense_rows(const void* A, int64_t i0, int64_t i1, int64_t len, const float* src, float* out, bool add) {
  constexpr int64_t kLd = Vec::kLanes * NV;
  constexpr int64_t kStep = Vec::kRowPairs ? 2 : 1;
  for (int64_t b0 = i0; b0 < i1; b0 += kPairBlock) {
    const int64_t b1 = std::min(b0 + kPairBlock, i1);
    for (int64_t k0 = 0; k0 < len; k0 += kPanel) {
      const bool first = k0 == 0 && !add;
      for (int64_t i = b0; i < b1; i += kStep) {
        const bool pair = kStep == 2 && i + 1 < b1;
        float* o0 = out + (i - i0) * kLd;
        float* o1 = o0 + kLd;
        reg acc0[NV], acc1[NV];
        for (int v = 0; v < NV; ++v) {
          acc0[v] = first ? Vec::zero() : Vec::load(o0 + Vec::kLanes * v);
          acc1[v] = first || !pair ? Vec::zero() : Vec::load(o1 + Vec::kLanes * v);
        }
        dense_panel<NV, kBf16>(dense_row_ptr(A, kBf16, i, len), pair ? dense_row_ptr(A, kBf16, i + 1, len) : nullptr, k0,
                               std::min(kPanel, len - k0), src + k0 * kLd, acc0, acc1);
        for (int v = 0; v < NV; ++v) {
          Vec::store(o0 + Vec::kLanes * v, acc0[v]);
          if (pair) Vec::store(o1 + Vec::kLanes * v, acc1[v]);
        }
      }
    }
  }
}

// Rows [b0, b1) of S (at most kBlock), plus U's rows against zt, into tile (rows x NV vectors).
template <int NV, int kBf16, int kFb16>
OATS_WALK void block(const SparseLayer& L, int64_t b0, int64_t b1, const float* xt, const float* zt, float* tile) {
  constexpr int64_t kLd = Vec::kLanes * NV;
  const int64_t stride = (L.d_in + 7) / 8, panels = (L.d_in + kPanel - 1) / kPanel;
  int64_t p[kBlock];
  for (int64_t i = b0; i < b1; ++i) p[i - b0] = L.row_offsets[i];
  for (int64_t kb = 0; kb < panels; ++kb) {
    const float* xp = xt + kb * kPanel * kLd;
    for (int64_t i = b0; i < b1; ++i) {
      if (i + kAhead < b1)
        prefetch_row(tile + (i + kAhead - b0) * kLd, kLd * 4,
                     static_cast<const char*>(L.values) + p[i + kAhead - b0] * (kBf16 ? 2 : 4),
                     L.bitmask + (i + kAhead) * stride + 8 * kb);
      float* o = tile + (i - b0) * kLd;
      reg acc[NV];
      for (int v = 0; v < NV; ++v) acc[v] = kb ? Vec::load(o + Vec::kLanes * v) : Vec::zero();
      sparse_panel<NV, kBf16>(L.values, p[i - b0], panel_mask(L.bitmask + i * stride, kb, stride), xp, acc);
      for (int v = 0; v < NV; ++v) Vec::store(o + Vec::kLanes * v, acc[v]);
    }
  }
  if (zt != nullptr) dense_rows<NV, kFb16>(L.U, b0, b1, L.r, zt, tile, true);  // + U Zt, into the same tile
}

template <int NV, int kBf16, int kFb16>
void chunk(const SparseLayer& L, const float* x, int64_t t0, int64_t nt, float* y, int accumulate, float* xt, float* zt,
           int nthreads) {
  constexpr int64_t kLd = Vec::kLanes * NV;
  const bool factors = L.r > 0 && L.U != nullptr && L.V != nullptr;
  const int64_t d_in_pad = (L.d_in + kPanel - 1) / kPanel * kPanel;
  on_threads(
      L, kLd, factors, nthreads,
      [&](int t, int T) {
        const int64_t units = d_in_pad / 16;  // column blocks of 16, split over the threads
        Vec::transpose_in(x, L.d_in, t0, nt, kLd, xt, 16 * (units * t / T), 16 * (units * (t + 1) / T));
      },
      [&](int, int, int64_t k0, int64_t k1) {
        if (k0 < k1) dense_rows<NV, kFb16>(L.V, k0, k1, L.d_in, xt, zt + k0 * kLd, false);
      },
      [&](int64_t b0, int64_t b1, float* tile) {
        block<NV, kBf16, kFb16>(L, b0, b1, xt, factors ? zt : nullptr, tile);
        Vec::write_out(tile, b1 - b0, kLd, nt, y, t0, b0, L.d_out, accumulate);
      });
}

template <int NV>
void chunk_any(const SparseLayer& L, const float* x, int64_t t0, int64_t nt, float* y, int accumulate, float* xt,
               float* zt, int nthreads) {
  const int fb = L.factors_bf16 && L.r > 0;
  if (L.bf16)
    fb ? chunk<NV, 1, 1>(L, x, t0, nt, y, accumulate, xt, zt, nthreads)
       : chunk<NV, 1, 0>(L, x, t0, nt, y, accumulate, xt, zt, nthreads);
  else
    fb ? chunk<NV, 0, 1>(L, x, t0, nt, y, accumulate, xt, zt, nthreads)
       : chunk<NV, 0, 0>(L, x, t0, nt, y, accumulate, xt, zt, nthreads);
}

// y (n x d_out) = x S^T (+ (x V^T) U^T), or +=, in chunks of up to kMaxVectors vectors of tokens.
inline void walk(const SparseLayer& L, const float* x, int64_t n, float* y, int accumulate, int nthreads) {
  constexpr int64_t kChunk = Vec::kLanes * kMaxVectors;
  static thread_local std::vector<float> xt_buf, zt_buf;
  const int64_t d_in_pad = (L.d_in + kPanel - 1) / kPanel * kPanel;
  float* xt = scratch(xt_buf, d_in_pad * kChunk);
  float* zt = scratch(zt_buf, std::max<int64_t>(L.r, 1) * kChunk);
  for (int64_t t0 = 0; t0 < n; t0 += kChunk) {
    const int64_t nt = std::min<int64_t>(n - t0, kChunk);
    switch ((nt + Vec::kLanes - 1) / Vec::kLanes) {
      case 1: chunk_any<1>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
      case 2: chunk_any<2>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
      case 3: chunk_any<3>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
      case 4: chunk_any<4>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
      case 5: chunk_any<5>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
      case 6: chunk_any<6>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
      case 7: chunk_any<7>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
      default: chunk_any<8>(L, x, t0, nt, y, accumulate, xt, zt, nthreads); break;
    }
  }
}
