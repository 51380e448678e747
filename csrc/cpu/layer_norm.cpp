// Row-wise layer norm on the CPU (contract in ops.h).
//
// One row per iteration of a parallel loop, two vectorized passes over a
// row that stays in L1/L2: shifted first and second moments, then the
// normalised output. Accuracy for rows with a large
// mean: the sum is taken around the row's first element and the mean is
// applied as a float pair (mu_hi + mu_lo), so outputs keep float32 accuracy
// where a float mean would cost half an ulp of the mean in each of them.
// The backward's column sums (dW, dB) go to per-thread partial rows, added
// once at the end: no atomics.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/simd.h"
#include "cpu/threads.h"
#include "ops.h"

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif

namespace conveyor {
namespace {

template <typename T>
struct RowStats {
  T hi, lo, rstd;  // mean = hi + lo
};

// Rows are summed in blocks: each block's vector sum in T (at most kSumBlock /
// lanes sequential adds per lane), the blocks' sums in double. One float32 sum
// over a 65536-wide row loses ~1e-4 of relative accuracy; blocks keep it ~1e-6.
constexpr int64_t kSumBlock = 1024;

// Sums of (x - shift) and (x - shift)^2 over a row, in blocks.
template <typename T>
CONVEYOR_INLINE void shifted_sums(const T* __restrict xr, int64_t N, T shift_hi, T shift_lo,
                                  double& s, double& ss) {
  s = 0;
  ss = 0;
  for (int64_t n0 = 0; n0 < N; n0 += kSumBlock) {
    const int64_t n1 = std::min(N, n0 + kSumBlock);
    T bs = 0, bss = 0;
#pragma omp simd reduction(+ : bs, bss)
    for (int64_t n = n0; n < n1; ++n) {
      const T d = (xr[n] - shift_hi) - shift_lo;
      bs += d;
      bss += d * d;
    }
    s += static_cast<double>(bs);
    ss += static_cast<double>(bss);
  }
}

template <typename T>
CONVEYOR_INLINE RowStats<T> row_stats(const T* __restrict xr, int64_t N, double eps) {
  if (N == 0) return {T(0), T(0), static_cast<T>(1.0 / std::sqrt(eps))};
  // One pass around the row's first element: var = E[d^2] - E[d]^2. That
  // cancels in float32 when the first element is far from the mean (a year,
  // 2024, in front of standardised features): then, and only then (E[d^2] over
  // 64 variances, the first element over 8 standard deviations away), a second
  // pass sums deviations from the first pass's mean, and their mean corrects
  // it (the corrected two-pass algorithm). Ordinary rows keep one pass.
  const double n = static_cast<double>(N);
  double s, ss;
  shifted_sums(xr, N, xr[0], T(0), s, ss);
  double mu = static_cast<double>(xr[0]) + s / n;
  double var = ss / n - (s / n) * (s / n);
  if (!std::isfinite(ss)) {
    // A block's sum of squares overflowed T (float32 values ~1e19 and up: their
    // squares pass 3.4e38 although the variance may not): the row again, in double.
    // Rows holding inf or NaN come here too and get the same inf/NaN statistics.
    double sum = 0;
    for (int64_t k = 0; k < N; ++k) sum += static_cast<double>(xr[k]);
    mu = sum / n;
    double sq = 0;
    for (int64_t k = 0; k < N; ++k) {
      const double d = static_cast<double>(xr[k]) - mu;
      sq += d * d;
    }
    var = sq / n;
  } else if (ss / n > 64.0 * var) {
    const T ehi = static_cast<T>(mu), elo = static_cast<T>(mu - static_cast<double>(ehi));
    shifted_sums(xr, N, ehi, elo, s, ss);
    mu += s / n;
    var = ss / n - (s / n) * (s / n);
  }
  var = std::max(0.0, var);
  const T hi = static_cast<T>(mu), lo = static_cast<T>(mu - static_cast<double>(hi));
  return {hi, lo, static_cast<T>(1.0 / std::sqrt(var + eps))};
}

template <typename T>
CONVEYOR_INLINE void row_forward(const T* __restrict xr, const T* __restrict w,
                                 const T* __restrict b, int64_t N, double eps, T* __restrict yr,
                                 T* mean, T* rstd) {
  const RowStats<T> st = row_stats(xr, N, eps);
  const T hi = st.hi, lo = st.lo, r = st.rstd;
  if (mean) {  // inference passes no statistics buffers
    *mean = hi;
    *rstd = r;
  }
  if (w && b) {
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) yr[n] = ((xr[n] - hi) - lo) * r * w[n] + b[n];
  } else if (w) {
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) yr[n] = ((xr[n] - hi) - lo) * r * w[n];
  } else if (b) {
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) yr[n] = ((xr[n] - hi) - lo) * r + b[n];
  } else {
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) yr[n] = ((xr[n] - hi) - lo) * r;
  }
}

