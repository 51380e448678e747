// Embedding bag on the CPU (contract in ops.h).
//
// Forward: one bag per iteration of a parallel loop; each bag accumulates its
// rows into its own output row, so no synchronisation is needed.
// Backward: the scatter-add into grad_weight is made race-free without
// atomics by giving each thread the table rows r with r % threads == t; every
// thread scans the (small) index array and touches only its own rows.
#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "ops.h"

#ifdef CONVEYOR_WITH_OPENMP
#include <omp.h>
#endif

namespace conveyor {
namespace {

// out[0..D) += s * row[0..D): the whole inner loop, written so it vectorizes.
template <typename T>
inline void axpy(int64_t D, T s, const T* __restrict row, T* __restrict out) {
  for (int64_t d = 0; d < D; ++d) out[d] += s * row[d];
}

template <typename T>
inline T dot(int64_t D, const T* __restrict a, const T* __restrict b) {
  T acc = T(0);
  for (int64_t d = 0; d < D; ++d) acc += a[d] * b[d];
  return acc;
}

inline int64_t bag_end(const int64_t* offsets, int64_t B, int64_t nnz, int64_t b) {
  return b + 1 < B ? offsets[b + 1] : nnz;
}

std::string check_offsets(const int64_t* offsets, int64_t B, int64_t nnz) {
  if (B == 0) return "";
  if (offsets[0] != 0) return "offsets[0] must be 0";
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = offsets[b], e = bag_end(offsets, B, nnz, b);
    if (s > e || e > nnz) {
      return "offsets must be non-decreasing and at most len(indices) (bag " + std::to_string(b) +
             ")";
    }
  }
  return "";
}

std::string check_indices(const int64_t* indices, int64_t nnz, int64_t V) {
  std::atomic<int64_t> bad{-1};
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for schedule(static) if (nnz >= (1 << 16))
#endif
  for (int64_t j = 0; j < nnz; ++j) {
    if (indices[j] < 0 || indices[j] >= V) bad.store(j, std::memory_order_relaxed);
  }
  const int64_t j = bad.load();
  if (j < 0) return "";
  return "index " + std::to_string(indices[j]) + " at position " + std::to_string(j) +
         " is out of range for a table of " + std::to_string(V) + " rows";
}

}  // namespace

template <typename T>
std::string embedding_bag_forward_cpu(const T* weight, int64_t V, int64_t D,
                                      const int64_t* indices, int64_t nnz,
                                      const int64_t* offsets, int64_t B,
                                      const T* per_sample_weights, int mode, T* out) {
  std::string err = check_offsets(offsets, B, nnz);
  if (err.empty()) err = check_indices(indices, nnz, V);
  if (!err.empty()) return err;
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel for schedule(dynamic, 16) if (nnz * D >= (1 << 15))
#endif
  for (int64_t b = 0; b < B; ++b) {
    T* o = out + b * D;
    std::fill(o, o + D, T(0));
    const int64_t s = offsets[b], e = bag_end(offsets, B, nnz, b);
    for (int64_t j = s; j < e; ++j) {
      const T scale = per_sample_weights ? per_sample_weights[j] : T(1);
      axpy(D, scale, weight + indices[j] * D, o);
    }
    if (mode == kBagMean && e > s) {
      const T inv = T(1) / static_cast<T>(e - s);
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  }
  return "";
}

template <typename T>
std::string embedding_bag_backward_cpu(const T* grad_out, const T* weight, int64_t V, int64_t D,
                                       const int64_t* indices, int64_t nnz,
                                       const int64_t* offsets, int64_t B,
                                       const T* per_sample_weights, int mode, T* grad_weight,
                                       T* grad_psw) {
  std::string err = check_offsets(offsets, B, nnz);
  if (err.empty()) err = check_indices(indices, nnz, V);
  if (!err.empty()) return err;
  // Bag of each index position (indices before offsets[0] cannot exist: offsets[0] == 0).
  std::vector<int64_t> bag_of(static_cast<size_t>(nnz));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t e = bag_end(offsets, B, nnz, b);
    for (int64_t j = offsets[b]; j < e; ++j) bag_of[j] = b;
  }
  const bool parallel = nnz * D >= (1 << 15) || V * D >= (1 << 18);
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp parallel if (parallel)
#endif
  {
#ifdef CONVEYOR_WITH_OPENMP
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
#pragma omp for schedule(static)
#else
    const int64_t threads = 1, t = 0;
#endif
    for (int64_t r = 0; r < V; ++r) std::fill(grad_weight + r * D, grad_weight + (r + 1) * D, T(0));
    // (implicit barrier: the table is zeroed before any thread adds into it)
    for (int64_t j = 0; j < nnz; ++j) {
      const int64_t r = indices[j];
      if (r % threads != t) continue;
      const int64_t b = bag_of[j];
      T scale = per_sample_weights ? per_sample_weights[j] : T(1);
      if (mode == kBagMean) scale /= static_cast<T>(bag_end(offsets, B, nnz, b) - offsets[b]);
      axpy(D, scale, grad_out + b * D, grad_weight + r * D);
    }
    if (grad_psw) {
#ifdef CONVEYOR_WITH_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t j = 0; j < nnz; ++j)
        grad_psw[j] = dot(D, weight + indices[j] * D, grad_out + bag_of[j] * D);
    }
  }
  return "";
}

template std::string embedding_bag_forward_cpu<float>(const float*, int64_t, int64_t,
                                                      const int64_t*, int64_t, const int64_t*,
                                                      int64_t, const float*, int, float*);
template std::string embedding_bag_forward_cpu<double>(const double*, int64_t, int64_t,
                                                       const int64_t*, int64_t, const int64_t*,
                                                       int64_t, const double*, int, double*);
template std::string embedding_bag_backward_cpu<float>(const float*, const float*, int64_t,
                                                       int64_t, const int64_t*, int64_t,
                                                       const int64_t*, int64_t, const float*, int,
                                                       float*, float*);
template std::string embedding_bag_backward_cpu<double>(const double*, const double*, int64_t,
                                                        int64_t, const int64_t*, int64_t,
                                                        const int64_t*, int64_t, const double*,
                                                        int, double*, double*);

}  // namespace conveyor
