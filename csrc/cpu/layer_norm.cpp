// Row-wise layer norm on the CPU (contract in ops.h): one row per iteration
// of a parallel loop; statistics in double for float inputs (two passes over
// a row that is in L1/L2), and the mean is subtracted as a float pair
// (mu_hi + mu_lo), so rows with a large mean keep float32 accuracy where a
// float mean would cost half an ulp of the mean in every output. The backward's column sums (dW, dB) go to
// per-thread partial rows, added once at the end: no atomics.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif

namespace conveyor {

template <typename T>
void layer_norm_forward_cpu(const T* x, const T* weight, const T* bias, int64_t M, int64_t N,
                            double eps, T* y, T* mean, T* rstd) {
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for schedule(static) if (M * N >= (1 << 15))
#endif
  for (int64_t m = 0; m < M; ++m) {
    const T* xr = x + m * N;
    T* yr = y + m * N;
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) s += xr[n];
    const double mu = N > 0 ? s / static_cast<double>(N) : 0.0;
    double ss = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const double d = static_cast<double>(xr[n]) - mu;
      ss += d * d;
    }
    const double var = N > 0 ? ss / static_cast<double>(N) : 0.0;
    const T mu_t = static_cast<T>(mu);
    const T mu_lo = static_cast<T>(mu - static_cast<double>(mu_t));
    const T r = static_cast<T>(1.0 / std::sqrt(var + eps));
    mean[m] = mu_t;
    rstd[m] = r;
    if (weight && bias) {
      for (int64_t n = 0; n < N; ++n) yr[n] = ((xr[n] - mu_t) - mu_lo) * r * weight[n] + bias[n];
    } else if (weight) {
      for (int64_t n = 0; n < N; ++n) yr[n] = ((xr[n] - mu_t) - mu_lo) * r * weight[n];
    } else {
      for (int64_t n = 0; n < N; ++n)
        yr[n] = ((xr[n] - mu_t) - mu_lo) * r + (bias ? bias[n] : T(0));
    }
  }
}

template <typename T>
void layer_norm_backward_cpu(const T* gy, const T* x, const T* weight, const T* mean,
                             const T* rstd, int64_t M, int64_t N, T* gx, T* gw, T* gb) {
  const bool parallel = M * N >= (1 << 15);
  int threads = 1;
#ifdef CONVEYOR_WITH_OPENMP
  if (parallel) threads = omp_get_max_threads();
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
    for (int64_t m = 0; m < M; ++m) {
      const T* xr = x + m * N;
      const T* gr = gy + m * N;
      const T r = rstd[m];
      // The saved mean is rounded to T; recover the pair (mu, mu_lo) from the
      // row (in cache for the passes below) for the forward's accuracy.
      double s = 0.0;
      for (int64_t n = 0; n < N; ++n) s += xr[n];
      const double mu_d = N > 0 ? s / static_cast<double>(N) : static_cast<double>(mean[m]);
      const T mu = static_cast<T>(mu_d), mu_lo = static_cast<T>(mu_d - static_cast<double>(mu));
      // dx = r * (g - mean(g) - xhat * mean(g * xhat)), g = gy * weight.
      T sg = 0, sgx = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T xhat = ((xr[n] - mu) - mu_lo) * r;
        const T g = weight ? gr[n] * weight[n] : gr[n];
        sg += g;
        sgx += g * xhat;
        pw[n] += gr[n] * xhat;
        pb[n] += gr[n];
      }
      if (gx) {
        const T inv_n = T(1) / static_cast<T>(N);
        const T a = sg * inv_n, c = sgx * inv_n;
        T* dx = gx + m * N;
        for (int64_t n = 0; n < N; ++n) {
          const T xhat = ((xr[n] - mu) - mu_lo) * r;
          const T g = weight ? gr[n] * weight[n] : gr[n];
          dx[n] = r * (g - a - xhat * c);
        }
      }
    }
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