// dx = r * (g - mean(g) - xhat * mean(g * xhat)), g = gy * w; pw += gy * xhat, pb += gy.
template <typename T>
CONVEYOR_INLINE void row_backward(const T* __restrict gr, const T* __restrict xr,
                                  const T* __restrict w, T saved_mean, T r, int64_t N,
                                  T* __restrict dx, T* __restrict pw, T* __restrict pb) {
  // The saved mean is rounded to T, which shifts every xhat by up to
  // |mean| * eps * rstd. Only when that could exceed ~1e-6 (a mean far from
  // zero relative to the spread) recompute the forward's (hi, lo) pair.
  T hi = saved_mean, lo = 0;
  if (N > 0 && std::fabs(static_cast<double>(saved_mean)) * static_cast<double>(r) > 16.0) {
    const RowStats<T> st = row_stats(xr, N, 1.0);  // the same (hi, lo) as the forward's
    hi = st.hi;
    lo = st.lo;
  }
  T sg = 0, sgx = 0;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t n = 0; n < N; ++n) {
    const T xhat = ((xr[n] - hi) - lo) * r;
    const T g = w ? gr[n] * w[n] : gr[n];
    sg += g;
    sgx += g * xhat;
    pw[n] += gr[n] * xhat;
    pb[n] += gr[n];
  }
  if (!dx) return;
  const T inv_n = T(1) / static_cast<T>(N);
  const T a = sg * inv_n, c = sgx * inv_n;
#pragma omp simd
  for (int64_t n = 0; n < N; ++n) {
    const T xhat = ((xr[n] - hi) - lo) * r;
    const T g = w ? gr[n] * w[n] : gr[n];
    dx[n] = r * (g - a - xhat * c);
  }
}

CONVEYOR_CLONES void row_forward_f32(const float* xr, const float* w, const float* b, int64_t N,
                                     double eps, float* yr, float* mean, float* rstd) {
  row_forward<float>(xr, w, b, N, eps, yr, mean, rstd);
}
CONVEYOR_CLONES void row_forward_f64(const double* xr, const double* w, const double* b,
                                     int64_t N, double eps, double* yr, double* mean,
                                     double* rstd) {
  row_forward<double>(xr, w, b, N, eps, yr, mean, rstd);
}
CONVEYOR_CLONES void row_backward_f32(const float* gr, const float* xr, const float* w, float mu,
                                      float r, int64_t N, float* dx, float* pw, float* pb) {
  row_backward<float>(gr, xr, w, mu, r, N, dx, pw, pb);
}
CONVEYOR_CLONES void row_backward_f64(const double* gr, const double* xr, const double* w,
                                      double mu, double r, int64_t N, double* dx, double* pw,
                                      double* pb) {
  row_backward<double>(gr, xr, w, mu, r, N, dx, pw, pb);
}
inline void row_fwd(const float* x, const float* w, const float* b, int64_t N, double eps,
                    float* y, float* m, float* r) {
  row_forward_f32(x, w, b, N, eps, y, m, r);
}
inline void row_fwd(const double* x, const double* w, const double* b, int64_t N, double eps,
                    double* y, double* m, double* r) {
  row_forward_f64(x, w, b, N, eps, y, m, r);
}
inline void row_bwd(const float* g, const float* x, const float* w, float mu, float r, int64_t N,
                    float* dx, float* pw, float* pb) {
  row_backward_f32(g, x, w, mu, r, N, dx, pw, pb);
}
inline void row_bwd(const double* g, const double* x, const double* w, double mu, double r,
                    int64_t N, double* dx, double* pw, double* pb) {
  row_backward_f64(g, x, w, mu, r, N, dx, pw, pb);
}

}  // namespace

template <typename T>
void layer_norm_forward_cpu(const T* x, const T* weight, const T* bias, int64_t M, int64_t N,
                            double eps, T* y, T* mean, T* rstd) {
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for num_threads(cpu_threads()) schedule(static) if (M * N >= (1 << 15))
#endif
  for (int64_t m = 0; m < M; ++m)
    row_fwd(x + m * N, weight, bias, N, eps, y + m * N, mean ? mean + m : nullptr,
            rstd ? rstd + m : nullptr);
}

template <typename T>
void layer_norm_backward_cpu(const T* gy, const T* x, const T* weight, const T* mean,
                             const T* rstd, int64_t M, int64_t N, T* gx, T* gw, T* gb) {
  const bool parallel = M * N >= (1 << 15);
  int threads = 1;
#ifdef CONVEYOR_WITH_OPENMP
  if (parallel) threads = std::max(1, std::min<int>(cpu_threads(), static_cast<int>(M)));
#endif
  // Per-thread partial sums of gy * xhat (dW) and gy (dB).
  std::vector<T> part(static_cast<size_t>(threads) * 2 * N, T(0));
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel num_threads(threads) if (parallel)
#endif
  {
#ifdef CONVEYOR_WITH_OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    T* pw = part.data() + static_cast<size_t>(t) * 2 * N;
    T* pb = pw + N;
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t m = 0; m < M; ++m)
      row_bwd(gy + m * N, x + m * N, weight, mean[m], rstd[m], N, gx ? gx + m * N : nullptr, pw,
              pb);
  }
  for (int64_t n = 0; n < N; ++n) {
    T w = 0, b = 0;
    for (int t = 0; t < threads; ++t) {
      w += part[static_cast<size_t>(t) * 2 * N + n];
      b += part[static_cast<size_t>(t) * 2 * N + N + n];
    }
    if (gw) gw[n] = w;
    if (gb) gb[n] = b;
  }
}

template void layer_norm_forward_cpu<float>(const float*, const float*, const float*, int64_t,
                                            int64_t, double, float*, float*, float*);
template void layer_norm_forward_cpu<double>(const double*, const double*, const double*,
                                             int64_t, int64_t, double, double*, double*, double*);
template void layer_norm_backward_cpu<float>(const float*, const float*, const float*,
                                             const float*, const float*, int64_t, int64_t,
                                             float*, float*, float*);
template void layer_norm_backward_cpu<double>(const double*, const double*, const double*,
                                              const double*, const double*, int64_t, int64_t,
                                              double*, double*, double*);

}  // namespace conveyor
