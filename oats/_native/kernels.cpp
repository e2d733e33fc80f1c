// Native CPU kernels of the oats package, loaded through ctypes by oats/native.py (plain C ABI:
// no Python or torch headers, so the build needs only a C++ compiler with OpenMP).
//
// oats_row_topk: OATS's row-wise hard threshold. For each row of R (m x n, row-major fp32) keep
// the k entries of largest magnitude: S = R on them, 0 elsewhere, and the byte mask of them. Ties at the
// cut keep the lowest column indices. With `warm`, each row first looks for its new cut only near
// its previous one (cut[i] in, cut[i] out): one pass counts the entries above a narrow band and
// collects those inside it, and a selection on the band alone finds the k-th largest; a row whose
// band misses widens it, and after a few misses selects over the whole row as a cold call does.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// The k-th largest magnitude of row x (1 <= k <= n), by selection over a copy.
float cold_cut(const float* x, int64_t n, int64_t k, float* buf) {
  for (int64_t j = 0; j < n; ++j) buf[j] = std::fabs(x[j]);
  std::nth_element(buf, buf + (n - k), buf + n);
  return buf[n - k];
}

// The k-th largest magnitude of row x searched in [lo, hi) around the previous cut; false if the
// band does not hold it.
bool band_cut(const float* x, int64_t n, int64_t k, float lo, float hi, float* band, float* out) {
  int64_t above = 0, nb = 0;
  for (int64_t j = 0; j < n; ++j) {  // branch-free: the band test is a coin flip for the predictor
    const float a = std::fabs(x[j]);
    above += a >= hi;
    band[nb] = a;
    nb += (a >= lo) & (a < hi);
  }
  if (above >= k || above + nb < k) return false;
  const int64_t q = nb - (k - above);  // ascending position of the k-th largest within the band
  std::nth_element(band, band + q, band + nb);
  *out = band[q];
  return true;
}

}  // namespace

extern "C" {

// Returns the number of rows that had to select over the whole row.
int64_t oats_row_topk(const float* R, int64_t m, int64_t n, int64_t k, float* cut, int warm, float* S,
                      uint8_t* mask, int nthreads) {
  int64_t cold_rows = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : cold_rows)
  {
    std::vector<float> buf(static_cast<size_t>(n));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      const float* x = R + i * n;
      float v = 0.0f;
      bool found = false;
      if (warm && std::isfinite(cut[i]) && cut[i] > 0.0f) {
        float w = 1.0f / 32.0f;
        for (int attempt = 0; attempt < 3 && !found; ++attempt, w *= 8.0f) {
          found = band_cut(x, n, k, cut[i] * (1.0f - w), cut[i] * (1.0f + w), buf.data(), &v);
        }
      }
      if (!found) {
        v = cold_cut(x, n, k, buf.data());
        ++cold_rows;
      }
      float* s = S + i * n;
      uint8_t* b = mask + i * n;
      int64_t kept = 0;
      for (int64_t j = 0; j < n; ++j) {  // keep |x| >= v: exactly k entries unless several equal the cut
        const bool keep = std::fabs(x[j]) >= v;
        s[j] = keep ? x[j] : 0.0f;
        b[j] = keep;
        kept += keep;
      }
      if (kept > k) {  // ties at the cut: keep the lowest column indices among them
        int64_t drop = kept - k;
        for (int64_t j = n - 1; j >= 0 && drop > 0; --j) {
          if (std::fabs(x[j]) == v) {
            s[j] = 0.0f;
            b[j] = 0;
            --drop;
          }
        }
      }
      cut[i] = v;
    }
  }
  return cold_rows;
}

}  // extern "C"
